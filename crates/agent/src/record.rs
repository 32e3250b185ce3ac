//! `ferroscope record`: sample for a while, then build one profile.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferroscope_ebpf_abi::Counter;
use ferroscope_ebpf_programs::{Counters, ProgramReport, UnwinderConfig};
use ferroscope_pprof::proto::Profile;
use ferroscope_symbolize::Symbolizer;
use ferroscope_unwind_api::Metric;

use crate::Error;
use crate::aggregate::TraceAggregator;
use crate::process::{ProcessManagerConfig, UnwindMetrics};
use crate::profile::{ProfileOptions, ProfileType, build_profile};
use crate::session::{Delivery, SampleKind, Session, SessionConfig};

/// Highest sample rate `record` accepts, before the kernel's own limit.
pub const MAX_SAMPLE_RATE_HZ: u32 = 1000;

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// Processes to profile; empty means the whole host.
    pub pids: Vec<u32>,
    /// With `pids`: also every process they have started and start while recording (fork,
    /// exec, multiprocessing), followed in the kernel.
    pub children: bool,
    /// How long to sample.
    pub duration: Duration,
    /// Samples per second per CPU.
    pub sample_rate_hz: u32,
    /// Runtime unwinders turned off, by name (`python`): their code shows as the
    /// runtime's native frames.
    pub disabled_interpreters: Vec<String>,
    /// Off-CPU profile: the probability (0 to 1) that a thread leaving the CPU is recorded
    /// (0: no off-CPU profile).
    pub off_cpu_threshold: f64,
    /// Probe links (`uprobe:PATH:SYMBOL`, `uretprobe:PATH:SYMBOL`): a probe profile counts
    /// their hits.
    pub probes: Vec<String>,
    /// Attach the probes to files of their name that processes load later.
    pub load_probe: bool,
    /// Most probe hits recorded per second per CPU (0: no limit).
    pub probe_rate_limit: u64,
}

/// `record`'s default probe rate limit: hits recorded per second per CPU.
pub const DEFAULT_PROBE_RATE_LIMIT: u64 = 100_000;

/// The state of a running recording, for progress displays.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Time since sampling started.
    pub elapsed: Duration,
    /// The configured duration.
    pub duration: Duration,
    /// Samples received.
    pub samples: u64,
    /// Distinct processes seen.
    pub processes: usize,
    /// Samples lost so far (ring buffer full).
    pub lost: u64,
}

/// Why a recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The duration elapsed.
    Duration,
    /// The caller asked to stop (Ctrl-C).
    Interrupted,
    /// Every process given with `pids` exited.
    TargetsExited,
}

/// What a recording produced.
#[derive(Debug)]
pub struct RecordOutcome {
    /// The symbolized CPU profile.
    pub profile: Profile,
    /// The other profiles asked for, in [`ProfileType`] order: off-CPU time
    /// (`offcpu/nanoseconds`) with an off-CPU threshold, uprobe hits (`uprobe/count`) with
    /// uprobe links, kernel probe hits (`kprobe/count`) with kprobe links.
    pub others: Vec<(ProfileType, Profile)>,
    /// Samples received.
    pub samples: u64,
    /// Distinct processes seen.
    pub processes: usize,
    /// The sampler's counters at the end.
    pub counters: Counters,
    /// How long sampling ran.
    pub elapsed: Duration,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// CPU time (user + system) this process used while sampling.
    pub agent_cpu: Duration,
    /// Time the eBPF program ran in the kernel, and how many times, while sampling.
    pub bpf_run_time: Option<(Duration, u64)>,
    /// The off-CPU and probe programs' run time and runs while sampling (by program).
    pub entry_run_times: Vec<(String, Duration, u64)>,
    /// The stack-delta unwinder's and process manager's metrics; `None` when the unwinder
    /// could not be loaded and every user stack came from frame pointers.
    pub unwind: Option<UnwindMetrics>,
    /// The runtime plug-ins' metrics (`UnwindPythonFrames_total`, ...).
    pub interpreters: Vec<Metric>,
    /// Files a plug-in recognised as its runtime but cannot unwind, and why.
    pub detection_failures: Vec<crate::interp::DetectionFailure>,
    /// Every eBPF program's load report (native, then each runtime's).
    pub programs: Vec<ProgramReport>,
}

