//! The process-aware symbolizer.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroscope_unwind_api::{ProcessMemory, RemoteMemory};
use lru::LruCache;

use crate::Error;
use crate::debuglink::DebugRefs;
use crate::demangle::DemangleMode;
use crate::disk_cache::DiskCache;
use crate::kernel::KernelSymbols;
use crate::maps::{MapEntry, MapPath, parse_maps_lossy, read_maps_text};
use crate::memo::{MemoKey, Resolved};
use crate::root::FsRoot;
use crate::source::{FileSymbols, NameSource, SourceOptions, file_identity};

/// Default number of parsed files kept in the cache.
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;

/// Default bound on memoized addresses per file (see [`SymbolizerBuilder::address_memo`]).
pub const DEFAULT_ADDRESS_MEMO_ENTRIES: usize = 64 * 1024;

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

/// One source-level frame: a function and the position in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceFrame {
    /// The function, demangled per the symbolizer's [`DemangleMode`].
    pub function: Option<String>,
    /// The source file.
    pub file: Option<String>,
    /// The line in `file`.
    pub line: Option<u32>,
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
    /// The function that physically contains `addr` (the outermost of the inline chain),
    /// demangled per the symbolizer's [`DemangleMode`].
    pub function: Option<String>,
    /// The source file of `addr` within `function` (for an inlined call, the call site).
    pub file: Option<String>,
    /// The line in `file`.
    pub line: Option<u32>,
    /// Functions inlined into `function` at `addr`, innermost first, each with its own
    /// position (the innermost's is the address's true source line). Empty when nothing is
    /// inlined or inline frames are disabled.
    pub inlined: Vec<SourceFrame>,
}

impl UserFrame {
    fn unresolved(addr: u64, module: Option<Arc<Module>>, elf_addr: Option<u64>) -> UserFrame {
        UserFrame {
            addr,
            module,
            elf_addr,
            function: None,
            file: None,
            line: None,
            inlined: Vec::new(),
        }
    }

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

