//! The little of ELF this crate needs: named sections (decompressed when needed, with a
//! size cap) and reading code bytes by virtual address.
//!
//! The bytes come through [`ReadRef`]: a slice (a mapped file, a test buffer) or an
//! [`object::ReadCache`] over an open file, which reads only the headers and the sections
//! asked for, with `pread`, so a file truncated while it is read gives an error instead of
//! a `SIGBUS`.

use std::borrow::Cow;

use object::elf::{EM_X86_64, PT_LOAD, SHF_ALLOC, SHT_NOBITS};
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader};
use object::{LittleEndian, Object, ObjectSection, ReadRef};

use crate::Error;

/// A compressed section may not claim more than this many bytes per compressed byte
/// (zlib's best ratio is about 1032:1) nor more than `MAX_DECOMPRESSED` in total.
const MAX_RATIO: u64 = 1100;
const MAX_DECOMPRESSED: u64 = 1 << 30;

/// One section's bytes and where it is loaded.
pub(crate) struct SectionData<'a> {
    pub address: u64,
    pub data: Cow<'a, [u8]>,
}

/// A parsed x86-64 ELF file.
pub(crate) struct Elf<'a, R: ReadRef<'a> = &'a [u8]> {
    file: ElfFile64<'a, LittleEndian, R>,
    data: R,
}

impl<'a, R: ReadRef<'a>> Elf<'a, R> {
    pub fn parse(data: R) -> Result<Self, Error> {
        match object::FileKind::parse(data) {
            Ok(object::FileKind::Elf64) => {}
            Ok(object::FileKind::Elf32) => {
                let machine = data
                    .read_bytes_at(18, 2)
                    .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                return Err(Error::UnsupportedArchitecture {
                    machine,
                    class: "32-bit",
                });
            }
            Ok(other) => {
                return Err(Error::Elf {
                    reason: format!("not an ELF file but {other:?}"),
                });
            }
            Err(e) => {
                return Err(Error::Elf {
                    reason: e.to_string(),
                });
            }
        }
        let file = ElfFile64::<LittleEndian, R>::parse(data).map_err(|e| Error::Elf {
            reason: format!("{e} (big-endian and malformed headers are rejected)"),
        })?;
        let machine = file.elf_header().e_machine(LittleEndian);
        if machine != EM_X86_64 {
            return Err(Error::UnsupportedArchitecture {
                machine: machine.0,
                class: "64-bit",
            });
        }
        Ok(Elf { file, data })
    }

    /// A section's bytes by name; `None` when absent, `SHT_NOBITS`, or undecodable (logged).
    pub fn section(&self, name: &str) -> Option<SectionData<'a>> {
        let section = self.file.section_by_name(name)?;
        if section.elf_section_header().sh_type(LittleEndian) == SHT_NOBITS {
            return None;
        }
        let compressed = match section.compressed_data() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(section = name, error = %e, "cannot read section, ignoring it");
                return None;
            }
        };
        let limit = (compressed.data.len() as u64)
            .saturating_mul(MAX_RATIO)
            .min(MAX_DECOMPRESSED);
        if compressed.format != object::CompressionFormat::None
            && compressed.uncompressed_size > limit
        {
            tracing::warn!(
                section = name,
                claimed = compressed.uncompressed_size,
                "compressed section claims an implausible size, ignoring it"
            );
            return None;
        }
        match compressed.decompress() {
            Ok(data) => Some(SectionData {
                address: section.address(),
                data,
            }),
            Err(e) => {
                tracing::warn!(section = name, error = %e, "cannot decompress section, ignoring it");
                None
            }
        }
    }

    /// Address of a section, if present.
    pub fn section_address(&self, name: &str) -> Option<u64> {
        self.file.section_by_name(name).map(|s| s.address())
    }

    /// `len` bytes of file-backed, allocated data at virtual address `vaddr`.
    pub fn bytes_at(&self, vaddr: u64, len: usize) -> Option<&'a [u8]> {
        let endian = LittleEndian;
        for segment in self.file.elf_program_headers() {
            if segment.p_type(endian) != PT_LOAD {
                continue;
            }
            let start = segment.p_vaddr(endian);
            let filesz = segment.p_filesz(endian);
            let offset = vaddr.checked_sub(start)?;
            if offset.checked_add(len as u64)? > filesz {
                continue;
            }
            let file_off = segment.p_offset(endian).checked_add(offset)?;
            return self.data.read_bytes_at(file_off, len as u64).ok();
        }
        // Files without program headers (relocatable objects, some debug files): sections.
        for section in self.file.elf_section_table().iter() {
            if section.sh_flags(endian).0 & SHF_ALLOC.0 == 0
                || section.sh_type(endian) == SHT_NOBITS
            {
                continue;
            }
            let start = section.sh_addr(endian);
            let Some(offset) = vaddr.checked_sub(start) else {
                continue;
            };
            if offset.checked_add(len as u64)? > section.sh_size(endian) {
                continue;
            }
            let file_off = section.sh_offset(endian).checked_add(offset)?;
            return self.data.read_bytes_at(file_off, len as u64).ok();
        }
        None
    }
}
