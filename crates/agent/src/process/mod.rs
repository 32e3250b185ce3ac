//! The process manager: loads what the eBPF unwinder needs about each process.
//!
//! It learns processes from the sampler's reports (a PID it does not know was sampled, a
//! known PID ran code outside its mappings, exec'd or exited) and from a start-up scan. For
//! each process it reads `/proc/PID/maps`, opens every executable file mapping through
//! `/proc/PID/map_files` (or `/proc/PID/root`), identifies the file by its content
//! ([`FileId`]), extracts its table once with `ferroscope-unwind-native` (successes and
//! failures are both cached) and loads it into the eBPF maps, shared by every process that
//! maps the same file. The process's address space then becomes pieces in the mapping trie:
//! its file mappings, and the ranges runtimes own in it (which a
//! runtime plug-in sets with [`ProcessManager::set_owned_ranges`]), each piece saying which
//! file, at which bias, and which unwinder. Marking the process known switches its samples
//! from the frame-pointer walk to the stack-delta unwinder.
//!
//! The manager knows nothing of runtimes: what it loaded or removed is reported as
//! [`ProcessEvent`]s, which the session hands to the runtime plug-ins.
//!
//! Exited processes are removed only after a grace period, so that traces already queued in
//! the ring buffer were processed first. Everything that touches eBPF goes through
//! [`UnwindBackend`].
//!
//! The tables live in `tables.rs` (encoding, allocation, eviction), the pieces of a process's
//! address space in `pieces.rs`.

mod backend;
mod cache;
mod extract;
mod files;
mod metrics;
mod pieces;
mod tables;
mod vdso;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferroscope_ebpf_abi::PidEventKind;
use ferroscope_ebpf_programs::Counters;
use ferroscope_symbolize::maps::{MapEntry, MapPath, read_maps};
use ferroscope_symbolize::root::FsRoot;
use ferroscope_unwind_api::{MappedRange, OwnedRange};

#[cfg(test)]
pub(crate) use backend::FakeMaps;
pub use backend::UnwindBackend;
pub use files::FileId;
pub use metrics::{ManagerMetrics, UnwindMetrics};
pub use pieces::covering_prefixes;
pub use tables::{EncodedTable, RangeAllocator, encode_table, raw_info};

use cache::TableCache;
use extract::{DebugSearch, Done, Extractor, Job};
use files::{FileFacts, FileKey, file_facts, load_bias, map_files_path, open_mapped_file};
use pieces::{FileRange, Prefixes, SlotRange};
use tables::{NotLoaded, TableStore};
use vdso::Vdso;

/// Limits and timings of the process manager.
#[derive(Debug, Clone)]
pub struct ProcessManagerConfig {
    /// Most stack-delta entries kept loaded (used and unused tables together); unused
    /// tables are evicted, least recently used first, above it.
    pub max_table_entries: u64,
    /// Files larger than this are not read (their frames end with an unwind error).
    pub max_file_size: u64,
    /// How long an exited process stays loaded, so that its queued traces are processed.
    pub exit_grace: Duration,
    /// A process is rescanned (dlopen) at most this often.
    pub rescan_interval: Duration,
    /// Work done per [`ProcessManager::tick`] before the rest is left for the next one.
    pub tick_budget: Duration,
    /// A process whose rescans find nothing new is rescanned less and less often, up to
    /// this interval.
    pub max_rescan_interval: Duration,
    /// Where extracted tables are kept by file identity (`None`: not kept).
    pub table_cache: Option<PathBuf>,
    /// The share of one CPU table extraction may use over time (after a burst).
    pub extract_cpu_share: f64,
}

impl Default for ProcessManagerConfig {
    fn default() -> Self {
        ProcessManagerConfig {
            max_table_entries: 3 << 20,
            max_file_size: 1 << 30,
            exit_grace: Duration::from_secs(1),
            rescan_interval: Duration::from_millis(100),
            tick_budget: Duration::from_millis(50),
            max_rescan_interval: Duration::from_secs(10),
            table_cache: None,
            extract_cpu_share: 0.25,
        }
    }
}

/// An executable file a loaded process maps, as runtime plug-ins see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    /// Its identity.
    pub file_id: FileId,
    /// Its path as `/proc/PID/maps` shows it.
    pub path: String,
    /// Where to open it from (`/proc/PID/map_files/...`).
    pub open_path: PathBuf,
    /// Process address of the file's virtual address `v` is `v + bias`.
    pub bias: u64,
    /// The mapping.
    pub start: u64,
    /// One past its end.
    pub end: u64,
}

/// What the manager did to a process, for the runtime plug-ins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// The process was loaded (`rescan` false) or its mappings read again.
    Mapped {
        /// The process.
        pid: u32,
        /// Whether it was loaded before.
        rescan: bool,
        /// Its executable file mappings.
        files: Vec<MappedFile>,
        /// All its mappings.
        mappings: Vec<MappedRange>,
    },
    /// The process was unloaded (it exited, exec'd, or could not be read).
    Removed {
        /// The process.
        pid: u32,
    },
}

