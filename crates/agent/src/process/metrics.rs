//! The unwinder's metrics: the eBPF program's native counters (declared once, in
//! `ferroscope_ebpf_abi::Counter`) and the process manager's own, each declared once below.

use ferroscope_ebpf_programs::Counters;
use ferroscope_unwind_api::{Metric, MetricKind};

/// Declares the manager's metrics: each field, its kind and its name, once.
macro_rules! manager_metrics {
    ($( $(#[doc = $doc:literal])* $field:ident: $kind:ident => $name:literal, )*) => {
        /// The process manager's own counters and gauges.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct ManagerMetrics {
            $( $(#[doc = $doc])* pub $field: u64, )*
        }

        impl ManagerMetrics {
            /// Every metric with its name and kind.
            pub fn named(&self) -> Vec<Metric> {
                vec![$( Metric {
                    name: $name.into(),
                    kind: MetricKind::$kind,
                    value: self.$field,
                }, )*]
            }
        }
    };
}

manager_metrics! {
    /// Processes loaded.
    num_proc_new: Counter => "NumProcNew_total",
    /// Processes unloaded after they exited.
    num_proc_exit: Counter => "NumProcExit_total",
    /// Processes rescanned (dlopen, a runtime's code heap).
    num_proc_rescan: Counter => "NumProcRescan_total",
    /// Processes reloaded after exec.
    num_proc_exec: Counter => "NumProcExec_total",
    /// Processes that could not be loaded (gone, no permission).
    num_proc_failed: Counter => "NumProcFailed_total",
    /// Tables extracted.
    num_tables_extracted: Counter => "NumTablesExtracted_total",
    /// Tables read from the on-disk cache instead of extracted.
    num_tables_from_cache: Counter => "NumTablesFromCache_total",
    /// Files whose extraction failed (cached, not retried).
    num_extraction_failures: Counter => "NumExtractionFailures_total",
    /// Tables evicted to make room.
    num_tables_evicted: Counter => "NumTablesEvicted_total",
    /// Files whose table is in the eBPF maps now.
    num_exe_id_loaded_to_ebpf: Gauge => "NumExeIDLoadedToEBPF",
    /// Processes loaded now.
    processes_loaded: Gauge => "NumProcLoaded",
    /// Entries of the entries array in use.
    delta_entries_used: Gauge => "StackDeltaEntriesUsed",
    /// Size of the entries array.
    delta_entries_capacity: Gauge => "StackDeltaEntriesCapacity",
    /// Table pages published.
    delta_pages: Gauge => "StackDeltaPages",
    /// Address prefixes in the mappings trie.
    pid_mapping_prefixes: Gauge => "PidPageMappingPrefixes",
    /// Distinct unwind rules.
    unwind_infos: Gauge => "UnwindInfoArraySize",
    /// Ranges runtimes own (eval loops, JIT code), over every process.
    owned_ranges: Gauge => "RuntimeOwnedRanges",
}

/// The eBPF unwinder's counters and the process manager's metrics, as of one reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnwindMetrics {
    /// The eBPF program's native counters.
    pub native: Counters,
    /// The manager's.
    pub manager: ManagerMetrics,
}

impl UnwindMetrics {
    /// Every metric, named as the reference profiler names its metrics.
    pub fn named(&self) -> Vec<Metric> {
        let mut out: Vec<Metric> = self
            .native
            .iter()
            .map(|(c, v)| Metric::counter(c.metric_name(), v))
            .collect();
        out.extend(self.manager.named());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_counters_end_in_total() {
        let m = UnwindMetrics::default().named();
        let mut names: Vec<&str> = m.iter().map(|m| &*m.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a metric name repeats");
        for metric in &m {
            assert_eq!(
                metric.kind == MetricKind::Counter,
                metric.name.ends_with("_total"),
                "{}",
                metric.name
            );
        }
        assert!(names.contains(&"UnwindNativeAttempts_total"));
        assert!(names.contains(&"NumProcNew_total"));
    }
}
