//! The process manager: loads the stack-delta tables the eBPF unwinder needs.
//!
//! It learns processes from the sampler's reports (a PID it does not know was sampled, a
//! known PID ran code outside its mappings, a PID exited) and from a start-up scan. For
//! each process it reads `/proc/PID/maps`, opens every executable file mapping through
//! `/proc/PID/map_files` (or `/proc/PID/root`), identifies the file by its content
//! ([`FileId`]), extracts its table once with `ferroscope-unwind-native` (successes and
//! failures are both cached) and loads it into the eBPF maps, shared by every process that
//! maps the same file. Each process then gets its mappings (address prefixes → file, load
//! bias) and is marked known, which switches its samples from the frame-pointer walk to
//! the stack-delta unwinder.
//!
//! Tables no process uses stay loaded (a new process often maps the same files) until the
//! entries array is full or their total exceeds [`ProcessManagerConfig::max_table_entries`];
//! then the least recently used are evicted. Exited processes are removed only after a
//! grace period, so that traces already queued in the ring buffer were processed first.
//!
//! Everything that touches eBPF goes through [`UnwindBackend`], implemented by the
//! sampler's [`UnwindMaps`] and by an in-memory fake in the tests.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferroscope_ebpf_programs::abi::{
    DELTA_PAGE_BITS, DeltaEntry, DeltaPage, DeltaPageKey, InterpProc, MAX_UNWIND_INFOS,
    PidEventKind, PidMapping, UNWIND_FLAG_FP_SAVED, UnwindInfoRaw,
};
use ferroscope_unwind_api::MappedRange;

use crate::interp::Interpreters;
use ferroscope_ebpf_programs::{Counters, UnwindMaps};
use ferroscope_symbolize::debuglink::{DebugRefs, find_debug_file};
use ferroscope_symbolize::maps::{MapEntry, MapPath, read_maps};
use ferroscope_symbolize::root::FsRoot;
use ferroscope_unwind_native::{ExtractOptions, StackDeltaTable, UnwindInfo};

type MapResult = Result<(), ferroscope_ebpf_programs::Error>;

/// The eBPF maps as the process manager writes them (see [`UnwindMaps`] for the meaning of
/// each operation).
pub trait UnwindBackend {
    /// Size of the entries array.
    fn entries_capacity(&self) -> u32;
    /// Writes entries at `first..`.
    fn write_entries(&mut self, first: u32, entries: &[DeltaEntry]) -> MapResult;
    /// Sets one rule.
    fn set_info(&mut self, index: u32, info: UnwindInfoRaw) -> MapResult;
    /// Publishes a page.
    fn insert_page(&mut self, key: DeltaPageKey, page: DeltaPage) -> MapResult;
    /// Withdraws a page.
    fn remove_page(&mut self, key: &DeltaPageKey) -> MapResult;
    /// Maps an address prefix of a process.
    fn insert_mapping_prefix(
        &mut self,
        pid: u32,
        address: u64,
        prefix_len: u32,
        value: PidMapping,
    ) -> MapResult;
    /// Unmaps an address prefix.
    fn remove_mapping_prefix(&mut self, pid: u32, address: u64, prefix_len: u32) -> MapResult;
    /// Marks a process known.
    fn set_pid_known(&mut self, pid: u32) -> MapResult;
    /// Marks a process unknown.
    fn forget_pid(&mut self, pid: u32) -> MapResult;
    /// Gives the interpreter walker a process's data (an interpreter plug-in's
    /// `fs_interp_proc` bytes).
    fn set_interpreter(&mut self, pid: u32, data: &[u8]) -> MapResult;
    /// Withdraws it.
    fn remove_interpreter(&mut self, pid: u32) -> MapResult;
}

impl UnwindBackend for UnwindMaps {
    fn entries_capacity(&self) -> u32 {
        UnwindMaps::entries_capacity(self)
    }
    fn write_entries(&mut self, first: u32, entries: &[DeltaEntry]) -> MapResult {
        UnwindMaps::write_entries(self, first, entries)
    }
    fn set_info(&mut self, index: u32, info: UnwindInfoRaw) -> MapResult {
        UnwindMaps::set_info(self, index, info)
    }
    fn insert_page(&mut self, key: DeltaPageKey, page: DeltaPage) -> MapResult {
        UnwindMaps::insert_page(self, key, page)
    }
    fn remove_page(&mut self, key: &DeltaPageKey) -> MapResult {
        UnwindMaps::remove_page(self, key)
    }
    fn insert_mapping_prefix(
        &mut self,
        pid: u32,
        address: u64,
        prefix_len: u32,
        value: PidMapping,
    ) -> MapResult {
        UnwindMaps::insert_mapping_prefix(self, pid, address, prefix_len, value)
    }
    fn remove_mapping_prefix(&mut self, pid: u32, address: u64, prefix_len: u32) -> MapResult {
        UnwindMaps::remove_mapping_prefix(self, pid, address, prefix_len)
    }
    fn set_pid_known(&mut self, pid: u32) -> MapResult {
        UnwindMaps::set_pid_known(self, pid)
    }
    fn forget_pid(&mut self, pid: u32) -> MapResult {
        UnwindMaps::forget_pid(self, pid)
    }
    fn set_interpreter(&mut self, pid: u32, data: &[u8]) -> MapResult {
        let value = InterpProc::from_bytes(data).ok_or(
            ferroscope_ebpf_programs::Error::BadInterpreterData {
                len: data.len(),
                want: InterpProc::SIZE,
            },
        )?;
        UnwindMaps::set_interpreter(self, pid, &value)
    }
    fn remove_interpreter(&mut self, pid: u32) -> MapResult {
        UnwindMaps::remove_interpreter(self, pid)
    }
}

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
    /// Interpreter plug-ins turned off (by name, e.g. `python`); every other linked one is on.
    pub disabled_interpreters: Vec<String>,
}

impl Default for ProcessManagerConfig {
    fn default() -> Self {
        ProcessManagerConfig {
            max_table_entries: 3 << 20,
            max_file_size: 1 << 30,
            exit_grace: Duration::from_secs(1),
            rescan_interval: Duration::from_millis(100),
            tick_budget: Duration::from_millis(200),
            disabled_interpreters: Vec::new(),
        }
    }
}

/// A file's identity by content: the same bytes give the same ID in every process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u64);

