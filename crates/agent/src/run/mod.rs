//! `ferroscope run`: the continuous node agent.
//!
//! Every `collect_interval` it takes what the session delivered, builds one pprof per
//! process with the series labels of the process's target, and hands the round to every
//! `[[write.endpoint]]` (or, without endpoints, to the local sink). Targets come from the
//! static `targets`, the built-in process discovery and the container discoveries
//! (`discovery.docker`, `discovery.kubernetes`, `discovery.cri`), relabelled; processes are
//! matched to targets by PID, then by container ID. With `targets_only` (the default) only matched
//! processes are put in the eBPF PID filter, so the rest cost nothing in the kernel.
//!
//! The session drains the kernel on threads of its own (see [`crate::session`]), so this
//! loop may spend as long as it needs on discovery, `/proc` scans and building a round
//! without losing samples. A process that exits is forgotten once its last profile is
//! built; one that execs (or whose PID is reused) gets its profile so far built at once,
//! under its old target and with its old mappings, and is then matched again.

mod output;
mod round;
mod targeting;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ferroscope_ebpf_abi::Counter;
use ferroscope_pprof::push::{WriteMetrics, Writer};
use ferroscope_pprof::sink::LocalSink;
use ferroscope_symbolize::{DemangleMode, Symbolizer};
use ferroscope_unwind_api::NameDetail;
use prometheus_client::registry::Registry;

use crate::Error;
use crate::aggregate::TraceAggregator;
use crate::config::{Config, Demangle};
use crate::discover::Discoveries;
use crate::metrics::{AgentMetrics, Mirror};
use crate::probes::Probes;
use crate::process::ProcessManagerConfig;
use crate::profile::ProfileType;
use crate::server::{Health, ServerState};
use crate::session::{Delivery, SampleKind, Session, SessionConfig, live_pids};
use output::Output;
pub use output::endpoint_config;
use round::Built;
use targeting::Targeting;

/// How often the loop takes the session's deliveries.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How often /proc is scanned for new processes to match against the targets.
const PROCESS_SCAN_EVERY: Duration = Duration::from_secs(2);

/// How long after its exit report a process's last samples may still arrive.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How often what is kept per process is checked against the live processes.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How long the last round may take after a stop was requested.
const FINAL_ROUND_BUDGET: Duration = Duration::from_secs(3);

/// Allocations at least this large get their own memory mapping, returned to the kernel
/// when freed (glibc's default threshold, made fixed).
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Fixes glibc's mmap threshold so that large buffers freed after start-up are given back.
///
/// glibc raises the threshold to the size of every mmapped block freed (up to 32 MiB), so
/// once the start-up peak is over (aya's parse of the kernel's BTF, the first round's
/// `/proc/kallsyms` and DWARF) every later large buffer comes from the heap instead, and
/// heap memory is only returned from its top: the agent keeps what it freed. A fixed
/// threshold turns that adjustment off. Large buffers are few (one per table, per debug
/// section, per profile), so the extra `mmap`/`munmap` calls cost nothing measurable.
fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes allocator parameters; M_MMAP_THRESHOLD with a value
        // within glibc's bounds is always accepted and is safe to call at any time.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        if ok != 1 {
            tracing::debug!("mallopt(M_MMAP_THRESHOLD) refused; freed memory may be retained");
        }
    }
}

