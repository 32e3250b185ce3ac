//! What to profile and under which labels: ferroscope's equivalent of Alloy's
//! `discovery.process` + `discovery.relabel` + the target handling of `pyroscope.ebpf`.
//!
//! - [`ProcessDiscovery`] lists the processes of a `/proc` tree as label sets
//!   (`__process_pid__`, `__meta_process_exe`, …, `__container_id__`);
//! - [`relabel`](mod@relabel) rewrites, keeps or drops label sets with Prometheus's
//!   `relabel_config` semantics;
//! - [`Target`] turns a label set into a PID or container-ID target with a service name and
//!   the labels of its series;
//! - [`TargetFinder`] tells which target a sampled PID belongs to (by PID, then by the
//!   container ID in `/proc/PID/cgroup`).
//!
//! The crate is pure userspace: it reads `/proc` (at a configurable root, so tests use
//! fixture trees) and knows nothing about eBPF or profiles. Everything read from `/proc` is
//! untrusted: reads are bounded, parsers never panic, and a process that exits mid-read is
//! simply skipped.
//!
//! ```
//! use ferroscope_targets::{Labels, Target, TargetId, relabel};
//!
//! let rules = relabel::compile([relabel::RelabelConfig {
//!     source_labels: vec!["__meta_process_exe".into()],
//!     regex: ".*/(.*)".into(),
//!     target_label: "service_name".into(),
//!     replacement: "local/$1".into(),
//!     ..Default::default()
//! }])?;
//! let discovered = Labels::from([("__process_pid__", "42"), ("__meta_process_exe", "/usr/bin/nginx")]);
//! let labels = relabel::relabel(&rules, discovered).expect("kept");
//! let target = Target::new(labels).expect("a PID target");
//! assert_eq!(target.id(), &TargetId::Pid(42));
//! assert_eq!(target.service_name(), "local/nginx");
//! assert_eq!(
//!     target.series_labels("process_cpu").to_string(),
//!     r#"{__name__="process_cpu", __process_pid__="42", service_name="local/nginx"}"#,
//! );
//! # Ok::<(), ferroscope_targets::Error>(())
//! ```
#![deny(missing_docs)]

pub mod cgroup;
pub mod discovery;
mod finder;
mod labels;
pub mod relabel;
pub mod target;

use std::path::PathBuf;

pub use discovery::ProcessDiscovery;
pub use finder::{FinderOptions, TargetFinder};
pub use labels::{Labels, is_valid_label_name};
pub use relabel::{Action, RelabelConfig, RelabelRule};
pub use target::{Target, TargetId, build_targets};

/// Why targets could not be discovered or relabelled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A relabel rule is invalid.
    #[error("invalid relabel rule{} (action \"{action}\"): {problem}", rule_position(.rule))]
    InvalidRelabelRule {
        /// 1-based position of the rule in its list, when known.
        rule: Option<usize>,
        /// The rule's action.
        action: Action,
        /// What is wrong and what to change.
        problem: String,
    },
    /// The `/proc` directory cannot be listed.
    #[error("cannot list processes in {} (check that procfs is mounted there and readable; run as root)", path.display())]
    ProcRoot {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn rule_position(rule: &Option<usize>) -> String {
    rule.map(|n| format!(" #{n}")).unwrap_or_default()
}