impl FileId {
    /// The ID of an ELF file's bytes: a hash of its GNU build ID when it has one, else of
    /// its length and its first and last 4 KiB.
    pub fn of_bytes(data: &[u8], build_id: Option<&[u8]>) -> FileId {
        let mut h = Fnv::new();
        match build_id.filter(|b| !b.is_empty()) {
            Some(id) => {
                h.write(b"build-id");
                h.write(id);
            }
            None => {
                h.write(b"content");
                h.write(&(data.len() as u64).to_le_bytes());
                h.write(&data[..data.len().min(4096)]);
                h.write(&data[data.len().saturating_sub(4096)..]);
            }
        }
        // Zero means "no file" nowhere, but keep IDs non-zero anyway for readable dumps.
        FileId(h.finish().max(1))
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Counters of the unwinder (eBPF) and the process manager, with the names the reference
/// profiler uses (see [`UnwindMetrics::named`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnwindMetrics {
    /// User stacks the eBPF unwinder walked.
    pub unwind_native_attempts: u64,
    /// User frames it produced.
    pub unwind_native_frames: u64,
    /// Stacks that ended normally.
    pub unwind_native_stack_delta_stop: u64,
    /// Return addresses below 0x1000.
    pub unwind_native_small_pc: u64,
    /// Stacks deeper than the frame limit.
    pub unwind_err_stack_length_exceeded: u64,
    /// Stacks ended in no mapping.
    pub unwind_err_no_mapping: u64,
    /// Stacks ended where no table page exists.
    pub unwind_err_no_page: u64,
    /// Stacks ended at an Invalid rule.
    pub unwind_err_invalid_rule: u64,
    /// Stacks ended by a failed read.
    pub unwind_err_read_failed: u64,
    /// Stacks ended by a CFA that did not move up the stack.
    pub unwind_err_bad_cfa: u64,
    /// Stacks without user registers.
    pub unwind_err_no_regs: u64,
    /// Stacks ended by an inconsistent table.
    pub unwind_err_bad_table: u64,
    /// Signal frames unwound.
    pub unwind_native_signal_frames: u64,
    /// Samples that used the frame-pointer walk because their process was not loaded yet.
    pub unwind_pid_unknown: u64,
    /// Processes loaded.
    pub num_proc_new: u64,
    /// Processes unloaded after they exited.
    pub num_proc_exit: u64,
    /// Processes rescanned (dlopen).
    pub num_proc_rescan: u64,
    /// Processes that could not be loaded (gone, no permission).
    pub num_proc_failed: u64,
    /// Files whose table is in the eBPF maps now.
    pub num_exe_id_loaded_to_ebpf: u64,
    /// Tables extracted.
    pub num_tables_extracted: u64,
    /// Files whose extraction failed (cached, not retried).
    pub num_extraction_failures: u64,
    /// Tables evicted to make room.
    pub num_tables_evicted: u64,
    /// Processes loaded now.
    pub processes_loaded: u64,
    /// Entries of the entries array in use.
    pub delta_entries_used: u64,
    /// Size of the entries array.
    pub delta_entries_capacity: u64,
    /// Table pages published.
    pub delta_pages: u64,
    /// Address prefixes in the mappings trie.
    pub pid_mapping_prefixes: u64,
    /// Distinct unwind rules.
    pub unwind_infos: u64,
    /// Native eval-loop frames whose Python frames the eBPF walker looked for.
    pub unwind_python_attempts: u64,
    /// Python frames it recorded.
    pub unwind_python_frames: u64,
    /// Samples of a Python process's thread that had no Python thread state.
    pub unwind_python_err_no_thread: u64,
    /// Failed reads of a Python thread state or frame.
    pub unwind_python_err_read: u64,
    /// Eval-loop frames with no Python frame left for them.
    pub unwind_python_err_no_frame: u64,
}

impl UnwindMetrics {
    /// `(name, value)` pairs, named as the reference profiler names its metrics.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("UnwindNativeAttempts_total", self.unwind_native_attempts),
            ("UnwindNativeFrames_total", self.unwind_native_frames),
            (
                "UnwindNativeStackDeltaStop_total",
                self.unwind_native_stack_delta_stop,
            ),
            ("UnwindNativeSmallPC_total", self.unwind_native_small_pc),
            (
                "UnwindNativeSignalFrames_total",
                self.unwind_native_signal_frames,
            ),
            (
                "UnwindErrStackLengthExceeded_total",
                self.unwind_err_stack_length_exceeded,
            ),
            ("UnwindNativeErrNoMapping_total", self.unwind_err_no_mapping),
            (
                "UnwindNativeErrStackDeltaPage_total",
                self.unwind_err_no_page,
            ),
            (
                "UnwindNativeErrInvalidRule_total",
                self.unwind_err_invalid_rule,
            ),
            (
                "UnwindNativeErrReadFailed_total",
                self.unwind_err_read_failed,
            ),
            ("UnwindNativeErrBadCFA_total", self.unwind_err_bad_cfa),
            ("UnwindNativeErrNoRegs_total", self.unwind_err_no_regs),
            ("UnwindNativeErrBadTable_total", self.unwind_err_bad_table),
            ("UnwindNativePIDUnknown_total", self.unwind_pid_unknown),
            ("NumProcNew_total", self.num_proc_new),
            ("NumProcExit_total", self.num_proc_exit),
            ("NumProcRescan_total", self.num_proc_rescan),
            ("NumProcFailed_total", self.num_proc_failed),
            ("NumExeIDLoadedToEBPF", self.num_exe_id_loaded_to_ebpf),
            ("NumTablesExtracted_total", self.num_tables_extracted),
            ("NumExtractionFailures_total", self.num_extraction_failures),
            ("NumTablesEvicted_total", self.num_tables_evicted),
            ("NumProcLoaded", self.processes_loaded),
            ("StackDeltaEntriesUsed", self.delta_entries_used),
            ("StackDeltaEntriesCapacity", self.delta_entries_capacity),
            ("StackDeltaPages", self.delta_pages),
            ("PidPageMappingPrefixes", self.pid_mapping_prefixes),
            ("UnwindInfos", self.unwind_infos),
            ("UnwindPythonAttempts_total", self.unwind_python_attempts),
            ("UnwindPythonFrames_total", self.unwind_python_frames),
            (
                "UnwindPythonErrNoThreadState_total",
                self.unwind_python_err_no_thread,
            ),
            (
                "UnwindPythonErrReadFailed_total",
                self.unwind_python_err_read,
            ),
            (
                "UnwindPythonErrNoFrame_total",
                self.unwind_python_err_no_frame,
            ),
        ]
    }
}

