//! PE/COFF images as the runtime maps them (ECMA-335 II.25): the headers, the section table,
//! the CLI header and where its metadata and ReadyToRun header are, in one of two layouts.
//!
//! CoreCLR maps an assembly *flat* (the file as it is: an address is base + file offset) to
//! read its metadata, and a ReadyToRun image a second time *mapped* (each section at its
//! RVA: an address is base + RVA) to run its code. The headers are parsed from bytes (fuzzed);
//! [`Image`] reads the rest through [`ProcessMemory`].

use ferroscope_unwind_api::ProcessMemory;

use crate::Error;
use crate::metadata::{le_u16, le_u32};

/// Bytes read for the headers (DOS, PE, optional header, sections).
pub const HEADER_BYTES: usize = 4096;

/// How an image lies in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// As the file: address = base + file offset.
    Flat,
    /// Sections at their RVAs: address = base + RVA.
    Mapped,
}

/// A section header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// Its RVA.
    pub virtual_address: u32,
    /// Its size in memory.
    pub virtual_size: u32,
    /// Where it is in the file.
    pub raw_offset: u32,
    /// Its size in the file.
    pub raw_size: u32,
}

/// A data directory: RVA and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Directory {
    /// RVA.
    pub rva: u32,
    /// Size.
    pub size: u32,
}

/// What the PE headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    /// `IMAGE_FILE_HEADER.Machine` (0x8664 for x64 ReadyToRun code, 0x14c for IL-only; the
    /// runtime's own images XOR an OS value in).
    pub machine: u16,
    /// The image's size in memory.
    pub size_of_image: u32,
    /// The CLI header's directory (entry 14).
    pub cli: Directory,
    /// The sections.
    pub sections: Vec<Section>,
}

/// Parses the PE headers at the start of `b` (the first bytes of the image, either layout:
/// headers are at the same place in both).
pub fn parse_headers(b: &[u8]) -> Result<Headers, Error> {
    let bad = |why: &str| Error::format("PE headers", why);
    if b.get(0..2) != Some(b"MZ") {
        return Err(bad("no MZ signature"));
    }
    let pe = le_u32(b, 0x3c).ok_or_else(|| bad("truncated DOS header"))? as usize;
    if pe > HEADER_BYTES - 24 || b.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(bad("no PE signature"));
    }
    let coff = pe + 4;
    let machine = le_u16(b, coff).ok_or_else(|| bad("truncated"))?;
    let nsections = le_u16(b, coff + 2).ok_or_else(|| bad("truncated"))?;
    let opt_size = le_u16(b, coff + 16).ok_or_else(|| bad("truncated"))? as usize;
    let opt = coff + 20;
    let magic = le_u16(b, opt).ok_or_else(|| bad("truncated optional header"))?;
    // PE32 (IL-only images) or PE32+ (ReadyToRun x64 images).
    let (size_at, dirs_count_at, dirs_at) = match magic {
        0x10b => (opt + 56, opt + 92, opt + 96),
        0x20b => (opt + 56, opt + 108, opt + 112),
        _ => return Err(bad("unknown optional header magic")),
    };
    let size_of_image = le_u32(b, size_at).ok_or_else(|| bad("truncated"))?;
    let ndirs = le_u32(b, dirs_count_at).ok_or_else(|| bad("truncated"))?;
    if ndirs < 15 {
        return Err(bad("no CLI header directory"));
    }
    let cli = Directory {
        rva: le_u32(b, dirs_at + 14 * 8).ok_or_else(|| bad("truncated"))?,
        size: le_u32(b, dirs_at + 14 * 8 + 4).ok_or_else(|| bad("truncated"))?,
    };
    let mut sections = Vec::new();
    let first = opt + opt_size;
    for i in 0..usize::from(nsections.min(96)) {
        let s = first + 40 * i;
        let field = |o: usize| le_u32(b, s + o).ok_or_else(|| bad("truncated section table"));
        sections.push(Section {
            virtual_size: field(8)?,
            virtual_address: field(12)?,
            raw_size: field(16)?,
            raw_offset: field(20)?,
        });
    }
    Ok(Headers {
        machine,
        size_of_image,
        cli,
        sections,
    })
}

impl Headers {
    /// The file offset of `rva`, when a section holds it in the file.
    pub fn file_offset(&self, rva: u32) -> Option<u32> {
        self.sections.iter().find_map(|s| {
            let off = rva.checked_sub(s.virtual_address)?;
            (off < s.raw_size.max(s.virtual_size) && off < s.raw_size)
                .then(|| s.raw_offset.checked_add(off))
                .flatten()
        })
    }
}

