//! The process-aware symbolizer.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroscope_unwind_api::{ProcessMemory, RemoteMemory};

use crate::Error;
use crate::elf::ElfSymbols;
use crate::kernel::KernelSymbols;
use crate::maps::{MapEntry, MapPath, parse_maps_lossy, read_maps_text};

/// Default number of parsed files kept in the cache.
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;

/// Default minimum time between two re-reads of one process's maps.
pub const DEFAULT_REREAD_INTERVAL: Duration = Duration::from_secs(1);

/// The vDSO is a couple of pages; anything much larger is not one.
const MAX_VDSO_LEN: u64 = 1 << 20;

/// A file (or the vDSO) mapped into a process: what pprof calls a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The path as printed in `/proc/PID/maps` (`[vdso]` for the vDSO).
    pub path: PathBuf,
    /// The GNU build ID as lowercase hex.
    pub build_id: Option<String>,
    /// First address of the process mapping.
    pub map_start: u64,
    /// One past the last address of the process mapping.
    pub map_end: u64,
    /// File offset mapped at `map_start`.
    pub file_offset: u64,
    /// ELF virtual address corresponding to `map_start` (`file_offset` when the file could
    /// not be read). The mapping covers ELF addresses
    /// `vaddr_start..vaddr_start + (map_end - map_start)`.
    pub vaddr_start: u64,
}

impl Module {
    /// The last component of the path (`libc.so.6`, `[vdso]`).
    pub fn basename(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .or_else(|| self.path.to_str())
            .unwrap_or("[non-UTF-8 path]")
    }
}

/// A symbolized user-space address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFrame {
    /// The address that was looked up.
    pub addr: u64,
    /// The module mapped at `addr`, if any.
    pub module: Option<Arc<Module>>,
    /// `addr` translated to the module's ELF virtual address space.
    pub elf_addr: Option<u64>,
    /// The function containing `addr`.
    pub function: Option<String>,
}

impl UserFrame {
    /// The function name; else `module+0xOFFSET` (ELF address, or file offset when the ELF
    /// address is unknown); else `[unknown]`.
    pub fn display_name(&self) -> String {
        if let Some(f) = &self.function {
            return f.clone();
        }
        match &self.module {
            Some(m) => {
                let off = self.elf_addr.unwrap_or_else(|| {
                    m.file_offset
                        .wrapping_add(self.addr.wrapping_sub(m.map_start))
                });
                format!("{}+{off:#x}", m.basename())
            }
            None => "[unknown]".to_owned(),
        }
    }
}

/// A symbolized kernel address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFrame {
    /// The address that was looked up.
    pub addr: u64,
    /// The kernel function (or BPF program) containing `addr`.
    pub function: Option<String>,
    /// `vmlinux`, a module name, or `bpf`.
    pub module: String,
}

impl KernelFrame {
    /// The function name, else `[unknown]`.
    pub fn display_name(&self) -> String {
        self.function
            .clone()
            .unwrap_or_else(|| "[unknown]".to_owned())
    }
}

/// Counters describing the symbolizer's work so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    /// ELF files (and vDSO images) parsed.
    pub files_parsed: u64,
    /// Mappings whose file was found already parsed in the cache.
    pub cache_hits: u64,
    /// Frames (user and kernel) for which no function was found.
    pub unresolved_frames: u64,
    /// Successful snapshots of `/proc/PID/maps`.
    pub processes_observed: u64,
    /// Snapshots taken again because an address was in no known mapping.
    pub maps_rereads: u64,
    /// Files that could not be opened or parsed.
    pub file_failures: u64,
}

/// Identity of a parsed file: the same identity means the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FileKey {
    File {
        dev: u64,
        inode: u64,
        size: u64,
        mtime: i64,
        mtime_nsec: i64,
    },
    Vdso {
        len: usize,
        hash: u64,
    },
}

#[derive(Debug)]
struct CacheEntry {
    /// `None` when the file could not be parsed (so it is not retried for every process).
    syms: Option<Arc<ElfSymbols>>,
    last_used: u64,
}

