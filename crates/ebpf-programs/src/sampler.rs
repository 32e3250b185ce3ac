//! Loading, attaching and reading the CPU sampler.

use std::collections::HashMap;
use std::path::PathBuf;

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, ProgramArray, RingBuf};
use aya::programs::perf_event::{
    PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
};
use aya::programs::{PerfEvent, RawTracePoint};
use ferroscope_ebpf_abi::{
    Counter, PidEvent, PidEventKind, RT_CNT_ATTEMPTS, RT_CNT_FRAMES, RT_CNT_NO_FRAMES, TraceRecord,
    runtime_counter_key,
};

use ferroscope_ebpf_abi::Entry;

use crate::entries::{EntrySet, Globals, OffCpuConfig, ProbeConfig, ProbeTarget, load_entry};
use crate::loader::{
    Build, LoadedRuntime, PinDir, ProgramReport, RuntimeObject, SHARED_MAPS, Verdict,
    load_perf_event, load_raw_tracepoint, load_runtime, loader_with_pins, pin_maps,
    preferred_build,
};
use crate::unwind_maps::{RawMap, UnwindMaps};
use crate::{Error, NATIVE_OBJECTS, UnwinderConfig};

const SAMPLE: &str = "fs_sample";
const NATIVE: &str = "fs_native";
const EXIT: &str = "fs_process_exit";
const EXEC: &str = "fs_process_exec";
const FORK: &str = "fs_process_fork";

/// What to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Samples per second per CPU (perf frequency mode).
    pub sample_rate_hz: u32,
    /// Only these processes (thread-group IDs); `None` samples the whole host.
    pub pids: Option<Vec<u32>>,
    /// With `pids`: the processes the filtered ones start (fork) join the filter, in the
    /// kernel, and every filtered process leaves it when it exits.
    pub follow_children: bool,
    /// Unwind user stacks in eBPF from the stack-delta tables loaded through
    /// [`Sampler::unwind_maps`]; `None` keeps the kernel's frame-pointer walk for every
    /// sample.
    pub unwinder: Option<UnwinderConfig>,
    /// Runtime programs to load with the unwinder, in slot order (slot 1 first).
    pub runtimes: Vec<RuntimeObject>,
    /// Which build to load first (`None`: what the kernel supports, see
    /// [`crate::preferred_build`]).
    pub build: Option<Build>,
    /// Off-CPU profiles: tasks leaving the CPU are recorded (`None`: off).
    pub off_cpu: Option<OffCpuConfig>,
    /// Probes: load the probe programs, for [`Sampler::attach_probe`] (`None`: off).
    pub probes: Option<ProbeConfig>,
}

impl SamplerConfig {
    /// Sampling at `sample_rate_hz`, with the kernel's frame-pointer walk only.
    pub fn frame_pointers(sample_rate_hz: u32, pids: Option<Vec<u32>>) -> SamplerConfig {
        SamplerConfig {
            sample_rate_hz,
            pids,
            follow_children: false,
            unwinder: None,
            runtimes: Vec::new(),
            build: None,
            off_cpu: None,
            probes: None,
        }
    }

    /// The entries beyond the CPU sampler that are on.
    fn extra_entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        if self.off_cpu.is_some() {
            out.push(Entry::Switch);
        }
        if self.probes.is_some() {
            out.push(Entry::Probe);
        }
        out
    }
}

/// The native counters, summed over all CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    values: Vec<u64>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            values: vec![0; Counter::COUNT as usize],
        }
    }
}

impl Counters {
    /// One counter's value.
    pub fn get(&self, c: Counter) -> u64 {
        self.values.get(c as usize).copied().unwrap_or(0)
    }

    /// Every counter with its value, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|&c| (c, self.get(c)))
    }

    /// Counters with these values (for tests of code that reads them).
    pub fn from_values(values: impl IntoIterator<Item = (Counter, u64)>) -> Counters {
        let mut c = Counters::default();
        for (k, v) in values {
            c.values[k as usize] = v;
        }
        c
    }
}

/// One runtime's counters, summed over all CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeCounters {
    /// Times its frames were looked for.
    pub attempts: u64,
    /// Its frames recorded.
    pub frames: u64,
    /// Native frames of its splice ranges with no frames queued for them.
    pub no_frames: u64,
    /// Its own counters (`fs_rt_counters`), in index order.
    pub own: Vec<u64>,
}

