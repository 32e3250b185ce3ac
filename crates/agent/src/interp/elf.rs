//! ELF files as plug-ins see them during detection.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;

use ferroscope_symbolize::debuglink::{DebugRefs, FoundDebugFile, find_debug_file};
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

/// An ELF file mapped in memory, as plug-ins see it: symbols looked up by name (an index of
/// `.dynsym` built on first use, then `.symtab` only when a name is not in `.dynsym`, then
/// the separate debug file's `.symtab`, looked for the first time a name is in neither), and
/// its CFI's function ranges, listed on first use.
pub(crate) struct MappedElf<'a> {
    path: &'a str,
    data: &'a [u8],
    file: object::File<'a>,
    dynsym: std::cell::OnceCell<HashMap<&'a str, SymbolRange>>,
    symtab: std::cell::OnceCell<HashMap<&'a str, SymbolRange>>,
    debug_search: Option<DebugSearch>,
    debug: std::cell::OnceCell<Option<DebugSymbols>>,
    functions: std::cell::OnceCell<Vec<Range<u64>>>,
}

/// The `.symtab` of a separate debug file.
struct DebugSymbols {
    symbols: HashMap<String, SymbolRange>,
}

impl DebugSymbols {
    fn load(found: &FoundDebugFile) -> Option<DebugSymbols> {
        use object::Object;
        let file = object::File::parse(&*found.map).ok()?;
        let symbols = index(file.symbols())
            .into_iter()
            .map(|(name, range)| (name.to_owned(), range))
            .collect();
        tracing::debug!(debug = %found.path.display(), "symbols of the debug file read for detection");
        Some(DebugSymbols { symbols })
    }
}

impl<'a> MappedElf<'a> {
    pub(crate) fn new(
        path: &'a str,
        data: &'a [u8],
        debug_search: Option<DebugSearch>,
    ) -> Option<Self> {
        let file = object::File::parse(data).ok()?;
        Some(MappedElf {
            path,
            data,
            file,
            dynsym: std::cell::OnceCell::new(),
            symtab: std::cell::OnceCell::new(),
            debug_search,
            debug: std::cell::OnceCell::new(),
            functions: std::cell::OnceCell::new(),
        })
    }

    fn debug_symbols(&self) -> Option<&DebugSymbols> {
        self.debug
            .get_or_init(|| {
                let search = self.debug_search.as_ref()?;
                let refs = DebugRefs::parse(self.data)?;
                let found = find_debug_file(
                    &FsRoot::of_process(search.pid),
                    &search.path,
                    &refs,
                    search.identity,
                )?;
                DebugSymbols::load(&found)
            })
            .as_ref()
    }
}

fn index<'d: 'f, 'f>(
    symbols: impl Iterator<Item = object::Symbol<'d, 'f>>,
) -> HashMap<&'d str, SymbolRange> {
    use object::ObjectSymbol;
    symbols
        .filter(|s| s.is_definition())
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
        self.debug_symbols()?.symbols.get(name).copied()
    }

    fn cfi_function(&self, vaddr: u64) -> Option<SymbolRange> {
        let functions = self.functions.get_or_init(|| {
            ferroscope_unwind_native::function_ranges(self.data).unwrap_or_else(|e| {
                tracing::debug!(path = self.path, "no CFI function ranges: {e}");
                Vec::new()
            })
        });
        // The last range starting at or before vaddr; ranges of one file do not overlap
        // (two sources describing one function give equal ranges, deduplicated).
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
        use object::{Object, ObjectSegment};
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

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSymbol};

    #[test]
    fn cfi_functions_cover_the_functions_of_this_binary() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let path = exe.to_string_lossy().into_owned();
        let elf = MappedElf::new(&path, &data, None).unwrap();
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