/// A mapping's place and its file's (device major, minor, inode, offset).
type MappingKey = (u64, u64, (u32, u32, u64, u64));

#[derive(Debug, Clone)]
struct LoadedMapping {
    start: u64,
    end: u64,
    /// The mapped file's (device, inode, offset): a rescan reuses a mapping only if these
    /// match, so a file replaced at the same address is read again.
    key: (u32, u32, u64, u64),
    file_id: FileId,
    bias: u64,
    /// Whether the file's table is loaded (and this mapping is one of its users).
    has_table: bool,
    path: String,
    open_path: PathBuf,
}

#[derive(Debug, Default)]
struct Process {
    mappings: Vec<LoadedMapping>,
    /// Executable memory no file backs and no runtime owns (yet): JIT code before its
    /// runtime registers it. In the trie without a table, so that a sample there ends its
    /// stack without asking for a rescan.
    anonymous: Vec<(u64, u64)>,
    owned: Vec<SlotRange>,
    prefixes: Prefixes,
    last_scan: Option<Instant>,
    /// The wait before the next rescan: doubled each time a rescan finds no new mapping.
    rescan_backoff: Duration,
}

/// What the manager still has to do for a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Work {
    Load(u32),
    Rescan(u32),
    /// exec (or the PID now names another process): unload, then load as new.
    Reload(u32),
}

impl Work {
    fn pid(&self) -> u32 {
        match *self {
            Work::Load(p) | Work::Rescan(p) | Work::Reload(p) => p,
        }
    }
}

/// Loads and unloads processes' unwind tables. See the module documentation.
#[derive(Debug)]
pub struct ProcessManager {
    config: ProcessManagerConfig,
    processes: HashMap<u32, Process>,
    tables: TableStore,
    failed_files: HashSet<FileId>,
    files: HashMap<FileKey, Option<FileFacts>>,
    queue: VecDeque<Work>,
    queued: HashSet<Work>,
    failed_pids: HashMap<u32, Instant>,
    exiting: Vec<(u32, Instant)>,
    rescans_due: HashMap<u32, Instant>,
    prefixes: u64,
    owned_ranges: u64,
    events: Vec<ProcessEvent>,
    metrics: ManagerMetrics,
    extractor: Extractor,
    /// Tables being extracted, with the processes waiting for them.
    pending: HashMap<FileId, HashSet<u32>>,
    /// Tables extracted that did not fit (every table in the array is in use), with the
    /// processes waiting for them and the entries they need.
    waiting: HashMap<FileId, Waiting>,
    /// Entries in use when a table last did not fit: retried once fewer are.
    in_use_at_full: u64,
    /// The kernel's vDSO (the same in every process), when it could be read.
    vdso: Option<Vdso>,
}

#[derive(Debug)]
struct Waiting {
    entries: u64,
    waiters: HashSet<u32>,
}

const MAX_MAPPINGS_PER_PROCESS: usize = 4096;
const FILE_CACHE_LIMIT: usize = 65536;

impl ProcessManager {
    /// An empty manager.
    pub fn new(config: ProcessManagerConfig) -> Self {
        let extractor = Extractor::start(
            config.table_cache.as_deref().and_then(TableCache::open),
            config.extract_cpu_share,
        );
        ProcessManager {
            tables: TableStore::new(config.max_table_entries),
            config,
            processes: HashMap::new(),
            failed_files: HashSet::new(),
            files: HashMap::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            failed_pids: HashMap::new(),
            exiting: Vec::new(),
            rescans_due: HashMap::new(),
            prefixes: 0,
            owned_ranges: 0,
            events: Vec::new(),
            metrics: ManagerMetrics::default(),
            extractor,
            pending: HashMap::new(),
            waiting: HashMap::new(),
            in_use_at_full: 0,
            vdso: Vdso::of_this_process(),
        }
    }

    /// Queues every process of the host (`pids` = `None`) or the given ones for loading.
    pub fn scan(&mut self, pids: Option<&[u32]>) {
        match pids {
            Some(pids) => pids
                .iter()
                .for_each(|&pid| self.enqueue(Work::Load(pid), false)),
            None => {
                let Ok(dir) = std::fs::read_dir("/proc") else {
                    return;
                };
                let own = std::process::id();
                for entry in dir.flatten() {
                    if let Some(pid) = entry
                        .file_name()
                        .to_str()
                        .and_then(|s| s.parse::<u32>().ok())
                        && pid != own
                    {
                        self.enqueue(Work::Load(pid), false);
                    }
                }
            }
        }
    }

