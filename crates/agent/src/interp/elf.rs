//! ELF files as plug-ins see them during detection.
//!
//! A file is read with `pread` through [`object::ReadCache`], never mapped: only the headers
//! and the sections a plug-in asks about are read, and a file that its owner truncates
//! meanwhile gives "not found" answers rather than a `SIGBUS`.

use std::collections::HashMap;
use std::fs::File;

use object::{ReadCache, ReadRef};

use ferroscope_unwind_api::{ElfFile, SymbolRange, TlsTemplate};

/// An ELF file as plug-ins see it: symbols looked up by name (an index of `.dynsym` built
/// on first use, then `.symtab` only when a name is not in `.dynsym`).
pub(crate) struct MappedElf<'a> {
    path: &'a str,
    data: &'a ReadCache<File>,
    file: object::File<'a, &'a ReadCache<File>>,
    dynsym: std::cell::OnceCell<HashMap<&'a str, SymbolRange>>,
    symtab: std::cell::OnceCell<HashMap<&'a str, SymbolRange>>,
}

impl<'a> MappedElf<'a> {
    pub(crate) fn new(path: &'a str, data: &'a ReadCache<File>) -> Option<Self> {
        let file = object::File::parse(data).ok()?;
        Some(MappedElf {
            path,
            data,
            file,
            dynsym: std::cell::OnceCell::new(),
            symtab: std::cell::OnceCell::new(),
        })
    }
}

fn index<'d: 'f, 'f, R: ReadRef<'d> + 'f>(
    symbols: impl Iterator<Item = object::Symbol<'d, 'f, R>>,
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
