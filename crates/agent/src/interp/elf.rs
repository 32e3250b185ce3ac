//! ELF files as plug-ins see them during detection.
//!
//! A file is read with `pread` through [`object::ReadCache`], never mapped: only the headers
//! and the sections a plug-in asks about are read, and a file that its owner truncates
//! meanwhile gives "not found" answers rather than a `SIGBUS`.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;

use object::{ReadCache, ReadRef};

use ferroscope_symbolize::debuglink::{DebugRefs, find_debug_file};
use ferroscope_symbolize::root::FsRoot;
use ferroscope_unwind_api::{ElfFile, SymbolRange, TlsTemplate};

/// Where to look for a file's separate debug file: in the root of a process that maps it
/// (then on the host), next to the file's path there; the file's own identity is never its
/// own debug file.
pub(crate) struct DebugSearch {
    pub(crate) pid: u32,
    pub(crate) path: PathBuf,
    pub(crate) identity: Option<(u64, u64)>,
}

/// An ELF file as plug-ins see it: symbols looked up by name (an index of `.dynsym` built
/// on first use, then `.symtab` only when a name is not in `.dynsym`, then the separate
/// debug file's `.symtab`, looked for the first time a name is in neither), and its CFI's
/// function ranges, listed on first use.
pub(crate) struct MappedElf<'a> {
    path: &'a str,
    /// The open file, for the reads that go through a cache of their own.
    source: &'a File,
    data: &'a ReadCache<File>,
    file: object::File<'a, &'a ReadCache<File>>,
    dynsym: std::cell::OnceCell<HashMap<&'a str, SymbolRange>>,
    symtab: std::cell::OnceCell<HashMap<&'a str, SymbolRange>>,
    debug_search: Option<DebugSearch>,
    debug: std::cell::OnceCell<Option<HashMap<String, SymbolRange>>>,
    functions: std::cell::OnceCell<Vec<Range<u64>>>,
}

impl<'a> MappedElf<'a> {
    /// `data` reads `source` (a second handle on the same open file).
    pub(crate) fn new(
        path: &'a str,
        source: &'a File,
        data: &'a ReadCache<File>,
        debug_search: Option<DebugSearch>,
    ) -> Option<Self> {
        let file = object::File::parse(data).ok()?;
        Some(MappedElf {
            path,
            source,
            data,
            file,
            dynsym: std::cell::OnceCell::new(),
            symtab: std::cell::OnceCell::new(),
            debug_search,
            debug: std::cell::OnceCell::new(),
            functions: std::cell::OnceCell::new(),
        })
    }

    /// The debug file's `.symtab`, found and read (with `pread`) on first use.
    fn debug_symbols(&self) -> Option<&HashMap<String, SymbolRange>> {
        self.debug
            .get_or_init(|| {
                use object::Object;
                let search = self.debug_search.as_ref()?;
                let refs = DebugRefs::of(&self.file);
                let found = find_debug_file(
                    &FsRoot::of_process(search.pid),
                    &search.path,
                    &refs,
                    search.identity,
                )?;
                let cache = ReadCache::new(found.file);
                let debug = object::File::parse(&cache).ok()?;
                let symbols: HashMap<String, SymbolRange> = index(debug.symbols())
                    .into_iter()
                    .map(|(name, range)| (name.to_owned(), range))
                    .collect();
                tracing::debug!(debug = %found.path.display(), symbols = symbols.len(), "symbols of the debug file read for detection");
                Some(symbols)
            })
            .as_ref()
    }
}

/// Whether a symbol is defined here: code and data, and thread-local variables (whose value
/// is their offset in the file's TLS block, for [`TlsTemplate`]), which `object` does not count
/// as definitions.
fn is_defined<'d: 'f, 'f, R: ReadRef<'d> + 'f>(s: &object::Symbol<'d, 'f, R>) -> bool {
    use object::ObjectSymbol;
    s.is_definition() || (s.kind() == object::SymbolKind::Tls && !s.is_undefined())
}

fn index<'d: 'f, 'f, R: ReadRef<'d> + 'f>(
    symbols: impl Iterator<Item = object::Symbol<'d, 'f, R>>,
) -> HashMap<&'d str, SymbolRange> {
    use object::ObjectSymbol;
    symbols
        .filter(is_defined)
        .filter_map(|s| {
            Some((
                s.name().ok()?,
                SymbolRange {
                    address: s.address(),
                    size: s.size(),
                },
            ))
        })
        .collect()
}