/// Where `record` keeps the unwind tables it extracted, by file identity, so that the next
/// `record` of the same programs starts sampling them at once.
pub const RECORD_TABLE_CACHE: &str = "/var/cache/ferroscope/unwind-tables";

/// The highest sample rate the kernel allows (`kernel.perf_event_max_sample_rate`).
pub fn kernel_max_sample_rate() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Checks the arguments before anything is loaded: the processes exist and the rate is
/// allowed.
pub fn validate(config: &RecordConfig) -> Result<(), Error> {
    let kernel_max = kernel_max_sample_rate().unwrap_or(u32::MAX);
    let max = MAX_SAMPLE_RATE_HZ.min(kernel_max);
    if config.sample_rate_hz == 0 || config.sample_rate_hz > max {
        let why = if kernel_max < MAX_SAMPLE_RATE_HZ {
            format!(
                " (the kernel's limit, kernel.perf_event_max_sample_rate, is {kernel_max}; the kernel \
                 lowers it when sampling takes too long)"
            )
        } else {
            String::new()
        };
        return Err(Error::InvalidSampleRate {
            rate: config.sample_rate_hz,
            max,
            why,
        });
    }
    for &pid in &config.pids {
        if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(Error::NoSuchProcess { pid });
        }
    }
    if !(0.0..=1.0).contains(&config.off_cpu_threshold) {
        return Err(Error::Environment(format!(
            "--off-cpu takes a probability from 0 to 1 (the share of context switches \
             recorded), not {}",
            config.off_cpu_threshold
        )));
    }
    crate::probes::Probes::check(&config.probes, config.load_probe)?;
    Ok(())
}

/// The profiles besides the CPU one that a record with `config` writes, in order: off-CPU
/// time with an off-CPU threshold, uprobe hits with uprobe links, kernel probe hits with
/// kprobe links (links that do not parse count as none: [`validate`] refuses them).
pub fn other_profiles(config: &RecordConfig) -> Vec<ProfileType> {
    let links: Vec<_> = config
        .probes
        .iter()
        .filter_map(|l| crate::probes::ProbeLink::parse(l).ok())
        .collect();
    [
        (ProfileType::OffCpu, config.off_cpu_threshold > 0.0),
        (ProfileType::Probe, links.iter().any(|l| !l.is_kernel())),
        (
            ProfileType::KernelProbe,
            links.iter().any(|l| l.is_kernel()),
        ),
    ]
    .into_iter()
    .filter_map(|(kind, on)| on.then_some(kind))
    .collect()
}

