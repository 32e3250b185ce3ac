//! `ferroscope run`: the continuous node agent.
//!
//! Every `collect_interval` it drains what the eBPF sampler recorded, builds one pprof per
//! process with the series labels of the process's target, and hands the round to every
//! `[[write.endpoint]]` (or, without endpoints, to the local sink). Targets come from the
//! static `targets` and the built-in process discovery, relabelled; processes are matched
//! to targets by PID, then by container ID. With `targets_only` (the default) only matched
//! processes are put in the eBPF PID filter, so the rest cost nothing in the kernel.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferroscope_ebpf_abi::Counter;
use ferroscope_ebpf_programs::UnwinderConfig;
use ferroscope_pprof::push::{EndpointConfig, SeriesProfile, WriteMetrics, Writer};
use ferroscope_pprof::sink::LocalSink;
use ferroscope_symbolize::{DemangleMode, Symbolizer};
use ferroscope_targets::target::PROCESS_CPU;
use ferroscope_targets::{
    FinderOptions, Labels, ProcessDiscovery, Target, TargetFinder, build_targets,
};
use prometheus_client::registry::Registry;

use crate::Error;
use crate::aggregate::TraceAggregator;
use crate::config::{Api, Comm, Config, Demangle, Endpoint};
use crate::interp::FrameNames;
use crate::metrics::{AgentMetrics, Mirror};
use crate::profile::{ProfileOptions, SampleLabels, build_cpu_profile};
use crate::server::{Health, ServerState};
use crate::session::{Session, SessionConfig};

/// How often the ring buffer is drained.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How often /proc is scanned for new processes to match against the targets.
const PROCESS_SCAN_EVERY: Duration = Duration::from_secs(2);
/// How long the last round may take after a stop was requested.
const FINAL_ROUND_BUDGET: Duration = Duration::from_secs(3);

/// Converts a configured endpoint to the push client's form, reading password and token
/// files now.
pub fn endpoint_config(e: &Endpoint) -> Result<EndpointConfig, Error> {
    let read_secret = |path: &Path| -> Result<String, Error> {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|source| Error::Output {
                path: path.to_owned(),
                source,
            })
    };
    let mut c = EndpointConfig::new(e.url.clone());
    if let Some(auth) = &e.basic_auth {
        let password = match (&auth.password, &auth.password_file) {
            (Some(p), _) => p.expose().to_owned(),
            (None, Some(f)) => read_secret(f)?,
            (None, None) => String::new(),
        };
        c.basic_auth = Some((auth.username.clone(), password));
    }
    c.bearer_token = match (&e.bearer_token, &e.bearer_token_file) {
        (Some(t), _) => Some(t.expose().to_owned()),
        (None, Some(f)) => Some(read_secret(f)?),
        (None, None) => None,
    };
    c.headers = e
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    c.tenant_id = e.tenant_id.clone();
    c.remote_timeout = e.remote_timeout;
    c.min_backoff = e.min_backoff_period;
    c.max_backoff = e.max_backoff_period;
    c.max_backoff_retries = e.max_backoff_retries;
    c.retry_on_http_429 = e.retry_on_http_429;
    c.api = match e.api {
        Api::Push => ferroscope_pprof::push::Api::Push,
        Api::Ingest => ferroscope_pprof::push::Api::Ingest,
    };
    Ok(c)
}

/// Where finished profiles go.
enum Output {
    Push(Writer),
    Local(LocalSink),
}

/// Targets and the processes they matched.
struct Targeting {
    config: Config,
    discovery: Option<(ProcessDiscovery, Duration)>,
    last_discovery: Option<Instant>,
    finder: TargetFinder,
    /// Processes seen, with their target (None: matches nothing).
    processes: HashMap<u32, Option<Arc<Target>>>,
}