#[derive(Debug, Clone)]
struct ProcMapping {
    entry: MapEntry,
    module: Option<Arc<Module>>,
    syms: Option<Arc<ElfSymbols>>,
    /// Whether `module.vaddr_start` is a real ELF address.
    has_vaddr: bool,
}

#[derive(Debug)]
struct ProcessState {
    /// Executable mappings, sorted by start.
    mappings: Vec<ProcMapping>,
    last_read: Instant,
}

#[derive(Debug)]
enum KernelState {
    NotLoaded,
    Loaded(KernelSymbols),
    Failed,
}

/// Symbolizes user and kernel addresses for many processes.
///
/// Parsed files are cached by identity (device, inode, size, mtime) in an LRU-bounded map
/// shared by all processes, so a library mapped by a thousand processes is parsed once.
/// Process snapshots are kept until [`Symbolizer::forget_process`], so frames of processes that
/// have exited still resolve.
#[derive(Debug)]
pub struct Symbolizer {
    files: HashMap<FileKey, CacheEntry>,
    capacity: usize,
    tick: u64,
    processes: HashMap<u32, ProcessState>,
    kernel: KernelState,
    reread_interval: Duration,
    stats: SymbolizerStats,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// A symbolizer with default limits ([`DEFAULT_CACHE_CAPACITY`] files,
    /// [`DEFAULT_REREAD_INTERVAL`]).
    pub fn new() -> Self {
        Symbolizer {
            files: HashMap::new(),
            capacity: DEFAULT_CACHE_CAPACITY,
            tick: 0,
            processes: HashMap::new(),
            kernel: KernelState::NotLoaded,
            reread_interval: DEFAULT_REREAD_INTERVAL,
            stats: SymbolizerStats::default(),
        }
    }

    /// Keeps at most `files` parsed files in the cache (at least one).
    pub fn with_cache_capacity(mut self, files: usize) -> Self {
        self.capacity = files.max(1);
        self
    }

    /// Re-reads a process's maps at most once per `interval` when an address is unmapped.
    pub fn with_reread_interval(mut self, interval: Duration) -> Self {
        self.reread_interval = interval;
        self
    }

    /// Uses `symbols` for kernel addresses instead of loading `/proc/kallsyms`.
    pub fn with_kernel_symbols(mut self, symbols: KernelSymbols) -> Self {
        self.kernel = KernelState::Loaded(symbols);
        self
    }

    /// Snapshots `/proc/PID/maps` and parses (or fetches from the cache) every executable
    /// file mapping now, so that symbolization still works after the process exits.
    ///
    /// Files are opened through `/proc/PID/map_files/<start>-<end>` first, falling back to
    /// `/proc/PID/root/<path>`, so processes in other mount namespaces (containers) work.
    /// Files that cannot be opened or parsed are logged and symbolized as `module+offset`.
    pub fn observe_process(&mut self, pid: u32) -> Result<(), Error> {
        let text = read_maps_text(pid)?;
        let (entries, skipped) = parse_maps_lossy(&text);
        if skipped > 0 {
            tracing::warn!(pid, skipped, "skipped malformed lines in /proc/PID/maps");
        }
        let old = self
            .processes
            .remove(&pid)
            .map(|s| s.mappings)
            .unwrap_or_default();
        let mut mappings = Vec::new();
        for entry in entries.into_iter().filter(MapEntry::is_executable) {
            let reused = old
                .binary_search_by_key(&entry.start, |m| m.entry.start)
                .ok()
                .and_then(|i| old.get(i))
                .filter(|m| m.entry == entry);
            let mapping = match reused {
                Some(m) => m.clone(),
                None => self.load_mapping(pid, entry),
            };
            mappings.push(mapping);
        }
        mappings.sort_by_key(|m| m.entry.start);
        self.processes.insert(
            pid,
            ProcessState {
                mappings,
                last_read: Instant::now(),
            },
        );
        self.stats.processes_observed += 1;
        Ok(())
    }

