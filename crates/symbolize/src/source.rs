//! Everything known about one ELF file, built once per file identity and shared by every
//! process that maps it: its symbol tables, Go table, separate debug file and DWARF.
//!
//! Sources are tried in this order for a name: `.gopclntab` (Go), the separate debug file's
//! `.symtab`, the file's own `.symtab` then `.dynsym`, and `.gnu_debugdata` (MiniDebugInfo);
//! DWARF (from the debug file, else the file itself) then supplies file, line and inline
//! frames, and the source-level name of the function. The debug file and DWARF are loaded on
//! the first lookup that needs them, never at construction.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use object::{Object, ObjectSection};

use crate::Error;
use crate::debuglink::{DebugRefs, find_debug_file};
use crate::demangle::DemangleMode;
use crate::disk_cache::{DiskCache, Lookup};
use crate::dwarf::Dwarf;
use crate::elf::ElfSymbols;
use crate::gopclntab::GoTable;
use crate::memo::{AddrMemo, MemoFrame, NameCache, Resolved};
use crate::root::FsRoot;

/// Largest `.gnu_debugdata` decompressed size accepted.
const MAX_MINIDEBUG_LEN: usize = 256 << 20;

/// What the file-level lookup can use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SourceOptions {
    pub debug_files: bool,
    pub dwarf: bool,
}

/// Which source named a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameSource {
    Go,
    Dwarf,
    DebugSymtab,
    Symtab,
    MiniDebugInfo,
}

#[derive(Debug)]
struct DebugPart {
    path: PathBuf,
    syms: Option<ElfSymbols>,
    map: Arc<memmap2::Mmap>,
}

/// Parsed symbol sources of one file.
#[derive(Debug)]
pub(crate) struct FileSymbols {
    /// `.symtab` + `.dynsym`, build ID, program headers.
    pub elf: ElfSymbols,
    minidebug: Option<ElfSymbols>,
    go: Option<GoTable>,
    refs: DebugRefs,
    has_own_dwarf: bool,
    map: Arc<memmap2::Mmap>,
    path: PathBuf,
    root: FsRoot,
    identity: Option<(u64, u64)>,
    options: SourceOptions,
    disk: Option<DiskCache>,
    debug: OnceLock<Option<DebugPart>>,
    /// `addr2line`'s lazily parsed units are not `Sync`; the lock keeps `FileSymbols`
    /// shareable across threads (uncontended in the symbolizer, which is `&mut`).
    dwarf: OnceLock<Option<Mutex<Dwarf>>>,
    /// Resolved addresses (see [`AddrMemo`]); dies with the file, so a replaced file
    /// (a new identity) starts empty.
    pub memo: Mutex<AddrMemo>,
    /// Demangled names and file names, shared by the memo's entries and the frames.
    names: Mutex<NameCache>,
}

/// The identity under which a file is cached: its build ID, else a hash of its content.
pub(crate) fn file_identity(map: &[u8], refs: &DebugRefs) -> String {
    match &refs.build_id {
        Some(id) if !id.is_empty() => id.iter().map(|b| format!("{b:02x}")).collect(),
        _ => {
            let half = map.len() / 2;
            format!(
                "crc{:08x}{:08x}-{:x}",
                crc32fast::hash(&map[..half]),
                crc32fast::hash(&map[half..]),
                map.len()
            )
        }
    }
}