/// Runs the agent until `stop` is set, then flushes the last partial interval and returns.
pub fn run(config: Config, stop: Arc<AtomicBool>) -> Result<(), Error> {
    fix_mmap_threshold();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("ferroscope-io")
        .build()
        .map_err(Error::Runtime)?;

    let mut registry = Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    let write_metrics = Arc::new(WriteMetrics::register(&mut registry));
    let output = if config.write.endpoint.is_empty() {
        tracing::info!(dir = %config.output.dir.display(), "no write endpoint: profiles go to the local directory");
        let max_bytes = (config.output.max_bytes > 0).then_some(config.output.max_bytes);
        let max_age = (!config.output.max_age.is_zero()).then_some(config.output.max_age);
        Output::Local(LocalSink::new(
            config.output.dir.clone(),
            max_bytes,
            max_age,
        ))
    } else {
        let endpoints = config
            .write
            .endpoint
            .iter()
            .map(endpoint_config)
            .collect::<Result<Vec<_>, _>>()?;
        let external = config
            .external_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let _guard = runtime.enter();
        Output::Push(Writer::new(endpoints, external, write_metrics.clone())?)
    };
    let state = Arc::new(ServerState::new(registry));

    // The HTTP server.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.server.listen_address))
        .map_err(|source| Error::Listen {
            address: config.server.listen_address,
            source,
        })?;
    let server_stop = Arc::new(tokio::sync::Notify::new());
    {
        let state = state.clone();
        let server_stop = server_stop.clone();
        runtime.spawn(async move {
            crate::server::serve(listener, state, async move { server_stop.notified().await })
                .await;
        });
    }
    tracing::info!(address = %config.server.listen_address, "serving /metrics, /debug/targets, /debug/caches, /healthz");

    let result = collect_loop(&config, &stop, &runtime, &output, &metrics, &state);
    if let Err(e) = &result {
        state.set_health(Health::Unhealthy(e.to_string()));
    }
    server_stop.notify_waiters();
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

fn symbolizer_of(config: &Config) -> Symbolizer {
    let ebpf = &config.ebpf;
    let demangle = match ebpf.demangle {
        Demangle::None => DemangleMode::None,
        Demangle::Simplified => DemangleMode::Simplified,
        Demangle::Templates => DemangleMode::Templates,
        Demangle::Full => DemangleMode::Full,
    };
    let cache_dir =
        (!ebpf.symb_cache_path.as_os_str().is_empty()).then(|| ebpf.symb_cache_path.clone());
    Symbolizer::builder()
        .demangle(demangle)
        .cache_dir(cache_dir)
        .build()
        .with_cache_capacity(ebpf.symb_cache_size.clamp(1, 1 << 20) as usize)
}

/// What the loop keeps between rounds.
struct Collector<'a> {
    config: &'a Config,
    metrics: &'a AgentMetrics,
    targeting: Targeting,
    symbolizer: Symbolizer,
    /// Samples of the current interval, by process and profile type.
    per_pid: HashMap<(u32, ProfileType), TraceAggregator>,
    /// Profiles built early in this interval (processes that exec'd or whose PID was
    /// reused), sent with the round.
    early: Vec<Built>,
    /// Processes reported exited, and when: closed after [`EXIT_GRACE`].
    exiting: Vec<(u32, Instant)>,
    interval_start: SystemTime,
}