    /// Drops the snapshot of process `pid` (parsed files stay cached).
    pub fn forget_process(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Symbolizes `addr` in process `pid`.
    ///
    /// `addr` is the lookup address (return addresses already decremented by the caller). A
    /// process never observed is observed first; an address in no mapping of the snapshot
    /// triggers one re-read of the maps (a library may have been loaded since), at most once
    /// per re-read interval per process.
    pub fn symbolize_user(&mut self, pid: u32, addr: u64) -> UserFrame {
        if !self.processes.contains_key(&pid)
            && let Err(e) = self.observe_process(pid)
        {
            tracing::debug!(pid, error = %e, "cannot observe process");
            self.processes.insert(
                pid,
                ProcessState {
                    mappings: Vec::new(),
                    last_read: Instant::now(),
                },
            );
        }
        let mut frame = self.lookup_user(pid, addr);
        if frame.is_none() {
            let stale = self
                .processes
                .get(&pid)
                .is_some_and(|s| s.last_read.elapsed() >= self.reread_interval);
            if stale {
                self.stats.maps_rereads += 1;
                if let Err(e) = self.observe_process(pid) {
                    tracing::debug!(pid, error = %e, "cannot re-read process maps");
                    if let Some(s) = self.processes.get_mut(&pid) {
                        s.last_read = Instant::now();
                    }
                }
                frame = self.lookup_user(pid, addr);
            }
        }
        let frame = frame.unwrap_or(UserFrame {
            addr,
            module: None,
            elf_addr: None,
            function: None,
        });
        if frame.function.is_none() {
            self.stats.unresolved_frames += 1;
        }
        frame
    }

    fn lookup_user(&self, pid: u32, addr: u64) -> Option<UserFrame> {
        let state = self.processes.get(&pid)?;
        let i = state
            .mappings
            .partition_point(|m| m.entry.start <= addr)
            .checked_sub(1)?;
        let m = state.mappings.get(i).filter(|m| m.entry.contains(addr))?;
        let elf_addr = match (&m.module, m.has_vaddr) {
            (Some(module), true) => module.vaddr_start.checked_add(addr - m.entry.start),
            _ => None,
        };
        let function = match (&m.syms, elf_addr) {
            (Some(syms), Some(a)) => syms.lookup(a).map(|(name, _)| name.to_owned()),
            _ => None,
        };
        Some(UserFrame {
            addr,
            module: m.module.clone(),
            elf_addr,
            function,
        })
    }

    /// Symbolizes a kernel address; `/proc/kallsyms` is loaded on first use (once; a failure
    /// is logged once and every kernel frame is then unresolved).
    pub fn symbolize_kernel(&mut self, addr: u64) -> KernelFrame {
        if matches!(self.kernel, KernelState::NotLoaded) {
            self.kernel = match KernelSymbols::load() {
                Ok(k) => KernelState::Loaded(k),
                Err(e) => {
                    tracing::warn!(error = %e, "kernel frames will not be symbolized");
                    KernelState::Failed
                }
            };
        }
        let found = match &self.kernel {
            KernelState::Loaded(k) => k.lookup(addr),
            KernelState::NotLoaded | KernelState::Failed => None,
        };
        match found {
            Some(s) => KernelFrame {
                addr,
                function: Some(s.name.to_owned()),
                module: s.module.unwrap_or("vmlinux").to_owned(),
            },
            None => {
                self.stats.unresolved_frames += 1;
                KernelFrame {
                    addr,
                    function: None,
                    module: "vmlinux".to_owned(),
                }
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> SymbolizerStats {
        self.stats
    }

    /// Number of parsed files currently cached.
    pub fn cached_files(&self) -> usize {
        self.files.len()
    }

    fn load_mapping(&mut self, pid: u32, entry: MapEntry) -> ProcMapping {
        let (path, syms) = match &entry.path {
            MapPath::File(p) | MapPath::Deleted(p) => {
                (p.clone(), self.file_symbols(pid, &entry, p))
            }
            MapPath::Special(name) if name == "[vdso]" => {
                (PathBuf::from(name), self.vdso_symbols(pid, &entry))
            }
            MapPath::Special(name) => (PathBuf::from(name), None),
            MapPath::Anonymous => {
                return ProcMapping {
                    entry,
                    module: None,
                    syms: None,
                    has_vaddr: false,
                };
            }
        };
        let vaddr = syms
            .as_ref()
            .and_then(|s| s.mapping_offset_to_vaddr(entry.offset, entry.is_executable()));
        let module = Module {
            path,
            build_id: syms.as_ref().and_then(|s| s.build_id_hex()),
            map_start: entry.start,
            map_end: entry.end,
            file_offset: entry.offset,
            vaddr_start: vaddr.unwrap_or(entry.offset),
        };
        ProcMapping {
            entry,
            module: Some(Arc::new(module)),
            syms,
            has_vaddr: vaddr.is_some(),
        }
    }

    fn file_symbols(&mut self, pid: u32, entry: &MapEntry, path: &Path) -> Option<Arc<ElfSymbols>> {
        let (file, opened) = match open_mapped_file(pid, entry, path) {
            Ok(f) => f,
            Err(e) => {
                self.stats.file_failures += 1;
                tracing::debug!(pid, path = %path.display(), error = %e, "cannot open mapped file");
                return None;
            }
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                self.stats.file_failures += 1;
                tracing::debug!(path = %opened.display(), error = %e, "cannot stat mapped file");
                return None;
            }
        };
        let key = FileKey::File {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        self.cached_or_parse(key, || ElfSymbols::from_file(&file, path))
    }

    fn vdso_symbols(&mut self, pid: u32, entry: &MapEntry) -> Option<Arc<ElfSymbols>> {
        if entry.len() > MAX_VDSO_LEN {
            return None;
        }
        let len = usize::try_from(entry.len()).ok()?;
        let mut bytes = vec![0u8; len];
        if let Err(e) = RemoteMemory::new(pid).read_exact_at(entry.start, &mut bytes) {
            tracing::debug!(pid, error = %e, "cannot read the vDSO");
            return None;
        }
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        let key = FileKey::Vdso {
            len,
            hash: h.finish(),
        };
        self.cached_or_parse(key, || ElfSymbols::parse(&bytes))
    }

    fn cached_or_parse(
        &mut self,
        key: FileKey,
        parse: impl FnOnce() -> Result<ElfSymbols, Error>,
    ) -> Option<Arc<ElfSymbols>> {
        self.tick += 1;
        if let Some(e) = self.files.get_mut(&key) {
            e.last_used = self.tick;
            self.stats.cache_hits += 1;
            return e.syms.clone();
        }
        let syms = match parse() {
            Ok(s) => {
                self.stats.files_parsed += 1;
                Some(Arc::new(s))
            }
            Err(e) => {
                self.stats.file_failures += 1;
                tracing::debug!(error = %e, "cannot parse mapped file");
                None
            }
        };
        if self.files.len() >= self.capacity {
            let oldest = self
                .files
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.files.remove(&k);
            }
        }
        self.files.insert(
            key,
            CacheEntry {
                syms: syms.clone(),
                last_used: self.tick,
            },
        );
        syms
    }
}

/// Opens the file behind a mapping: `/proc/PID/map_files/<start>-<end>` (the very file
/// mapped, even if deleted or in another mount namespace), else `/proc/PID/root/<path>` if
/// its inode matches the mapping's.
fn open_mapped_file(pid: u32, entry: &MapEntry, path: &Path) -> Result<(File, PathBuf), Error> {
    let map_file = PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        entry.start, entry.end
    ));
    let first_err = match File::open(&map_file) {
        Ok(f) => return Ok((f, map_file)),
        Err(e) => Error::from_proc_io(pid, map_file, e),
    };
    if matches!(entry.path, MapPath::Deleted(_)) {
        return Err(first_err);
    }
    let relative = path.strip_prefix("/").unwrap_or(path);
    let rooted = Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(relative);
    let f = File::open(&rooted).map_err(|e| Error::from_proc_io(pid, rooted.clone(), e))?;
    let inode = f
        .metadata()
        .map_err(|e| Error::from_io(rooted.clone(), e))?
        .ino();
    if entry.inode != 0 && inode != entry.inode {
        tracing::debug!(pid, path = %rooted.display(), "file was replaced since it was mapped");
        return Err(first_err);
    }
    Ok((f, rooted))
}