impl Targeting {
    fn new(config: &Config) -> Targeting {
        let discovery = config
            .discovery
            .process
            .first()
            .map(|d| (ProcessDiscovery::new("/proc"), d.refresh_interval));
        let finder = TargetFinder::new(FinderOptions {
            proc_root: "/proc".into(),
            targets_only: config.ebpf.targets_only,
            container_id_cache_size: 1024,
        });
        Targeting {
            config: config.clone(),
            discovery,
            last_discovery: None,
            finder,
            processes: HashMap::new(),
        }
    }

    /// Rebuilds the target list when discovery is due (always the first time).
    fn refresh_targets(&mut self) -> bool {
        let due = match (self.last_discovery, &self.discovery) {
            (None, _) => true,
            (Some(at), Some((_, every))) => at.elapsed() >= *every,
            (Some(_), None) => false,
        };
        if !due {
            return false;
        }
        self.last_discovery = Some(Instant::now());
        let mut sets: Vec<Labels> = self.config.targets.clone();
        if let Some((discovery, _)) = &self.discovery {
            match discovery.discover() {
                Ok(found) => sets.extend(found),
                Err(e) => tracing::warn!("process discovery failed: {}", crate::error::Chain(&e)),
            }
        }
        let relabelled = sets
            .into_iter()
            .filter_map(|l| ferroscope_targets::relabel::relabel(&self.config.relabel, l));
        let targets = build_targets(relabelled);
        tracing::debug!(targets = targets.len(), "targets refreshed");
        self.finder.set_targets(targets);
        // Every process is matched again against the new targets.
        self.processes.clear();
        true
    }

    fn target_of(&mut self, pid: u32) -> Option<Arc<Target>> {
        if let Some(t) = self.processes.get(&pid) {
            return t.clone();
        }
        let t = self.finder.find(pid);
        self.processes.insert(pid, t.clone());
        t
    }

    fn debug_json(&self) -> serde_json::Value {
        let mut by_target: HashMap<String, (serde_json::Value, Vec<u32>)> = HashMap::new();
        for (pid, t) in &self.processes {
            if let Some(t) = t {
                let labels: serde_json::Map<String, serde_json::Value> = t
                    .labels()
                    .iter()
                    .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
                    .collect();
                let key = format!("{:?}", t.id());
                let entry = by_target.entry(key).or_insert_with(|| {
                    (
                        serde_json::json!({"service_name": t.service_name(), "labels": labels}),
                        Vec::new(),
                    )
                });
                entry.1.push(*pid);
            }
        }
        let mut out: Vec<serde_json::Value> = by_target
            .into_values()
            .map(|(mut v, mut pids)| {
                pids.sort_unstable();
                v["pids"] = serde_json::json!(pids);
                v
            })
            .collect();
        out.sort_by_key(|v| v["service_name"].to_string());
        serde_json::json!({ "active_targets": self.finder.len(), "matched": out })
    }
}

fn list_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

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

