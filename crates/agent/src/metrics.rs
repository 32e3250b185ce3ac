//! The agent's metrics, under the names `pyroscope.ebpf` uses, so dashboards built for
//! Alloy keep working.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    /// The unwinder's and process manager's internal metrics, under the reference
    /// profiler's names (`UnwindNativeAttempts_total`, `NumProcNew_total`, ...), labelled
    /// `otel_scope_name="pyroscope.ebpf"` as Alloy labels them.
    pub internal: std::collections::HashMap<&'static str, Family<ServiceLabels, Gauge>>,
}

impl AgentMetrics {
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
        let mut m = m;
        let names = crate::process::UnwindMetrics::default()
            .named()
            .into_iter()
            .map(|(n, _)| n)
            .chain(crate::interp::Interpreters::metric_names());
        for name in names {
            let family: Family<ServiceLabels, Gauge> = Family::default();
            registry.register(
                name,
                "Internal metric of the eBPF profiler (reference profiler's name)",
                family.clone(),
            );
            m.internal.insert(name, family);
        }
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
    /// Publishes the unwinder's and process manager's metrics.
    pub fn set_internal(
        &self,
        unwind: &crate::process::UnwindMetrics,
        interpreters: &crate::interp::Interpreters,
    ) {
        let labels = vec![("otel_scope_name".to_owned(), "pyroscope.ebpf".to_owned())];
        for (name, value) in unwind.named().into_iter().chain(interpreters.metrics()) {
            if let Some(family) = self.internal.get(name) {
                family.get_or_create(&labels).set(value as i64);
            }
        }
    }
}
