//! [`Target`]: a label set that names what to profile (a process or a container), its
//! service name and the labels of the series it produces.

use crate::labels::Labels;

/// The PID label of a process target (and of series from PID targets).
pub const LABEL_PID: &str = "__process_pid__";
/// The container-ID label (and of series from container targets).
pub const LABEL_CONTAINER_ID: &str = "__container_id__";
/// The metric-name label of a series.
pub const LABEL_NAME: &str = "__name__";
/// The service-name label.
pub const LABEL_SERVICE_NAME: &str = "service_name";
/// Kubernetes container ID, `<scheme>://<id>`.
pub const LABEL_K8S_CONTAINER_ID: &str = "__meta_kubernetes_pod_container_id";
/// Docker container ID.
pub const LABEL_DOCKER_CONTAINER_ID: &str = "__meta_docker_container_id";
/// Docker Swarm task container ID.
pub const LABEL_SWARM_CONTAINER_ID: &str = "__meta_dockerswarm_task_container_id";
/// Service name of processes that match no target (with `targets_only = false`).
pub const UNSPECIFIED_SERVICE: &str = "ebpf/unspecified";
/// The `__name__` of CPU profiles.
pub const PROCESS_CPU: &str = "process_cpu";

/// The Kubernetes container-runtime schemes whose IDs are cgroup container IDs.
const K8S_SCHEMES: [&str; 3] = ["docker://", "containerd://", "cri-o://"];

/// What a target matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetId {
    /// One process, by PID.
    Pid(u32),
    /// Every process in one container, by container ID.
    Container(String),
    /// Every process that matches no target (only with `targets_only = false`).
    Unmatched,
}

/// A profiling target: its labels, what it matches and its service name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    labels: Labels,
    id: TargetId,
    service_name: String,
}

impl Target {
    /// Builds a target from discovery labels, or `None` when they name neither a process
    /// nor a container.
    ///
    /// A non-zero u32 `__process_pid__` makes a PID target. Otherwise the container ID is
    /// the first non-empty of `__container_id__`, `__meta_kubernetes_pod_container_id`
    /// (whose `docker://`, `containerd://` or `cri-o://` is stripped; any other scheme
    /// ignores the target), `__meta_docker_container_id` and
    /// `__meta_dockerswarm_task_container_id`.
    pub fn new(labels: Labels) -> Option<Self> {
        let id = target_id(&labels)?;
        let service_name = service_name(&labels);
        Some(Self {
            labels,
            id,
            service_name,
        })
    }

    /// The target of processes that match no target: `{service_name="ebpf/unspecified"}`.
    pub fn unmatched() -> Self {
        Self {
            labels: Labels::from([(LABEL_SERVICE_NAME, UNSPECIFIED_SERVICE)]),
            id: TargetId::Unmatched,
            service_name: UNSPECIFIED_SERVICE.to_owned(),
        }
    }

    /// What the target matches.
    pub fn id(&self) -> &TargetId {
        &self.id
    }

    /// The labels the target was built from.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// The service name: the `service_name` label, or inferred (see [`infer_service_name`]).
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// The labels of the series this target's profiles go to: the target's labels without
    /// those starting with `__`, plus `service_name`, `__name__` = `profile_name` (e.g.
    /// [`PROCESS_CPU`]), and `__container_id__` or `__process_pid__`.
    pub fn series_labels(&self, profile_name: &str) -> Labels {
        let mut out: Labels = self
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with("__"))
            .collect();
        out.set(LABEL_SERVICE_NAME, self.service_name.clone());
        out.set(LABEL_NAME, profile_name);
        match &self.id {
            TargetId::Pid(pid) => out.set(LABEL_PID, pid.to_string()),
            TargetId::Container(cid) => out.set(LABEL_CONTAINER_ID, cid.clone()),
            TargetId::Unmatched => {}
        }
        out
    }
}

/// What `labels` match, following the order in [`Target::new`].
pub fn target_id(labels: &Labels) -> Option<TargetId> {
    if let Some(pid) = labels.get(LABEL_PID).and_then(|v| v.parse::<u32>().ok())
        && pid != 0
    {
        return Some(TargetId::Pid(pid));
    }
    container_id_of(labels).map(TargetId::Container)
}

fn container_id_of(labels: &Labels) -> Option<String> {
    if let Some(cid) = labels.get(LABEL_CONTAINER_ID) {
        return Some(cid.to_owned());
    }
    if let Some(k8s) = labels.get(LABEL_K8S_CONTAINER_ID) {
        let stripped = K8S_SCHEMES.iter().find_map(|s| k8s.strip_prefix(s));
        if stripped.is_none() {
            tracing::debug!(
                container_id = k8s,
                "ignoring a target whose Kubernetes container runtime is not docker, containerd or cri-o"
            );
        }
        return stripped.filter(|s| !s.is_empty()).map(str::to_owned);
    }
    labels
        .get(LABEL_DOCKER_CONTAINER_ID)
        .or_else(|| labels.get(LABEL_SWARM_CONTAINER_ID))
        .map(str::to_owned)
}

/// The `service_name` label if set, else [`infer_service_name`].
pub fn service_name(labels: &Labels) -> String {
    match labels.get(LABEL_SERVICE_NAME) {
        Some(name) => name.to_owned(),
        None => infer_service_name(labels),
    }
}

/// Infers a service name from discovery meta labels, in this order:
/// `__meta_kubernetes_pod_annotation_pyroscope_io_service_name`;
/// `ebpf/<__meta_kubernetes_namespace>/<__meta_kubernetes_pod_container_name>`;
/// `__meta_docker_container_name`; `__meta_dockerswarm_container_label_service_name`;
/// `__meta_dockerswarm_service_name`; else `unspecified`.
pub fn infer_service_name(labels: &Labels) -> String {
    if let Some(v) = labels.get("__meta_kubernetes_pod_annotation_pyroscope_io_service_name") {
        return v.to_owned();
    }
    if let (Some(ns), Some(container)) = (
        labels.get("__meta_kubernetes_namespace"),
        labels.get("__meta_kubernetes_pod_container_name"),
    ) {
        return format!("ebpf/{ns}/{container}");
    }
    [
        "__meta_docker_container_name",
        "__meta_dockerswarm_container_label_service_name",
        "__meta_dockerswarm_service_name",
    ]
    .iter()
    .find_map(|k| labels.get(k))
    .unwrap_or("unspecified")
    .to_owned()
}

/// Builds targets from label sets, skipping those that name neither a process nor a
/// container (logged at debug level).
pub fn build_targets(label_sets: impl IntoIterator<Item = Labels>) -> Vec<Target> {
    label_sets
        .into_iter()
        .filter_map(|labels| {
            let t = Target::new(labels.clone());
            if t.is_none() {
                tracing::debug!(%labels, "ignoring a target with neither __process_pid__ nor a container ID");
            }
            t
        })
        .collect()
}
