//! Function symbols of ELF files.
//!
//! [`ElfSymbols`] is built once per file and keeps only what lookups need: a sorted table of
//! `(start, size, name id)`, the interned names, the GNU build ID and the `PT_LOAD` program
//! headers. The file's bytes are not retained.
//!
//! The input is untrusted (any file a profiled process maps): parsing goes through the
//! `object` crate's bounds-checked readers and never panics; a malformed file yields
//! [`Error::InvalidElf`].

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use object::{
    BinaryFormat, Object, ObjectSection, ObjectSegment, ObjectSymbol, SegmentFlags, SymbolKind,
    SymbolSection,
};

use crate::Error;

/// How far below a segment's file offset a mapping's (page-aligned) offset may start and still
/// belong to that segment: the largest page size in use (64 KiB on some arm64 kernels).
const MAX_PAGE_SIZE: u64 = 64 * 1024;

/// How many earlier symbols a lookup inspects for one that encloses the address (nested or
/// overlapping sized symbols).
const NESTED_SCAN: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Sym {
    start: u64,
    /// Effective size: the symbol's own size, or for zero-size symbols the distance to the
    /// next symbol (or to the end of its section).
    size: u64,
    name: u32,
}

#[derive(Debug, Clone, Copy)]
struct Load {
    offset: u64,
    filesz: u64,
    vaddr: u64,
    executable: bool,
}

/// The function symbols and load layout of one ELF file.
#[derive(Debug, Clone, Default)]
pub struct ElfSymbols {
    syms: Vec<Sym>,
    /// `(offset, len)` of each interned name in `names`.
    name_spans: Vec<(u32, u32)>,
    names: String,
    build_id: Option<Box<[u8]>>,
    loads: Vec<Load>,
}

/// A symbol before deduplication.
struct Candidate<'data> {
    start: u64,
    size: u64,
    section_end: Option<u64>,
    name: &'data [u8],
    /// Lower is better: sized, from `.symtab`, global binding.
    preference: (bool, bool, u8),
}

