//! Building a round of profiles: one pprof per process, with the series labels of its
//! target.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use ferroscope_pprof::push::SeriesProfile;
use ferroscope_symbolize::Symbolizer;
use ferroscope_unwind_api::Frame;

use super::targeting::Targeting;
use crate::aggregate::TraceAggregator;
use crate::config::{Comm, Config};
use crate::interp::{NameLookup, NameSubset, SharedNames};
use crate::metrics::AgentMetrics;
use crate::profile::{ProfileOptions, ProfileType, SampleLabels, build_profile};

/// A profile ready for an endpoint, with the PID and service it came from (for the local
/// sink's file names).
pub(super) struct Built {
    pub pid: u32,
    pub service: String,
    pub kind: ProfileType,
    pub profile: SeriesProfile,
}

/// How profiles of the interval `[start, end)` are built.
pub(super) fn options(config: &Config, (start, end): (SystemTime, SystemTime)) -> ProfileOptions {
    let ebpf = &config.ebpf;
    ProfileOptions {
        sample_rate_hz: ebpf.sample_rate,
        time_nanos: start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
        duration_nanos: end
            .duration_since(start)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
        comm_root_frame: matches!(ebpf.comm, Comm::Stackframe | Comm::Both),
        labels: SampleLabels {
            pid: ebpf.pid_label,
            tid: false,
            thread_name: ebpf.thread_name_label,
            comm: matches!(ebpf.comm, Comm::Label | Comm::Both),
        },
    }
}

/// The names of the runtime frames in these samples, copied out of the shared table so
/// that the unwinder thread goes on naming while profiles are built.
pub(super) fn names_of<'a>(
    names: &SharedNames,
    samples: impl IntoIterator<Item = &'a TraceAggregator>,
) -> NameSubset {
    let ids: Vec<u64> = samples
        .into_iter()
        .flat_map(|a| a.iter())
        .flat_map(|(t, _)| t.frames.iter())
        .filter_map(|f| match f {
            Frame::Named(id) => Some(*id),
            _ => None,
        })
        .collect();
    names.lock().unwrap_or_else(|e| e.into_inner()).subset(ids)
}

/// The profile of one process's samples of one type; `None` when the process matches no
/// target.
#[allow(clippy::too_many_arguments)]
pub(super) fn build_one(
    pid: u32,
    kind: ProfileType,
    samples: &TraceAggregator,
    targeting: &mut Targeting,
    symbolizer: &mut Symbolizer,
    names: &dyn NameLookup,
    options: &ProfileOptions,
    metrics: &AgentMetrics,
) -> Option<Built> {
    let Some(target) = targeting.target_of(pid) else {
        metrics.samples_unmatched.inc_by(samples.samples());
        return None;
    };
    let profile = build_profile(kind, samples.iter(), symbolizer, names, options);
    let bytes = ferroscope_pprof::encode_gzip(&profile);
    let service = target.service_name().to_owned();
    metrics
        .pprofs
        .get_or_create(&vec![("service_name".to_owned(), service.clone())])
        .inc();
    metrics.pprof_bytes.inc_by(bytes.len() as u64);
    metrics.pprof_samples.inc_by(samples.samples());
    let labels = target
        .series_labels(kind.series_name())
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some(Built {
        pid,
        service,
        kind,
        profile: SeriesProfile {
            labels,
            pprof_gzip: bytes,
        },
    })
}

/// Every process's profile of the interval; the samples are consumed.
pub(super) fn build_round(
    targeting: &mut Targeting,
    symbolizer: &mut Symbolizer,
    names: &SharedNames,
    per_pid: &mut HashMap<(u32, ProfileType), TraceAggregator>,
    options: &ProfileOptions,
    metrics: &AgentMetrics,
) -> Vec<Built> {
    let names = names_of(names, per_pid.values());
    per_pid
        .drain()
        .filter_map(|((pid, kind), agg)| {
            build_one(
                pid, kind, &agg, targeting, symbolizer, &names, options, metrics,
            )
        })
        .collect()
}

pub(super) fn caches_json(symbolizer: &Symbolizer) -> serde_json::Value {
    let s = symbolizer.stats();
    serde_json::json!({
        "elf_cache": { "files": symbolizer.cached_files(), "files_parsed": s.files_parsed, "cache_hits": s.cache_hits },
        "pid_cache": { "processes_observed": s.processes_observed, "maps_rereads": s.maps_rereads },
        "unresolved_frames": s.unresolved_frames,
    })
}
