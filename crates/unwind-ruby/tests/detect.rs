//! Detection on the real libruby files of this machine: Debian's 3.1 (with its exported
//! symbols) and Debian trixie's 3.3 (stripped, none of the VM's symbols), where everything is
//! found from the machine code of exported functions and the unwind table. The expected
//! addresses were read off `objdump -d` and `readelf --debug-dump=frames` of each file.

use std::collections::HashMap;
use std::path::Path;

use ferroscope_test_harness as harness;
use ferroscope_unwind_api::{ElfFile, SymbolRange};
use ferroscope_unwind_ruby::code::TlsAccess;
use ferroscope_unwind_ruby::detect::{EcSource, detect};
use object::{Object, ObjectSegment, ObjectSymbol};

/// An ELF file for detection, over its bytes (what the agent gives plug-ins).
struct File {
    path: String,
    data: Vec<u8>,
    dynsym: HashMap<String, SymbolRange>,
    symtab: HashMap<String, SymbolRange>,
}

impl File {
    fn open(path: &Path) -> File {
        let data = std::fs::read(path).unwrap();
        let (dynsym, symtab) = {
            let f = object::File::parse(&*data).unwrap();
            let index = |syms: &mut dyn Iterator<Item = object::Symbol<'_, '_>>| {
                syms.filter(|s| s.is_definition())
                    .filter_map(|s| {
                        Some((
                            s.name().ok()?.to_string(),
                            SymbolRange {
                                address: s.address(),
                                size: s.size(),
                            },
                        ))
                    })
                    .collect::<HashMap<_, _>>()
            };
            (index(&mut f.dynamic_symbols()), index(&mut f.symbols()))
        };
        File {
            path: path.display().to_string(),
            data,
            dynsym,
            symtab,
        }
    }
}

impl ElfFile for File {
    fn path(&self) -> &str {
        &self.path
    }
    fn symbol(&self, name: &str) -> Option<SymbolRange> {
        self.exported_symbol(name)
            .or_else(|| self.symtab.get(name).copied())
    }
    fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
        self.dynsym.get(name).copied()
    }
    fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool {
        let f = object::File::parse(&*self.data).unwrap();
        for seg in f.segments() {
            let Ok(data) = seg.data() else { continue };
            let start = seg.address();
            if vaddr >= start && vaddr - start + buf.len() as u64 <= data.len() as u64 {
                let off = (vaddr - start) as usize;
                buf.copy_from_slice(&data[off..off + buf.len()]);
                return true;
            }
        }
        false
    }
}

#[test]
fn debian_ruby_3_1_with_its_symbols() {
    let Some(path) = harness::file(
        "/usr/lib/x86_64-linux-gnu/libruby-3.1.so.3.1.2",
        "apt-get install ruby3.1",
    ) else {
        return;
    };
    let file = File::open(&path);
    let found = detect(&file).unwrap().expect("Ruby");
    assert_eq!(found.version.to_string(), "3.1.2");
    assert_eq!(found.vm_exec.0, 0x253060);
    assert!(found.vm_exec.1 > 0x253bc0 && found.vm_exec.1 <= 0x253bd0);
    assert_eq!(
        found.ec,
        EcSource::Tls(TlsAccess::Dynamic {
            got: 0x3aea48,
            disp: 0
        })
    );
    assert_eq!(found.symbols, Some((0x3af1c0, 0xa9)));
}

#[test]
fn debian_trixie_ruby_3_3_without_symbols() {
    let Some(chroot) = harness::chroot::trixie() else {
        return;
    };
    let path = chroot.host_path("/usr/lib/x86_64-linux-gnu/libruby-3.3.so.3.3.8");
    let file = File::open(&path);
    assert!(file.symtab.is_empty() || !file.symtab.contains_key("rb_vm_exec"));
    assert!(file.exported_symbol("rb_vm_exec").is_none());
    let found = detect(&file).unwrap().expect("Ruby");
    assert_eq!(found.version.to_string(), "3.3.8");
    assert_eq!(
        found.vm_exec,
        (0x27dfa0, 0x27e200),
        "{}",
        found.vm_exec_from
    );
    assert_eq!(
        found.ec,
        EcSource::Tls(TlsAccess::Dynamic {
            got: 0x45aad0,
            disp: 0
        })
    );
    assert_eq!(found.symbols, Some((0x45b160, 0xa9)));
}