    /// Every frame at this address, innermost first: the inlined functions, then `function`.
    /// An unresolved address gives one frame named by [`UserFrame::display_name`].
    pub fn source_frames(&self) -> Vec<SourceFrame> {
        let mut out = self.inlined.clone();
        out.push(SourceFrame {
            function: Some(self.display_name()),
            file: self.file.clone(),
            line: self.line,
        });
        out
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
    /// Frames (user and kernel) for which no function was found (shown as module+offset).
    pub unresolved_frames: u64,
    /// Successful snapshots of `/proc/PID/maps`.
    pub processes_observed: u64,
    /// Snapshots taken again because an address was in no known mapping.
    pub maps_rereads: u64,
    /// Files that could not be opened or parsed (their frames fall back to module+offset).
    pub file_failures: u64,
    /// Files whose path now names a different file than the one mapped (replaced on disk)
    /// and that could not be reached through `/proc/PID/map_files`.
    pub files_replaced: u64,
    /// Separate debug files found.
    pub debug_files_found: u64,
    /// Parsed symbol tables read from the on-disk cache.
    pub disk_cache_hits: u64,
    /// Cached files evicted by the LRU bounds.
    pub cache_evictions: u64,
    /// User frames named by `.gopclntab`.
    pub go_frames: u64,
    /// User frames with a DWARF file and line.
    pub dwarf_frames: u64,
    /// User frames answered from the per-file memo of resolved addresses.
    pub memo_hits: u64,
}

/// Default bound on the bytes of parsed data kept in the cache.
pub const DEFAULT_CACHE_BYTES: usize = 1 << 30;

/// Default bound on files opened by `observe_process` and not yet parsed.
pub const DEFAULT_MAX_PENDING_FILES: usize = 256;

/// Identity of an open file as `fstat` sees it: the same key means the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct StatKey {
    dev: u64,
    inode: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl StatKey {
    fn of(meta: &std::fs::Metadata) -> StatKey {
        StatKey {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

#[derive(Debug, Clone)]
enum MapState {
    /// Not a file (anonymous, `[stack]`, ...).
    NoFile,
    /// A file not parsed yet; `stat` is known when it could be opened.
    Pending { stat: Option<StatKey> },
    /// Resolved: the module and (if the file could be parsed) its symbols.
    Ready {
        module: Arc<Module>,
        syms: Option<Arc<FileSymbols>>,
        has_vaddr: bool,
    },
}

#[derive(Debug, Clone)]
struct ProcMapping {
    entry: MapEntry,
    state: MapState,
}

#[derive(Debug)]
struct ProcessState {
    /// Executable mappings, sorted by start.
    mappings: Vec<ProcMapping>,
    last_read: Instant,
    root: FsRoot,
}

#[derive(Debug)]
enum KernelState {
    NotLoaded,
    Loaded(KernelSymbols),
    Failed,
}

/// Configures a [`Symbolizer`]; see [`Symbolizer::builder`].
#[derive(Debug, Clone)]
pub struct SymbolizerBuilder {
    demangle: DemangleMode,
    inline_frames: bool,
    dwarf: bool,
    debug_files: bool,
    cache_files: usize,
    cache_bytes: usize,
    cache_dir: Option<PathBuf>,
    reread_interval: Duration,
    max_pending_files: usize,
    address_memo: usize,
}

impl Default for SymbolizerBuilder {
    fn default() -> Self {
        SymbolizerBuilder {
            demangle: DemangleMode::default(),
            inline_frames: true,
            dwarf: true,
            debug_files: true,
            cache_files: DEFAULT_CACHE_CAPACITY,
            cache_bytes: DEFAULT_CACHE_BYTES,
            cache_dir: None,
            reread_interval: DEFAULT_REREAD_INTERVAL,
            max_pending_files: DEFAULT_MAX_PENDING_FILES,
            address_memo: DEFAULT_ADDRESS_MEMO_ENTRIES,
        }
    }
}

impl SymbolizerBuilder {
    /// How names are demangled (default [`DemangleMode::Simplified`]).
    pub fn demangle(mut self, mode: DemangleMode) -> Self {
        self.demangle = mode;
        self
    }

    /// Whether inlined functions are reported as frames of their own (default on; needs DWARF).
    pub fn inline_frames(mut self, on: bool) -> Self {
        self.inline_frames = on;
        self
    }

    /// Whether DWARF is used for file, line and inline frames (default on).
    pub fn dwarf(mut self, on: bool) -> Self {
        self.dwarf = on;
        self
    }

    /// Whether separate debug files are searched (default on).
    pub fn debug_files(mut self, on: bool) -> Self {
        self.debug_files = on;
        self
    }

    /// Bounds the in-memory cache by number of files (at least one) and approximate bytes.
    pub fn cache_limits(mut self, files: usize, bytes: usize) -> Self {
        self.cache_files = files.max(1);
        self.cache_bytes = bytes;
        self
    }

    /// Keeps parsed symbol tables on disk in `dir` (e.g. [`DEFAULT_CACHE_DIR`]); `None`
    /// (the default) disables the disk cache.
    ///
    /// [`DEFAULT_CACHE_DIR`]: crate::DEFAULT_CACHE_DIR
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cache_dir = dir;
        self
    }

    /// Re-reads a process's maps at most once per `interval` when an address is unmapped.
    pub fn reread_interval(mut self, interval: Duration) -> Self {
        self.reread_interval = interval;
        self
    }

    /// Bounds the memo of resolved addresses kept per cached file (default
    /// [`DEFAULT_ADDRESS_MEMO_ENTRIES`]; 0 turns it off). A profiler looks the same addresses
    /// up every collect interval; a memo hit skips the symbol tables, DWARF and demangling.
    /// Once full, a new address takes the least recently used entry's place only if it was
    /// asked for more often recently (TinyLFU admission), so a long tail of rare addresses
    /// does not flush the hot ones. The memo belongs to the file's cache entry: it is counted
    /// in the cache's bytes and goes when the file is evicted or replaced.
    pub fn address_memo(mut self, entries_per_file: usize) -> Self {
        self.address_memo = entries_per_file;
        self
    }

    /// Bounds the files `observe_process` keeps open until they are first needed.
    pub fn max_pending_files(mut self, n: usize) -> Self {
        self.max_pending_files = n;
        self
    }

    /// Builds the symbolizer.
    pub fn build(self) -> Symbolizer {
        Symbolizer {
            files: LruCache::unbounded(),
            file_bytes: HashMap::new(),
            total_bytes: 0,
            stat_index: HashMap::new(),
            pending_files: HashMap::new(),
            disk: self.cache_dir.as_deref().map(DiskCache::new),
            processes: HashMap::new(),
            kernel: KernelState::NotLoaded,
            stats: SymbolizerStats::default(),
            config: self,
        }
    }
}

/// Symbolizes user and kernel addresses for many processes.
///
/// `observe_process` only snapshots a process's maps and opens the mapped files; each file is
/// parsed on the first address that needs it, and its debug file and DWARF on the first
/// lookup too. Parsed files are cached by identity (build ID, else content hash) in an LRU
/// bounded by count and bytes, shared by all processes, so a library mapped by a thousand
/// processes is parsed once. Process snapshots keep what they resolved until
/// [`Symbolizer::forget_process`], so frames of processes that have exited still resolve.
#[derive(Debug)]
pub struct Symbolizer {
    files: LruCache<String, Arc<FileSymbols>>,
    file_bytes: HashMap<String, usize>,
    total_bytes: usize,
    stat_index: HashMap<StatKey, String>,
    pending_files: HashMap<StatKey, Arc<File>>,
    disk: Option<DiskCache>,
    processes: HashMap<u32, ProcessState>,
    kernel: KernelState,
    stats: SymbolizerStats,
    config: SymbolizerBuilder,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// A symbolizer with default options (see [`SymbolizerBuilder`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Options for a new symbolizer.
    pub fn builder() -> SymbolizerBuilder {
        SymbolizerBuilder::default()
    }

    /// Keeps at most `files` parsed files in the cache (at least one).
    pub fn with_cache_capacity(mut self, files: usize) -> Self {
        self.config.cache_files = files.max(1);
        self
    }

    /// Re-reads a process's maps at most once per `interval` when an address is unmapped.
    pub fn with_reread_interval(mut self, interval: Duration) -> Self {
        self.config.reread_interval = interval;
        self
    }

    /// Uses `symbols` for kernel addresses instead of loading `/proc/kallsyms`.
    pub fn with_kernel_symbols(mut self, symbols: KernelSymbols) -> Self {
        self.kernel = KernelState::Loaded(symbols);
        self
    }

    /// The demangling mode in use.
    pub fn demangle_mode(&self) -> DemangleMode {
        self.config.demangle
    }

    /// Snapshots `/proc/PID/maps` and opens every executable file mapping, so that
    /// symbolization still works after the process exits. Cheap: files already cached are
    /// attached at once, others are parsed on the first address that needs them.
    ///
    /// Files are opened through `/proc/PID/map_files/<start>-<end>` first, falling back to
    /// the path resolved inside `/proc/PID/root` (never following symlinks out of it), so
    /// processes in other mount namespaces (containers) work. Files that cannot be opened or
    /// parsed are logged and symbolized as `module+offset`.
    pub fn observe_process(&mut self, pid: u32) -> Result<(), Error> {
        let text = read_maps_text(pid)?;
        let (entries, skipped) = parse_maps_lossy(&text);
        if skipped > 0 {
            tracing::warn!(pid, skipped, "skipped malformed lines in /proc/PID/maps");
        }
        if !entries.iter().any(MapEntry::is_executable)
            && is_zombie(pid)
            && let Some(state) = self.processes.get_mut(&pid)
            && !state.mappings.is_empty()
        {
            // An exited process that is not reaped yet (a zombie) has no mappings left:
            // what was seen of it still names its samples.
            state.last_read = Instant::now();
            return Ok(());
        }
        let (old, root) = match self.processes.remove(&pid) {
            Some(s) => (s.mappings, s.root),
            None => (Vec::new(), FsRoot::of_process(pid)),
        };
        let mut mappings = Vec::new();
        for entry in entries.into_iter().filter(MapEntry::is_executable) {
            let reused = old
                .binary_search_by_key(&entry.start, |m| m.entry.start)
                .ok()
                .and_then(|i| old.get(i))
                .filter(|m| m.entry == entry);
            let mapping = match reused {
                Some(m) => m.clone(),
                None => self.snapshot_mapping(pid, &root, entry),
            };
            mappings.push(mapping);
        }
        mappings.sort_by_key(|m| m.entry.start);
        self.processes.insert(
            pid,
            ProcessState {
                mappings,
                last_read: Instant::now(),
                root,
            },
        );
        self.stats.processes_observed += 1;
        Ok(())
    }

    /// Drops the snapshot of process `pid` (parsed files stay cached).
    pub fn forget_process(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Drops the snapshots of processes for which `keep` says no (those that exited).
    pub fn retain_processes(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.processes.retain(|pid, _| keep(*pid));
    }

    /// Processes with a snapshot.
    pub fn observed_processes(&self) -> usize {
        self.processes.len()
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
            tracing::debug!(pid, error = %crate::error::Chain(&e), "cannot observe process");
            self.processes.insert(
                pid,
                ProcessState {
                    mappings: Vec::new(),
                    last_read: Instant::now(),
                    root: FsRoot::Host,
                },
            );
        }
        let mut frame = self.lookup_user(pid, addr);
        if frame.is_none() {
            let stale = self
                .processes
                .get(&pid)
                .is_some_and(|s| s.last_read.elapsed() >= self.config.reread_interval);
            if stale {
                self.stats.maps_rereads += 1;
                if let Err(e) = self.observe_process(pid) {
                    tracing::debug!(pid, error = %crate::error::Chain(&e), "cannot re-read process maps");
                    if let Some(s) = self.processes.get_mut(&pid) {
                        s.last_read = Instant::now();
                    }
                }
                frame = self.lookup_user(pid, addr);
            }
        }
        let frame = frame.unwrap_or_else(|| UserFrame::unresolved(addr, None, None));
        if frame.function.is_none() {
            self.stats.unresolved_frames += 1;
        }
        frame
    }

    /// Symbolizes `elf_addr`, an address in the ELF virtual address space of the file at
    /// `path` (as `addr2line -e FILE` takes them), on the host.
    pub fn symbolize_elf(&mut self, path: &Path, elf_addr: u64) -> Result<UserFrame, Error> {
        let file = File::open(path).map_err(|e| Error::from_io(path.to_owned(), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::from_io(path.to_owned(), e))?;
        let stat = StatKey::of(&meta);
        let syms = self.resolve_file(stat, Some(Arc::new(file)), path, &FsRoot::Host)?;
        let module = Arc::new(Module {
            path: path.to_owned(),
            build_id: syms.elf.build_id_hex(),
            map_start: 0,
            map_end: 0,
            file_offset: 0,
            vaddr_start: 0,
        });
        let frame = self.frame_from(&syms, elf_addr, elf_addr, Some(module));
        if frame.function.is_none() {
            self.stats.unresolved_frames += 1;
        }
        Ok(frame)
    }

    /// Symbolizes many addresses of one ELF file (opened once); see
    /// [`Symbolizer::symbolize_elf`].
    pub fn symbolize_elf_batch(
        &mut self,
        path: &Path,
        elf_addrs: &[u64],
    ) -> Result<Vec<UserFrame>, Error> {
        let file = File::open(path).map_err(|e| Error::from_io(path.to_owned(), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::from_io(path.to_owned(), e))?;
        let syms = self.resolve_file(
            StatKey::of(&meta),
            Some(Arc::new(file)),
            path,
            &FsRoot::Host,
        )?;
        let module = Arc::new(Module {
            path: path.to_owned(),
            build_id: syms.elf.build_id_hex(),
            map_start: 0,
            map_end: 0,
            file_offset: 0,
            vaddr_start: 0,
        });
        let mut out = Vec::with_capacity(elf_addrs.len());
        for &a in elf_addrs {
            let frame = self.frame_from(&syms, a, a, Some(module.clone()));
            if frame.function.is_none() {
                self.stats.unresolved_frames += 1;
            }
            out.push(frame);
        }
        Ok(out)
    }

    /// The separate debug file used for `path`, if any (searching for it on the host).
    pub fn debug_file_of(&mut self, path: &Path) -> Result<Option<PathBuf>, Error> {
        let file = File::open(path).map_err(|e| Error::from_io(path.to_owned(), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::from_io(path.to_owned(), e))?;
        let syms = self.resolve_file(
            StatKey::of(&meta),
            Some(Arc::new(file)),
            path,
            &FsRoot::Host,
        )?;
        Ok(syms.debug_file_path().map(Path::to_owned))
    }

    fn lookup_user(&mut self, pid: u32, addr: u64) -> Option<UserFrame> {
        let state = self.processes.get(&pid)?;
        let i = state
            .mappings
            .partition_point(|m| m.entry.start <= addr)
            .checked_sub(1)?;
        let m = state.mappings.get(i).filter(|m| m.entry.contains(addr))?;
        if let MapState::Pending { stat } = m.state {
            let entry = m.entry.clone();
            let root = state.root.clone();
            let ready = self.resolve_mapping(pid, &root, &entry, stat);
            let state = self.processes.get_mut(&pid)?;
            let m = state.mappings.get_mut(i)?;
            m.state = ready;
        }
        let state = self.processes.get(&pid)?;
        let m = state.mappings.get(i)?;
        let (module, syms, has_vaddr) = match &m.state {
            MapState::Ready {
                module,
                syms,
                has_vaddr,
            } => (module.clone(), syms.clone(), *has_vaddr),
            MapState::NoFile | MapState::Pending { .. } => {
                return Some(UserFrame::unresolved(addr, None, None));
            }
        };
        let elf_addr = has_vaddr
            .then(|| module.vaddr_start.checked_add(addr - m.entry.start))
            .flatten();
        let (Some(syms), Some(vaddr)) = (syms, elf_addr) else {
            return Some(UserFrame::unresolved(addr, Some(module), elf_addr));
        };
        let frame = self.frame_from(&syms, addr, vaddr, Some(module));
        Some(frame)
    }

    /// The settings that shape a lookup's result (fixed for this symbolizer's life).
    fn memo_key(&self) -> MemoKey {
        MemoKey {
            demangle: self.config.demangle,
            inline_frames: self.config.inline_frames,
            dwarf: self.config.dwarf,
            debug_files: self.config.debug_files,
        }
    }

    /// Looks `vaddr` up in `syms` (its memo first) and demangles; updates byte accounting
    /// if lazy parts loaded or the memo grew.
    fn frame_from(
        &mut self,
        syms: &Arc<FileSymbols>,
        addr: u64,
        vaddr: u64,
        module: Option<Arc<Module>>,
    ) -> UserFrame {
        let key = self.memo_key();
        let memo_on = self.config.address_memo > 0;
        if memo_on
            && let Ok(mut memo) = syms.memo.lock()
            && let Some(r) = memo.get(key, self.config.address_memo, vaddr)
        {
            let frame = user_frame(addr, module, vaddr, r);
            let source = r.source;
            drop(memo);
            self.stats.memo_hits += 1;
            self.count_source(source);
            return frame;
        }
        let lazy_before = syms.lazy_state();
        let had_debug = syms.debug_found();
        let (resolved, mut grew) =
            syms.lookup(vaddr, self.config.inline_frames, self.config.demangle);
        if !had_debug && syms.debug_found() {
            self.stats.debug_files_found += 1;
        }
        self.count_source(resolved.source);
        let frame = user_frame(addr, module, vaddr, &resolved);
        if memo_on && let Ok(mut memo) = syms.memo.lock() {
            grew |= memo.insert(key, self.config.address_memo, vaddr, resolved);
        }
        // The cache's byte accounting is redone only when the file's size moved (a lazy part
        // loaded, or the memo or name cache crossed a step).
        if grew || syms.lazy_state() != lazy_before {
            self.account_growth(syms, syms.approx_bytes());
        }
        frame
    }

    fn count_source(&mut self, source: Option<NameSource>) {
        match source {
            Some(NameSource::Go) => self.stats.go_frames += 1,
            Some(NameSource::Dwarf) => self.stats.dwarf_frames += 1,
            _ => {}
        }
    }

    fn account_growth(&mut self, syms: &Arc<FileSymbols>, bytes: usize) {
        let key = self
            .files
            .iter()
            .find(|(_, v)| Arc::ptr_eq(v, syms))
            .map(|(k, _)| k.clone());
        if let Some(k) = key
            && let Some(old) = self.file_bytes.insert(k, bytes)
        {
            self.total_bytes = self.total_bytes - old.min(self.total_bytes) + bytes;
            self.evict();
        }
    }

    fn evict(&mut self) {
        while self.files.len() > self.config.cache_files
            || (self.total_bytes > self.config.cache_bytes && self.files.len() > 1)
        {
            let Some((k, _)) = self.files.pop_lru() else {
                break;
            };
            if let Some(b) = self.file_bytes.remove(&k) {
                self.total_bytes -= b.min(self.total_bytes);
            }
            self.stat_index.retain(|_, v| *v != k);
            self.stats.cache_evictions += 1;
        }
    }

    /// Symbolizes a kernel address; `/proc/kallsyms` is loaded on first use (once; a failure
    /// is logged once and every kernel frame is then unresolved).
    pub fn symbolize_kernel(&mut self, addr: u64) -> KernelFrame {
        if matches!(self.kernel, KernelState::NotLoaded) {
            self.kernel = match KernelSymbols::load() {
                Ok(k) => KernelState::Loaded(k),
                Err(e) => {
                    tracing::warn!(error = %crate::error::Chain(&e), "kernel frames will not be symbolized");
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

    /// Approximate bytes held by the cache.
    pub fn cached_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Records a mapping at observation time: opens its file (kept open until parsed, within
    /// a bound) or attaches the already-parsed file; reads the vDSO now (it is small).
    fn snapshot_mapping(&mut self, pid: u32, root: &FsRoot, entry: MapEntry) -> ProcMapping {
        let state = match &entry.path {
            MapPath::File(p) | MapPath::Deleted(p) => {
                match open_mapped_file(pid, root, &entry, p) {
                    Ok((file, _)) => match file.metadata() {
                        Ok(meta) => {
                            let stat = StatKey::of(&meta);
                            if self.stat_index.contains_key(&stat) {
                                // Already parsed: attach now, cheaply.
                                self.resolve_mapping(pid, root, &entry, Some(stat))
                            } else {
                                if self.pending_files.len() < self.config.max_pending_files {
                                    self.pending_files
                                        .entry(stat)
                                        .or_insert_with(|| Arc::new(file));
                                }
                                MapState::Pending { stat: Some(stat) }
                            }
                        }
                        Err(_) => MapState::Pending { stat: None },
                    },
                    Err(e) => {
                        if matches!(e, Error::FileReplaced { .. }) {
                            self.stats.files_replaced += 1;
                        }
                        self.stats.file_failures += 1;
                        tracing::debug!(pid, path = %p.display(), error = %e, "cannot open mapped file");
                        self.ready_without_symbols(p.clone(), &entry)
                    }
                }
            }
            MapPath::Special(name) if name == "[vdso]" => {
                let syms = self.vdso_symbols(pid, &entry);
                self.ready(PathBuf::from(name), &entry, syms)
            }
            MapPath::Special(name) => self.ready_without_symbols(PathBuf::from(name), &entry),
            MapPath::Anonymous => MapState::NoFile,
        };
        ProcMapping { entry, state }
    }

    fn ready_without_symbols(&self, path: PathBuf, entry: &MapEntry) -> MapState {
        self.ready(path, entry, None)
    }

    fn ready(&self, path: PathBuf, entry: &MapEntry, syms: Option<Arc<FileSymbols>>) -> MapState {
        let vaddr = syms.as_ref().and_then(|s| {
            s.elf
                .mapping_offset_to_vaddr(entry.offset, entry.is_executable())
        });
        let module = Module {
            path,
            build_id: syms.as_ref().and_then(|s| s.elf.build_id_hex()),
            map_start: entry.start,
            map_end: entry.end,
            file_offset: entry.offset,
            vaddr_start: vaddr.unwrap_or(entry.offset),
        };
        MapState::Ready {
            module: Arc::new(module),
            syms,
            has_vaddr: vaddr.is_some(),
        }
    }

    /// Parses (or fetches from the cache) the file of a pending mapping.
    fn resolve_mapping(
        &mut self,
        pid: u32,
        root: &FsRoot,
        entry: &MapEntry,
        stat: Option<StatKey>,
    ) -> MapState {
        let Some(path) = entry.path.file_path().map(Path::to_owned) else {
            return MapState::NoFile;
        };
        let file = match stat.and_then(|s| self.pending_files.remove(&s)) {
            Some(f) => Some(f),
            None if stat.is_some_and(|s| self.stat_index.contains_key(&s)) => None,
            None => match open_mapped_file(pid, root, entry, &path) {
                Ok((f, _)) => Some(Arc::new(f)),
                Err(e) => {
                    self.stats.file_failures += 1;
                    tracing::debug!(pid, path = %path.display(), error = %e, "cannot reopen mapped file");
                    return self.ready_without_symbols(path, entry);
                }
            },
        };
        let stat = match (stat, &file) {
            (Some(s), _) => s,
            (None, Some(f)) => match f.metadata() {
                Ok(m) => StatKey::of(&m),
                Err(_) => return self.ready_without_symbols(path, entry),
            },
            (None, None) => return self.ready_without_symbols(path, entry),
        };
        match self.resolve_file(stat, file, &path, root) {
            Ok(syms) => self.ready(path, entry, Some(syms)),
            Err(e) => {
                self.stats.file_failures += 1;
                tracing::debug!(pid, path = %path.display(), error = %e, "cannot parse mapped file");
                self.ready_without_symbols(path, entry)
            }
        }
    }

    /// The parsed file for `stat`: from the cache (by stat key, then by build ID / content
    /// hash), else parsed from `file`.
    fn resolve_file(
        &mut self,
        stat: StatKey,
        file: Option<Arc<File>>,
        path: &Path,
        root: &FsRoot,
    ) -> Result<Arc<FileSymbols>, Error> {
        if let Some(id) = self.stat_index.get(&stat)
            && let Some(s) = self.files.get(id)
        {
            self.stats.cache_hits += 1;
            return Ok(s.clone());
        }
        let file = match file {
            Some(f) => f,
            None => Arc::new(
                root.open(path)
                    .map_err(|e| Error::from_io(path.to_owned(), e))?,
            ),
        };
        if stat.size == 0 {
            return Err(Error::InvalidElfFile {
                path: path.to_owned(),
                reason: "the file is empty".to_owned(),
            });
        }
        // SAFETY: read-only private map, only read while alive. Another process may rewrite
        // the file in place (truncation can raise SIGBUS); profiled binaries and libraries are
        // replaced by rename in practice, and reading whole files would cost far more memory.
        let map = unsafe { memmap2::Mmap::map(&*file) }
            .map_err(|e| Error::from_io(path.to_owned(), e))?;
        let map = Arc::new(map);
        let refs = match object::File::parse(&**map) {
            Ok(f) => DebugRefs::of(&f),
            Err(e) => {
                return Err(Error::InvalidElfFile {
                    path: path.to_owned(),
                    reason: e.to_string(),
                });
            }
        };
        let id = file_identity(&map, &refs);
        if let Some(s) = self.files.get(&id) {
            self.stats.cache_hits += 1;
            let s = s.clone();
            self.stat_index.insert(stat, id);
            return Ok(s);
        }
        let options = SourceOptions {
            debug_files: self.config.debug_files,
            dwarf: self.config.dwarf,
        };
        let (syms, disk_hit) = FileSymbols::new(
            map,
            path,
            root.clone(),
            Some((stat.dev, stat.inode)),
            options,
            self.disk.clone(),
            &id,
        )?;
        if disk_hit {
            self.stats.disk_cache_hits += 1;
        }
        self.stats.files_parsed += 1;
        let syms = Arc::new(syms);
        self.insert_file(id.clone(), syms.clone());
        if self.stat_index.len() > 4 * self.config.cache_files {
            self.stat_index.clear();
        }
        self.stat_index.insert(stat, id);
        Ok(syms)
    }

    fn insert_file(&mut self, id: String, syms: Arc<FileSymbols>) {
        let bytes = syms.approx_bytes();
        self.total_bytes += bytes;
        if let Some(old) = self.file_bytes.insert(id.clone(), bytes) {
            self.total_bytes -= old.min(self.total_bytes);
        }
        self.files.put(id, syms);
        self.evict();
    }

    fn vdso_symbols(&mut self, pid: u32, entry: &MapEntry) -> Option<Arc<FileSymbols>> {
        if entry.len() > MAX_VDSO_LEN {
            return None;
        }
        let len = usize::try_from(entry.len()).ok()?;
        let mut anon = memmap2::MmapMut::map_anon(len).ok()?;
        if let Err(e) = RemoteMemory::new(pid).read_exact_at(entry.start, &mut anon) {
            tracing::debug!(pid, error = %e, "cannot read the vDSO");
            return None;
        }
        let map = Arc::new(anon.make_read_only().ok()?);
        let refs = object::File::parse(&**map)
            .ok()
            .map(|f| DebugRefs::of(&f))?;
        let id = format!(
            "vdso-{}",
            file_identity(
                &map,
                &DebugRefs {
                    build_id: None,
                    ..refs
                }
            )
        );
        if let Some(s) = self.files.get(&id) {
            self.stats.cache_hits += 1;
            return Some(s.clone());
        }
        let options = SourceOptions {
            debug_files: false,
            dwarf: false,
        };
        match FileSymbols::new(
            map,
            Path::new("[vdso]"),
            FsRoot::Host,
            None,
            options,
            None,
            &id,
        ) {
            Ok((s, _)) => {
                self.stats.files_parsed += 1;
                let s = Arc::new(s);
                self.insert_file(id, s.clone());
                Some(s)
            }
            Err(e) => {
                self.stats.file_failures += 1;
                tracing::debug!(pid, error = %e, "cannot parse the vDSO");
                None
            }
        }
    }
}

/// The frame for `addr` (ELF address `vaddr`) from a resolved lookup.
fn user_frame(addr: u64, module: Option<Arc<Module>>, vaddr: u64, r: &Resolved) -> UserFrame {
    let owned = |s: &Option<Arc<str>>| s.as_deref().map(str::to_owned);
    let (outer, inner) = match r.frames.split_last() {
        Some((o, i)) => (Some(o), i),
        None => (None, &[][..]),
    };
    UserFrame {
        addr,
        module,
        elf_addr: Some(vaddr),
        function: outer.and_then(|f| owned(&f.function)),
        file: outer.and_then(|f| owned(&f.file)),
        line: outer.and_then(|f| f.line),
        inlined: inner
            .iter()
            .map(|f| SourceFrame {
                function: owned(&f.function),
                file: owned(&f.file),
                line: f.line,
            })
            .collect(),
    }
}

/// Opens the file behind a mapping: `/proc/PID/map_files/<start>-<end>` (the very file
/// mapped, even if deleted, replaced or in another mount namespace), else `path` resolved
/// inside the process's root if its inode matches the mapping's.
fn open_mapped_file(
    pid: u32,
    root: &FsRoot,
    entry: &MapEntry,
    path: &Path,
) -> Result<(File, PathBuf), Error> {
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
    let f = root
        .open(path)
        .map_err(|e| Error::from_proc_io(pid, path.to_owned(), e))?;
    let inode = f
        .metadata()
        .map_err(|e| Error::from_io(path.to_owned(), e))?
        .ino();
    if entry.inode != 0 && inode != entry.inode {
        return Err(Error::FileReplaced {
            path: path.to_owned(),
        });
    }
    Ok((f, path.to_owned()))
}

/// Whether process `pid` has exited but is not reaped yet (state `Z` in `/proc/PID/stat`).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            == Some("Z")
    })
}

#[cfg(test)]
mod memo_tests {
    use std::collections::HashSet;

    use super::*;

    /// Up to `n` addresses spread over the sized function symbols of `path`.
    fn addresses(path: &Path, n: usize) -> Vec<u64> {
        let syms = crate::elf::ElfSymbols::open(path).expect("symbols");
        let funcs: Vec<(u64, u64)> = syms
            .iter()
            .map(|(s, z, _)| (s, z))
            .filter(|&(_, z)| z > 0)
            .collect();
        assert!(
            !funcs.is_empty(),
            "{} has no function symbols",
            path.display()
        );
        (0..n as u64)
            .map(|i| {
                let (s, z) = funcs[(i.wrapping_mul(2_654_435_761) % funcs.len() as u64) as usize];
                s + i.wrapping_mul(40_503) % z
            })
            .collect()
    }

    fn libc_path() -> PathBuf {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
            .map(PathBuf::from)
            .expect("libc is mapped")
    }

    fn memo_len(s: &Symbolizer) -> usize {
        s.files
            .iter()
            .map(|(_, f)| f.memo.lock().map_or(0, |m| m.len()))
            .sum()
    }

    fn check_hits_equal_misses(path: &Path, mode: DemangleMode, inline: bool) {
        let addrs = addresses(path, 3000);
        let mut off = Symbolizer::builder()
            .demangle(mode)
            .inline_frames(inline)
            .address_memo(0)
            .build();
        let mut on = Symbolizer::builder()
            .demangle(mode)
            .inline_frames(inline)
            .build();
        let expected = off.symbolize_elf_batch(path, &addrs).expect("memo off");
        let again = off.symbolize_elf_batch(path, &addrs).expect("memo off");
        assert_eq!(off.stats().memo_hits, 0);
        assert_eq!(memo_len(&off), 0);
        assert_eq!(expected, again);
        assert!(
            expected.iter().any(|f| f.function.is_some()),
            "{}: nothing named",
            path.display()
        );
        let miss = on.symbolize_elf_batch(path, &addrs).expect("memo on");
        let distinct = addrs.iter().collect::<HashSet<_>>().len() as u64;
        assert_eq!(on.stats().memo_hits, addrs.len() as u64 - distinct);
        let hits = on.symbolize_elf_batch(path, &addrs).expect("memo on");
        assert_eq!(
            on.stats().memo_hits,
            2 * addrs.len() as u64 - distinct,
            "the second pass is all hits"
        );
        assert_eq!(
            miss,
            expected,
            "{}: a miss differs from memo off",
            path.display()
        );
        assert_eq!(
            hits,
            expected,
            "{}: a hit differs from memo off",
            path.display()
        );
        // Hits count like the lookups they replace.
        let (so, sn) = (off.stats(), on.stats());
        assert_eq!(so.unresolved_frames, sn.unresolved_frames);
        assert_eq!(so.dwarf_frames, sn.dwarf_frames);
        assert_eq!(so.go_frames, sn.go_frames);
        // `symbolize_elf` uses the same memo.
        for (i, &a) in addrs.iter().enumerate().take(50) {
            assert_eq!(on.symbolize_elf(path, a).expect("one"), expected[i]);
        }
        assert_eq!(on.stats().memo_hits, 2 * addrs.len() as u64 - distinct + 50);
    }

    #[test]
    fn memo_hits_equal_misses_on_the_test_binary() {
        let exe = std::env::current_exe().expect("exe");
        check_hits_equal_misses(&exe, DemangleMode::Full, true);
        check_hits_equal_misses(&exe, DemangleMode::Simplified, false);
    }

    #[test]
    fn memo_hits_equal_misses_on_libc() {
        let libc = libc_path();
        check_hits_equal_misses(&libc, DemangleMode::Full, true);
        check_hits_equal_misses(&libc, DemangleMode::None, true);
    }

    #[test]
    fn memo_serves_symbolize_user() {
        let pid = std::process::id();
        let exe = std::env::current_exe().expect("exe");
        let libc = libc_path();
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let entries = crate::maps::parse_maps(&maps).expect("maps");
        // Process addresses: every executable page of the test binary and libc, sampled.
        let addrs: Vec<u64> = entries
            .iter()
            .filter(|e| e.is_executable())
            .filter(|e| e.path.file_path().is_some_and(|p| p == exe || p == libc))
            .flat_map(|e| (e.start..e.end).step_by(997).take(1500))
            .collect();
        assert!(addrs.len() > 1000, "{} addresses", addrs.len());
        let mut off = Symbolizer::builder().address_memo(0).build();
        let mut on = Symbolizer::builder().build();
        let expected: Vec<UserFrame> = addrs.iter().map(|&a| off.symbolize_user(pid, a)).collect();
        let miss: Vec<UserFrame> = addrs.iter().map(|&a| on.symbolize_user(pid, a)).collect();
        let hits_before = on.stats().memo_hits;
        let hit: Vec<UserFrame> = addrs.iter().map(|&a| on.symbolize_user(pid, a)).collect();
        assert_eq!(on.stats().memo_hits - hits_before, addrs.len() as u64);
        assert_eq!(off.stats().memo_hits, 0);
        assert_eq!(miss, expected);
        assert_eq!(hit, expected);
        assert!(expected.iter().filter(|f| f.function.is_some()).count() > addrs.len() / 2);
    }

    #[test]
    fn memo_is_bounded_per_file() {
        let exe = std::env::current_exe().expect("exe");
        let addrs = addresses(&exe, 2000);
        let mut s = Symbolizer::builder().address_memo(100).build();
        s.symbolize_elf_batch(&exe, &addrs).expect("symbolize");
        assert_eq!(memo_len(&s), 100);
        // Addresses asked for again and again get in, in place of ones asked for once.
        let hot: Vec<u64> = addrs[addrs.len() - 20..].to_vec();
        for _ in 0..4 {
            s.symbolize_elf_batch(&exe, &hot).expect("symbolize");
        }
        let before = s.stats().memo_hits;
        s.symbolize_elf_batch(&exe, &hot).expect("symbolize");
        assert_eq!(s.stats().memo_hits - before, hot.len() as u64);
        assert_eq!(memo_len(&s), 100);
    }
}