/// First-fit allocator of index ranges in the entries array, with a free list that merges
/// neighbours.
#[derive(Debug)]
pub struct RangeAllocator {
    free: BTreeMap<u32, u32>, // start -> len
    used: u64,
    capacity: u32,
}

impl RangeAllocator {
    /// All of `0..capacity` free.
    pub fn new(capacity: u32) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        RangeAllocator {
            free,
            used: 0,
            capacity,
        }
    }

    /// A range of `len` entries, or `None` when no free range is long enough.
    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return Some(0);
        }
        let (&start, &free_len) = self.free.iter().find(|&(_, &l)| l >= len)?;
        self.free.remove(&start);
        if free_len > len {
            self.free.insert(start + len, free_len - len);
        }
        self.used += u64::from(len);
        Some(start)
    }

    /// Returns a range from [`RangeAllocator::alloc`].
    pub fn free(&mut self, start: u32, len: u32) {
        if len == 0 {
            return;
        }
        self.used -= u64::from(len);
        let (mut start, mut len) = (start, len);
        if let Some((&prev, &prev_len)) = self.free.range(..start).next_back()
            && prev + prev_len == start
        {
            self.free.remove(&prev);
            start = prev;
            len += prev_len;
        }
        if let Some(&next_len) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += next_len;
        }
        self.free.insert(start, len);
    }

    /// Entries allocated.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Size of the array.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// A table encoded for the eBPF maps: entries grouped into pages, each page starting with
/// an entry at offset 0.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EncodedTable {
    /// `(page number, index of its first entry in entries, entry count)`.
    pub pages: Vec<(u64, u32, u32)>,
    /// Entries, `info_index` already global.
    pub entries: Vec<DeltaEntry>,
}

/// The eBPF form of a rule.
pub fn raw_info(info: &UnwindInfo) -> UnwindInfoRaw {
    UnwindInfoRaw {
        kind: info.kind as u8,
        flags: if info.fp_offset.is_some() {
            UNWIND_FLAG_FP_SAVED
        } else {
            0
        },
        reserved: 0,
        cfa_offset: info.cfa_offset,
        fp_offset: info.fp_offset.unwrap_or(0),
        reserved2: 0,
    }
}

/// Splits a table into 64 KiB pages. `index_of` gives each rule's global index. Pages in
/// which only an Invalid rule is in effect are left out (the unwinder reports "no table
/// page", which ends the stack just the same).
pub fn encode_table(
    table: &StackDeltaTable,
    mut index_of: impl FnMut(&UnwindInfo) -> Option<u16>,
) -> Option<EncodedTable> {
    let page_size = 1u64 << DELTA_PAGE_BITS;
    let mut out = EncodedTable::default();
    let invalid = ferroscope_unwind_native::Kind::Invalid;
    let deltas = &table.deltas;
    let mut i = 0;
    while i < deltas.len() {
        let page = deltas[i].address >> DELTA_PAGE_BITS;
        let first = out.entries.len() as u32;
        // The rule in effect where the page starts, unless a delta starts exactly there.
        if deltas[i].address & (page_size - 1) != 0 {
            let carried = i
                .checked_sub(1)
                .map(|p| deltas[p].info)
                .unwrap_or(UnwindInfo::INVALID);
            out.entries.push(DeltaEntry {
                address_low: 0,
                info_index: index_of(&carried)?,
            });
        }
        while i < deltas.len() && deltas[i].address >> DELTA_PAGE_BITS == page {
            let low = (deltas[i].address & (page_size - 1)) as u16;
            out.entries.push(DeltaEntry {
                address_low: low,
                info_index: index_of(&deltas[i].info)?,
            });
            i += 1;
        }
        out.pages
            .push((page, first, out.entries.len() as u32 - first));
        // Whole pages until the next delta carry the last rule, unless it is Invalid.
        let last = deltas[i - 1].info;
        if last.kind != invalid {
            let next_page = deltas
                .get(i)
                .map(|d| d.address >> DELTA_PAGE_BITS)
                .unwrap_or(page + 1);
            let carried = index_of(&last)?;
            for p in page + 1..next_page {
                let first = out.entries.len() as u32;
                out.entries.push(DeltaEntry {
                    address_low: 0,
                    info_index: carried,
                });
                out.pages.push((p, first, 1));
            }
        }
    }
    Some(out)
}

/// The prefixes `(address, prefix length)` that exactly cover `[start, end)`.
pub fn covering_prefixes(start: u64, end: u64) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let align = if at == 0 {
            63
        } else {
            at.trailing_zeros().min(63)
        };
        let mut bits = align;
        while bits > 0 && (1u64 << bits) > end - at {
            bits -= 1;
        }
        out.push((at, 64 - bits));
        match at.checked_add(1u64 << bits) {
            Some(next) => at = next,
            None => break,
        }
    }
    out
}

#[derive(Debug)]
struct LoadedTable {
    pages: Vec<u64>,
    first: u32,
    len: u32,
    users: u32,
    last_used: u64,
}

#[derive(Debug, Clone)]
struct LoadedMapping {
    start: u64,
    end: u64,
    file_id: FileId,
    prefixes: Vec<(u64, u32)>,
}

#[derive(Debug, Default)]
struct Process {
    mappings: Vec<LoadedMapping>,
    last_scan: Option<Instant>,
}

/// Where a file mapping's identity and layout were cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    inode: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

#[derive(Debug, Clone)]
struct Load {
    offset: u64,
    filesz: u64,
    vaddr: u64,
    executable: bool,
}

#[derive(Debug, Clone)]
struct FileFacts {
    id: FileId,
    loads: Vec<Load>,
}

/// What the manager still has to do for a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Work {
    Load(u32),
    Rescan(u32),
}