/// The loaded and attached CPU sampler. Dropping it detaches everything.
///
/// Its parts can live on different threads: [`Sampler::take_reader`] hands over the ring
/// buffers (for a thread that only drains them), [`Sampler::take_writer`] the maps the
/// process manager writes; what stays (programs, perf events, PID filter, counters) is read
/// by the caller. Methods of a part that was taken do nothing (or return `None`).
pub struct Sampler {
    reader: Option<TraceReader>,
    writer: Option<UnwindWriter>,
    counters: PerCpuArray<MapData, u64>,
    pid_filter: RawMap,
    /// The CPUs sampled, each with its perf event's link.
    cpus: Vec<(u32, PerfEventLinkId)>,
    sample_rate_hz: u32,
    programs: Vec<ProgramReport>,
    build: Build,
    /// Name, slot and object (programs and their info) of every loaded runtime.
    runtimes: Vec<(&'static str, u32, Ebpf)>,
    // While held, the kernel accounts run time per BPF program (kernel.bpf_stats_enabled).
    stats_fd: Option<std::os::fd::OwnedFd>,
    // Keeps the tail-call table's entries: the kernel empties it when its last fd closes.
    _progs: Option<ProgramArray<MapData>>,
    /// The off-CPU and probe entries' objects (programs and links).
    entries: Vec<EntrySet>,
    // Declared last so that the maps above are dropped first; holds programs and perf links.
    ebpf: Ebpf,
}

/// The sampler's ring buffers: traces and (with an unwinder) process reports. Drain them
/// often: the kernel drops what does not fit (counted as `LostRingbufFull`).
pub struct TraceReader {
    traces: RingBuf<MapData>,
    pid_events: Option<RingBuf<MapData>>,
}

impl std::fmt::Debug for TraceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceReader").finish_non_exhaustive()
    }
}

impl TraceReader {
    /// Hands every trace waiting in the ring buffer to `f`; returns how many there were.
    /// Records shorter than their header says are skipped (they cannot occur unless the
    /// object and this crate disagree, which the ABI tests prevent).
    pub fn drain(&mut self, mut f: impl FnMut(&TraceRecord<'_>)) -> usize {
        let mut n = 0;
        while let Some(item) = self.traces.next() {
            if let Some(record) = TraceRecord::parse(&item) {
                f(&record);
                n += 1;
            }
        }
        n
    }

    /// Hands every process report waiting in the `fs_pid_events` ring buffer to `f`
    /// (nothing when the unwinder is off); returns how many there were.
    pub fn drain_pid_events(&mut self, mut f: impl FnMut(PidEvent, PidEventKind)) -> usize {
        let Some(events) = &mut self.pid_events else {
            return 0;
        };
        let mut n = 0;
        while let Some(item) = events.next() {
            if let Some((event, kind)) = PidEvent::decode(&item) {
                f(event, kind);
                n += 1;
            }
        }
        n
    }
}

/// One loaded runtime's own maps and counters.
struct RuntimeHandles {
    name: &'static str,
    slot: u32,
    maps: HashMap<String, RawMap>,
    counters: Option<PerCpuArray<MapData, u64>>,
    pid_maps: &'static [&'static str],
}

/// What the process manager and the runtime plug-ins write: the unwinder's maps, each
/// runtime's own maps, and the runtimes' counters they read back.
pub struct UnwindWriter {
    maps: UnwindMaps,
    runtimes: Vec<RuntimeHandles>,
    runtime_counters: Option<PerCpuArray<MapData, u64>>,
}

impl std::fmt::Debug for UnwindWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnwindWriter")
            .field("maps", &self.maps)
            .finish_non_exhaustive()
    }
}

impl UnwindWriter {
    /// The maps the process manager loads unwind tables into.
    pub fn unwind_maps(&mut self) -> &mut UnwindMaps {
        &mut self.maps
    }

    /// The unwinder's maps, to read (their sizes).
    pub fn unwind_maps_ref(&self) -> &UnwindMaps {
        &self.maps
    }

    /// Writes (or with `None` deletes) a key of a runtime's own map.
    pub fn write_runtime_map(
        &mut self,
        slot: u32,
        map: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), Error> {
        let rt = self
            .runtimes
            .iter()
            .find(|r| r.slot == slot)
            .ok_or(Error::NoSuchRuntime { slot })?;
        let m = rt
            .maps
            .get(map)
            .ok_or_else(|| Error::MissingMap(format!("{}:{map}", rt.name)))?;
        match value {
            Some(v) => m.update(key, v),
            None => m.delete(key),
        }
    }

    /// Deletes `pid` from every per-process map of the runtime at `slot`.
    pub fn forget_runtime_pid(&mut self, slot: u32, pid: u32) -> Result<(), Error> {
        let Some(rt) = self.runtimes.iter().find(|r| r.slot == slot) else {
            return Ok(());
        };
        for name in rt.pid_maps {
            if let Some(m) = rt.maps.get(*name) {
                m.delete(&pid.to_ne_bytes())?;
            }
        }
        Ok(())
    }

