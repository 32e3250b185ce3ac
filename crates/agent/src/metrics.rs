//! The agent's metrics, under the names `pyroscope.ebpf` uses, so dashboards built for
//! Alloy keep working.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use ferroscope_unwind_api::{Metric, MetricKind};

/// Label set of `pyroscope_ebpf_pprofs_total`.
pub type ServiceLabels = Vec<(String, String)>;

/// Counters and gauges of the continuous agent.
#[derive(Debug, Clone, Default)]
pub struct AgentMetrics {
    /// `pyroscope_ebpf_active_targets`: targets currently known.
    pub active_targets: Gauge,
    /// `pyroscope_ebpf_profiling_sessions_total`: collect intervals completed.
    pub sessions: Counter,
    /// `pyroscope_ebpf_profiling_sessions_failing_total`: collect intervals that failed.
    pub sessions_failing: Counter,
    /// `pyroscope_ebpf_pprofs_total{service_name}`: profiles built.
    pub pprofs: Family<ServiceLabels, Counter>,
    /// `pyroscope_ebpf_pprof_bytes_total`: bytes of the profiles built (gzip).
    pub pprof_bytes: Counter,
    /// `pyroscope_ebpf_pprof_samples_total`: samples in the profiles built (samples, not
    /// bytes, unlike Alloy).
    pub pprof_samples: Counter,
    /// `pyroscope_ebpf_pprofs_dropped_total`: profiles dropped before sending (the previous
    /// round was still running, or the local sink failed).
    pub pprofs_dropped: Counter,
    /// `ferroscope_samples_total`: samples received from the kernel.
    pub samples: Counter,
    /// `ferroscope_samples_lost_total`: samples the kernel could not hand over (ring buffer
    /// full).
    pub samples_lost: Counter,
    /// `ferroscope_samples_unmatched_total`: samples of processes that match no target.
    pub samples_unmatched: Counter,
    /// `ferroscope_processes_profiled`: processes currently in the eBPF PID filter.
    pub processes_profiled: Gauge,
    /// `ferroscope_last_round_build_seconds`: time to symbolize, build and encode every
    /// profile of the last interval.
    pub last_round_build_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// The unwinder's, process manager's and runtime plug-ins' internal metrics, under the
    /// reference profiler's names (`UnwindNativeAttempts_total`, `NumProcNew_total`,
    /// `UnwindPythonFrames_total`, ...), labelled `otel_scope_name="pyroscope.ebpf"` as
    /// Alloy labels them; counters are counters, gauges gauges.
    pub internal: std::collections::HashMap<String, Internal>,
    /// `ferroscope_bpf_program_loaded{owner, program, build, reason}`: 1 for each loaded
    /// eBPF program, 0 for a rejected one (with the kernel's reason).
    pub programs: Family<ServiceLabels, Gauge>,
    /// `ferroscope_bpf_program_verified_instructions{owner, program, build}`.
    pub verified_instructions: Family<ServiceLabels, Gauge>,
    /// `ferroscope_runtime_detection_failed{runtime, file, reason}`: 1 for each file a
    /// runtime plug-in recognised but cannot unwind.
    pub detection_failures: Family<ServiceLabels, Gauge>,
    /// `ferroscope_discovery_targets{discovery}`: targets a container discovery found last.
    pub discovery_targets: Family<ServiceLabels, Gauge>,
    /// `ferroscope_discovery_failures_total{discovery}`: failed refreshes of a container
    /// discovery (lists, watches, state directory reads).
    pub discovery_failures: Family<ServiceLabels, Counter>,
    /// `ferroscope_tracked_processes{structure}`: entries of each structure the agent keeps
    /// per process (the process manager's, the symbolizer's, the targets' caches, ...). Each
    /// goes back to about the number of live profiled processes once others exit.
    pub tracked: Family<ServiceLabels, Gauge>,
}

/// One internal metric.
#[derive(Debug, Clone)]
pub enum Internal {
    /// A counter, kept in step with its monotonic source.
    Counter(
        Family<ServiceLabels, Counter>,
        std::sync::Arc<std::sync::Mutex<u64>>,
    ),
    /// A gauge.
    Gauge(Family<ServiceLabels, Gauge>),
}