/// Loads and unloads processes' unwind tables. See the module documentation.
#[derive(Debug)]
pub struct ProcessManager {
    config: ProcessManagerConfig,
    processes: HashMap<u32, Process>,
    tables: HashMap<FileId, LoadedTable>,
    failed_files: HashSet<FileId>,
    files: HashMap<FileKey, Option<FileFacts>>,
    infos: HashMap<UnwindInfoRaw, u16>,
    allocator: Option<RangeAllocator>,
    queue: VecDeque<Work>,
    queued: HashSet<Work>,
    failed_pids: HashMap<u32, Instant>,
    exiting: Vec<(u32, Instant)>,
    rescans_due: HashMap<u32, Instant>,
    clock: u64,
    prefixes: u64,
    pages: u64,
    metrics: UnwindMetrics,
    interpreters: Interpreters,
}

const MAX_MAPPINGS_PER_PROCESS: usize = 4096;
const FILE_CACHE_LIMIT: usize = 65536;

impl ProcessManager {
    /// An empty manager.
    pub fn new(config: ProcessManagerConfig) -> Self {
        let interpreters = Interpreters::new(&config.disabled_interpreters);
        ProcessManager {
            interpreters,
            config,
            processes: HashMap::new(),
            tables: HashMap::new(),
            failed_files: HashSet::new(),
            files: HashMap::new(),
            infos: HashMap::new(),
            allocator: None,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            failed_pids: HashMap::new(),
            exiting: Vec::new(),
            rescans_due: HashMap::new(),
            clock: 0,
            prefixes: 0,
            pages: 0,
            metrics: UnwindMetrics::default(),
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
                        .map_or_else(Instant::now, |t| t + self.config.rescan_interval);
                    self.rescans_due.entry(pid).or_insert(due);
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
    /// traces were handled before it is removed.
    pub fn tick(&mut self, maps: &mut dyn UnwindBackend) {
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
            }
        }
        // Failed processes are retried after a while (they may have exec'd), and forgotten
        // when gone.
        self.failed_pids.retain(|pid, when| {
            when.elapsed() < Duration::from_secs(10) && Path::new(&format!("/proc/{pid}")).exists()
        });
    }

    /// The interpreter plug-ins and the processes they follow.
    pub fn interpreters(&self) -> &Interpreters {
        &self.interpreters
    }

    /// Mutable access, to name drained traces' interpreted frames.
    pub fn interpreters_mut(&mut self) -> &mut Interpreters {
        &mut self.interpreters
    }