    /// Reads the counters of the runtime at `slot`; `None` when it is not loaded.
    pub fn runtime_counters(&self, slot: u32) -> Result<Option<RuntimeCounters>, Error> {
        let Some(rt) = self.runtimes.iter().find(|r| r.slot == slot) else {
            return Ok(None);
        };
        let mut out = RuntimeCounters::default();
        if let Some(common) = &self.runtime_counters {
            let read = |which| {
                sum_percpu(
                    common,
                    runtime_counter_key(slot, which),
                    "fs_runtime_counters",
                )
            };
            out.attempts = read(RT_CNT_ATTEMPTS)?;
            out.frames = read(RT_CNT_FRAMES)?;
            out.no_frames = read(RT_CNT_NO_FRAMES)?;
        }
        if let Some(own) = &rt.counters {
            for i in 0..own.len() {
                out.own.push(sum_percpu(own, i, "fs_rt_counters")?);
            }
        }
        Ok(Some(out))
    }
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("cpus", &self.cpus)
            .field("build", &self.build)
            .field("programs", &self.programs)
            .finish_non_exhaustive()
    }
}

/// The native object loaded in one build.
struct Native {
    ebpf: Ebpf,
    reports: Vec<ProgramReport>,
    build: Build,
}

fn shared_pins(dir: &PinDir) -> HashMap<String, PathBuf> {
    SHARED_MAPS
        .iter()
        .map(|&m| (m.to_owned(), dir.path_of(m)))
        .collect()
}

/// Attaches the sampling program to a cpu-clock event on `cpu`.
fn attach_cpu(program: &mut PerfEvent, cpu: u32, rate_hz: u32) -> Result<PerfEventLinkId, Error> {
    program
        .attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Frequency(u64::from(rate_hz)),
            false,
        )
        .map_err(|e| Error::Program {
            action: format!("attach a cpu-clock perf event on CPU {cpu} to"),
            program: SAMPLE,
            source: Box::new(e),
            hint: "perf_event_open needs root or CAP_PERFMON, and a rate no higher than \
                   /proc/sys/kernel/perf_event_max_sample_rate",
        })
}

/// Loads the native object in `build`; `Err` with the reports when a program it cannot do
/// without was rejected.
fn load_native(
    config: &SamplerConfig,
    build: Build,
    pins: Option<&HashMap<String, PathBuf>>,
    filter_size: u32,
    ring_bytes: u32,
) -> Result<Result<Native, Vec<ProgramReport>>, Error> {
    let globals = globals(config);
    let mut loader = loader_with_pins(pins);
    globals.apply(&mut loader);
    let off_cpu: u32 = config.off_cpu.is_some().into();
    loader.override_global("fs_off_cpu_on", &off_cpu, true);
    loader.map_max_entries("fs_pid_filter", filter_size);
    match &config.unwinder {
        Some(u) => {
            loader.map_max_entries("fs_known_pids", u.max_pids);
            loader.map_max_entries("fs_pid_mappings", u.max_mapping_prefixes);
            loader.map_max_entries("fs_delta_pages", u.max_delta_pages);
            loader.map_max_entries("fs_delta_entries", u.max_delta_entries);
        }
        None => {
            // Unused: keep the kernel memory they take small.
            for m in [
                "fs_known_pids",
                "fs_pid_mappings",
                "fs_delta_pages",
                "fs_delta_entries",
            ] {
                loader.map_max_entries(m, 1);
            }
        }
    }
    loader.map_max_entries("fs_traces", ring_bytes);
    if config.off_cpu.is_some() {
        // Every recorded switch-out ends with a report there.
        loader.map_max_entries("fs_pid_events", 1 << 20);
    }
    let bytes = match build {
        Build::Loop => NATIVE_OBJECTS.cpu.modern,
        Build::Legacy => NATIVE_OBJECTS.cpu.legacy,
    };
    let mut ebpf = loader.load(bytes).map_err(|e| Error::Load {
        source: Box::new(e),
    })?;
    let mut reports = vec![load_perf_event(&mut ebpf, "native", SAMPLE, None, build)];
    if config.unwinder.is_some() {
        reports.push(load_perf_event(
            &mut ebpf,
            "native",
            NATIVE,
            Some(ferroscope_ebpf_abi::PROG_NATIVE),
            build,
        ));
    }
    if config.unwinder.is_some() || follows_children(config) {
        for program in [EXIT, EXEC, FORK] {
            reports.push(load_raw_tracepoint(&mut ebpf, program, build));
        }
    }
    if reports.iter().all(ProgramReport::loaded) {
        Ok(Ok(Native {
            ebpf,
            reports,
            build,
        }))
    } else {
        Ok(Err(reports))
    }
}