impl AgentMetrics {
    /// Sets `ferroscope_tracked_processes{structure}` for each structure.
    pub fn set_tracked(&self, tracked: &[(&'static str, u64)]) {
        for (name, n) in tracked {
            self.tracked
                .get_or_create(&vec![("structure".to_owned(), (*name).to_owned())])
                .set(*n as i64);
        }
    }

    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> AgentMetrics {
        let m = AgentMetrics::default();
        registry.register(
            "pyroscope_ebpf_active_targets",
            "Targets currently known",
            m.active_targets.clone(),
        );
        registry.register(
            "pyroscope_ebpf_profiling_sessions",
            "Number of profiling sessions completed",
            m.sessions.clone(),
        );
        registry.register(
            "pyroscope_ebpf_profiling_sessions_failing",
            "Number of profiling sessions failed",
            m.sessions_failing.clone(),
        );
        registry.register(
            "pyroscope_ebpf_pprofs",
            "Number of pprof profiles collected",
            m.pprofs.clone(),
        );
        registry.register(
            "pyroscope_ebpf_pprof_bytes",
            "Bytes of pprof profiles collected",
            m.pprof_bytes.clone(),
        );
        registry.register(
            "pyroscope_ebpf_pprof_samples",
            "Samples in pprof profiles collected",
            m.pprof_samples.clone(),
        );
        registry.register(
            "pyroscope_ebpf_pprofs_dropped",
            "Number of pprof profiles dropped before sending",
            m.pprofs_dropped.clone(),
        );
        registry.register(
            "ferroscope_samples",
            "Samples received from the kernel",
            m.samples.clone(),
        );
        registry.register(
            "ferroscope_samples_lost",
            "Samples lost because the ring buffer was full",
            m.samples_lost.clone(),
        );
        registry.register(
            "ferroscope_samples_unmatched",
            "Samples of processes that match no target",
            m.samples_unmatched.clone(),
        );
        registry.register(
            "ferroscope_processes_profiled",
            "Processes currently sampled by the eBPF program",
            m.processes_profiled.clone(),
        );
        registry.register(
            "ferroscope_discovery_targets",
            "Targets a container discovery found last",
            m.discovery_targets.clone(),
        );
        registry.register(
            "ferroscope_discovery_failures",
            "Failed refreshes of a container discovery",
            m.discovery_failures.clone(),
        );
        registry.register(
            "ferroscope_tracked_processes",
            "Entries of each per-process structure the agent keeps",
            m.tracked.clone(),
        );
        let mut m = m;
        let names = crate::process::UnwindMetrics::default()
            .named()
            .into_iter()
            .chain(crate::interp::Interpreters::linked(&[]).metrics(|_| None));
        for metric in names {
            let help = "Internal metric of the eBPF profiler (reference profiler's name)";
            let name = metric.name.to_string();
            let internal = match metric.kind {
                MetricKind::Counter => {
                    let family: Family<ServiceLabels, Counter> = Family::default();
                    let base = name.strip_suffix("_total").unwrap_or(&name);
                    registry.register(base, help, family.clone());
                    Internal::Counter(family, Default::default())
                }
                MetricKind::Gauge => {
                    let family: Family<ServiceLabels, Gauge> = Family::default();
                    registry.register(name.as_str(), help, family.clone());
                    Internal::Gauge(family)
                }
            };
            m.internal.insert(name, internal);
        }
        registry.register(
            "ferroscope_bpf_program_loaded",
            "1 for each eBPF program the kernel loaded, 0 for one it rejected (reason label)",
            m.programs.clone(),
        );
        registry.register(
            "ferroscope_bpf_program_verified_instructions",
            "Instructions the kernel's verifier processed for each loaded eBPF program",
            m.verified_instructions.clone(),
        );
        registry.register(
            "ferroscope_runtime_detection_failed",
            "1 for each file a runtime plug-in recognised as its runtime but cannot unwind (why in the reason label)",
            m.detection_failures.clone(),
        );
        registry.register(
            "ferroscope_last_round_build_seconds",
            "Time to symbolize, build and encode every profile of the last interval",
            m.last_round_build_seconds.clone(),
        );
        m
    }
}

/// Keeps a Prometheus counter in step with a monotonic source (such as the eBPF program's
/// per-CPU counters) by adding the difference since the last update.
#[derive(Debug, Default)]
pub struct Mirror {
    last: u64,
}

impl Mirror {
    /// Adds what `current` grew by since the last call to `counter`.
    pub fn update(&mut self, counter: &Counter, current: u64) {
        if current > self.last {
            counter.inc_by(current - self.last);
        }
        self.last = current;
    }
}

impl AgentMetrics {
    /// Publishes the unwinder's, process manager's and runtime plug-ins' metrics.
    pub fn set_internal(
        &self,
        unwind: Option<&crate::process::UnwindMetrics>,
        runtimes: &[Metric],
    ) {
        let labels = vec![("otel_scope_name".to_owned(), "pyroscope.ebpf".to_owned())];
        // Every metric shows, at 0 until it moves (a runtime turned off reports zeros).
        for internal in self.internal.values() {
            match internal {
                Internal::Counter(family, _) => drop(family.get_or_create(&labels)),
                Internal::Gauge(family) => drop(family.get_or_create(&labels)),
            }
        }
        let unwind = unwind.map(|u| u.named()).unwrap_or_default();
        for metric in unwind.iter().chain(runtimes) {
            match self.internal.get(&*metric.name) {
                Some(Internal::Counter(family, last)) => {
                    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                    // Created at 0 too: a counter that has not moved is still reported.
                    let counter = family.get_or_create(&labels);
                    if metric.value > *last {
                        counter.inc_by(metric.value - *last);
                    }
                    *last = metric.value;
                }
                Some(Internal::Gauge(family)) => {
                    family.get_or_create(&labels).set(metric.value as i64);
                }
                None => {}
            }
        }
    }

    /// Publishes the files whose runtime cannot be unwound.
    pub fn set_detection_failures(&self, failures: &[crate::interp::DetectionFailure]) {
        for f in failures {
            let labels = vec![
                ("runtime".to_owned(), f.runtime.to_owned()),
                ("file".to_owned(), f.path.clone()),
                ("reason".to_owned(), f.reason.clone()),
            ];
            self.detection_failures.get_or_create(&labels).set(1);
        }
    }

    /// Publishes every program's load verdict.
    pub fn set_programs(&self, reports: &[ferroscope_ebpf_programs::ProgramReport]) {
        use ferroscope_ebpf_programs::Verdict;
        for r in reports {
            let mut labels = vec![
                ("owner".to_owned(), r.owner.clone()),
                ("program".to_owned(), r.program.clone()),
                ("build".to_owned(), r.build.describe().to_owned()),
            ];
            match &r.verdict {
                Verdict::Loaded {
                    verified_instructions,
                } => {
                    if let Some(n) = verified_instructions {
                        self.verified_instructions
                            .get_or_create(&labels)
                            .set(i64::from(*n));
                    }
                    labels.push(("reason".to_owned(), String::new()));
                    self.programs.get_or_create(&labels).set(1);
                }
                Verdict::Rejected { reason, .. } => {
                    labels.push(("reason".to_owned(), reason.clone()));
                    self.programs.get_or_create(&labels).set(0);
                }
            }
        }
    }
}