    fn enqueue(&mut self, work: Work, urgent: bool) {
        if self.queued.insert(work) {
            if urgent {
                self.queue.push_front(work);
            } else {
                self.queue.push_back(work);
            }
        }
    }

    /// Takes a report of the eBPF sampler into account (the work happens in
    /// [`ProcessManager::tick`]).
    pub fn report(&mut self, pid: u32, kind: PidEventKind) {
        match kind {
            // About a thread's time off CPU, not about its process's mappings.
            PidEventKind::OffCpuEnd => {}
            PidEventKind::New => {
                if !self.processes.contains_key(&pid) && !self.failed_pids.contains_key(&pid) {
                    self.enqueue(Work::Load(pid), true);
                }
            }
            PidEventKind::Rescan => {
                // Too soon after the last scan: do it when the interval is over (the
                // library being loaded may have been half mapped at the last scan).
                if let Some(p) = self.processes.get(&pid) {
                    let due = p
                        .last_scan
                        .map_or_else(Instant::now, |t| t + p.rescan_backoff);
                    self.rescans_due.entry(pid).or_insert(due);
                }
            }
            PidEventKind::Exec => {
                if self.processes.contains_key(&pid) {
                    self.enqueue(Work::Reload(pid), true);
                }
            }
            PidEventKind::Exit => {
                if !self.exiting.iter().any(|(p, _)| *p == pid) {
                    self.exiting
                        .push((pid, Instant::now() + self.config.exit_grace));
                }
            }
        }
    }