/// The globals every native object of the set is loaded with.
fn globals(config: &SamplerConfig) -> Globals {
    Globals {
        filter: config.pids.is_some().into(),
        unwinder: config.unwinder.is_some().into(),
        follow: follows_children(config).into(),
    }
}

/// Whether new processes of filtered ones join the filter (only meaningful with a filter).
fn follows_children(config: &SamplerConfig) -> bool {
    config.follow_children && config.pids.is_some()
}

/// Everything loaded, before anything is attached.
struct Loaded {
    ebpf: Ebpf,
    reports: Vec<ProgramReport>,
    build: Build,
    runtimes: Vec<LoadedRuntime>,
    progs: Option<ProgramArray<MapData>>,
    entries: Vec<EntrySet>,
    online: Vec<u32>,
}

fn load_all(config: &SamplerConfig) -> Result<Loaded, Error> {
    if let Some(u) = &config.unwinder {
        u.validate()?;
    }
    if config.runtimes.len() >= ferroscope_ebpf_abi::MAX_RUNTIMES {
        return Err(Error::TooManyRuntimes {
            given: config.runtimes.len(),
            max: ferroscope_ebpf_abi::MAX_RUNTIMES - 1,
        });
    }
    let filter_size = config
        .pids
        .as_ref()
        .map_or(1, |p| p.len())
        .max(config.unwinder.map_or(1024, |u| u.max_pids) as usize)
        .min(1 << 24) as u32;
    let online = aya::util::online_cpus().map_err(|(_, e)| Error::OnlineCpus(e))?;
    let mut ring_bytes = ring_buffer_bytes(online.len(), config.sample_rate_hz);
    let extra = config.extra_entries();
    if config.off_cpu.is_some() || config.probes.is_some() {
        // Off-CPU records and probe hits come at the rate tasks switch and functions are
        // called, not at the sampling rate.
        ring_bytes = ring_bytes.max(8 << 20);
    }

    // Runtime objects (and the other entries' objects) reach the shared maps through pins
    // in a private bpffs directory.
    let mut pin_problem = None;
    let pin_dir = if (config.unwinder.is_some() && !config.runtimes.is_empty()) || !extra.is_empty()
    {
        match PinDir::create() {
            Ok(d) => Some(d),
            Err(e) => {
                pin_problem = Some(e.to_string());
                None
            }
        }
    } else {
        None
    };
    let mut pins = pin_dir.as_ref().map(shared_pins);
    if !extra.is_empty()
        && let Some(problem) = &pin_problem
    {
        return Err(Error::PinDir {
            path: "/sys/fs/bpf".into(),
            source: std::io::Error::other(format!(
                "off-CPU profiles and probes share the sampler's maps through a bpffs pin \
                 directory, which could not be made: {problem}"
            )),
        });
    }

    let first = config.build.unwrap_or_else(preferred_build);
    let mut attempts = vec![first];
    if first == Build::Loop {
        attempts.push(Build::Legacy);
    }
    let mut native = None;
    let mut rejected = Vec::new();
    for build in attempts {
        // A previous attempt's pins belong to maps of an object that was dropped.
        for p in pins.iter().flat_map(|p| p.values()) {
            let _ = std::fs::remove_file(p);
        }
        if let Some(p) = &mut pins {
            p.retain(|name, _| SHARED_MAPS.contains(&name.as_str()));
        }
        match load_native(config, build, pins.as_ref(), filter_size, ring_bytes)? {
            Ok(n) => {
                native = Some(n);
                break;
            }
            Err(reports) => {
                for r in &reports {
                    if let Verdict::Rejected { reason, .. } = &r.verdict {
                        tracing::warn!(
                            program = %r.program,
                            build = r.build.describe(),
                            "the kernel rejected the program: {reason}"
                        );
                    }
                }
                rejected = reports;
            }
        }
    }
    let Some(Native {
        mut ebpf,
        mut reports,
        build,
    }) = native
    else {
        let report = rejected
            .into_iter()
            .find(|r| !r.loaded())
            .expect("a rejected attempt has a rejected program");
        let (reason, log_tail) = match report.verdict {
            Verdict::Rejected { reason, log_tail } => (reason, log_tail),
            Verdict::Loaded { .. } => unreachable!("found as rejected"),
        };
        return Err(Error::ProgramRejected {
            program: report.program,
            reason,
            log_tail,
        });
    };
    if !extra.is_empty()
        && let (Some(dir), Some(pins)) = (&pin_dir, &mut pins)
    {
        // The other entries' native objects share every map of this one.
        pin_maps(&ebpf, dir, "", pins)?;
    }
    let mut extra_runtimes = Vec::new();

    let mut progs: Option<ProgramArray<MapData>> = None;
    let mut runtimes = Vec::new();
    if config.unwinder.is_some() {
        let mut table: ProgramArray<MapData> = take_map(&mut ebpf, "fs_progs")?;
        let native_fd = ebpf
            .program(NATIVE)
            .and_then(|p| <&PerfEvent>::try_from(p).ok())
            .ok_or_else(|| Error::MissingMap(NATIVE.into()))?
            .fd()
            .map_err(|e| Error::Program {
                action: "get the file descriptor of".into(),
                program: NATIVE,
                source: Box::new(e),
                hint: "this is a bug in the loader",
            })?
            .try_clone()
            .map_err(|e| Error::Map {
                map: "fs_progs".into(),
                action: "duplicate the native program's descriptor for",
                source: e,
            })?;
        table
            .set(ferroscope_ebpf_abi::PROG_NATIVE, &native_fd, 0)
            .map_err(|e| Error::Map {
                map: "fs_progs".into(),
                action: "insert the native unwinder into",
                source: std::io::Error::other(e.to_string()),
            })?;
        let max_pids = config.unwinder.map_or(1, |u| u.max_pids);
        for (i, rt) in config.runtimes.iter().enumerate() {
            let slot = i as u32 + 1;
            match (&pins, &pin_problem) {
                (Some(pins), _) => {
                    // The runtime's own maps are shared with its objects for the other
                    // entries.
                    let mut own = HashMap::new();
                    let share = match (&pin_dir, extra.is_empty()) {
                        (Some(dir), false) => Some((dir, &mut own)),
                        _ => None,
                    };
                    let (loaded, report) = load_runtime(
                        rt,
                        Entry::Cpu,
                        slot,
                        build,
                        pins,
                        max_pids,
                        &mut table,
                        share,
                    );
                    if loaded.is_some() && !extra.is_empty() {
                        extra_runtimes.push((*rt, slot, own));
                    }
                    if let Verdict::Rejected { reason, .. } = &report.verdict {
                        tracing::warn!(
                            runtime = rt.name,
                            "the kernel rejected the runtime's eBPF program, so its frames \
                             are not unwound (native unwinding goes on): {reason}"
                        );
                    }
                    runtimes.extend(loaded);
                    reports.push(report);
                }
                (None, problem) => reports.push(ProgramReport {
                    owner: rt.name.into(),
                    program: rt.program.into(),
                    slot: Some(slot),
                    build,
                    entry: Entry::Cpu,
                    verdict: Verdict::Rejected {
                        reason: format!(
                            "runtime programs share maps through a bpffs pin directory, which \
                             could not be made: {}",
                            problem.as_deref().unwrap_or("unknown")
                        ),
                        log_tail: String::new(),
                    },
                }),
            }
        }
        progs = Some(table);
    }
    let mut entries = Vec::new();
    if let Some(pins) = &pins {
        let globals = globals(config);
        let max_pids = config.unwinder.map_or(1, |u| u.max_pids);
        for &entry in &extra {
            entries.push(load_entry(
                entry,
                build,
                &globals,
                config.off_cpu,
                config.probes,
                pins,
                &extra_runtimes,
                max_pids,
                &mut reports,
            )?);
        }
    }
    drop(pin_dir);
    Ok(Loaded {
        ebpf,
        reports,
        build,
        runtimes,
        progs,
        entries,
        online,
    })
}