impl ElfSymbols {
    /// Parses the symbol tables (`.symtab`, then `.dynsym`; `.symtab` wins where both name
    /// an address), the build ID and the program headers of an ELF object.
    ///
    /// Keeps function symbols (`STT_FUNC` and `STT_GNU_IFUNC`) defined in a section. Where
    /// several names share an address, the most readable is kept (sized, global, fewest
    /// leading underscores, shortest). Never panics.
    pub fn parse(data: &[u8]) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidElf { reason };
        let file = object::File::parse(data).map_err(|e| invalid(e.to_string()))?;
        Self::from_object(&file)
    }

    /// Like [`ElfSymbols::parse`] for an already parsed object.
    pub(crate) fn from_object(file: &object::File<'_>) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidElf { reason };
        if file.format() != BinaryFormat::Elf {
            return Err(invalid(format!(
                "it is a {:?} object, not ELF",
                file.format()
            )));
        }

        let mut cands = Vec::new();
        collect(file, file.symbols(), true, &mut cands);
        collect(file, file.dynamic_symbols(), false, &mut cands);
        cands.sort_by(|a, b| {
            a.start
                .cmp(&b.start)
                .then(a.preference.cmp(&b.preference))
                .then_with(|| name_rank_bytes(a.name).cmp(&name_rank_bytes(b.name)))
        });
        cands.dedup_by_key(|c| c.start);

        let mut out = ElfSymbols::default();
        let mut interned: HashMap<&[u8], u32> = HashMap::new();
        out.syms.reserve_exact(cands.len());
        for (i, c) in cands.iter().enumerate() {
            let size = if c.size > 0 {
                c.size
            } else {
                let next = cands.get(i + 1).map(|n| n.start);
                let end = match (next, c.section_end) {
                    (Some(n), Some(e)) => n.min(e),
                    (Some(n), None) => n,
                    (None, Some(e)) => e,
                    (None, None) => c.start.saturating_add(1),
                };
                end.saturating_sub(c.start).max(1)
            };
            let Some(name) = out.intern(&mut interned, c.name) else {
                break;
            };
            out.syms.push(Sym {
                start: c.start,
                size,
                name,
            });
        }

        out.build_id = match file.build_id() {
            Ok(id) => id.map(Box::from),
            Err(e) => {
                tracing::debug!(error = %e, "ignoring malformed build ID note");
                None
            }
        };
        out.loads = file
            .segments()
            .map(|s| {
                let (offset, filesz) = s.file_range();
                let executable = match s.flags() {
                    SegmentFlags::Elf { p_flags, .. } => p_flags.0 & object::elf::PF_X.0 != 0,
                    _ => false,
                };
                Load {
                    offset,
                    filesz,
                    vaddr: s.address(),
                    executable,
                }
            })
            .collect();
        out.names.shrink_to_fit();
        Ok(out)
    }

    /// Memory-maps and parses the file at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|e| Error::from_io(path.to_owned(), e))?;
        Self::from_file(&file, path)
    }

    /// Memory-maps and parses an open file; `path` is only used in errors.
    pub(crate) fn from_file(file: &File, path: &Path) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidElfFile {
            path: path.to_owned(),
            reason,
        };
        let len = file
            .metadata()
            .map_err(|e| Error::from_io(path.to_owned(), e))?
            .len();
        if len == 0 {
            return Err(invalid("the file is empty".to_owned()));
        }
        // SAFETY: the map is read-only and private, and only read through the returned
        // slice while `map` is alive. Another process may still truncate or rewrite the file
        // while it is mapped; truncation can raise SIGBUS. Profiled binaries and libraries
        // are not rewritten in place in practice (package managers replace them by rename),
        // and reading whole files instead would cost far more memory for large binaries.
        let map =
            unsafe { memmap2::Mmap::map(file) }.map_err(|e| Error::from_io(path.to_owned(), e))?;
        Self::parse(&map).map_err(|e| match e {
            Error::InvalidElf { reason } => invalid(reason),
            other => other,
        })
    }

    fn intern<'data>(
        &mut self,
        interned: &mut HashMap<&'data [u8], u32>,
        name: &'data [u8],
    ) -> Option<u32> {
        if let Some(&id) = interned.get(name) {
            return Some(id);
        }
        let id = u32::try_from(self.name_spans.len()).ok()?;
        let off = u32::try_from(self.names.len()).ok()?;
        self.names.push_str(&String::from_utf8_lossy(name));
        let len = u32::try_from(self.names.len() - off as usize).ok()?;
        self.name_spans.push((off, len));
        interned.insert(name, id);
        Some(id)
    }

    fn name(&self, id: u32) -> &str {
        let Some(&(off, len)) = self.name_spans.get(id as usize) else {
            return "";
        };
        self.names
            .get(off as usize..off as usize + len as usize)
            .unwrap_or("")
    }

    /// The GNU build ID, if the file has a `NT_GNU_BUILD_ID` note.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// The build ID as lowercase hex.
    pub fn build_id_hex(&self) -> Option<String> {
        self.build_id
            .as_deref()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The function containing virtual address `vaddr` and the offset of `vaddr` into it.
    pub fn lookup(&self, vaddr: u64) -> Option<(&str, u64)> {
        let i = self.syms.partition_point(|s| s.start <= vaddr);
        self.syms[..i]
            .iter()
            .rev()
            .take(NESTED_SCAN)
            .find(|s| vaddr - s.start < s.size)
            .map(|s| (self.name(s.name), vaddr - s.start))
    }

    /// Translates an offset in the file to the virtual address it is loaded at, using the
    /// `PT_LOAD` program headers: `vaddr = off - p_offset + p_vaddr` for the segment that
    /// contains `off`.
    ///
    /// Mapping offsets are page-aligned, so an offset up to one page below a segment's
    /// `p_offset` is attributed to that segment too (when no segment contains it). Where
    /// segments share a page, prefer [`ElfSymbols::mapping_offset_to_vaddr`], which uses the
    /// mapping's permissions to pick the right one.
    pub fn file_offset_to_vaddr(&self, file_offset: u64) -> Option<u64> {
        self.translate(file_offset, None)
    }

    /// Like [`ElfSymbols::file_offset_to_vaddr`] for the start offset of a process mapping,
    /// preferring segments whose execute permission matches the mapping's.
    ///
    /// Linkers such as lld let a read-only segment and the executable segment after it share
    /// a file page; the executable mapping then starts at an offset that the read-only
    /// segment contains, but its addresses belong to the executable segment.
    pub fn mapping_offset_to_vaddr(&self, file_offset: u64, executable: bool) -> Option<u64> {
        self.translate(file_offset, Some(executable))
    }

    fn translate(&self, off: u64, executable: Option<bool>) -> Option<u64> {
        // Rank candidates: permissions match, then containing before starting just after.
        let best = self
            .loads
            .iter()
            .filter_map(|l| {
                let contains = l.offset <= off && off - l.offset < l.filesz;
                let just_after = l.offset > off && l.offset - off < MAX_PAGE_SIZE;
                if !contains && !just_after {
                    return None;
                }
                let perm_mismatch = executable.is_some_and(|x| x != l.executable);
                Some(((perm_mismatch, !contains, l.offset), l))
            })
            .min_by_key(|(rank, _)| *rank)?
            .1;
        if best.offset <= off {
            best.vaddr.checked_add(off - best.offset)
        } else {
            best.vaddr.checked_sub(best.offset - off)
        }
    }

    /// Approximate heap bytes used (for cache accounting).
    pub fn approx_bytes(&self) -> usize {
        self.syms.len() * std::mem::size_of::<Sym>()
            + self.name_spans.len() * 8
            + self.names.len()
            + self.loads.len() * std::mem::size_of::<Load>()
            + 64
    }

    /// Serializes the table (for the on-disk cache). The format is private to this crate and
    /// versioned by the cache.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.approx_bytes());
        let put = |out: &mut Vec<u8>, v: u64| out.extend(v.to_le_bytes());
        put(&mut out, self.syms.len() as u64);
        for s in &self.syms {
            put(&mut out, s.start);
            put(&mut out, s.size);
            put(&mut out, u64::from(s.name));
        }
        put(&mut out, self.name_spans.len() as u64);
        for &(o, l) in &self.name_spans {
            put(&mut out, u64::from(o) | (u64::from(l) << 32));
        }
        put(&mut out, self.names.len() as u64);
        out.extend(self.names.as_bytes());
        match &self.build_id {
            Some(id) => {
                put(&mut out, id.len() as u64);
                out.extend(id.iter());
                out.resize(out.len() + (8 - id.len() % 8) % 8, 0);
            }
            None => put(&mut out, u64::MAX),
        }
        put(&mut out, self.loads.len() as u64);
        for l in &self.loads {
            put(&mut out, l.offset);
            put(&mut out, l.filesz);
            put(&mut out, l.vaddr);
            put(&mut out, u64::from(l.executable));
        }
        out
    }

    /// The inverse of [`ElfSymbols::to_bytes`]; `None` for anything malformed. Never panics.
    pub(crate) fn from_bytes(data: &[u8]) -> Option<Self> {
        let mut r = data;
        let mut get = || -> Option<u64> {
            let (head, rest) = r.split_first_chunk::<8>()?;
            r = rest;
            Some(u64::from_le_bytes(*head))
        };
        let count = |n: u64, each: usize, left: usize| -> Option<usize> {
            let n = usize::try_from(n).ok()?;
            (n.checked_mul(each)? <= left).then_some(n)
        };
        let mut out = ElfSymbols::default();
        let n = count(get()?, 24, data.len())?;
        for _ in 0..n {
            let (start, size, name) = (get()?, get()?, get()?);
            out.syms.push(Sym {
                start,
                size: size.max(1),
                name: u32::try_from(name).ok()?,
            });
        }
        let n = count(get()?, 8, data.len())?;
        for _ in 0..n {
            let v = get()?;
            out.name_spans.push((v as u32, (v >> 32) as u32));
        }
        let n = count(get()?, 1, data.len())?;
        let consumed = data.len() - r.len();
        let names = data.get(consumed..consumed.checked_add(n)?)?;
        out.names = String::from_utf8(names.to_vec()).ok()?;
        r = &data[consumed + n..];
        let mut get = || -> Option<u64> {
            let (head, rest) = r.split_first_chunk::<8>()?;
            r = rest;
            Some(u64::from_le_bytes(*head))
        };
        let id_len = get()?;
        if id_len != u64::MAX {
            let n = usize::try_from(id_len).ok().filter(|&n| n <= 256)?;
            let mut id = Vec::with_capacity(n);
            for _ in 0..n.div_ceil(8) {
                id.extend(get()?.to_le_bytes());
            }
            id.truncate(n);
            out.build_id = Some(id.into());
        }
        let n = get()?;
        let n = usize::try_from(n).ok().filter(|&n| n <= 4096)?;
        for _ in 0..n {
            out.loads.push(Load {
                offset: get()?,
                filesz: get()?,
                vaddr: get()?,
                executable: get()? != 0,
            });
        }
        // Lookups rely on sorted starts.
        if !out.syms.windows(2).all(|w| w[0].start <= w[1].start) {
            return None;
        }
        Some(out)
    }

    /// Whether the file has no function symbols at all (it is stripped).
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// Number of function symbols kept (after merging aliases).
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// All symbols in address order, as `(start, size, name)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, &str)> {
        self.syms
            .iter()
            .map(|s| (s.start, s.size, self.name(s.name)))
    }
}

fn collect<'data, 'file>(
    file: &'file object::File<'data>,
    symbols: impl Iterator<Item = object::Symbol<'data, 'file>>,
    from_symtab: bool,
    out: &mut Vec<Candidate<'data>>,
) {
    for sym in symbols {
        if sym.kind() != SymbolKind::Text {
            continue;
        }
        let SymbolSection::Section(index) = sym.section() else {
            continue;
        };
        let Ok(name) = sym.name_bytes() else { continue };
        if name.is_empty() {
            continue;
        }
        let section_end = file
            .section_by_index(index)
            .ok()
            .and_then(|s| s.address().checked_add(s.size()))
            .filter(|&end| end > sym.address());
        let binding = if sym.is_global() {
            0
        } else if sym.is_weak() {
            1
        } else {
            2
        };
        out.push(Candidate {
            start: sym.address(),
            size: sym.size(),
            section_end,
            name,
            preference: (sym.size() == 0, !from_symtab, binding),
        });
    }
}

/// Orders aliases: fewer leading underscores first, then shorter, then bytewise.
fn name_rank_bytes(name: &[u8]) -> (usize, usize, &[u8]) {
    (
        name.iter().take_while(|&&b| b == b'_').count(),
        name.len(),
        name,
    )
}