/// The CLI header (II.25.3.3): what an assembly's runtime data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CliHeader {
    /// The metadata root.
    pub metadata: Directory,
    /// `COMIMAGE_FLAGS_*` (0x4: the image holds native code, ReadyToRun).
    pub flags: u32,
    /// The ReadyToRun header (`ManagedNativeHeader`).
    pub native_header: Directory,
}

/// Parses the 72-byte CLI header.
pub fn parse_cli(b: &[u8]) -> Result<CliHeader, Error> {
    let bad = || Error::format("CLI header", "truncated or too small");
    if le_u32(b, 0).ok_or_else(bad)? < 72 {
        return Err(bad());
    }
    let d = |at: usize| -> Result<Directory, Error> {
        Ok(Directory {
            rva: le_u32(b, at).ok_or_else(bad)?,
            size: le_u32(b, at + 4).ok_or_else(bad)?,
        })
    };
    Ok(CliHeader {
        metadata: d(8)?,
        flags: le_u32(b, 16).ok_or_else(bad)?,
        native_header: d(64)?,
    })
}

/// An image in a process's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Where it starts.
    pub base: u64,
    /// How it lies.
    pub layout: Layout,
    /// Its headers.
    pub headers: Headers,
    /// Its CLI header.
    pub cli: CliHeader,
}

/// Most bytes of one structure read from an image (CoreLib's metadata is about 8 MiB).
pub const MAX_READ: u32 = 64 << 20;

impl Image {
    /// The image at `base` in `layout`, checked: its metadata root must be where the CLI
    /// header says.
    pub fn read(mem: &dyn ProcessMemory, base: u64, layout: Layout) -> Result<Image, Error> {
        let mut head = vec![0u8; HEADER_BYTES];
        read_prefix(mem, base, &mut head)?;
        let headers = parse_headers(&head)?;
        let mut image = Image {
            base,
            layout,
            headers,
            cli: CliHeader::default(),
        };
        let cli = image.read_rva(mem, image.headers.cli.rva, 72)?;
        image.cli = parse_cli(&cli)?;
        let root = image.read_rva(mem, image.cli.metadata.rva, 4)?;
        if root != b"BSJB" {
            return Err(Error::format(
                "PE image",
                "no metadata root where its CLI header says (not this layout)",
            ));
        }
        Ok(image)
    }

    /// The image at `base`, in whichever layout its headers agree with.
    pub fn detect(mem: &dyn ProcessMemory, base: u64) -> Result<Image, Error> {
        Image::read(mem, base, Layout::Flat).or_else(|_| Image::read(mem, base, Layout::Mapped))
    }

    /// The process address of `rva`.
    pub fn address(&self, rva: u32) -> Option<u64> {
        match self.layout {
            Layout::Mapped => self.base.checked_add(u64::from(rva)),
            Layout::Flat => self
                .base
                .checked_add(u64::from(self.headers.file_offset(rva)?)),
        }
    }

    /// `len` bytes at `rva`.
    pub fn read_rva(&self, mem: &dyn ProcessMemory, rva: u32, len: u32) -> Result<Vec<u8>, Error> {
        if len > MAX_READ {
            return Err(Error::format("PE image", "a structure larger than 64 MiB"));
        }
        let at = self
            .address(rva)
            .ok_or_else(|| Error::format("PE image", "an RVA outside every section"))?;
        let mut b = vec![0u8; len as usize];
        mem.read_exact_at(at, &mut b)
            .map_err(Error::read("PE image data", at))?;
        Ok(b)
    }

    /// The metadata root's bytes.
    pub fn metadata(&self, mem: &dyn ProcessMemory) -> Result<Vec<u8>, Error> {
        self.read_rva(mem, self.cli.metadata.rva, self.cli.metadata.size)
    }
}

/// Reads as much of `buf` as is mapped from `addr` on (whole pages), zero-filling the rest;
/// fails when not even the first page is readable.
fn read_prefix(mem: &dyn ProcessMemory, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
    if mem.read_exact_at(addr, buf).is_ok() {
        return Ok(());
    }
    let first = (4096 - (addr % 4096) as usize).min(buf.len());
    mem.read_exact_at(addr, &mut buf[..first])
        .map_err(Error::read("PE headers", addr))?;
    buf[first..].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_headers_are_refused() {
        assert!(parse_headers(b"").is_err());
        assert!(parse_headers(b"MZ").is_err());
        let mut b = vec![0u8; 512];
        b[0..2].copy_from_slice(b"MZ");
        b[0x3c] = 0x80;
        assert!(parse_headers(&b).is_err());
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        assert!(parse_headers(&b).is_err(), "no optional header magic");
        assert!(parse_cli(&[0u8; 16]).is_err());
    }
}