/// Loads every program `config` names (native and runtime) without attaching anything, and
/// reports each one's verdict: what `ferroscope check` shows.
pub fn probe(config: &SamplerConfig) -> Result<Vec<ProgramReport>, Error> {
    Ok(load_all(config)?.reports)
}

impl Sampler {
    /// Loads the sampler (and, with an unwinder, the native unwinder and every runtime
    /// program in `config.runtimes`), fills the PID filter, and attaches a cpu-clock perf
    /// event at `sample_rate_hz` on every online CPU.
    ///
    /// A runtime program the kernel rejects does not fail the start: it is reported in
    /// [`Sampler::programs`] and its runtime stays off.
    pub fn start(config: &SamplerConfig) -> Result<Sampler, Error> {
        let Loaded {
            mut ebpf,
            reports,
            build,
            runtimes,
            progs,
            mut entries,
            online,
        } = load_all(config)?;
        let pid_filter = RawMap::take(&mut ebpf, "fs_pid_filter")?;
        for pid in config.pids.iter().flatten() {
            pid_filter.update(&pid.to_ne_bytes(), &[1])?;
        }
        let traces: RingBuf<MapData> = take_map(&mut ebpf, "fs_traces")?;
        let counters: PerCpuArray<MapData, u64> = take_map(&mut ebpf, "fs_counters")?;
        let runtime_counters: Option<PerCpuArray<MapData, u64>> = ebpf
            .take_map("fs_runtime_counters")
            .and_then(|m| PerCpuArray::try_from(m).ok());
        let mut objects = Vec::with_capacity(runtimes.len());
        let mut handles = Vec::with_capacity(runtimes.len());
        for rt in runtimes {
            handles.push(RuntimeHandles {
                name: rt.name,
                slot: rt.slot,
                maps: rt.maps,
                counters: rt.counters,
                pid_maps: rt.pid_maps,
            });
            objects.push((rt.name, rt.slot, rt._ebpf));
        }
        let pid_events: Option<RingBuf<MapData>> =
            if config.unwinder.is_some() || config.off_cpu.is_some() {
                Some(take_map(&mut ebpf, "fs_pid_events")?)
            } else {
                None
            };
        let writer = match &config.unwinder {
            Some(_) => Some(UnwindWriter {
                maps: UnwindMaps::take(&mut ebpf)?,
                runtimes: handles,
                runtime_counters,
            }),
            None => None,
        };
        for e in &mut entries {
            if e.entry == Entry::Switch {
                e.attach_switch()?;
            }
        }
        let mut tracepoints = Vec::new();
        if config.unwinder.is_some() || follows_children(config) {
            tracepoints.push((EXIT, "sched_process_exit"));
        }
        if config.unwinder.is_some() {
            tracepoints.push((EXEC, "sched_process_exec"));
        }
        if follows_children(config) {
            tracepoints.push((FORK, "sched_process_fork"));
        }
        {
            for (program, tracepoint) in tracepoints {
                let p: &mut RawTracePoint = ebpf
                    .program_mut(program)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| Error::MissingMap(program.into()))?;
                p.attach(tracepoint).map_err(|e| Error::Program {
                    action: format!("attach to the {tracepoint} raw tracepoint"),
                    program,
                    source: Box::new(e),
                    hint: "raw tracepoints need CAP_BPF and CAP_PERFMON (or root)",
                })?;
            }
        }