    /// Whether work is queued.
    pub fn busy(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether `pid`'s tables are loaded.
    pub fn is_loaded(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// The manager's metrics together with the eBPF unwinder's counters.
    pub fn metrics(&self, counters: &Counters) -> UnwindMetrics {
        let mut m = self.metrics;
        m.unwind_native_attempts = counters.unwind_attempts;
        m.unwind_native_frames = counters.unwind_frames;
        m.unwind_native_stack_delta_stop = counters.unwind_stop;
        m.unwind_native_small_pc = counters.unwind_small_pc;
        m.unwind_err_stack_length_exceeded = counters.unwind_err_stack_length;
        m.unwind_err_no_mapping = counters.unwind_err_no_mapping;
        m.unwind_err_no_page = counters.unwind_err_no_page;
        m.unwind_err_invalid_rule = counters.unwind_err_invalid_rule;
        m.unwind_err_read_failed = counters.unwind_err_read_failed;
        m.unwind_err_bad_cfa = counters.unwind_err_bad_cfa;
        m.unwind_err_no_regs = counters.unwind_err_no_regs;
        m.unwind_err_bad_table = counters.unwind_err_bad_table;
        m.unwind_native_signal_frames = counters.unwind_signal_frames;
        m.unwind_pid_unknown = counters.pid_unknown;
        m.unwind_python_attempts = counters.py_attempts;
        m.unwind_python_frames = counters.py_frames;
        m.unwind_python_err_no_thread = counters.py_err_no_thread;
        m.unwind_python_err_read = counters.py_err_read;
        m.unwind_python_err_no_frame = counters.py_err_no_frame;
        m.num_exe_id_loaded_to_ebpf = self.tables.len() as u64;
        m.processes_loaded = self.processes.len() as u64;
        m.delta_entries_used = self.allocator.as_ref().map_or(0, RangeAllocator::used);
        m.delta_entries_capacity = self
            .allocator
            .as_ref()
            .map_or(0, |a| u64::from(a.capacity()));
        m.delta_pages = self.pages;
        m.pid_mapping_prefixes = self.prefixes;
        m.unwind_infos = self.infos.len() as u64;
        m
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
        let mut wanted: Vec<LoadedMapping> = Vec::new();
        let old: HashMap<(u64, u64), FileId> = self
            .processes
            .get(&pid)
            .map(|p| {
                p.mappings
                    .iter()
                    .map(|m| ((m.start, m.end), m.file_id))
                    .collect()
            })
            .unwrap_or_default();
        for entry in entries
            .iter()
            .filter(|e| e.is_executable() && e.path.file_path().is_some())
        {
            if wanted.len() >= MAX_MAPPINGS_PER_PROCESS {
                break;
            }
            if let Some(&file_id) = old.get(&(entry.start, entry.end)) {
                wanted.push(LoadedMapping {
                    start: entry.start,
                    end: entry.end,
                    file_id,
                    prefixes: Vec::new(),
                });
                continue;
            }
            let Some((file_id, bias)) = self.prepare_file(maps, pid, entry) else {
                continue;
            };
            if !self.interpreters.knows_file(file_id)
                && let Some((file, path)) = open_mapped_file(pid, entry)
                && let Some(data) = map_file(&file, &path)
            {
                let shown = entry.path.file_path().unwrap_or(&path).to_string_lossy();
                self.interpreters.detect_file(file_id, &shown, &data);
            }
            self.interpreters.file_mapped(maps, pid, file_id, bias);
            let mapping = PidMapping {
                file_id: file_id.0,
                bias,
                start: entry.start,
                end: entry.end,
            };
            let prefixes = covering_prefixes(entry.start, entry.end);
            let mut ok = true;
            for &(address, len) in &prefixes {
                if let Err(e) = maps.insert_mapping_prefix(pid, address, len, mapping) {
                    tracing::warn!(pid, "cannot load a mapping of the process into eBPF: {e}");
                    ok = false;
                    break;
                }
            }
            if !ok {
                for &(address, len) in &prefixes {
                    let _ = maps.remove_mapping_prefix(pid, address, len);
                }
                continue;
            }
            self.prefixes += prefixes.len() as u64;
            if let Some(t) = self.tables.get_mut(&file_id) {
                t.users += 1;
            }
            wanted.push(LoadedMapping {
                start: entry.start,
                end: entry.end,
                file_id,
                prefixes,
            });
        }

        // Mappings that are gone (dlclose, exec) are removed; kept ones keep their prefixes.
        let previous = self
            .processes
            .remove(&pid)
            .map(|p| p.mappings)
            .unwrap_or_default();
        let mut kept: HashMap<(u64, u64), LoadedMapping> = HashMap::new();
        for m in previous {
            if wanted
                .iter()
                .any(|w| w.start == m.start && w.end == m.end && w.file_id == m.file_id)
            {
                kept.insert((m.start, m.end), m);
            } else {
                self.remove_mapping(maps, pid, &m);
            }
        }
        let mappings: Vec<LoadedMapping> = wanted
            .into_iter()
            .map(|w| {
                if w.prefixes.is_empty() {
                    kept.remove(&(w.start, w.end)).unwrap_or(w)
                } else {
                    w
                }
            })
            .collect();
        if rescan {
            let ranges: Vec<MappedRange> = entries
                .iter()
                .filter_map(|e| {
                    Some(MappedRange {
                        start: e.start,
                        end: e.end,
                        path: e.path.file_path()?.to_string_lossy().into_owned(),
                    })
                })
                .collect();
            let files: Vec<FileId> = mappings.iter().map(|m| m.file_id).collect();
            self.interpreters
                .mappings_changed(maps, pid, &ranges, &files);
        }
        if let Err(e) = maps.set_pid_known(pid) {
            tracing::warn!(pid, "cannot mark the process as loaded in eBPF: {e}");
        }
        if rescan {
            self.metrics.num_proc_rescan += 1;
        } else {
            self.metrics.num_proc_new += 1;
        }
        tracing::debug!(
            pid,
            mappings = mappings.len(),
            rescan,
            "process loaded for stack-delta unwinding"
        );
        self.processes.insert(
            pid,
            Process {
                mappings,
                last_scan: Some(Instant::now()),
            },
        );
    }

    fn fail_process(&mut self, maps: &mut dyn UnwindBackend, pid: u32) {
        self.remove_process(maps, pid);
        self.metrics.num_proc_failed += 1;
        self.failed_pids.insert(pid, Instant::now());
    }

    fn remove_mapping(&mut self, maps: &mut dyn UnwindBackend, pid: u32, m: &LoadedMapping) {
        for &(address, len) in &m.prefixes {
            if let Err(e) = maps.remove_mapping_prefix(pid, address, len) {
                tracing::debug!(pid, "cannot remove a mapping prefix: {e}");
            }
        }
        self.prefixes = self.prefixes.saturating_sub(m.prefixes.len() as u64);
        if !m.prefixes.is_empty()
            && let Some(t) = self.tables.get_mut(&m.file_id)
        {
            t.users = t.users.saturating_sub(1);
        }
    }

    /// Removes a process from the maps; true when it was loaded.
    fn remove_process(&mut self, maps: &mut dyn UnwindBackend, pid: u32) -> bool {
        let _ = maps.forget_pid(pid);
        self.interpreters.remove(maps, pid);
        let Some(process) = self.processes.remove(&pid) else {
            return false;
        };
        for m in &process.mappings {
            self.remove_mapping(maps, pid, m);
        }
        self.evict_over_budget(maps);
        true
    }

    /// Identifies the file of a mapping, makes sure its table is loaded, and returns its ID
    /// and the mapping's load bias. `None` when the file cannot be read or has no table.
    fn prepare_file(
        &mut self,
        maps: &mut dyn UnwindBackend,
        pid: u32,
        entry: &MapEntry,
    ) -> Option<(FileId, u64)> {
        let (file, path) = open_mapped_file(pid, entry)?;
        let meta = file.metadata().ok()?;
        use std::os::unix::fs::MetadataExt;
        let key = FileKey {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        let mut data: Option<memmap2::Mmap> = None;
        let facts = match self.files.get(&key) {
            Some(f) => f.clone(),
            None => {
                if meta.len() == 0 || meta.len() > self.config.max_file_size {
                    tracing::debug!(path = %path.display(), size = meta.len(), "file not read for unwinding: empty or too large");
                    None
                } else {
                    data = map_file(&file, &path);
                    let facts = data.as_deref().and_then(file_facts);
                    if self.files.len() >= FILE_CACHE_LIMIT {
                        self.files.clear();
                    }
                    self.files.insert(key, facts.clone());
                    facts
                }
            }
        }?;
        let bias = load_bias(&facts.loads, entry)?;
        self.clock += 1;
        if let Some(t) = self.tables.get_mut(&facts.id) {
            t.last_used = self.clock;
            return Some((facts.id, bias));
        }
        if self.failed_files.contains(&facts.id) {
            return None;
        }
        if data.is_none() {
            data = map_file(&file, &path);
        }
        let bytes = data.as_deref()?;
        let started = Instant::now();
        // A binary with (almost) no .eh_frame may have its CFI in the separate debug file's
        // .debug_frame; unwind-native reads it only when the binary's own CFI covers fewer
        // than a handful of functions. Looking for it costs a few opens, once per file.
        let maps_path = entry
            .path
            .file_path()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| path.clone());
        let debug = DebugRefs::parse(bytes).and_then(|refs| {
            find_debug_file(
                &FsRoot::of_process(pid),
                &maps_path,
                &refs,
                Some((meta.dev(), meta.ino())),
            )
        });
        if let Some(d) = &debug {
            tracing::debug!(path = %path.display(), debug = %d.path.display(), "using the debug file's CFI");
        }
        let debug_bytes = debug.as_ref().map(|d| &d.map[..]);
        let table = match ferroscope_unwind_native::extract(
            bytes,
            debug_bytes,
            &ExtractOptions::default(),
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(path = %path.display(), "no unwind table, its frames end the stack: {e}");
                self.metrics.num_extraction_failures += 1;
                self.failed_files.insert(facts.id);
                return None;
            }
        };
        self.metrics.num_tables_extracted += 1;
        tracing::debug!(path = %path.display(), deltas = table.len(), took = ?started.elapsed(), "unwind table extracted");
        drop(data);
        if self.load_table(maps, facts.id, &table) {
            Some((facts.id, bias))
        } else {
            None
        }
    }

    fn info_index(&mut self, maps: &mut dyn UnwindBackend, info: &UnwindInfo) -> Option<u16> {
        let raw = raw_info(info);
        if let Some(&i) = self.infos.get(&raw) {
            return Some(i);
        }
        if self.infos.len() >= MAX_UNWIND_INFOS {
            return None;
        }
        let index = self.infos.len() as u16;
        if let Err(e) = maps.set_info(u32::from(index), raw) {
            tracing::warn!("cannot load an unwind rule into eBPF: {e}");
            return None;
        }
        self.infos.insert(raw, index);
        Some(index)
    }

    /// Encodes and writes a table; false (and the file marked failed) when it cannot be.
    fn load_table(
        &mut self,
        maps: &mut dyn UnwindBackend,
        id: FileId,
        table: &StackDeltaTable,
    ) -> bool {
        let Some(encoded) = encode_table(table, |info| self.info_index(maps, info)) else {
            tracing::warn!("more than 65536 distinct unwind rules: a table was not loaded");
            self.failed_files.insert(id);
            return false;
        };
        let len = match u32::try_from(encoded.entries.len()) {
            Ok(l) => l,
            Err(_) => {
                self.failed_files.insert(id);
                return false;
            }
        };
        let capacity = maps.entries_capacity();
        if self.allocator.is_none() {
            self.allocator = Some(RangeAllocator::new(capacity));
        }
        // Make room: the budget first, then whatever the array needs.
        while self
            .allocator
            .as_ref()
            .is_some_and(|a| a.used() + u64::from(len) > self.config.max_table_entries)
        {
            if !self.evict_one(maps) {
                break;
            }
        }
        let first = loop {
            if let Some(first) = self.allocator.as_mut().and_then(|a| a.alloc(len)) {
                break first;
            }
            if !self.evict_one(maps) {
                tracing::warn!(
                    entries = len,
                    capacity,
                    "the stack-delta array is full of tables in use: a table was not loaded"
                );
                return false;
            }
        };
        if let Err(e) = maps.write_entries(first, &encoded.entries) {
            tracing::warn!("cannot write a table into eBPF: {e}");
            if let Some(a) = self.allocator.as_mut() {
                a.free(first, len);
            }
            return false;
        }
        let mut pages = Vec::with_capacity(encoded.pages.len());
        for &(page, start, count) in &encoded.pages {
            let key = DeltaPageKey {
                file_id: id.0,
                page,
            };
            match maps.insert_page(
                key,
                DeltaPage {
                    first: first + start,
                    count,
                },
            ) {
                Ok(()) => pages.push(page),
                Err(e) => {
                    tracing::warn!("cannot publish a table page (fs_delta_pages full?): {e}");
                    break;
                }
            }
        }
        if pages.len() < encoded.pages.len() {
            for page in &pages {
                let _ = maps.remove_page(&DeltaPageKey {
                    file_id: id.0,
                    page: *page,
                });
            }
            if let Some(a) = self.allocator.as_mut() {
                a.free(first, len);
            }
            return false;
        }
        self.pages += pages.len() as u64;
        self.clock += 1;
        self.tables.insert(
            id,
            LoadedTable {
                pages,
                first,
                len,
                users: 0,
                last_used: self.clock,
            },
        );
        true
    }

    /// Evicts unused tables while more entries than the budget are loaded.
    fn evict_over_budget(&mut self, maps: &mut dyn UnwindBackend) {
        while self
            .allocator
            .as_ref()
            .is_some_and(|a| a.used() > self.config.max_table_entries)
        {
            if !self.evict_one(maps) {
                break;
            }
        }
    }

    /// Unloads the least recently used table no mapping uses; false when there is none.
    fn evict_one(&mut self, maps: &mut dyn UnwindBackend) -> bool {
        let Some((&id, _)) = self
            .tables
            .iter()
            .filter(|(_, t)| t.users == 0)
            .min_by_key(|(_, t)| t.last_used)
        else {
            return false;
        };
        let t = self.tables.remove(&id).expect("present");
        for page in &t.pages {
            let _ = maps.remove_page(&DeltaPageKey {
                file_id: id.0,
                page: *page,
            });
        }
        self.pages = self.pages.saturating_sub(t.pages.len() as u64);
        if let Some(a) = self.allocator.as_mut() {
            a.free(t.first, t.len);
        }
        self.metrics.num_tables_evicted += 1;
        true
    }
}

/// Opens a mapped file as the process sees it: through `/proc/PID/map_files` (works for
/// deleted files and other mount namespaces), else through `/proc/PID/root`.
fn open_mapped_file(pid: u32, entry: &MapEntry) -> Option<(File, PathBuf)> {
    let via_map_files = PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        entry.start, entry.end
    ));
    if let Ok(f) = File::open(&via_map_files) {
        return Some((f, via_map_files));
    }
    let path = match &entry.path {
        MapPath::File(p) => p,
        _ => return None,
    };
    let via_root =
        Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path));
    File::open(&via_root).ok().map(|f| (f, via_root))
}

