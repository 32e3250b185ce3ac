//! ELF files as plug-ins see them during detection.

use std::collections::HashMap;

use ferroscope_unwind_api::{ElfFile, SymbolRange};

/// An ELF file mapped in memory, as plug-ins see it: symbols looked up by name (an index of
/// `.dynsym` built on first use, then `.symtab` only when a name is not in `.dynsym`).
pub(crate) struct MappedElf<'a> {
    path: &'a str,
    file: object::File<'a>,
    dynsym: std::cell::OnceCell<HashMap<&'a str, SymbolRange>>,
    symtab: std::cell::OnceCell<HashMap<&'a str, SymbolRange>>,
}

impl<'a> MappedElf<'a> {
    pub(crate) fn new(path: &'a str, data: &'a [u8]) -> Option<Self> {
        let file = object::File::parse(data).ok()?;
        Some(MappedElf {
            path,
            file,
            dynsym: std::cell::OnceCell::new(),
            symtab: std::cell::OnceCell::new(),
        })
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
        symtab.get(name).copied()
    }

    fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
        use object::Object;
        let dynsym = self
            .dynsym
            .get_or_init(|| index(self.file.dynamic_symbols()));
        dynsym.get(name).copied()
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