        let program: &mut PerfEvent = ebpf
            .program_mut(SAMPLE)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::MissingMap(SAMPLE.into()))?;
        let mut cpus = Vec::with_capacity(online.len());
        for &cpu in &online {
            cpus.push((cpu, attach_cpu(program, cpu, config.sample_rate_hz)?));
        }
        tracing::debug!(
            cpus = online.len(),
            rate = config.sample_rate_hz,
            build = build.describe(),
            runtimes = objects.len(),
            "sampler attached"
        );
        Ok(Sampler {
            reader: Some(TraceReader { traces, pid_events }),
            writer,
            counters,
            pid_filter,
            cpus,
            sample_rate_hz: config.sample_rate_hz,
            programs: reports,
            build,
            runtimes: objects,
            stats_fd: None,
            _progs: progs,
            entries,
            ebpf,
        })
    }

    /// Attaches a probe (started with [`SamplerConfig::probes`]): each hit in a process
    /// sampled (the PID filter applies) records its stack, with `target.index` in its flags.
    pub fn attach_probe(&mut self, target: &ProbeTarget) -> Result<(), Error> {
        let cookies = self.build == Build::Loop;
        let set = self
            .entries
            .iter_mut()
            .find(|e| e.entry == Entry::Probe)
            .ok_or_else(|| {
                Error::MissingMap("fs_probe (the sampler was started without probes)".into())
            })?;
        set.attach_probe(target, cookies)
    }

    /// Probes attached so far.
    pub fn probes_attached(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.links.len() + e.kernel_links.len())
            .sum()
    }

    /// The CPUs sampled.
    pub fn cpus(&self) -> Vec<u32> {
        self.cpus.iter().map(|&(cpu, _)| cpu).collect()
    }

    /// Follows CPU hotplug: attaches the sampling event on CPUs that came online since the
    /// last call, and detaches it from CPUs that went offline (so that it is attached afresh
    /// if they come back). Returns the CPUs added and removed.
    pub fn follow_cpus(&mut self) -> Result<(Vec<u32>, Vec<u32>), Error> {
        let online = aya::util::online_cpus().map_err(|(_, e)| Error::OnlineCpus(e))?;
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut(SAMPLE)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::MissingMap(SAMPLE.into()))?;
        let mut removed = Vec::new();
        let mut kept = Vec::with_capacity(self.cpus.len());
        for (cpu, link) in self.cpus.drain(..) {
            if online.contains(&cpu) {
                kept.push((cpu, link));
            } else {
                // Already gone with the CPU when the kernel dropped the event.
                let _ = program.detach(link);
                removed.push(cpu);
            }
        }
        self.cpus = kept;
        let mut added = Vec::new();
        for cpu in online {
            if self.cpus.iter().any(|&(c, _)| c == cpu) {
                continue;
            }
            let link = attach_cpu(program, cpu, self.sample_rate_hz)?;
            self.cpus.push((cpu, link));
            added.push(cpu);
        }
        self.cpus.sort_by_key(|&(cpu, _)| cpu);
        Ok((added, removed))
    }

    /// Which build of the programs is loaded.
    pub fn build(&self) -> Build {
        self.build
    }

    /// Every program's load report: the native ones, then each runtime's.
    pub fn programs(&self) -> &[ProgramReport] {
        &self.programs
    }

    /// The slots of the runtimes whose programs are loaded, by name.
    pub fn loaded_runtimes(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        self.runtimes.iter().map(|(name, slot, _)| (*name, *slot))
    }

    /// Takes the ring buffers, to drain them on another thread; `None` once taken.
    pub fn take_reader(&mut self) -> Option<TraceReader> {
        self.reader.take()
    }

    /// Takes the maps the process manager writes, to write them on another thread; `None`
    /// once taken, or without an unwinder.
    pub fn take_writer(&mut self) -> Option<UnwindWriter> {
        self.writer.take()
    }

    /// Hands every trace waiting in the ring buffer to `f`; returns how many there were (0
    /// once the reader was taken). See [`TraceReader::drain`].
    pub fn drain(&mut self, f: impl FnMut(&TraceRecord<'_>)) -> usize {
        self.reader.as_mut().map_or(0, |r| r.drain(f))
    }

    /// Hands every process report waiting to `f`. See [`TraceReader::drain_pid_events`].
    pub fn drain_pid_events(&mut self, f: impl FnMut(PidEvent, PidEventKind)) -> usize {
        self.reader.as_mut().map_or(0, |r| r.drain_pid_events(f))
    }

    /// The maps the process manager loads unwind tables into; `None` when started without
    /// an unwinder (or once the writer was taken).
    pub fn unwind_maps(&mut self) -> Option<&mut UnwindMaps> {
        self.writer.as_mut().map(UnwindWriter::unwind_maps)
    }

    /// The unwinder's maps, to read (their sizes); `None` without an unwinder.
    pub fn unwind_maps_ref(&self) -> Option<&UnwindMaps> {
        self.writer.as_ref().map(UnwindWriter::unwind_maps_ref)
    }

    /// Writes (or with `None` deletes) a key of a runtime's own map. See
    /// [`UnwindWriter::write_runtime_map`].
    pub fn write_runtime_map(
        &mut self,
        slot: u32,
        map: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), Error> {
        match &mut self.writer {
            Some(w) => w.write_runtime_map(slot, map, key, value),
            None => Err(Error::NoSuchRuntime { slot }),
        }
    }

    /// Deletes `pid` from every per-process map of the runtime at `slot`.
    pub fn forget_runtime_pid(&mut self, slot: u32, pid: u32) -> Result<(), Error> {
        match &mut self.writer {
            Some(w) => w.forget_runtime_pid(slot, pid),
            None => Ok(()),
        }
    }

    /// Adds a process to the PID filter (only effective when started with `pids`).
    pub fn add_pid(&mut self, pid: u32) -> Result<(), Error> {
        self.pid_filter.update(&pid.to_ne_bytes(), &[1])
    }

    /// Removes a process from the PID filter. Removing a PID that is not there is not an
    /// error.
    pub fn remove_pid(&mut self, pid: u32) -> Result<(), Error> {
        self.pid_filter.delete(&pid.to_ne_bytes())
    }

    /// The processes in the PID filter now: those added, and with `follow_children` the
    /// children the kernel added (each leaves when it exits).
    pub fn filter_pids(&self) -> Result<Vec<u32>, Error> {
        let mut pids = Vec::new();
        let mut key: Option<[u8; 4]> = None;
        // A hash map's keys, walked with BPF_MAP_GET_NEXT_KEY; bounded in case the map
        // changes under the walk (a deleted key restarts it from the first).
        for _ in 0..=self.pid_filter.max_entries() {
            let Some(next) = self.pid_filter.next_key(key.as_ref().map(|k| &k[..]))? else {
                break;
            };
            let next: [u8; 4] = next.try_into().unwrap_or_default();
            pids.push(u32::from_ne_bytes(next));
            key = Some(next);
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// How many processes the PID filter holds at most.
    pub fn max_filter_pids(&self) -> u32 {
        self.pid_filter.max_entries()
    }

    /// Asks the kernel to account the run time of BPF programs from now on, for
    /// [`Sampler::run_time`]. It stays on while this sampler lives.
    pub fn enable_run_time_stats(&mut self) -> Result<(), Error> {
        if self.stats_fd.is_none() {
            let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(Error::Stats)?;
            self.stats_fd = Some(fd);
        }
        Ok(())
    }

    /// Total time every program of the set has run in the kernel, and how many samples
    /// (runs of the sampling program), when run time accounting is on (see
    /// [`Sampler::enable_run_time_stats`]).
    pub fn run_time(&self) -> Option<(std::time::Duration, u64)> {
        let info = |e: &Ebpf, name: &str| e.program(name).and_then(|p| p.info().ok());
        let sample = info(&self.ebpf, SAMPLE)?;
        let mut total = sample.run_time();
        for name in [NATIVE] {
            if let Some(i) = info(&self.ebpf, name) {
                total += i.run_time();
            }
        }
        for (_, _, ebpf) in &self.runtimes {
            for (_, p) in ebpf.programs() {
                if let Ok(i) = p.info() {
                    total += i.run_time();
                }
            }
        }
        Some((total, sample.run_count()))
    }

    /// The run time and runs of the off-CPU and probe programs (by entry program name:
    /// `fs_off_cpu`, `fs_probe`, `fs_probe_ret`), with run time accounting on. A program's
    /// time includes the programs it tail-calls.
    pub fn entry_run_times(&self) -> Vec<(String, std::time::Duration, u64)> {
        let mut out = Vec::new();
        for e in &self.entries {
            for (name, p) in e.native.programs() {
                if name == "fs_native" {
                    continue;
                }
                if let Ok(i) = p.info() {
                    out.push((name.to_owned(), i.run_time(), i.run_count()));
                }
            }
        }
        out
    }

    /// Reads the native counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, Error> {
        let mut values = Vec::with_capacity(Counter::COUNT as usize);
        for &c in Counter::ALL {
            values.push(sum_percpu(&self.counters, c as u32, "fs_counters")?);
        }
        Ok(Counters { values })
    }

    /// Reads the counters of the runtime at `slot`; `None` when it is not loaded (or the
    /// writer was taken: ask it instead).
    pub fn runtime_counters(&self, slot: u32) -> Result<Option<RuntimeCounters>, Error> {
        match &self.writer {
            Some(w) => w.runtime_counters(slot),
            None => Ok(None),
        }
    }
}

fn sum_percpu(map: &PerCpuArray<MapData, u64>, index: u32, name: &str) -> Result<u64, Error> {
    let values = map.get(&index, 0).map_err(|e| Error::Map {
        map: name.into(),
        action: "look up",
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(values.iter().sum())
}

/// Seconds of samples the trace ring buffer holds: how long userspace may be busy
/// elsewhere (building a round's profiles, loading tables) before samples are lost.
pub const RING_BUFFER_SECONDS: u64 = 2;
/// The size of a typical record, with room to spare: the header, 64 user frames and 16
/// kernel frames (records are as long as their stacks, so this is an average, not a bound).
const TYPICAL_RECORD_BYTES: u64 = 64 + 64 * 16 + 16 * 8 + 8;

/// The trace ring buffer's size: every CPU at the full rate for [`RING_BUFFER_SECONDS`] of
/// typical records, as a power of two (the kernel requires one) between 256 KiB and 64 MiB.
/// The kernel maps the buffer's pages into the agent twice, so this is what it adds to RSS,
/// doubled.
pub fn ring_buffer_bytes(cpus: usize, sample_rate_hz: u32) -> u32 {
    let want = cpus.max(1) as u64
        * u64::from(sample_rate_hz.max(1))
        * RING_BUFFER_SECONDS
        * TYPICAL_RECORD_BYTES;
    want.next_power_of_two().clamp(256 << 10, 64 << 20) as u32
}

pub(crate) fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map>,
{
    ebpf.take_map(name)
        .and_then(|m| T::try_from(m).ok())
        .ok_or_else(|| Error::MissingMap(name.into()))
}

#[cfg(test)]
mod tests {
    use super::ring_buffer_bytes;

    #[test]
    fn ring_buffer_is_a_power_of_two_sized_for_cpus_and_rate() {
        // The agent's default: 19 Hz on 2 CPUs: 2 x 19 x 2 s x ~1.2 KiB = ~93 KiB -> the floor.
        assert_eq!(ring_buffer_bytes(2, 19), 256 << 10);
        // record's default on 2 CPUs: 2 x 97 x 2 s x ~1.2 KiB = ~475 KiB -> 512 KiB.
        assert_eq!(ring_buffer_bytes(2, 97), 512 << 10);
        // A big host at the highest rate hits the ceiling.
        assert_eq!(ring_buffer_bytes(256, 1000), 64 << 20);
        for (cpus, rate) in [(1, 1), (3, 250), (16, 499), (64, 97)] {
            let b = ring_buffer_bytes(cpus, rate);
            assert!(b.is_power_of_two() && b >= 4096, "{cpus} {rate}: {b}");
        }
    }
}