    /// Does queued work for up to the tick budget and removes exited processes whose grace
    /// period is over. Call it after draining the traces, so that an exited process's last
    /// traces were handled before it is removed. What it did is in
    /// [`ProcessManager::take_events`].
    pub fn tick(&mut self, maps: &mut dyn UnwindBackend) {
        for done in self.extractor.finished() {
            self.extracted(maps, done);
        }
        self.retry_waiting(maps);
        let now = Instant::now();
        let mut i = 0;
        while i < self.exiting.len() {
            if self.exiting[i].1 <= now {
                let (pid, _) = self.exiting.swap_remove(i);
                if self.remove_process(maps, pid) {
                    self.metrics.num_proc_exit += 1;
                }
                self.failed_pids.remove(&pid);
            } else {
                i += 1;
            }
        }
        let due: Vec<u32> = self
            .rescans_due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for pid in due {
            self.rescans_due.remove(&pid);
            self.enqueue(Work::Rescan(pid), true);
        }
        let start = Instant::now();
        while start.elapsed() < self.config.tick_budget {
            let Some(work) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&work);
            match work {
                Work::Load(pid) => {
                    if !self.processes.contains_key(&pid) {
                        self.sync_process(maps, pid, false);
                    }
                }
                Work::Rescan(pid) => {
                    if self.processes.contains_key(&pid) {
                        self.sync_process(maps, pid, true);
                    }
                }
                Work::Reload(pid) => {
                    // An exit report of the old program (or of the process that had the
                    // PID before) must not unload the new one.
                    self.exiting.retain(|(p, _)| *p != pid);
                    if self.remove_process(maps, pid) {
                        self.metrics.num_proc_exec += 1;
                    }
                    self.sync_process(maps, pid, false);
                }
            }
        }
        // Failed processes are retried after a while (they may have exec'd), and forgotten
        // when gone.
        self.failed_pids.retain(|pid, when| {
            when.elapsed() < Duration::from_secs(10) && Path::new(&format!("/proc/{pid}")).exists()
        });
    }

    /// What was loaded and removed since the last call.
    pub fn take_events(&mut self) -> Vec<ProcessEvent> {
        std::mem::take(&mut self.events)
    }

    /// Whether work is queued or tables are being extracted.
    pub fn busy(&self) -> bool {
        !self.queue.is_empty() || !self.pending.is_empty()
    }

    /// Works until nothing is queued or being extracted (tests: loading is asynchronous).
    #[cfg(test)]
    pub(crate) fn settle(&mut self, maps: &mut dyn UnwindBackend) {
        let deadline = Instant::now() + Duration::from_secs(60);
        self.tick(maps);
        while self.busy() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            self.tick(maps);
        }
    }

    /// Whether `pid`'s tables are loaded.
    pub fn is_loaded(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// The manager's metrics together with the eBPF unwinder's counters.
    pub fn metrics(&self, counters: &Counters) -> UnwindMetrics {
        UnwindMetrics {
            native: counters.clone(),
            manager: self.manager_metrics(),
        }
    }

    /// How many entries each of the manager's per-process structures holds (each goes back
    /// to the number of loaded processes, or zero, once processes are gone).
    pub fn tracked(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("manager_processes", self.processes.len() as u64),
            ("manager_queue", self.queue.len() as u64),
            ("manager_failed_pids", self.failed_pids.len() as u64),
            ("manager_exiting", self.exiting.len() as u64),
            ("manager_rescans_due", self.rescans_due.len() as u64),
            ("manager_tables_pending", self.pending.len() as u64),
            (
                "manager_tables_waiting",
                self.waiting.values().map(|w| w.waiters.len() as u64).sum(),
            ),
        ]
    }

    /// Removes every process that is not in `alive` (its exit report may have been lost),
    /// and forgets failures and queued work of those.
    pub fn sweep(&mut self, maps: &mut dyn UnwindBackend, alive: &HashSet<u32>) {
        let gone: Vec<u32> = self
            .processes
            .keys()
            .copied()
            .filter(|pid| !alive.contains(pid))
            .collect();
        for pid in gone {
            if self.remove_process(maps, pid) {
                self.metrics.num_proc_exit += 1;
            }
        }
        self.failed_pids.retain(|pid, _| alive.contains(pid));
        self.rescans_due.retain(|pid, _| alive.contains(pid));
        for waiters in self.pending.values_mut() {
            waiters.retain(|pid| alive.contains(pid));
        }
        self.waiting.retain(|_, w| {
            w.waiters.retain(|pid| alive.contains(pid));
            !w.waiters.is_empty()
        });
        self.exiting
            .retain(|(pid, _)| alive.contains(pid) || self.processes.contains_key(pid));
        let queued = &mut self.queued;
        self.queue.retain(|w| {
            let keep = alive.contains(&w.pid());
            if !keep {
                queued.remove(w);
            }
            keep
        });
    }

    /// The manager's own metrics.
    pub fn manager_metrics(&self) -> ManagerMetrics {
        let mut m = self.metrics;
        m.num_exe_id_loaded_to_ebpf = self.tables.loaded() as u64;
        m.num_tables_evicted = self.tables.evicted;
        m.processes_loaded = self.processes.len() as u64;
        m.delta_entries_used = self.tables.entries_used();
        m.delta_entries_capacity = self.tables.entries_capacity();
        m.delta_pages = self.tables.pages();
        m.pid_mapping_prefixes = self.prefixes;
        m.unwind_infos = self.tables.infos() as u64;
        m.owned_ranges = self.owned_ranges;
        m
    }

    /// The ranges a runtime (at `slot`) owns in `pid` from now on, replacing those it owned
    /// before; an empty list releases them. Nothing happens for a process that is not
    /// loaded.
    pub fn set_owned_ranges(
        &mut self,
        maps: &mut dyn UnwindBackend,
        pid: u32,
        slot: u32,
        ranges: &[OwnedRange],
    ) {
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        let before = p.owned.len();
        p.owned.retain(|o| o.slot != slot);
        p.owned
            .extend(ranges.iter().map(|&range| SlotRange { slot, range }));
        self.owned_ranges =
            (self.owned_ranges + p.owned.len() as u64).saturating_sub(before as u64);
        self.apply_pieces(maps, pid);
    }

    /// The ranges `pid` has owned by runtimes now (for tests and diagnostics).
    pub fn owned_ranges(&self, pid: u32) -> Vec<(u32, OwnedRange)> {
        self.processes
            .get(&pid)
            .map(|p| p.owned.iter().map(|o| (o.slot, o.range)).collect())
            .unwrap_or_default()
    }

    /// Brings `pid`'s trie entries in line with its file mappings and owned ranges.
    fn apply_pieces(&mut self, maps: &mut dyn UnwindBackend, pid: u32) {
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        // Mappings without a table and anonymous executable memory are in the trie too, as
        // file 0, so that a sample there does not ask for a rescan that would find nothing
        // new. Until a file's table is ready (it is being extracted, or does not fit) its
        // frames are unwound by frame pointer, as a process not loaded yet is; a file that
        // has no table at all (no CFI) and anonymous memory (JIT code no runtime owns, whose
        // frame pointers are anyone's guess) end the stack with "no unwind table".
        let failed = &self.failed_files;
        let files: Vec<FileRange> = p
            .mappings
            .iter()
            .map(|m| FileRange {
                start: m.start,
                end: m.end,
                file_id: if m.has_table { m.file_id } else { FileId(0) },
                bias: if m.has_table { m.bias } else { 0 },
                frame_pointer: !m.has_table && !failed.contains(&m.file_id),
            })
            .chain(p.anonymous.iter().map(|&(start, end)| FileRange {
                start,
                end,
                file_id: FileId(0),
                bias: 0,
                frame_pointer: false,
            }))
            .collect();
        let new = pieces::prefixes_of(&pieces::pieces(&files, &p.owned));
        let (removed, changed) = pieces::diff(&p.prefixes, &new);
        for (address, len) in removed {
            if let Err(e) = maps.remove_mapping_prefix(pid, address, len) {
                tracing::debug!(pid, "cannot remove a mapping prefix: {e}");
            }
        }
        let mut applied = new;
        for ((address, len), value) in changed {
            if let Err(e) = maps.insert_mapping_prefix(pid, address, len, value) {
                tracing::warn!(
                    pid,
                    "cannot load a mapping of the process into eBPF (fs_pid_mappings full?), its \
                     frames there end the stack: {e}"
                );
                applied.remove(&(address, len));
            }
        }
        self.prefixes =
            (self.prefixes + applied.len() as u64).saturating_sub(p.prefixes.len() as u64);
        p.prefixes = applied;
    }

    /// Reads `pid`'s mappings and brings the eBPF maps in line with them.
    fn sync_process(&mut self, maps: &mut dyn UnwindBackend, pid: u32, rescan: bool) {
        let entries = match read_maps(pid) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(
                    pid,
                    "cannot read the process's mappings, its stacks use frame pointers: {e}"
                );
                self.fail_process(maps, pid);
                return;
            }
        };
        let mut old: HashMap<MappingKey, LoadedMapping> = self
            .processes
            .get_mut(&pid)
            .map(|p| {
                std::mem::take(&mut p.mappings)
                    .into_iter()
                    .map(|m| ((m.start, m.end, m.key), m))
                    .collect()
            })
            .unwrap_or_default();
        let mut wanted: Vec<LoadedMapping> = Vec::new();
        let mut new_mappings = 0usize;
        if let Some(m) = entries
            .iter()
            .find(|e| e.is_executable() && matches!(&e.path, MapPath::Special(s) if s == "[vdso]"))
            .and_then(|e| self.vdso_mapping(maps, e))
        {
            if let Some(before) = old.remove(&(m.start, m.end, m.key)) {
                // Still the same: its table already counts this user.
                wanted.push(before);
            } else {
                if m.has_table {
                    self.tables.add_user(m.file_id);
                }
                wanted.push(m);
            }
        }
        for entry in entries
            .iter()
            .filter(|e| e.is_executable() && e.path.file_path().is_some())
        {
            if wanted.len() >= MAX_MAPPINGS_PER_PROCESS {
                break;
            }
            let key = (entry.dev_major, entry.dev_minor, entry.inode, entry.offset);
            if let Some(m) = old.remove(&(entry.start, entry.end, key)) {
                // The same file at the same place: its table's users are unchanged, unless it
                // had none and can get one now.
                let mut m = m;
                if !m.has_table && !self.failed_files.contains(&m.file_id) {
                    m.has_table = self.ensure_table(maps, pid, entry, m.file_id);
                    if m.has_table {
                        self.tables.add_user(m.file_id);
                    }
                }
                wanted.push(m);
                continue;
            }
            let Some((file_id, bias)) = self.identify(pid, entry) else {
                continue;
            };
            new_mappings += 1;
            let has_table = self.ensure_table(maps, pid, entry, file_id);
            if has_table {
                self.tables.add_user(file_id);
            }
            wanted.push(LoadedMapping {
                start: entry.start,
                end: entry.end,
                key,
                file_id,
                bias,
                has_table,
                path: entry
                    .path
                    .file_path()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                open_path: map_files_path(pid, entry),
            });
        }
        // Mappings that are gone (dlclose, a replaced file) give up their tables.
        let removed_any = !old.is_empty();
        for m in old.into_values() {
            if m.has_table {
                self.tables.remove_user(m.file_id);
            }
        }
        let anonymous: Vec<(u64, u64)> = entries
            .iter()
            .filter(|e| {
                e.is_executable()
                    && matches!(e.path, MapPath::Anonymous)
                    && !wanted.iter().any(|m| m.start < e.end && e.start < m.end)
            })
            .map(|e| (e.start, e.end))
            .take(MAX_MAPPINGS_PER_PROCESS)
            .collect();
        let base = self.config.rescan_interval;
        let max = self.config.max_rescan_interval;
        let process = self.processes.entry(pid).or_insert_with(|| Process {
            rescan_backoff: base,
            ..Process::default()
        });
        // A rescan that found nothing new (a sample in memory nobody can unwind) makes the
        // next one wait twice as long; one that found a library starts over.
        let changed = !rescan || removed_any || new_mappings > 0 || process.anonymous != anonymous;
        process.rescan_backoff = if changed {
            base
        } else {
            (process.rescan_backoff * 2).min(max)
        };
        process.mappings = wanted;
        process.anonymous = anonymous;
        process.last_scan = Some(Instant::now());
        self.apply_pieces(maps, pid);
        self.tables.evict_over_budget(maps);
        if let Err(e) = maps.set_pid_known(pid) {
            tracing::warn!(pid, "cannot mark the process as loaded in eBPF: {e}");
        }
        if rescan {
            self.metrics.num_proc_rescan += 1;
        } else {
            self.metrics.num_proc_new += 1;
        }
        let process = &self.processes[&pid];
        tracing::debug!(
            pid,
            mappings = process.mappings.len(),
            rescan,
            "process loaded for stack-delta unwinding"
        );
        self.events.push(ProcessEvent::Mapped {
            pid,
            rescan,
            files: process
                .mappings
                .iter()
                .map(|m| MappedFile {
                    file_id: m.file_id,
                    path: m.path.clone(),
                    open_path: m.open_path.clone(),
                    bias: m.bias,
                    start: m.start,
                    end: m.end,
                })
                .collect(),
            mappings: entries
                .iter()
                .map(|e| MappedRange {
                    start: e.start,
                    end: e.end,
                    path: e
                        .path
                        .file_path()
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    executable: e.is_executable(),
                })
                .collect(),
        });
    }

    fn fail_process(&mut self, maps: &mut dyn UnwindBackend, pid: u32) {
        self.remove_process(maps, pid);
        self.metrics.num_proc_failed += 1;
        self.failed_pids.insert(pid, Instant::now());
    }

    /// Removes a process from the maps; true when it was loaded.
    fn remove_process(&mut self, maps: &mut dyn UnwindBackend, pid: u32) -> bool {
        let _ = maps.forget_pid(pid);
        let Some(process) = self.processes.remove(&pid) else {
            return false;
        };
        for &(address, len) in process.prefixes.keys() {
            if let Err(e) = maps.remove_mapping_prefix(pid, address, len) {
                tracing::debug!(pid, "cannot remove a mapping prefix: {e}");
            }
        }
        self.prefixes = self.prefixes.saturating_sub(process.prefixes.len() as u64);
        self.owned_ranges = self.owned_ranges.saturating_sub(process.owned.len() as u64);
        for m in &process.mappings {
            if m.has_table {
                self.tables.remove_user(m.file_id);
            }
        }
        self.tables.evict_over_budget(maps);
        self.events.push(ProcessEvent::Removed { pid });
        true
    }

    /// The process's `[vdso]` mapping, with the vDSO's table (loaded on first use).
    fn vdso_mapping(
        &mut self,
        maps: &mut dyn UnwindBackend,
        entry: &MapEntry,
    ) -> Option<LoadedMapping> {
        let vdso = self.vdso.as_ref()?;
        let id = vdso.facts.id;
        let bias = load_bias(&vdso.facts.loads, entry)?;
        let has_table = self.tables.touch(id)
            || (!self.failed_files.contains(&id)
                && match self.tables.load(maps, id, "[vdso]", &vdso.table) {
                    Ok(()) => true,
                    Err(NotLoaded::Permanent) => {
                        self.failed_files.insert(id);
                        false
                    }
                    Err(NotLoaded::Full) => false,
                });
        Some(LoadedMapping {
            start: entry.start,
            end: entry.end,
            key: (0, 0, 0, u64::MAX),
            file_id: id,
            bias,
            has_table,
            path: "[vdso]".into(),
            open_path: PathBuf::new(),
        })
    }

    /// The identity of a mapping's file and the mapping's load bias (cached per device,
    /// inode, size and modification time). `None` when the file cannot be read.
    fn identify(&mut self, pid: u32, entry: &MapEntry) -> Option<(FileId, u64)> {
        let facts = self.facts(pid, entry)?;
        let bias = load_bias(&facts.loads, entry)?;
        Some((facts.id, bias))
    }

    /// What the manager knows of a mapping's file (read once per device, inode, size and
    /// modification time).
    fn facts(&mut self, pid: u32, entry: &MapEntry) -> Option<FileFacts> {
        let (file, path) = open_mapped_file(pid, entry)?;
        let meta = file.metadata().ok()?;
        let key = FileKey::of(&meta);
        if let Some(f) = self.files.get(&key) {
            return f.clone();
        }
        let facts = if meta.len() == 0 || meta.len() > self.config.max_file_size {
            tracing::debug!(path = %path.display(), size = meta.len(), "file not read for unwinding: empty or too large");
            None
        } else {
            file_facts(&file)
        };
        if self.files.len() >= FILE_CACHE_LIMIT {
            self.files.clear();
        }
        self.files.insert(key, facts.clone());
        facts
    }

    /// Whether `file_id`'s table is loaded; when it is not, its extraction is started (once:
    /// later callers wait for the same one) and `pid` is told when it is done.
    fn ensure_table(
        &mut self,
        maps: &mut dyn UnwindBackend,
        pid: u32,
        entry: &MapEntry,
        file_id: FileId,
    ) -> bool {
        if self.tables.touch(file_id) {
            return true;
        }
        if self.failed_files.contains(&file_id) {
            return false;
        }
        if let Some(waiters) = self.pending.get_mut(&file_id) {
            waiters.insert(pid);
            return false;
        }
        if let Some(w) = self.waiting.get_mut(&file_id) {
            w.waiters.insert(pid);
            return false;
        }
        let Some((file, path)) = open_mapped_file(pid, entry) else {
            return false;
        };
        let Some(facts) = self.facts(pid, entry) else {
            return false;
        };
        // A binary with (almost) no .eh_frame may have its CFI in the separate debug file's
        // .debug_frame; unwind-native reads it only when the binary's own CFI covers fewer
        // than a handful of functions. Looking for it costs a few opens, once per file.
        let maps_path = entry
            .path
            .file_path()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| path.clone());
        let identity = file.metadata().ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        });
        let job = Job {
            file_id,
            file,
            shown: maps_path.to_string_lossy().into_owned(),
            debug: DebugSearch {
                root: FsRoot::of_process(pid),
                maps_path,
                refs: facts.refs,
                identity,
            },
        };
        self.pending.insert(file_id, HashSet::from([pid]));
        if let Some(done) = self.extractor.submit(job) {
            self.extracted(maps, done);
            return self.tables.touch(file_id);
        }
        false
    }

    /// A table the worker built (or could not): loaded, and the processes waiting for it
    /// get it.
    fn extracted(&mut self, maps: &mut dyn UnwindBackend, done: Done) {
        let Done {
            file_id,
            shown,
            result,
            cached,
            ..
        } = done;
        let waiters = self.pending.remove(&file_id).unwrap_or_default();
        let table = match result {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(path = %shown, "no unwind table, its frames end the stack: {e}");
                self.metrics.num_extraction_failures += 1;
                self.failed_files.insert(file_id);
                return;
            }
        };
        if cached {
            self.metrics.num_tables_from_cache += 1;
        } else {
            self.metrics.num_tables_extracted += 1;
        }
        match self.tables.load(maps, file_id, &shown, &table) {
            Ok(()) => self.table_ready(maps, file_id, waiters),
            Err(NotLoaded::Permanent) => {
                self.failed_files.insert(file_id);
            }
            Err(NotLoaded::Full) => {
                self.in_use_at_full = self.tables.entries_in_use();
                let capacity = self.tables.entries_capacity();
                let w = self.waiting.entry(file_id).or_insert_with(|| {
                    tracing::warn!(
                        path = %shown,
                        entries = table.len(),
                        in_use = self.in_use_at_full,
                        capacity,
                        "the stack-delta array is full of tables in use: this file's table was \
                         not loaded, so its frames end the stack for now; it is loaded once \
                         processes that use others exit (raise [limits] table_entries to fit \
                         more at once)"
                    );
                    Waiting {
                        entries: table.len() as u64,
                        waiters: HashSet::new(),
                    }
                });
                w.waiters.extend(waiters);
            }
        }
    }

    /// Gives a loaded table to the mappings of `waiters` that map its file.
    fn table_ready(
        &mut self,
        maps: &mut dyn UnwindBackend,
        file_id: FileId,
        waiters: HashSet<u32>,
    ) {
        for pid in waiters {
            let Some(p) = self.processes.get_mut(&pid) else {
                continue;
            };
            let mut changed = false;
            for m in p
                .mappings
                .iter_mut()
                .filter(|m| m.file_id == file_id && !m.has_table)
            {
                m.has_table = true;
                self.tables.add_user(file_id);
                changed = true;
            }
            if changed {
                self.apply_pieces(maps, pid);
            }
        }
    }

    /// Tables that did not fit are tried again once tables in use were freed: read again
    /// through a waiting process's mapping (from the cache when there is one).
    fn retry_waiting(&mut self, maps: &mut dyn UnwindBackend) {
        if self.waiting.is_empty() || self.tables.entries_in_use() >= self.in_use_at_full {
            return;
        }
        let free = self
            .tables
            .entries_capacity()
            .saturating_sub(self.tables.entries_in_use());
        let ready: Vec<FileId> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.entries <= free)
            .map(|(id, _)| *id)
            .collect();
        self.in_use_at_full = self.tables.entries_in_use();
        for file_id in ready {
            let Some(w) = self.waiting.remove(&file_id) else {
                continue;
            };
            let live: HashSet<u32> = w
                .waiters
                .into_iter()
                .filter(|pid| self.processes.contains_key(pid))
                .collect();
            let entry = live.iter().find_map(|pid| {
                let m = self.processes[pid]
                    .mappings
                    .iter()
                    .find(|m| m.file_id == file_id)?;
                Some((*pid, m.open_path.clone(), m.path.clone()))
            });
            let Some((pid, open_path, shown)) = entry else {
                continue;
            };
            let Ok(file) = std::fs::File::open(&open_path) else {
                continue;
            };
            let job = Job {
                file_id,
                file,
                shown: shown.clone(),
                debug: DebugSearch {
                    root: FsRoot::of_process(pid),
                    maps_path: PathBuf::from(shown),
                    refs: Default::default(),
                    identity: None,
                },
            };
            self.pending.insert(file_id, live);
            if let Some(done) = self.extractor.submit(job) {
                self.extracted(maps, done);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_unwind_api::RangeMode;
    use ferroscope_unwind_native::Kind;

    #[test]
    fn a_real_process_is_loaded_and_unloaded() {
        // This test process itself: its executable mapping must resolve to a table whose
        // rule for this function's code is found through the trie, page and entries.
        let pid = std::process::id();
        let mut maps = FakeMaps::new(1 << 22);
        let mut pm = ProcessManager::new(ProcessManagerConfig::default());
        pm.scan(Some(&[pid]));
        pm.settle(&mut maps);
        assert!(pm.is_loaded(pid));
        assert!(maps.known.contains(&pid));
        let here = a_real_process_is_loaded_and_unloaded as fn() as usize as u64;
        let m = maps
            .mapping(pid, here)
            .expect("the test binary's code is mapped");
        assert!(m.start <= here && here < m.end);
        assert_eq!(m.owner, 0, "native");
        let info = maps
            .lookup(FileId(m.file_id), here - m.bias)
            .expect("a rule for this function");
        assert_ne!(info.kind, Kind::Invalid as u8);
        let metrics = pm.metrics(&Counters::default());
        assert_eq!(metrics.manager.num_proc_new, 1);
        assert!(metrics.manager.num_exe_id_loaded_to_ebpf >= 1);
        let events = pm.take_events();
        let Some(ProcessEvent::Mapped {
            files,
            rescan: false,
            ..
        }) = events.first()
        else {
            panic!("a Mapped event first: {events:?}");
        };
        assert!(files.iter().any(|f| f.start <= here && here < f.end));

        pm.report(pid, PidEventKind::Exit);
        std::thread::sleep(pm.config.exit_grace + Duration::from_millis(10));
        pm.settle(&mut maps);
        assert!(!pm.is_loaded(pid));
        assert!(maps.prefixes.is_empty(), "every prefix removed");
        assert!(!maps.known.contains(&pid));
        assert_eq!(pm.metrics(&Counters::default()).manager.num_proc_exit, 1);
        assert_eq!(pm.take_events(), vec![ProcessEvent::Removed { pid }]);
        assert!(
            pm.tables.loaded() > 0,
            "tables stay cached for the next process"
        );
    }

    #[test]
    fn owned_ranges_are_the_plugins_until_released() {
        let pid = std::process::id();
        let mut maps = FakeMaps::new(1 << 22);
        let mut pm = ProcessManager::new(ProcessManagerConfig::default());
        pm.scan(Some(&[pid]));
        pm.settle(&mut maps);
        let here = owned_ranges_are_the_plugins_until_released as fn() as usize as u64;
        let file = maps.mapping(pid, here).expect("mapped");
        // A range inside the file (an eval loop) and an anonymous one (a JIT heap).
        let eval = OwnedRange {
            start: here & !0xfff,
            end: (here & !0xfff) + 0x2000,
            mode: RangeMode::Splice,
            frame_pointer: false,
        };
        let jit = OwnedRange {
            start: 0x7e00_0000_0000,
            end: 0x7e00_0001_0000,
            mode: RangeMode::Takeover,
            frame_pointer: true,
        };
        pm.set_owned_ranges(&mut maps, pid, 3, &[eval, jit]);
        let m = maps.mapping(pid, here).expect("still mapped");
        assert_eq!((m.owner, m.file_id, m.bias), (3, file.file_id, file.bias));
        assert_eq!(
            (m.start, m.end),
            (eval.start, eval.end),
            "the piece's own bounds"
        );
        let j = maps.mapping(pid, 0x7e00_0000_8000).expect("the JIT range");
        assert_eq!((j.owner, j.file_id), (3, 0));
        assert_eq!(pm.metrics(&Counters::default()).manager.owned_ranges, 2);
        // Just outside the eval range: the file's own piece, native.
        let before = maps.mapping(pid, eval.start - 1).expect("mapped");
        assert_eq!(before.owner, 0);

        // Released: the JIT range is gone from the trie, the eval loop is native again.
        pm.set_owned_ranges(&mut maps, pid, 3, &[]);
        assert!(maps.mapping(pid, 0x7e00_0000_8000).is_none());
        let m = maps.mapping(pid, here).expect("mapped");
        assert_eq!(m.owner, 0);
        assert_eq!((m.start, m.end), (file.start, file.end));
        assert_eq!(pm.metrics(&Counters::default()).manager.owned_ranges, 0);
        assert_eq!(
            pm.metrics(&Counters::default())
                .manager
                .pid_mapping_prefixes as usize,
            maps.prefixes.len(),
            "the gauge counts what the trie holds"
        );
    }
}