fn collect_loop(
    config: &Config,
    stop: &AtomicBool,
    runtime: &tokio::runtime::Runtime,
    output: &Output,
    metrics: &AgentMetrics,
    state: &ServerState,
) -> Result<(), Error> {
    let ebpf = &config.ebpf;
    let mut targeting = Targeting::new(config);
    let demangle = match ebpf.demangle {
        Demangle::None => DemangleMode::None,
        Demangle::Simplified => DemangleMode::Simplified,
        Demangle::Templates => DemangleMode::Templates,
        Demangle::Full => DemangleMode::Full,
    };
    let cache_dir =
        (!ebpf.symb_cache_path.as_os_str().is_empty()).then(|| ebpf.symb_cache_path.clone());
    let mut symbolizer = Symbolizer::builder()
        .demangle(demangle)
        .cache_dir(cache_dir)
        .build()
        .with_cache_capacity(ebpf.symb_cache_size.clamp(1, 1 << 20) as usize);
    let mut session: Option<Session> = None;
    let mut filtered: HashSet<u32> = HashSet::new();
    let mut per_pid: HashMap<u32, TraceAggregator> = HashMap::new();
    let mut mirrors = (Mirror::default(), Mirror::default());
    let mut interval_start = SystemTime::now();
    let mut next_collect = Instant::now() + ebpf.collect_interval;
    let mut last_scan: Option<Instant> = None;
    let mut round: Option<tokio::task::JoinHandle<()>> = None;

    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let refreshed = targeting.refresh_targets();
        metrics.active_targets.set(targeting.finder.len() as i64);

        // Start sampling, unless lazy mode waits for the first target.
        if session.is_none() && !(ebpf.lazy_mode && targeting.finder.is_empty()) && !stopping {
            let started = Session::start(&SessionConfig {
                sample_rate_hz: ebpf.sample_rate,
                pids: ebpf.targets_only.then(Vec::new),
                disabled_runtimes: ebpf.disabled_runtimes(),
                unwinder: UnwinderConfig::default(),
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
            let alive: HashSet<u32> = list_pids().into_iter().collect();
            let new: Vec<u32> = alive
                .iter()
                .copied()
                .filter(|pid| !filtered.contains(pid) && targeting.target_of(*pid).is_some())
                .collect();
            // Load the new targets' unwind tables before letting them in the filter, so that
            // their first samples are already unwound from tables.
            s.load_now(&new, Duration::from_secs(2));
            for pid in new {
                match s.add_pid(pid) {
                    Ok(()) => {
                        filtered.insert(pid);
                    }
                    Err(e) => tracing::warn!(
                        pid,
                        "cannot profile the process: {}",
                        crate::error::Chain(&e)
                    ),
                }
            }
            let gone: Vec<u32> = filtered
                .iter()
                .copied()
                .filter(|p| !alive.contains(p))
                .collect();
            for pid in gone {
                filtered.remove(&pid);
                let _ = s.remove_pid(pid);
                targeting.processes.remove(&pid);
                targeting.finder.forget(pid);
            }
            metrics.processes_profiled.set(filtered.len() as i64);
            *state.targets.write().unwrap_or_else(|e| e.into_inner()) = targeting.debug_json();
        }

        // Drain.
        if let Some(s) = session.as_mut() {
            let mut new_pids = Vec::new();
            let kernel_frames = ebpf.kernel_frames;
            s.drain(|mut trace| {
                if !kernel_frames {
                    trace.frames.retain(|f| !f.is_kernel());
                }
                let pid = trace.pid;
                let agg = per_pid.entry(pid).or_default();
                if agg.add(trace, 1) {
                    new_pids.push(pid);
                }
            });
            for pid in new_pids {
                if let Err(e) = symbolizer.observe_process(pid) {
                    tracing::debug!(
                        pid,
                        "process mappings not captured: {}",
                        crate::error::Chain(&e)
                    );
                }
            }
            s.manage();
            if let Ok(c) = s.counters() {
                mirrors.0.update(&metrics.samples, c.get(Counter::Sent));
                mirrors
                    .1
                    .update(&metrics.samples_lost, c.get(Counter::LostRingbufFull));
            }
            metrics.set_internal(s.unwind_metrics().as_ref(), &s.runtime_metrics());
            metrics.set_detection_failures(s.interpreters().detection_failures());
        }

        if stopping || Instant::now() >= next_collect {
            let now = SystemTime::now();
            let build_start = Instant::now();
            let empty = crate::interp::FrameNames::default();
            let profiles = build_round(
                &mut targeting,
                &mut symbolizer,
                session
                    .as_ref()
                    .map_or(&empty, |s| s.interpreters().frame_names()),
                &mut per_pid,
                config,
                metrics,
                (interval_start, now),
            );
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
            interval_start = now;
            if let Some(s) = session.as_mut() {
                s.interpreters_mut().trim_names();
            }
            next_collect = Instant::now() + ebpf.collect_interval;
            metrics.sessions.inc();
            let budget = if stopping {
                FINAL_ROUND_BUDGET
            } else {
                ebpf.collect_interval
            };
            match output {
                Output::Push(writer) => {
                    if round.as_ref().is_some_and(|r| !r.is_finished()) {
                        // The previous round still runs: its deadline is near; drop this one.
                        metrics.pprofs_dropped.inc_by(profiles.len() as u64);
                        tracing::warn!(
                            dropped = profiles.len(),
                            "previous send round still running; profiles dropped"
                        );
                    } else {
                        let profiles: Vec<SeriesProfile> =
                            profiles.into_iter().map(|b| b.profile).collect();
                        let writer = writer.clone();
                        let deadline = Instant::now() + budget;
                        round = Some(
                            runtime
                                .spawn(async move { writer.send_round(profiles, deadline).await }),
                        );
                    }
                }
                Output::Local(sink) => {
                    for b in &profiles {
                        if let Err(e) = sink.write(&b.service, b.pid, now, &b.profile.pprof_gzip) {
                            metrics.pprofs_dropped.inc();
                            tracing::warn!(
                                "cannot write a profile locally: {}",
                                crate::error::Chain(&e)
                            );
                        }
                    }
                }
            }
            *state.caches.write().unwrap_or_else(|e| e.into_inner()) = caches_json(&symbolizer);
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

/// A profile ready for an endpoint, with the PID and service it came from (for the local
/// sink's file names).
struct Built {
    pid: u32,
    service: String,
    profile: SeriesProfile,
}

fn build_round(
    targeting: &mut Targeting,
    symbolizer: &mut Symbolizer,
    names: &FrameNames,
    per_pid: &mut HashMap<u32, TraceAggregator>,
    config: &Config,
    metrics: &AgentMetrics,
    (start, end): (SystemTime, SystemTime),
) -> Vec<Built> {
    let ebpf = &config.ebpf;
    let comm_label = matches!(ebpf.comm, Comm::Label | Comm::Both);
    let comm_frame = matches!(ebpf.comm, Comm::Stackframe | Comm::Both);
    let options = ProfileOptions {
        sample_rate_hz: ebpf.sample_rate,
        time_nanos: start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
        duration_nanos: end
            .duration_since(start)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
        comm_root_frame: comm_frame,
        labels: SampleLabels {
            pid: ebpf.pid_label,
            tid: false,
            comm: comm_label,
        },
    };
    let mut out = Vec::new();
    let mut exited = Vec::new();
    for (pid, agg) in per_pid.drain() {
        let Some(target) = targeting.target_of(pid) else {
            metrics.samples_unmatched.inc_by(agg.samples());
            continue;
        };
        let profile = build_cpu_profile(agg.iter(), symbolizer, names, &options);
        let bytes = ferroscope_pprof::encode_gzip(&profile);
        let service = target.service_name().to_owned();
        metrics
            .pprofs
            .get_or_create(&vec![("service_name".to_owned(), service.clone())])
            .inc();
        metrics.pprof_bytes.inc_by(bytes.len() as u64);
        metrics.pprof_samples.inc_by(agg.samples());
        let labels = target
            .series_labels(PROCESS_CPU)
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        out.push(Built {
            pid,
            service,
            profile: SeriesProfile {
                labels,
                pprof_gzip: bytes,
            },
        });
        if !Path::new(&format!("/proc/{pid}")).exists() {
            exited.push(pid);
        }
    }
    for pid in exited {
        symbolizer.forget_process(pid);
    }
    out
}

fn caches_json(symbolizer: &Symbolizer) -> serde_json::Value {
    let s = symbolizer.stats();
    serde_json::json!({
        "elf_cache": { "files": symbolizer.cached_files(), "files_parsed": s.files_parsed, "cache_hits": s.cache_hits },
        "pid_cache": { "processes_observed": s.processes_observed, "maps_rereads": s.maps_rereads },
        "unresolved_frames": s.unresolved_frames,
    })
}