impl Collector<'_> {
    fn take(
        &mut self,
        delivery: Delivery,
        kernel_frames: bool,
        names: &crate::interp::SharedNames,
    ) {
        match delivery {
            Delivery::Sample(mut sample) => {
                if !kernel_frames {
                    sample.trace.frames.retain(|f| !f.is_kernel());
                }
                let pid = sample.trace.pid;
                let (kind, value) = match sample.kind {
                    SampleKind::Cpu => (ProfileType::Cpu, 1),
                    SampleKind::OffCpu { nanos } => (ProfileType::OffCpu, nanos),
                    SampleKind::Probe { kernel: false, .. } => (ProfileType::Probe, 1),
                    SampleKind::Probe { kernel: true, .. } => (ProfileType::KernelProbe, 1),
                };
                // One lookup for every sample but a process's first of the interval.
                let first = !self.per_pid.contains_key(&(pid, kind))
                    && !ProfileType::ALL
                        .iter()
                        .any(|&k| self.per_pid.contains_key(&(pid, k)));
                let agg = self.per_pid.entry((pid, kind)).or_default();
                agg.add(sample.trace, value);
                if first && let Err(e) = self.symbolizer.observe_process(pid) {
                    tracing::debug!(
                        pid,
                        "process mappings not captured: {}",
                        crate::error::Chain(&e)
                    );
                }
            }
            Delivery::Changed { pid, change } => {
                tracing::debug!(
                    pid,
                    ?change,
                    "process changed; its profile so far is built now"
                );
                // What is now at the PID supersedes a pending exit of the old process.
                self.exiting.retain(|&(p, _)| p != pid);
                self.close(pid, names);
                self.targeting.rediscover(pid);
            }
            Delivery::Exit { pid } => {
                // Its last samples may still be in the ring buffer: the process is closed
                // after a grace period (a process that reuses the PID meanwhile is told
                // apart by its start time and delivered as Changed).
                self.exiting.push((pid, Instant::now()));
            }
        }
    }

    /// Closes the processes whose exit grace period is over: builds what they have so far
    /// and drops their targets, so that a process that gets the PID next starts afresh.
    fn close_exited(&mut self, names: &crate::interp::SharedNames) {
        let due: Vec<u32> = self
            .exiting
            .iter()
            .filter(|(_, at)| at.elapsed() >= EXIT_GRACE)
            .map(|&(pid, _)| pid)
            .collect();
        if due.is_empty() {
            return;
        }
        self.exiting.retain(|(_, at)| at.elapsed() < EXIT_GRACE);
        for pid in due {
            self.close(pid, names);
            self.targeting.forget(pid);
        }
    }

    /// Builds what process `pid` has so far into an early profile and drops what is kept
    /// about it.
    fn close(&mut self, pid: u32, names: &crate::interp::SharedNames) {
        for kind in ProfileType::ALL {
            let Some(agg) = self.per_pid.remove(&(pid, kind)) else {
                continue;
            };
            let options = round::options(self.config, (self.interval_start, SystemTime::now()));
            let names = round::names_of(names, [&agg]);
            if let Some(b) = round::build_one(
                pid,
                kind,
                &agg,
                &mut self.targeting,
                &mut self.symbolizer,
                &names,
                &options,
                self.metrics,
            ) {
                self.early.push(b);
            }
        }
        self.symbolizer.forget_process(pid);
    }

    /// The round's profiles: the early ones and one per process sampled this interval.
    fn round(&mut self, names: &crate::interp::SharedNames, now: SystemTime) -> Vec<Built> {
        let options = round::options(self.config, (self.interval_start, now));
        let mut profiles = std::mem::take(&mut self.early);
        profiles.extend(round::build_round(
            &mut self.targeting,
            &mut self.symbolizer,
            names,
            &mut self.per_pid,
            &options,
            self.metrics,
        ));
        self.interval_start = now;
        profiles
    }

    /// Drops what is kept about processes that are gone (an exit report lost, a process
    /// never sampled again).
    fn sweep(&mut self, alive: &HashSet<u32>) {
        self.symbolizer.retain_processes(|pid| alive.contains(&pid));
        self.targeting.sweep(alive);
    }

    fn tracked(&self) -> Vec<(&'static str, u64)> {
        vec![
            (
                "symbolizer_processes",
                self.symbolizer.observed_processes() as u64,
            ),
            ("target_cache", self.targeting.cached() as u64),
            ("interval_processes", self.per_pid.len() as u64),
        ]
    }
}

