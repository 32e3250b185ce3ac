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
//!   container ID in `/proc/PID/cgroup`);
//! - container discoveries give container targets with the labels Alloy's discoveries give:
//!   [`cri`] reads Kubernetes Pod metadata from containerd's and CRI-O's state on the node
//!   (no API access), [`docker`] (feature `docker`) asks a Docker Engine API like
//!   `discovery.docker`, [`kubernetes`] (feature `kubernetes`) watches the API server's Pods
//!   like `discovery.kubernetes`.
//!
//! The crate knows nothing about eBPF or profiles. It reads `/proc` and runtime state
//! directories (at configurable roots, so tests use fixture trees) and, with the features,
//! talks to the Docker daemon and the Kubernetes API server. Everything it reads is untrusted:
//! reads are bounded, parsers never panic, and a process that exits mid-read is simply
//! skipped.
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
pub mod cri;
pub mod discovery;
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "docker")]
mod docker_http;
mod finder;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
mod labels;
pub mod relabel;
pub mod target;

use std::path::PathBuf;
#[cfg(feature = "docker")]
use std::time::Duration;

pub use discovery::ProcessDiscovery;
pub use finder::{FinderOptions, TargetFinder};
pub use labels::{Labels, is_valid_label_name, sanitize_label_name};
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
    /// None of the container runtimes' state directories exists.
    #[error(
        "none of the container runtime state directories exists ({}): on a Kubernetes node, mount containerd's /run/containerd/io.containerd.runtime.v2.task or CRI-O's /run/containers/storage into the agent's container (read-only), or set containerd_state_dirs / crio_storage_dirs to where they are",
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    CriNoStateDir {
        /// The directories looked for.
        dirs: Vec<PathBuf>,
    },
    /// A container runtime state directory cannot be read.
    #[error("cannot read the container runtime state directory {} (run the agent as root)", path.display())]
    CriStateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A `discovery.docker` host is not a Docker daemon address.
    #[cfg(feature = "docker")]
    #[error("discovery.docker host {host:?} is invalid: {problem}")]
    DockerHost {
        /// The host as configured.
        host: String,
        /// What is wrong and what to write.
        problem: String,
    },
    /// The Docker daemon cannot be reached.
    #[cfg(feature = "docker")]
    #[error(
        "cannot connect to the Docker daemon at {host} (is it running? in a container, is its socket mounted into the agent's?)"
    )]
    DockerConnect {
        /// The daemon's address.
        host: String,
        /// The connection error.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP exchange with the Docker daemon failed.
    #[cfg(feature = "docker")]
    #[error("the request GET {path} to the Docker daemon at {host} failed")]
    DockerHttp {
        /// The daemon's address.
        host: String,
        /// The request's path.
        path: String,
        /// The HTTP error.
        #[source]
        source: hyper::Error,
    },
    /// The Docker daemon did not answer in time.
    #[cfg(feature = "docker")]
    #[error(
        "the Docker daemon at {host} did not answer GET {path} within {after:?}; it may be overloaded"
    )]
    DockerTimeout {
        /// The daemon's address.
        host: String,
        /// The request's path.
        path: String,
        /// The time waited.
        after: Duration,
    },
    /// The Docker daemon answered with an error.
    #[cfg(feature = "docker")]
    #[error("the Docker daemon at {host} answered GET {path} with HTTP {status}: {message}{}", docker_hint(*status))]
    DockerStatus {
        /// The daemon's address.
        host: String,
        /// The request's path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// The Docker daemon's answer is not what its API returns.
    #[cfg(feature = "docker")]
    #[error("the Docker daemon at {host} answered something unexpected: {problem}")]
    DockerResponse {
        /// The daemon's address.
        host: String,
        /// What is wrong.
        problem: String,
    },
    /// The Kubernetes API server cannot be used.
    #[cfg(feature = "kubernetes")]
    #[error("Kubernetes discovery ({server}): {problem}")]
    Kubernetes {
        /// How the server is reached (in-cluster, a kubeconfig, a URL).
        server: String,
        /// What failed, why, and what to do.
        problem: String,
    },
}

#[cfg(feature = "docker")]
fn docker_hint(status: u16) -> &'static str {
    match status {
        400 | 500 => " (check the discovery's filters)",
        404 => " (is this a Docker Engine API?)",
        _ => "",
    }
}

fn rule_position(rule: &Option<usize>) -> String {
    rule.map(|n| format!(" #{n}")).unwrap_or_default()
}