impl ElfFile for MappedElf<'_> {
    fn path(&self) -> &str {
        self.path
    }

    fn symbol(&self, name: &str) -> Option<SymbolRange> {
        use object::Object;
        if let Some(s) = self.exported_symbol(name) {
            return Some(s);
        }
        let symtab = self.symtab.get_or_init(|| index(self.file.symbols()));
        if let Some(s) = symtab.get(name) {
            return Some(*s);
        }
        self.debug_symbols()?.get(name).copied()
    }

    fn cfi_function(&self, vaddr: u64) -> Option<SymbolRange> {
        let functions = self.functions.get_or_init(|| {
            // The file again, through its own cache (the plug-in's reads stay in ours).
            ferroscope_unwind_native::function_ranges_file(self.source).unwrap_or_else(|e| {
                tracing::debug!(path = self.path, "no CFI function ranges: {e}");
                Vec::new()
            })
        });
        // The last range starting at or before vaddr (when .eh_frame and .debug_frame both
        // describe a function their ranges are equal, and deduplicated).
        let i = functions
            .partition_point(|r| r.start <= vaddr)
            .checked_sub(1)?;
        let r = &functions[i];
        (vaddr < r.end).then(|| SymbolRange {
            address: r.start,
            size: r.end - r.start,
        })
    }

    fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
        use object::Object;
        let dynsym = self
            .dynsym
            .get_or_init(|| index(self.file.dynamic_symbols()));
        dynsym.get(name).copied()
    }

    fn tls_template(&self) -> Option<TlsTemplate> {
        use object::read::elf::{FileHeader, ProgramHeader};
        use object::{Endianness, elf};
        let data = self.data;
        let header = elf::FileHeader64::<Endianness>::parse(data).ok()?;
        let endian = header.endian().ok()?;
        let tls = header
            .program_headers(endian, data)
            .ok()?
            .iter()
            .find(|p| p.p_type(endian) == elf::PT_TLS)?;
        Some(TlsTemplate {
            vaddr: tls.p_vaddr(endian),
            memsz: tls.p_memsz(endian),
            align: tls.p_align(endian),
        })
    }

    fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool {
        use object::read::elf::{FileHeader, ProgramHeader};
        use object::{Endianness, elf};
        let data = self.data;
        let Ok(header) = elf::FileHeader64::<Endianness>::parse(data) else {
            return false;
        };
        let Ok(endian) = header.endian() else {
            return false;
        };
        let Ok(segments) = header.program_headers(endian, data) else {
            return false;
        };
        let len = buf.len() as u64;
        for seg in segments.iter().filter(|p| p.p_type(endian) == elf::PT_LOAD) {
            let start = seg.p_vaddr(endian);
            let Some(off) = vaddr.checked_sub(start) else {
                continue;
            };
            if off
                .checked_add(len)
                .is_none_or(|end| end > seg.p_filesz(endian))
            {
                continue;
            }
            let Some(at) = seg.p_offset(endian).checked_add(off) else {
                continue;
            };
            // Read the few bytes asked for, not the segment (ReadCache keeps what it read).
            if let Ok(bytes) = data.read_bytes_at(at, len) {
                buf.copy_from_slice(bytes);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSymbol};

    /// A runtime locating a thread-local variable needs its symbol: glibc exports `errno` as
    /// one (offset 0x10 in libc's TLS block on glibc 2.36).
    #[test]
    fn thread_local_symbols_are_found_with_their_offset_in_the_tls_block() {
        let path = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let (Ok(source), Ok(file)) = (File::open(path), File::open(path)) else {
            ferroscope_test_harness::skip(format!("{path} is missing"));
            return;
        };
        let data = ReadCache::new(file);
        let elf = MappedElf::new(path, &source, &data, None).expect("an ELF file");
        let errno = elf.exported_symbol("errno").expect("errno is exported");
        let tls = elf.tls_template().expect("libc has a TLS segment");
        assert!(
            errno.address < tls.memsz,
            "{errno:?} is an offset in {tls:?}"
        );
        assert_eq!(errno.size, 4);
        assert!(elf.exported_symbol("no_such_symbol").is_none());
    }

    #[test]
    fn cfi_functions_cover_the_functions_of_this_binary() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let path = exe.to_string_lossy().into_owned();
        let source = File::open(&exe).unwrap();
        let cache = ReadCache::new(File::open(&exe).unwrap());
        let elf = MappedElf::new(&path, &source, &cache, None).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let mut checked = 0;
        for s in file
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 64)
        {
            let f = elf
                .cfi_function(s.address() + s.size() / 2)
                .unwrap_or_else(|| panic!("no CFI function covers {:?}", s.name()));
            assert_eq!(
                (f.address, f.size),
                (s.address(), s.size()),
                "{:?}",
                s.name()
            );
            checked += 1;
            if checked == 200 {
                break;
            }
        }
        assert_eq!(checked, 200);
        assert!(elf.cfi_function(0).is_none());
        // No debug search: a name in no table is not found (and nothing is opened).
        assert!(elf.symbol("no such symbol anywhere").is_none());
    }
}