fn collect_loop(
    config: &Config,
    stop: &AtomicBool,
    runtime: &tokio::runtime::Runtime,
    output: &Output,
    metrics: &AgentMetrics,
    state: &ServerState,
) -> Result<(), Error> {
    let ebpf = &config.ebpf;
    let mut c = Collector {
        config,
        metrics,
        targeting: Targeting::new(config, Discoveries::start(config, runtime, metrics)),
        symbolizer: symbolizer_of(config),
        per_pid: HashMap::new(),
        early: Vec::new(),
        exiting: Vec::new(),
        interval_start: SystemTime::now(),
    };
    // Every probe link is checked before sampling starts.
    let mut probes = Probes::check(&ebpf.all_probe_links(), ebpf.load_probe)?;
    let mut session: Option<Session> = None;
    let mut filtered: HashSet<u32> = HashSet::new();
    let mut filter_full_warned = false;
    let mut mirrors = (Mirror::default(), Mirror::default());
    let mut next_collect = Instant::now() + ebpf.collect_interval;
    let mut last_scan: Option<Instant> = None;
    let mut last_sweep = Instant::now();
    let mut round: Option<tokio::task::JoinHandle<()>> = None;

    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let refreshed = c.targeting.refresh_targets();
        metrics.active_targets.set(c.targeting.finder.len() as i64);
        state.set_discovery_failures(c.targeting.discoveries.failures());

        // Start sampling, unless lazy mode waits for the first target.
        if session.is_none() && !(ebpf.lazy_mode && c.targeting.finder.is_empty()) && !stopping {
            let started = Session::start(&SessionConfig {
                sample_rate_hz: ebpf.sample_rate,
                pids: ebpf.targets_only.then(Vec::new),
                follow_children: ebpf.follow_children,
                disabled_runtimes: ebpf.disabled_runtimes(),
                name_detail: match ebpf.demangle {
                    Demangle::None | Demangle::Simplified => NameDetail::Simplified,
                    Demangle::Templates => NameDetail::Templates,
                    Demangle::Full => NameDetail::Full,
                },
                unwinder: config.limits.unwinder(),
                manager: ProcessManagerConfig {
                    table_cache: (!ebpf.symb_cache_path.as_os_str().is_empty())
                        .then(|| ebpf.symb_cache_path.join("unwind-tables")),
                    max_table_entries: u64::from(config.limits.table_entries),
                    extract_cpu_share: config.limits.extract_cpu_share,
                    ..ProcessManagerConfig::default()
                },
                off_cpu_threshold: ebpf.off_cpu_threshold,
                probe_rate_limit: (!probes.is_empty()).then_some(ebpf.probe_rate_limit),
            })
            .and_then(|mut s| {
                probes.attach(&mut s)?;
                Ok(s)
            });
            match started {
                Ok(s) => {
                    tracing::info!(rate = ebpf.sample_rate, "sampling started");
                    for p in s.programs() {
                        if let ferroscope_ebpf_programs::Verdict::Rejected { reason, .. } =
                            &p.verdict
                        {
                            tracing::warn!(runtime = %p.owner, program = %p.program, "program not loaded, this runtime is off: {reason}");
                        }
                    }
                    metrics.set_programs(s.programs());
                    session = Some(s);
                    filtered.clear();
                    state.set_health(Health::Healthy);
                }
                Err(e) => {
                    metrics.sessions_failing.inc();
                    state.set_health(Health::Unhealthy(e.to_string()));
                    return Err(e);
                }
            }
        }

        // Match new processes and put them in the PID filter.
        if let Some(s) = session.as_mut()
            && ebpf.targets_only
            && (refreshed || last_scan.is_none_or(|t| t.elapsed() >= PROCESS_SCAN_EVERY))
        {
            last_scan = Some(Instant::now());
            let alive = live_pids();
            let new: Vec<u32> = alive
                .iter()
                .copied()
                .filter(|pid| !filtered.contains(pid) && c.targeting.target_of(*pid).is_some())
                .collect();
            // Load the new targets' unwind tables before letting them in the filter, so that
            // their first samples are already unwound from tables.
            s.load_now(&new, Duration::from_secs(2));
            let mut refused = 0;
            for pid in new {
                match s.add_pid(pid) {
                    Ok(()) => {
                        filtered.insert(pid);
                    }
                    Err(e) => {
                        refused += 1;
                        if !filter_full_warned {
                            filter_full_warned = true;
                            tracing::warn!(
                                pid,
                                max = s.max_filter_pids(),
                                "cannot profile the process: {} (said once; more matched processes than the PID filter holds are left out)",
                                crate::error::Chain(&e)
                            );
                        }
                    }
                }
            }
            if refused > 0 {
                tracing::debug!(refused, "matched processes left out of the PID filter");
            }
            let gone: Vec<u32> = filtered
                .iter()
                .copied()
                .filter(|p| !alive.contains(p))
                .collect();
            for pid in gone {
                filtered.remove(&pid);
                let _ = s.remove_pid(pid);
                c.targeting.forget(pid);
            }
            metrics.processes_profiled.set(filtered.len() as i64);
            *state.targets.write().unwrap_or_else(|e| e.into_inner()) = c.targeting.debug_json();
        }

        // Probes on libraries loaded since (load_probe).
        if let Some(s) = session.as_mut() {
            if ebpf.targets_only {
                let pids: Vec<u32> = filtered.iter().copied().collect();
                probes.poll(s, Some(&pids));
            } else {
                probes.poll(s, None);
            }
        }

        // Take what the session delivered.
        if let Some(s) = session.as_mut() {
            let names = s.frame_names();
            let kernel_frames = ebpf.kernel_frames;
            s.drain(|d| c.take(d, kernel_frames, &names));
            c.close_exited(&names);
            if let Ok(counters) = s.counters() {
                mirrors
                    .0
                    .update(&metrics.samples, counters.get(Counter::Sent));
                mirrors.1.update(
                    &metrics.samples_lost,
                    counters.get(Counter::LostRingbufFull),
                );
            }
            metrics.set_internal(s.unwind_metrics().as_ref(), &s.runtime_metrics());
            metrics.set_detection_failures(&s.detection_failures());
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                let alive = live_pids();
                if !alive.is_empty() {
                    c.sweep(&alive);
                    filtered.retain(|p| alive.contains(p));
                }
            }
            let mut tracked = s.tracked();
            tracked.extend(c.tracked());
            tracked.push(("pid_filter", filtered.len() as u64));
            metrics.set_tracked(&tracked);
        }

        if stopping || Instant::now() >= next_collect {
            // At a stop, sampling ends first and whatever was sampled is still delivered.
            let names = match (stopping, session.take()) {
                (true, Some(s)) => {
                    let names = s.frame_names();
                    let kernel_frames = ebpf.kernel_frames;
                    let _ = s.finish(|d| c.take(d, kernel_frames, &names));
                    names
                }
                (false, Some(s)) => {
                    let names = s.frame_names();
                    session = Some(s);
                    names
                }
                (_, None) => crate::interp::SharedNames::default(),
            };
            let now = SystemTime::now();
            let build_start = Instant::now();
            let profiles = c.round(&names, now);
            let build_time = build_start.elapsed();
            metrics
                .last_round_build_seconds
                .set(build_time.as_secs_f64());
            tracing::info!(
                profiles = profiles.len(),
                bytes = profiles
                    .iter()
                    .map(|p| p.profile.pprof_gzip.len())
                    .sum::<usize>(),
                build_ms = build_time.as_secs_f64() * 1000.0,
                "collected"
            );
            metrics.sessions.inc();
            let budget = if stopping {
                FINAL_ROUND_BUDGET
            } else {
                ebpf.collect_interval
            };
            output.deliver(profiles, now, budget, runtime, &mut round, metrics);
            names.lock().unwrap_or_else(|e| e.into_inner()).trim();
            next_collect = Instant::now() + ebpf.collect_interval;
            *state.caches.write().unwrap_or_else(|e| e.into_inner()) =
                round::caches_json(&c.symbolizer);
            if stopping {
                if let Some(r) = round.take() {
                    let _ = runtime
                        .block_on(async { tokio::time::timeout(FINAL_ROUND_BUDGET, r).await });
                }
                tracing::info!("stopped");
                return Ok(());
            }
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}