impl FileSymbols {
    /// Parses the cheap parts of a mapped file (symbol tables, Go table, debug references).
    pub(crate) fn new(
        map: Arc<memmap2::Mmap>,
        path: &Path,
        root: FsRoot,
        identity: Option<(u64, u64)>,
        options: SourceOptions,
        disk: Option<DiskCache>,
        id_key: &str,
    ) -> Result<(FileSymbols, bool), Error> {
        let invalid = |reason: String| Error::InvalidElfFile {
            path: path.to_owned(),
            reason,
        };
        let file = object::File::parse(&**map).map_err(|e| invalid(e.to_string()))?;
        let refs = DebugRefs::of(&file);
        let mut disk_hit = false;
        let elf = match disk.as_ref().map(|d| d.load(&format!("{id_key}.main"))) {
            Some(Lookup::Hit(b)) => {
                disk_hit = true;
                b.0
            }
            other => {
                let e = ElfSymbols::from_object(&file).map_err(|e| match e {
                    Error::InvalidElf { reason } => invalid(reason),
                    other => other,
                })?;
                if let (Some(d), Some(_)) = (&disk, other) {
                    d.store(&format!("{id_key}.main"), &e);
                }
                e
            }
        };
        let go = crate::gopclntab::find_in_elf(&file).and_then(|(data, text)| {
            GoTable::parse(data, text)
                .map_err(
                    |e| tracing::debug!(path = %path.display(), error = %e, "ignoring Go table"),
                )
                .ok()
        });
        let minidebug = file
            .section_by_name(".gnu_debugdata")
            .and_then(|s| s.data().ok())
            .and_then(|xz| match decompress_xz(xz) {
                Ok(elf) => ElfSymbols::parse(&elf).ok(),
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot decompress .gnu_debugdata");
                    None
                }
            });
        let has_own_dwarf = crate::debuglink::has_dwarf(&file);
        Ok((
            FileSymbols {
                elf,
                minidebug,
                go,
                refs,
                has_own_dwarf,
                map,
                path: path.to_owned(),
                root,
                identity,
                options,
                disk,
                debug: OnceLock::new(),
                dwarf: OnceLock::new(),
                memo: Mutex::new(AddrMemo::new()),
                names: Mutex::new(NameCache::default()),
            },
            disk_hit,
        ))
    }

    /// The separate debug file, searched (once) on first use.
    fn debug(&self) -> Option<&DebugPart> {
        if !self.options.debug_files {
            return None;
        }
        self.debug
            .get_or_init(|| {
                let found = find_debug_file(&self.root, &self.path, &self.refs, self.identity)?;
                let key = file_identity(&[], &self.refs);
                let cache_key = format!("{key}.debug");
                let cached = match (&self.disk, self.refs.build_id.is_some()) {
                    (Some(d), true) => match d.load(&cache_key) {
                        Lookup::Hit(b) => Some(b.0),
                        Lookup::Miss | Lookup::Corrupt => None,
                    },
                    _ => None,
                };
                // SAFETY: a read-only private map of a verified regular file, read only
                // while alive (see `ElfSymbols::from_file` on files rewritten in place).
                let map = unsafe { memmap2::Mmap::map(&found.file) }.ok()?;
                let syms = cached.or_else(|| {
                    let s = ElfSymbols::parse(&map).ok()?;
                    if let (Some(d), true) = (&self.disk, self.refs.build_id.is_some()) {
                        d.store(&cache_key, &s);
                    }
                    Some(s)
                });
                Some(DebugPart {
                    path: found.path,
                    syms: syms.filter(|s| !s.is_empty()),
                    map: Arc::new(map),
                })
            })
            .as_ref()
    }

    /// DWARF from the debug file, else from the file itself; loaded once on first use.
    fn dwarf(&self) -> Option<&Mutex<Dwarf>> {
        if !self.options.dwarf {
            return None;
        }
        self.dwarf
            .get_or_init(|| {
                let debug_map = self.debug().map(|d| d.map.clone());
                let mut tried = Vec::new();
                if let Some(m) = debug_map {
                    tried.push(m);
                }
                if self.has_own_dwarf {
                    tried.push(self.map.clone());
                }
                for m in tried {
                    match Dwarf::load(m) {
                        Ok(d) => return Some(Mutex::new(d)),
                        Err(e) => {
                            tracing::debug!(path = %self.path.display(), error = %e, "no usable DWARF");
                        }
                    }
                }
                None
            })
            .as_ref()
    }

    /// Which lazily loaded parts are loaded (the debug-file search, DWARF): when this changes,
    /// so does [`FileSymbols::approx_bytes`].
    pub(crate) fn lazy_state(&self) -> (bool, bool) {
        (self.debug.get().is_some(), self.dwarf.get().is_some())
    }

    /// Whether the debug-file search has run and found a file.
    pub(crate) fn debug_found(&self) -> bool {
        matches!(self.debug.get(), Some(Some(_)))
    }

    /// Path of the debug file, if one was found (searching for it if not yet done).
    pub(crate) fn debug_file_path(&self) -> Option<&Path> {
        self.debug().map(|d| d.path.as_path())
    }

    /// Approximate memory held (symbol tables, copies, decompressed sections).
    pub(crate) fn approx_bytes(&self) -> usize {
        let mut n = self.elf.approx_bytes() + 256;
        n += self.minidebug.as_ref().map_or(0, ElfSymbols::approx_bytes);
        n += self.go.as_ref().map_or(0, GoTable::approx_bytes);
        if let Some(Some(d)) = self.debug.get() {
            n += d.syms.as_ref().map_or(0, ElfSymbols::approx_bytes);
        }
        if let Some(Some(d)) = self.dwarf.get() {
            n += d.lock().map_or(0, |d| d.owned_bytes());
        }
        n += self.memo.lock().map_or(0, |m| m.approx_bytes());
        n += self.names.lock().map_or(0, |m| m.approx_bytes());
        n
    }

    /// Names `vaddr`: frames innermost first, names demangled per `mode`; every string comes
    /// from the file's [`NameCache`], so a name or file seen before costs no copy.
    ///
    /// The flag says whether the name cache's (rounded) bytes changed.
    pub(crate) fn lookup(
        &self,
        vaddr: u64,
        inline_frames: bool,
        mode: DemangleMode,
    ) -> (Resolved, bool) {
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let before = names.approx_bytes();
        let r = self.lookup_in(vaddr, inline_frames, mode, &mut names);
        (r, names.approx_bytes() != before)
    }

    fn lookup_in(
        &self,
        vaddr: u64,
        inline_frames: bool,
        mode: DemangleMode,
        names: &mut NameCache,
    ) -> Resolved {
        if let Some(go) = &self.go
            && let Some(f) = go.lookup(vaddr)
        {
            let frame = MemoFrame {
                function: Some(names.name(mode, &f.function)),
                file: f.file.as_deref().map(|x| names.file(x)),
                line: f.line,
            };
            return Resolved {
                frames: Box::new([frame]),
                source: Some(NameSource::Go),
            };
        }
        // One frame is the common case; its exact capacity also makes `into()` free.
        let mut frames: Vec<MemoFrame> = Vec::with_capacity(1);
        if let Some(Ok(d)) = self.dwarf().map(Mutex::lock) {
            d.for_each_frame(vaddr, |name, file, line| {
                frames.push(MemoFrame {
                    function: name.map(|n| names.name_at(mode, n)),
                    file: file.map(|f| names.file(f)),
                    line,
                });
            });
        }
        if !inline_frames && frames.len() > 1 {
            frames.drain(..frames.len() - 1);
        }
        if frames.last().is_some_and(|f| f.function.is_some()) {
            // DWARF names the physical function at the source level; the symbol tables
            // would only give the same function's linkage name.
            return Resolved {
                frames: frames.into(),
                source: Some(NameSource::Dwarf),
            };
        }
        // Symbol-table names are borrowed from tables that live as long as `self`.
        let (mut name, mut source) = (None, None);
        if let Some(d) = self.debug()
            && let Some(s) = &d.syms
            && let Some((n, _)) = s.lookup(vaddr)
        {
            name = Some(names.name_at(mode, n.as_bytes()));
            source = Some(NameSource::DebugSymtab);
        }
        if name.is_none()
            && let Some((n, _)) = self.elf.lookup(vaddr)
        {
            name = Some(names.name_at(mode, n.as_bytes()));
            source = Some(NameSource::Symtab);
        }
        if name.is_none()
            && let Some(m) = &self.minidebug
            && let Some((n, _)) = m.lookup(vaddr)
        {
            name = Some(names.name_at(mode, n.as_bytes()));
            source = Some(NameSource::MiniDebugInfo);
        }
        match frames.last_mut() {
            Some(outer) => outer.function = name,
            None if name.is_some() => frames.push(MemoFrame {
                function: name,
                file: None,
                line: None,
            }),
            None => {}
        }
        Resolved {
            frames: frames.into(),
            source,
        }
    }
}

impl GoTable {
    pub(crate) fn approx_bytes(&self) -> usize {
        self.byte_len()
    }
}

/// A writer that fails past a size limit (bounds decompression of hostile input).
struct Bounded(Vec<u8>);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > MAX_MINIDEBUG_LEN {
            return Err(io::Error::other("decompressed .gnu_debugdata is too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn decompress_xz(xz: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Bounded(Vec::new());
    lzma_rs::xz_decompress(&mut io::BufReader::new(xz), &mut out).map_err(|e| format!("{e:?}"))?;
    Ok(out.0)
}