fn map_file(file: &File, path: &Path) -> Option<memmap2::Mmap> {
    // SAFETY: a private read-only map, read only while the Mmap lives. Another process may
    // truncate the file meanwhile (SIGBUS); executables and libraries are replaced by
    // rename, not rewritten in place, which is the same trade-off the symbolizer makes.
    match unsafe { memmap2::Mmap::map(file) } {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::debug!(path = %path.display(), "cannot map the file for unwinding: {e}");
            None
        }
    }
}

/// The file's ID and its PT_LOAD segments.
fn file_facts(data: &[u8]) -> Option<FileFacts> {
    use object::read::elf::{FileHeader, ProgramHeader};
    use object::{Endianness, Object, elf};
    let header = elf::FileHeader64::<Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let loads = header
        .program_headers(endian, data)
        .ok()?
        .iter()
        .filter(|p| p.p_type(endian) == elf::PT_LOAD)
        .map(|p| Load {
            offset: p.p_offset(endian),
            filesz: p.p_filesz(endian),
            vaddr: p.p_vaddr(endian),
            executable: (p.p_flags(endian) & elf::PF_X).0 != 0,
        })
        .collect();
    let file = object::File::parse(data).ok()?;
    let build_id = file.build_id().ok().flatten();
    Some(FileFacts {
        id: FileId::of_bytes(data, build_id),
        loads,
    })
}

