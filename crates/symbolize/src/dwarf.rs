//! DWARF line tables and inline frames, through the `addr2line` crate.
//!
//! Sections are read in place from the memory-mapped file (no copy); compressed sections
//! (`SHF_COMPRESSED` with zlib or zstd, or the older `.zdebug_*`) are decompressed once into
//! owned buffers. `addr2line` parses compilation units lazily, on the first address that falls
//! in each, so loading a file is cheap and a large binary costs only what its hot units need.

use std::borrow::Cow;
use std::ops::{Deref, Range};
use std::sync::Arc;

use object::{Object, ObjectSection};

use crate::Error;

/// The bytes behind a DWARF section: a range of a shared map, or a decompressed buffer.
#[derive(Debug, Clone)]
pub(crate) struct SectionBytes {
    backing: Backing,
    range: Range<usize>,
}

#[derive(Debug, Clone)]
enum Backing {
    Map(Arc<memmap2::Mmap>),
    Owned(Arc<[u8]>),
    Empty,
}

impl Deref for SectionBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let all: &[u8] = match &self.backing {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
            Backing::Empty => &[],
        };
        all.get(self.range.clone()).unwrap_or(&[])
    }
}

// SAFETY: `deref` returns a slice of a buffer owned by an `Arc` (a read-only memory map or an
// immutable boxed slice) that is never mutated nor moved while any clone is alive, so the
// address is stable across moves and clones of `SectionBytes`.
unsafe impl gimli::StableDeref for SectionBytes {}
// SAFETY: clones share the same `Arc` and range, so they deref to the same address.
unsafe impl gimli::CloneStableDeref for SectionBytes {}

type Reader = gimli::EndianReader<gimli::RunTimeEndian, SectionBytes>;

/// Largest decompressed DWARF section accepted.
const MAX_SECTION_LEN: u64 = 4 << 30;

/// The section's bytes, decompressed if needed, refusing absurd declared sizes (a hostile
/// header could otherwise ask for any allocation): zlib and zstd cannot expand beyond about
/// 1:1032, so a larger ratio is a lie.
fn checked_uncompressed<'data>(s: &object::Section<'data, '_>) -> Result<Cow<'data, [u8]>, String> {
    let c = s.compressed_data().map_err(|e| e.to_string())?;
    if c.format != object::CompressionFormat::None {
        let limit = (c.data.len() as u64)
            .saturating_mul(1100)
            .saturating_add(4096)
            .min(MAX_SECTION_LEN);
        if c.uncompressed_size > limit {
            return Err(format!(
                "declared uncompressed size {} is impossible for {} compressed bytes",
                c.uncompressed_size,
                c.data.len()
            ));
        }
    }
    c.decompress().map_err(|e| e.to_string())
}

/// One frame found by a DWARF lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DwarfFrame {
    /// The function's linkage name if DWARF has one (mangled), else its plain name.
    pub name: Option<String>,
    /// The source file.
    pub file: Option<String>,
    /// The line.
    pub line: Option<u32>,
}

/// The DWARF of one file, ready for lookups.
pub struct Dwarf {
    ctx: addr2line::Context<Reader>,
    /// Bytes of decompressed sections (memory accounting).
    owned_bytes: usize,
}

impl std::fmt::Debug for Dwarf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dwarf")
            .field("owned_bytes", &self.owned_bytes)
            .finish_non_exhaustive()
    }
}