/// Checks that `path` can be created or overwritten, without leaving anything behind.
pub fn check_writable(path: &Path) -> Result<(), Error> {
    let existed = path.exists();
    let result = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path);
    match result {
        Ok(_) => {
            if !existed {
                let _ = std::fs::remove_file(path);
            }
            Ok(())
        }
        Err(source) => Err(Error::Output {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Whether process `pid` still runs: it is in `/proc` and not a zombie (a process whose
/// parent has not reaped it yet has exited all the same).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the zero-initialised struct we pass.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Samples for `config.duration` (or until `stop` is set, or every given process exited),
/// calling `on_progress` about four times a second, then symbolizes and builds the profile.
pub fn record(
    config: &RecordConfig,
    stop: &AtomicBool,
    mut on_progress: impl FnMut(&Progress),
) -> Result<RecordOutcome, Error> {
    validate(config)?;
    // Every probe link was checked by validate(), before anything is loaded.
    let mut probes = crate::probes::Probes::check(&config.probes, config.load_probe)?;
    let children = config.children && !config.pids.is_empty();
    let pids = (!config.pids.is_empty()).then(|| {
        let mut pids = config.pids.clone();
        if children {
            pids.extend(crate::session::descendants(&config.pids));
        }
        pids
    });
    let mut symbolizer = Symbolizer::new();
    // Snapshot the targets' mappings before sampling, so that a short run still names them.
    for pid in pids.iter().flatten() {
        if let Err(e) = symbolizer.observe_process(*pid) {
            tracing::warn!(
                pid,
                "cannot read the process's mappings yet: {}",
                crate::error::Chain(&e)
            );
        }
    }
    // With --pid the filter starts empty: the targets' tables are loaded first, so that
    // their first samples are already unwound from tables, then the targets are let in.
    // Whole host: no start-up scan of every process. Processes are loaded when the sampler
    // reports them (the first time they are sampled); scanning all of /proc up front
    // extracted tables of every binary on the host, most never sampled, and cost seconds of
    // CPU on a build machine (docs/benchmarks/unwind-ebpf.md).
    let mut session = Session::start(&SessionConfig {
        sample_rate_hz: config.sample_rate_hz,
        pids: pids.as_ref().map(|_| Vec::new()),
        follow_children: children,
        disabled_runtimes: config.disabled_interpreters.clone(),
        // As the symbolizer names C++ (its default demangling).
        name_detail: ferroscope_unwind_api::NameDetail::Simplified,
        unwinder: UnwinderConfig::default(),
        manager: ProcessManagerConfig {
            table_cache: Some(PathBuf::from(RECORD_TABLE_CACHE)),
            ..ProcessManagerConfig::default()
        },
        off_cpu_threshold: config.off_cpu_threshold,
        probe_rate_limit: (!probes.is_empty()).then_some(config.probe_rate_limit),
    })?;
    if !children && let Some(pids) = &pids {
        probes.only_in(pids);
    }
    probes.attach(&mut session)?;
    if let Some(targets) = pids.as_deref() {
        session.load_now(targets, Duration::from_secs(30));
    }
    for &pid in pids.iter().flatten() {
        session.add_pid(pid)?;
    }
    if children && let Some(known) = &pids {
        // Started after the scan above but before their parent was let in: the kernel
        // follows only the forks of processes already in the filter.
        for pid in crate::session::descendants(known) {
            if !known.contains(&pid) {
                session.add_pid(pid)?;
            }
        }
    }
    if let Some(pids) = &pids {
        tracing::debug!(?pids, children, "sampling these processes from now on");
    }
    if let Err(e) = session.enable_run_time_stats() {
        tracing::debug!(
            "BPF run time will not be reported: {}",
            crate::error::Chain(&e)
        );
    }
    let bpf_before = session.run_time();
    let entries_before = session.entry_run_times();
    let cpu_before = process_cpu_time();
    let wall_start = SystemTime::now();
    let start = Instant::now();
    let mut agg = Aggregates::default();
    let mut last_progress = Instant::now();
    let mut lost = 0;

    let stop_reason = loop {
        std::thread::sleep(Duration::from_millis(50));
        session.drain(|d| take(d, &mut agg, &mut symbolizer));
        if let Some(pids) = &pids {
            let mut now = pids.clone();
            if children {
                now.extend(session.filter_pids().unwrap_or_default());
            }
            probes.poll(&mut session, Some(&now));
        } else {
            probes.poll(&mut session, None);
        }
        let elapsed = start.elapsed();
        if last_progress.elapsed() >= Duration::from_millis(250) {
            lost = session
                .counters()
                .map(|c| c.get(Counter::LostRingbufFull))
                .unwrap_or(lost);
            on_progress(&Progress {
                elapsed,
                duration: config.duration,
                samples: agg.cpu().map_or(0, TraceAggregator::samples),
                processes: agg.cpu().map_or(0, TraceAggregator::processes),
                lost,
            });
            last_progress = Instant::now();
            if let Some(pids) = &pids {
                // With children, the filter holds every followed process still alive.
                let followed = if children {
                    session.filter_pids().unwrap_or_default()
                } else {
                    Vec::new()
                };
                if pids.iter().chain(&followed).all(|&pid| !running(pid)) {
                    break StopReason::TargetsExited;
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            break StopReason::Interrupted;
        }
        if elapsed >= config.duration {
            break StopReason::Duration;
        }
    };
    let elapsed = start.elapsed();
    session.drain(|d| take(d, &mut agg, &mut symbolizer));
    let counters = session.counters()?;
    let programs = session.programs().to_vec();
    let agent_cpu = process_cpu_time().saturating_sub(cpu_before);
    let bpf_run_time = match (bpf_before, session.run_time()) {
        (Some((t0, n0)), Some((t1, n1))) if n1 > 0 => Some((t1.saturating_sub(t0), n1 - n0)),
        _ => None,
    };
    let entry_run_times = session
        .entry_run_times()
        .into_iter()
        .map(|(name, t, n)| {
            let (t0, n0) = entries_before
                .iter()
                .find(|(b, _, _)| *b == name)
                .map_or((Duration::ZERO, 0), |(_, t, n)| (*t, *n));
            (name, t.saturating_sub(t0), n.saturating_sub(n0))
        })
        .collect();
    let names = session.frame_names();
    // Sampling stops before symbolization starts; what was sampled is still delivered.
    let finished = session.finish(|d| take(d, &mut agg, &mut symbolizer));
    let unwind = finished.manager.map(|manager| UnwindMetrics {
        native: counters.clone(),
        manager,
    });
    let interpreters = finished.runtimes;
    let detection_failures = finished.detection_failures;
    let lost = counters.get(Counter::LostRingbufFull);
    if lost > 0 {
        tracing::warn!(
            lost,
            "samples were lost because the ring buffer was full; lower --sample-rate"
        );
    }

    let options = ProfileOptions {
        sample_rate_hz: config.sample_rate_hz,
        time_nanos: wall_start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
        duration_nanos: elapsed.as_nanos() as i64,
        // Several processes in one profile: each stack starts at its process's name.
        comm_root_frame: pids.is_none() || children,
        labels: crate::profile::SampleLabels::ALL,
    };
    let (profile, others) = {
        let names = names.lock().unwrap_or_else(|e| e.into_inner());
        let empty = TraceAggregator::default();
        let mut build = |kind| {
            let traces = agg.by_type.get(&kind).unwrap_or(&empty);
            build_profile(kind, traces.iter(), &mut symbolizer, &*names, &options)
        };
        let profile = build(ProfileType::Cpu);
        let others = other_profiles(config)
            .into_iter()
            .map(|kind| (kind, build(kind)))
            .collect();
        (profile, others)
    };
    let cpu = agg.cpu();
    Ok(RecordOutcome {
        profile,
        others,
        samples: cpu.map_or(0, TraceAggregator::samples),
        processes: cpu.map_or(0, TraceAggregator::processes),
        counters,
        elapsed,
        stop_reason,
        agent_cpu,
        bpf_run_time,
        entry_run_times,
        unwind,
        interpreters,
        detection_failures,
        programs,
    })
}

/// The traces counted for each profile.
#[derive(Debug, Default)]
struct Aggregates {
    /// On-CPU samples, nanoseconds off CPU, probe hits.
    by_type: std::collections::BTreeMap<ProfileType, TraceAggregator>,
    /// Processes seen in any of them.
    seen: std::collections::HashSet<u32>,
}

impl Aggregates {
    fn cpu(&self) -> Option<&TraceAggregator> {
        self.by_type.get(&ProfileType::Cpu)
    }
}

/// Counts a delivered sample; a process seen for the first time has its mappings snapshot
/// for symbolization at once (a short-lived one may be gone by the end).
fn take(delivery: Delivery, agg: &mut Aggregates, symbolizer: &mut Symbolizer) {
    match delivery {
        Delivery::Sample(sample) => {
            let pid = sample.trace.pid;
            let (kind, value) = match sample.kind {
                SampleKind::Cpu => (ProfileType::Cpu, 1),
                SampleKind::OffCpu { nanos } => (ProfileType::OffCpu, nanos),
                SampleKind::Probe { kernel: false, .. } => (ProfileType::Probe, 1),
                SampleKind::Probe { kernel: true, .. } => (ProfileType::KernelProbe, 1),
            };
            agg.by_type
                .entry(kind)
                .or_default()
                .add(sample.trace, value);
            if agg.seen.insert(pid)
                && let Err(e) = symbolizer.observe_process(pid)
            {
                tracing::debug!(
                    pid,
                    "process mappings not captured: {}",
                    crate::error::Chain(&e)
                );
            }
        }
        Delivery::Changed { .. } | Delivery::Exit { .. } => {}
    }
}