/// `mapping start - vaddr of the mapping's file offset`, choosing the PT_LOAD segment whose
/// execute flag matches the mapping's (lld lets the executable segment start inside the
/// page of the read-only one before it).
fn load_bias(loads: &[Load], entry: &MapEntry) -> Option<u64> {
    const MAX_PAGE: u64 = 1 << 16;
    let off = entry.offset;
    let executable = entry.is_executable();
    let best = loads
        .iter()
        .filter_map(|l| {
            let contains = l.offset <= off && off - l.offset < l.filesz.max(1);
            let just_after = l.offset > off && l.offset - off < MAX_PAGE;
            (contains || just_after)
                .then_some(((l.executable != executable, !contains, l.offset), l))
        })
        .min_by_key(|(rank, _)| *rank)?
        .1;
    let vaddr = if best.offset <= off {
        best.vaddr + (off - best.offset)
    } else {
        best.vaddr.checked_sub(best.offset - off)?
    };
    Some(entry.start.wrapping_sub(vaddr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_unwind_native::{Kind, StackDelta};

    #[derive(Default)]
    struct FakeMaps {
        entries: Vec<DeltaEntry>,
        infos: HashMap<u32, UnwindInfoRaw>,
        pages: HashMap<DeltaPageKey, DeltaPage>,
        prefixes: HashMap<(u32, u64, u32), PidMapping>,
        known: HashSet<u32>,
        interpreters: HashMap<u32, Vec<u8>>,
    }

    impl FakeMaps {
        fn new(capacity: usize) -> Self {
            FakeMaps {
                entries: vec![DeltaEntry::default(); capacity],
                ..Default::default()
            }
        }

        /// What the eBPF program computes: the rule for `vaddr` of `file`.
        fn lookup(&self, file: FileId, vaddr: u64) -> Option<UnwindInfoRaw> {
            let p = self.pages.get(&DeltaPageKey {
                file_id: file.0,
                page: vaddr >> DELTA_PAGE_BITS,
            })?;
            let target = (vaddr & 0xffff) as u16;
            let (mut lo, mut len) = (p.first, p.count);
            for _ in 0..16 {
                if len <= 1 {
                    break;
                }
                let half = len / 2;
                if self.entries[(lo + half) as usize].address_low <= target {
                    lo += half;
                    len -= half;
                } else {
                    len = half;
                }
            }
            let e = self.entries[lo as usize];
            assert!(
                e.address_low <= target,
                "the search found an entry after the address"
            );
            self.infos.get(&u32::from(e.info_index)).copied()
        }

        /// What the LPM trie answers for `pid`, `address`.
        fn mapping(&self, pid: u32, address: u64) -> Option<PidMapping> {
            (0..=64u32).rev().find_map(|len| {
                let mask = if len == 0 { 0 } else { u64::MAX << (64 - len) };
                self.prefixes.get(&(pid, address & mask, len)).copied()
            })
        }
    }

    impl UnwindBackend for FakeMaps {
        fn entries_capacity(&self) -> u32 {
            self.entries.len() as u32
        }
        fn write_entries(&mut self, first: u32, entries: &[DeltaEntry]) -> MapResult {
            self.entries[first as usize..first as usize + entries.len()].copy_from_slice(entries);
            Ok(())
        }
        fn set_info(&mut self, index: u32, info: UnwindInfoRaw) -> MapResult {
            self.infos.insert(index, info);
            Ok(())
        }
        fn insert_page(&mut self, key: DeltaPageKey, page: DeltaPage) -> MapResult {
            self.pages.insert(key, page);
            Ok(())
        }
        fn remove_page(&mut self, key: &DeltaPageKey) -> MapResult {
            self.pages.remove(key);
            Ok(())
        }
        fn insert_mapping_prefix(
            &mut self,
            pid: u32,
            address: u64,
            prefix_len: u32,
            value: PidMapping,
        ) -> MapResult {
            self.prefixes.insert((pid, address, prefix_len), value);
            Ok(())
        }
        fn remove_mapping_prefix(&mut self, pid: u32, address: u64, prefix_len: u32) -> MapResult {
            self.prefixes.remove(&(pid, address, prefix_len));
            Ok(())
        }
        fn set_pid_known(&mut self, pid: u32) -> MapResult {
            self.known.insert(pid);
            Ok(())
        }
        fn forget_pid(&mut self, pid: u32) -> MapResult {
            self.known.remove(&pid);
            Ok(())
        }
        fn set_interpreter(&mut self, pid: u32, data: &[u8]) -> MapResult {
            self.interpreters.insert(pid, data.to_vec());
            Ok(())
        }
        fn remove_interpreter(&mut self, pid: u32) -> MapResult {
            self.interpreters.remove(&pid);
            Ok(())
        }
    }

    fn table(rows: &[(u64, UnwindInfo)]) -> StackDeltaTable {
        StackDeltaTable {
            deltas: rows
                .iter()
                .map(|&(address, info)| StackDelta { address, info })
                .collect(),
        }
    }

    #[test]
    fn prefixes_cover_exactly_the_range() {
        for (start, end) in [
            (0x1000u64, 0x2000u64),
            (0x40_1000, 0x40_9000),
            (0x7f12_3456_7000, 0x7f12_3460_0000),
            (0, 0x1000),
        ] {
            let p = covering_prefixes(start, end);
            let mut at = start;
            for &(addr, len) in &p {
                assert_eq!(addr, at, "prefixes are contiguous");
                assert_eq!(addr & ((1u64 << (64 - len)) - 1), 0, "aligned");
                at += 1u64 << (64 - len);
            }
            assert_eq!(at, end);
            assert!(p.len() <= 2 * 64);
        }
        assert_eq!(covering_prefixes(0x1000, 0x2000), vec![(0x1000, 52)]);
    }

    #[test]
    fn allocator_reuses_and_merges_freed_ranges() {
        let mut a = RangeAllocator::new(100);
        let x = a.alloc(40).unwrap();
        let y = a.alloc(40).unwrap();
        assert_eq!((x, y), (0, 40));
        assert!(a.alloc(30).is_none());
        a.free(x, 40);
        a.free(y, 40);
        assert_eq!(a.used(), 0);
        assert_eq!(
            a.alloc(100),
            Some(0),
            "the three free ranges merged back into one"
        );
    }

    #[test]
    fn every_address_finds_the_same_rule_as_the_table() {
        let sp8 = UnwindInfo::sp(8, None);
        let sp16 = UnwindInfo::sp(16, Some(-16));
        let fp = UnwindInfo::fp(16, Some(-16));
        // Rules crossing page boundaries, a page with no delta inside, an Invalid gap, a
        // delta exactly at a page start.
        let t = table(&[
            (0x40_fff0, sp8),
            (0x40_fff1, sp16),
            (0x41_0004, fp),
            (0x43_0010, sp8),
            (0x43_0020, UnwindInfo::INVALID),
            (0x45_0000, sp8),
            (0x45_0100, UnwindInfo::STOP),
            (0x45_0110, UnwindInfo::INVALID),
        ]);
        let mut maps = FakeMaps::new(1000);
        let mut pm = ProcessManager::new(ProcessManagerConfig::default());
        let id = FileId(7);
        assert!(pm.load_table(&mut maps, id, &t));
        for vaddr in (0x40_ff00..0x45_0200u64)
            .step_by(7)
            .chain([0x40_fff0, 0x41_0000, 0x42_0000, 0x45_0000])
        {
            let expected = t
                .lookup(vaddr)
                .filter(|i| i.kind != Kind::Invalid)
                .map(raw_info);
            let got = maps
                .lookup(id, vaddr)
                .filter(|i| i.kind != Kind::Invalid as u8);
            assert_eq!(got, expected, "rule at {vaddr:#x}");
        }
        // Pages 0x41 and 0x42 exist (0x42 is carried whole); 0x44 is all Invalid: no page.
        assert!(maps.pages.contains_key(&DeltaPageKey {
            file_id: 7,
            page: 0x42
        }));
        assert!(!maps.pages.contains_key(&DeltaPageKey {
            file_id: 7,
            page: 0x44
        }));
        assert_eq!(pm.infos.len(), 5, "rules are shared, not repeated");
    }

    #[test]
    fn unused_tables_are_evicted_least_recently_used_first_when_full() {
        let sp8 = UnwindInfo::sp(8, None);
        let small = table(&[(0x1000, sp8), (0x1010, UnwindInfo::INVALID)]);
        let mut maps = FakeMaps::new(10);
        let mut pm = ProcessManager::new(ProcessManagerConfig {
            max_table_entries: 9,
            ..Default::default()
        });
        for id in 1..=3 {
            assert!(pm.load_table(&mut maps, FileId(id), &small), "table {id}");
        }
        assert_eq!(pm.tables.len(), 3);
        pm.tables.get_mut(&FileId(1)).unwrap().users = 1;
        assert!(pm.load_table(&mut maps, FileId(4), &small));
        assert!(pm.tables.contains_key(&FileId(1)), "in use: kept");
        assert!(
            !pm.tables.contains_key(&FileId(2)),
            "least recently used unused table evicted"
        );
        assert!(
            !maps.pages.keys().any(|k| k.file_id == 2),
            "its pages were withdrawn"
        );
        assert_eq!(pm.metrics.num_tables_evicted, 1);
    }

    #[test]
    fn a_real_process_is_loaded_and_unloaded() {
        // This test process itself: its executable mapping must resolve to a table whose
        // rule for this function's code is found through the trie, page and entries.
        let pid = std::process::id();
        let mut maps = FakeMaps::new(1 << 22);
        let mut pm = ProcessManager::new(ProcessManagerConfig::default());
        pm.scan(Some(&[pid]));
        pm.tick(&mut maps);
        assert!(pm.is_loaded(pid));
        assert!(maps.known.contains(&pid));
        let here = a_real_process_is_loaded_and_unloaded as fn() as usize as u64;
        let m = maps
            .mapping(pid, here)
            .expect("the test binary's code is mapped");
        assert!(m.start <= here && here < m.end);
        let info = maps
            .lookup(FileId(m.file_id), here - m.bias)
            .expect("a rule for this function");
        assert_ne!(info.kind, Kind::Invalid as u8);
        let metrics = pm.metrics(&Counters::default());
        assert_eq!(metrics.num_proc_new, 1);
        assert!(metrics.num_exe_id_loaded_to_ebpf >= 1);

        pm.report(pid, PidEventKind::Exit);
        std::thread::sleep(pm.config.exit_grace + Duration::from_millis(10));
        pm.tick(&mut maps);
        assert!(!pm.is_loaded(pid));
        assert!(maps.prefixes.is_empty(), "every prefix removed");
        assert!(!maps.known.contains(&pid));
        assert_eq!(pm.metrics(&Counters::default()).num_proc_exit, 1);
        assert!(
            !pm.tables.is_empty(),
            "tables stay cached for the next process"
        );
    }

    #[test]
    fn file_ids_depend_on_content_only() {
        let a = FileId::of_bytes(b"\x7fELF same", Some(b"\x01\x02"));
        let b = FileId::of_bytes(b"\x7fELF other", Some(b"\x01\x02"));
        assert_eq!(a, b, "the build ID decides when present");
        assert_ne!(
            FileId::of_bytes(b"one", None),
            FileId::of_bytes(b"two", None)
        );
    }

    #[test]
    fn bias_uses_the_segment_whose_execute_flag_matches() {
        // lld layout: read-only segment at offset 0 (0x1234 bytes), executable segment at
        // file offset 0x1240 with vaddr 0x2240; the executable mapping starts at offset 0x1000.
        let loads = vec![
            Load {
                offset: 0,
                filesz: 0x1234,
                vaddr: 0,
                executable: false,
            },
            Load {
                offset: 0x1240,
                filesz: 0x5000,
                vaddr: 0x2240,
                executable: true,
            },
        ];
        let entry = MapEntry {
            start: 0x5555_0000_1000,
            end: 0x5555_0000_7000,
            perms: *b"r-xp",
            offset: 0x1000,
            dev_major: 0,
            dev_minor: 0,
            inode: 1,
            path: MapPath::File("/x".into()),
        };
        let bias = load_bias(&loads, &entry).unwrap();
        assert_eq!(
            0x5555_0000_1000 - bias,
            0x2000,
            "offset 0x1000 is vaddr 0x2000 in the executable segment"
        );
    }
}