impl Dwarf {
    /// Loads the DWARF sections of the ELF object in `map`. Fails when the object cannot be
    /// parsed or has no `.debug_info`.
    pub fn load(map: Arc<memmap2::Mmap>) -> Result<Dwarf, Error> {
        let invalid = |reason: String| Error::InvalidDwarf { reason };
        let file = object::File::parse(&**map).map_err(|e| invalid(e.to_string()))?;
        if !crate::debuglink::has_dwarf(&file) {
            return Err(invalid("the file has no .debug_info section".to_owned()));
        }
        let endian = if file.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let base = map.as_ptr() as usize;
        let mut owned_bytes = 0usize;
        let mut load = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
            // Sections that line and inline-frame lookups never read (variable locations,
            // macros, type units) are not loaded: decompressing them would only cost memory
            // (1.4 MiB of location lists for glibc's debug file).
            let unused = matches!(
                id,
                gimli::SectionId::DebugLoc
                    | gimli::SectionId::DebugLocLists
                    | gimli::SectionId::DebugMacinfo
                    | gimli::SectionId::DebugMacro
                    | gimli::SectionId::DebugTypes
            );
            let section = if unused {
                None
            } else {
                file.section_by_name(id.name())
            };
            let bytes = match section.map(|s| checked_uncompressed(&s)) {
                Some(Ok(Cow::Borrowed(b))) => {
                    let start = (b.as_ptr() as usize).wrapping_sub(base);
                    SectionBytes {
                        backing: Backing::Map(map.clone()),
                        range: start..start + b.len(),
                    }
                }
                Some(Ok(Cow::Owned(v))) => {
                    owned_bytes += v.len();
                    let len = v.len();
                    SectionBytes {
                        backing: Backing::Owned(v.into()),
                        range: 0..len,
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(section = id.name(), error = %e, "cannot decompress DWARF section");
                    SectionBytes {
                        backing: Backing::Empty,
                        range: 0..0,
                    }
                }
                None => SectionBytes {
                    backing: Backing::Empty,
                    range: 0..0,
                },
            };
            Ok(gimli::EndianReader::new(bytes, endian))
        };
        let dwarf = gimli::Dwarf::load(&mut load).map_err(|e| invalid(e.to_string()))?;
        let ctx = addr2line::Context::from_dwarf(dwarf).map_err(|e| invalid(e.to_string()))?;
        Ok(Dwarf { ctx, owned_bytes })
    }

    /// Bytes this object owns beyond the shared map (decompressed sections).
    pub fn owned_bytes(&self) -> usize {
        self.owned_bytes
    }

    /// The frames at `vaddr`, innermost (most deeply inlined) first; the last is the function
    /// that physically contains the address. Empty when DWARF does not cover the address.
    pub fn frames(&self, vaddr: u64) -> Vec<DwarfFrame> {
        let mut out = Vec::new();
        self.for_each_frame(vaddr, |name, file, line| {
            out.push(DwarfFrame {
                name: name.map(|n| String::from_utf8_lossy(n).into_owned()),
                file: file.map(str::to_owned),
                line,
            });
        });
        out
    }

    /// Calls `each(name, file, line)` for the frames at `vaddr`, in the order of
    /// [`Dwarf::frames`], without copying anything. `name` is the raw bytes of the linkage
    /// (else plain) name, borrowed from the DWARF sections: for as long as this `Dwarf`
    /// lives, the same bytes at the same address are the same name, so callers may key a
    /// cache on the slice's address and length.
    pub(crate) fn for_each_frame(
        &self,
        vaddr: u64,
        mut each: impl FnMut(Option<&[u8]>, Option<&str>, Option<u32>),
    ) {
        if vaddr == u64::MAX {
            // addr2line probes `[vaddr, vaddr + 1)`, which would overflow.
            return;
        }
        let mut iter = match self.ctx.find_frames(vaddr).skip_all_loads() {
            Ok(it) => it,
            Err(e) => {
                tracing::trace!(vaddr, error = %e, "DWARF lookup failed");
                return;
            }
        };
        // Bounded: malformed DWARF could describe absurd inline depths.
        for _ in 0..MAX_FRAMES {
            match iter.next() {
                Ok(Some(f)) => {
                    let name = f.function.as_ref().map(|n| n.name.bytes());
                    let (file, line) = match &f.location {
                        Some(l) => (l.file, l.line),
                        None => (None, None),
                    };
                    each(name, file, line);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::trace!(vaddr, error = %e, "malformed DWARF frame");
                    break;
                }
            }
        }
    }
}

/// Most frames reported for one address.
const MAX_FRAMES: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_dwarf_loads_and_extreme_addresses_do_not_panic() {
        let exe = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        // SAFETY: read-only map of our own executable, which nothing rewrites.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&exe) }.unwrap());
        let d = Dwarf::load(map).expect("test binaries are built with DWARF");
        assert!(
            d.frames(u64::MAX).is_empty(),
            "regression: addr2line probe overflow"
        );
        let _ = d.frames(0); // discarded functions may claim address 0
        let here = own_dwarf_loads_and_extreme_addresses_do_not_panic as *const () as usize;
        let _ = d.frames(here as u64);
    }
}
