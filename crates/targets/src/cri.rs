//! Kubernetes Pod metadata of the node's containers without the API server: read from the
//! OCI runtime configuration (`config.json`) that the container runtime writes for every
//! container it runs, whose annotations kubelet set through CRI.
//!
//! - **containerd** (its CRI plug-in): `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/`
//!   holds the running task's `config.json` and `init.pid`; the annotations are
//!   `io.kubernetes.cri.container-type` (`container` or `sandbox`),
//!   `io.kubernetes.cri.sandbox-namespace`, `io.kubernetes.cri.sandbox-name`,
//!   `io.kubernetes.cri.sandbox-uid` (containerd 1.7 and later; older releases give the Pod UID
//!   only in the cgroup path, which is read instead), `io.kubernetes.cri.container-name`,
//!   `io.kubernetes.cri.image-name` and `io.kubernetes.cri.sandbox-id`.
//! - **CRI-O**: `<run root>/<driver>-containers/<id>/userdata/config.json` of containers/storage
//!   (run root `/run/containers/storage`); the annotations are
//!   `io.kubernetes.cri-o.ContainerType`, kubelet's container labels `io.kubernetes.pod.namespace`,
//!   `io.kubernetes.pod.name`, `io.kubernetes.pod.uid`, `io.kubernetes.container.name` (also
//!   inside the JSON of `io.kubernetes.cri-o.Labels`), `io.kubernetes.cri-o.ImageName` and
//!   `io.kubernetes.cri-o.SandboxID`.
//!
//! Each running Pod container becomes one target labelled as `discovery.kubernetes` would label
//! it (`__meta_kubernetes_namespace`, `__meta_kubernetes_pod_name`, `__meta_kubernetes_pod_uid`,
//! `__meta_kubernetes_pod_container_name`, `__meta_kubernetes_pod_container_id`,
//! `__meta_kubernetes_pod_container_image`, `__meta_kubernetes_pod_node_name` when the node's
//! name is configured), so relabel rules and service names written for Alloy work unchanged.
//! Sandbox (pause) containers and containers not started by kubelet (no CRI annotations) are
//! left out; a container whose annotations are malformed is reported and left out, the others
//! are still found.
//!
//! Everything read is untrusted (a container's owner chooses its annotations): reads are
//! bounded, parsers never panic.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::labels::Labels;

/// `__meta_kubernetes_namespace`.
pub const LABEL_NAMESPACE: &str = "__meta_kubernetes_namespace";
/// `__meta_kubernetes_pod_name`.
pub const LABEL_POD_NAME: &str = "__meta_kubernetes_pod_name";
/// `__meta_kubernetes_pod_uid`.
pub const LABEL_POD_UID: &str = "__meta_kubernetes_pod_uid";
/// `__meta_kubernetes_pod_container_name`.
pub const LABEL_CONTAINER_NAME: &str = "__meta_kubernetes_pod_container_name";
/// `__meta_kubernetes_pod_container_image`.
pub const LABEL_CONTAINER_IMAGE: &str = "__meta_kubernetes_pod_container_image";
/// `__meta_kubernetes_pod_node_name`.
pub const LABEL_NODE_NAME: &str = "__meta_kubernetes_pod_node_name";
/// `__meta_cri_runtime`: `containerd` or `cri-o`.
pub const LABEL_RUNTIME: &str = "__meta_cri_runtime";
/// `__meta_cri_sandbox_id`: the ID of the Pod's sandbox container.
pub const LABEL_SANDBOX_ID: &str = "__meta_cri_sandbox_id";
/// `__meta_cri_containerd_namespace`: the containerd namespace (`k8s.io` for kubelet's).
pub const LABEL_CONTAINERD_NAMESPACE: &str = "__meta_cri_containerd_namespace";

/// Bytes of a `config.json` read, at most (real ones are 10-60 KiB).
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// Containers looked at per state directory, at most.
pub const MAX_CONTAINERS: usize = 16 * 1024;

/// The subdirectory of containerd's state directory holding its tasks (shim v2).
const CONTAINERD_TASKS: &str = "io.containerd.runtime.v2.task";

/// Which runtime wrote a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// containerd's CRI plug-in.
    Containerd,
    /// CRI-O.
    CriO,
}

impl Runtime {
    /// The scheme of Kubernetes container IDs of this runtime (`containerd`, `cri-o`).
    pub fn scheme(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
        }
    }
}

/// A Pod container's metadata, from its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContainer {
    /// Which runtime's annotations these are.
    pub runtime: Runtime,
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's name.
    pub pod_name: String,
    /// The Pod's UID, when known.
    pub pod_uid: Option<String>,
    /// The container's name in the Pod.
    pub container_name: String,
    /// The image the container was created from, when known.
    pub image: Option<String>,
    /// The sandbox container's ID, when known.
    pub sandbox_id: Option<String>,
}

impl PodContainer {
    /// The target labels of container `id` (`__meta_kubernetes_pod_container_id` is
    /// `<scheme>://<id>`, what the target matches processes by).
    pub fn labels(&self, id: &str) -> Labels {
        let mut l = Labels::new();
        l.set(LABEL_NAMESPACE, self.namespace.clone());
        l.set(LABEL_POD_NAME, self.pod_name.clone());
        l.set(LABEL_CONTAINER_NAME, self.container_name.clone());
        l.set(
            crate::target::LABEL_K8S_CONTAINER_ID,
            format!("{}://{id}", self.runtime.scheme()),
        );
        l.set(LABEL_RUNTIME, self.runtime.scheme());
        if let Some(uid) = &self.pod_uid {
            l.set(LABEL_POD_UID, uid.clone());
        }
        if let Some(image) = &self.image {
            l.set(LABEL_CONTAINER_IMAGE, image.clone());
        }
        if let Some(sandbox) = &self.sandbox_id {
            l.set(LABEL_SANDBOX_ID, sandbox.clone());
        }
        l
    }
}

/// Why a `config.json` gives no Pod container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAPodContainer {
    /// A Pod's sandbox (pause) container.
    Sandbox,
    /// No CRI annotations: a container not started by kubelet.
    NotKubernetes,
}

/// Reads a Pod container's metadata from the bytes of an OCI `config.json`.
///
/// `Ok(Err(..))` for a configuration that is not a Pod's application container, `Err(problem)`
/// for one that claims to be (it has the runtime's container-type annotation) but whose
/// annotations are missing, malformed or not valid Kubernetes names; the text says which
/// annotation and why.
pub fn pod_container(config_json: &[u8]) -> Result<Result<PodContainer, NotAPodContainer>, String> {
    let value: serde_json::Value = serde_json::from_slice(config_json)
        .map_err(|e| format!("config.json is not valid JSON ({e})"))?;
    let Some(object) = value.as_object() else {
        return Err("config.json is not a JSON object".to_owned());
    };
    let annotations = match object.get("annotations") {
        None | Some(serde_json::Value::Null) => BTreeMap::new(),
        Some(serde_json::Value::Object(map)) => {
            let mut out = BTreeMap::new();
            for (k, v) in map {
                // Only the annotations read below must be strings; others are not ours.
                if let Some(s) = v.as_str() {
                    out.insert(k.as_str(), s);
                } else if k.starts_with("io.kubernetes.") {
                    return Err(format!("annotation {k} is not a string"));
                }
            }
            out
        }
        Some(_) => return Err("`annotations` is not a JSON object".to_owned()),
    };
    let cgroups_path = object
        .get("linux")
        .and_then(|l| l.get("cgroupsPath"))
        .and_then(|p| p.as_str());
    from_annotations(&annotations, cgroups_path)
}

fn from_annotations(
    a: &BTreeMap<&str, &str>,
    cgroups_path: Option<&str>,
) -> Result<Result<PodContainer, NotAPodContainer>, String> {
    if let Some(kind) = a.get("io.kubernetes.cri.container-type") {
        return match *kind {
            "sandbox" => Ok(Err(NotAPodContainer::Sandbox)),
            "container" => {
                let required = |key: &str| {
                    a.get(key)
                        .copied()
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| format!("annotation {key} is missing"))
                };
                let uid = match a.get("io.kubernetes.cri.sandbox-uid") {
                    Some(uid) => Some(checked_uid("io.kubernetes.cri.sandbox-uid", uid)?),
                    None => cgroups_path.and_then(pod_uid_from_cgroup),
                };
                Ok(Ok(PodContainer {
                    runtime: Runtime::Containerd,
                    namespace: checked_label(
                        "io.kubernetes.cri.sandbox-namespace",
                        required("io.kubernetes.cri.sandbox-namespace")?,
                        "namespace",
                    )?,
                    pod_name: checked_subdomain(
                        "io.kubernetes.cri.sandbox-name",
                        required("io.kubernetes.cri.sandbox-name")?,
                    )?,
                    pod_uid: uid,
                    container_name: checked_label(
                        "io.kubernetes.cri.container-name",
                        required("io.kubernetes.cri.container-name")?,
                        "container",
                    )?,
                    image: optional(a, "io.kubernetes.cri.image-name")?,
                    sandbox_id: optional(a, "io.kubernetes.cri.sandbox-id")?,
                }))
            }
            other => Err(format!(
                "annotation io.kubernetes.cri.container-type is {other:?}, neither \"container\" nor \"sandbox\""
            )),
        };
    }
    if let Some(kind) = a.get("io.kubernetes.cri-o.ContainerType") {
        return match *kind {
            "sandbox" => Ok(Err(NotAPodContainer::Sandbox)),
            "container" => {
                // kubelet's container labels, also at the top level of the annotations.
                let labels: BTreeMap<String, String> = match a.get("io.kubernetes.cri-o.Labels") {
                    None => BTreeMap::new(),
                    Some(json) => serde_json::from_str(json).map_err(|e| {
                        format!("annotation io.kubernetes.cri-o.Labels is not a JSON object of strings ({e})")
                    })?,
                };
                let get = |key: &str| -> Result<&str, String> {
                    a.get(key)
                        .copied()
                        .or_else(|| labels.get(key).map(String::as_str))
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| {
                            format!(
                                "annotation {key} is missing (also from io.kubernetes.cri-o.Labels)"
                            )
                        })
                };
                let uid = match get("io.kubernetes.pod.uid") {
                    Ok(uid) => Some(checked_uid("io.kubernetes.pod.uid", uid)?),
                    Err(_) => cgroups_path.and_then(pod_uid_from_cgroup),
                };
                Ok(Ok(PodContainer {
                    runtime: Runtime::CriO,
                    namespace: checked_label(
                        "io.kubernetes.pod.namespace",
                        get("io.kubernetes.pod.namespace")?,
                        "namespace",
                    )?,
                    pod_name: checked_subdomain(
                        "io.kubernetes.pod.name",
                        get("io.kubernetes.pod.name")?,
                    )?,
                    pod_uid: uid,
                    container_name: checked_label(
                        "io.kubernetes.container.name",
                        get("io.kubernetes.container.name")?,
                        "container",
                    )?,
                    image: optional(a, "io.kubernetes.cri-o.ImageName")?,
                    sandbox_id: optional(a, "io.kubernetes.cri-o.SandboxID")?,
                }))
            }
            other => Err(format!(
                "annotation io.kubernetes.cri-o.ContainerType is {other:?}, neither \"container\" nor \"sandbox\""
            )),
        };
    }
    Ok(Err(NotAPodContainer::NotKubernetes))
}

/// Longest annotation value taken into a label.
const MAX_VALUE: usize = 1024;

fn optional(a: &BTreeMap<&str, &str>, key: &str) -> Result<Option<String>, String> {
    match a.get(key) {
        None | Some(&"") => Ok(None),
        Some(v) if v.len() > MAX_VALUE || v.chars().any(char::is_control) => Err(format!(
            "annotation {key} is longer than {MAX_VALUE} bytes or has control characters"
        )),
        Some(v) => Ok(Some((*v).to_owned())),
    }
}

/// A DNS-1123 label (namespaces, container names): at most 63 of `[a-z0-9-]`, starting and
/// ending with a letter or digit.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn checked_label(key: &str, value: &str, what: &str) -> Result<String, String> {
    if is_dns_label(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "annotation {key} = {:?} is not a Kubernetes {what} name (at most 63 lower-case letters, digits and '-')",
            truncate(value)
        ))
    }
}

/// A DNS-1123 subdomain (Pod names): at most 253 characters, dot-separated labels.
fn checked_subdomain(key: &str, value: &str) -> Result<String, String> {
    if value.len() <= 253 && value.split('.').all(is_dns_label) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "annotation {key} = {:?} is not a Kubernetes Pod name (at most 253 lower-case letters, digits, '-' and '.')",
            truncate(value)
        ))
    }
}

/// Pod UIDs are UUIDs; static Pods' are 32 hex digits. Accept up to 64 of `[0-9a-fA-F-]`.
fn checked_uid(key: &str, value: &str) -> Result<String, String> {
    if !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "annotation {key} = {:?} is not a Pod UID (hex digits and '-')",
            truncate(value)
        ))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The Pod UID in a kubelet cgroup path: `.../pod<uid>/...` (cgroupfs driver) or
/// `kubepods-<qos>-pod<uid with '_' for '-'>.slice` (systemd driver, also in the
/// `slice:prefix:name` form of `linux.cgroupsPath`).
pub fn pod_uid_from_cgroup(path: &str) -> Option<String> {
    path.split(['/', ':'])
        .filter_map(|segment| {
            let segment = segment.strip_suffix(".slice").unwrap_or(segment);
            let at = segment.rfind("pod")?;
            let uid = &segment[at + 3..];
            let ok = (uid.len() == 36 || uid.len() == 32)
                && uid
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
            ok.then(|| uid.replace('_', "-"))
        })
        .next_back()
}

/// Whether `s` is a 64-digit lower-case hex container ID (what kubelet's runtimes use and
/// what `/proc/PID/cgroup` matching finds).
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A container whose configuration claims to be a Pod container but is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The container's ID.
    pub container_id: String,
    /// The `config.json` read.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "container {} ({}): {}; the container is not profiled under Pod labels",
            self.container_id,
            self.path.display(),
            self.problem
        )
    }
}

/// The result of one scan.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// One label set per running Pod container.
    pub targets: Vec<Labels>,
    /// Containers left out because their annotations are malformed.
    pub problems: Vec<Problem>,
}

/// Identity of a file as of one read, to parse it again only when it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }
}

type Parsed = Result<Result<PodContainer, NotAPodContainer>, String>;

/// A container found in a state directory, before its `config.json` is read.
struct Found {
    runtime: Runtime,
    /// The containerd namespace (`k8s.io`); CRI-O has none.
    containerd_ns: Option<String>,
    id: String,
    config: PathBuf,
    pid_file: Option<PathBuf>,
}

/// Finds the node's Pod containers in containerd's and CRI-O's state directories.
#[derive(Debug)]
pub struct CriDiscovery {
    /// containerd state directories (`/run/containerd`, the `state` of its configuration).
    pub containerd_state_dirs: Vec<PathBuf>,
    /// CRI-O's containers/storage run roots (`/run/containers/storage`).
    pub crio_storage_dirs: Vec<PathBuf>,
    /// The `/proc` directory, to check that a container's process still runs.
    pub proc_root: PathBuf,
    /// The node's name, given to every target as `__meta_kubernetes_pod_node_name`.
    pub node_name: Option<String>,
    cache: HashMap<PathBuf, (Stamp, Parsed)>,
}

impl CriDiscovery {
    /// Discovery in the given directories; see the fields.
    pub fn new(
        containerd_state_dirs: Vec<PathBuf>,
        crio_storage_dirs: Vec<PathBuf>,
        node_name: Option<String>,
    ) -> Self {
        CriDiscovery {
            containerd_state_dirs,
            crio_storage_dirs,
            proc_root: PathBuf::from("/proc"),
            node_name,
            cache: HashMap::new(),
        }
    }

    /// The running Pod containers now.
    ///
    /// Fails only when none of the configured directories exists or one cannot be read;
    /// a malformed container is a [`Problem`] of the scan.
    pub fn scan(&mut self) -> Result<Scan, Error> {
        let mut found: Vec<Found> = Vec::new();
        let mut any_dir = false;
        for state in &self.containerd_state_dirs {
            let tasks = state.join(CONTAINERD_TASKS);
            let Some(namespaces) = list_dir(&tasks)? else {
                continue;
            };
            any_dir = true;
            for ns in namespaces {
                let ns_dir = tasks.join(&ns);
                let Some(ids) = list_dir(&ns_dir)? else {
                    continue;
                };
                for id in ids.into_iter().take(MAX_CONTAINERS) {
                    let dir = ns_dir.join(&id);
                    found.push(Found {
                        runtime: Runtime::Containerd,
                        containerd_ns: Some(ns.clone()),
                        id,
                        config: dir.join("config.json"),
                        pid_file: Some(dir.join("init.pid")),
                    });
                }
            }
        }
        for root in &self.crio_storage_dirs {
            let Some(entries) = list_dir(root)? else {
                continue;
            };
            any_dir = true;
            for driver in entries.into_iter().filter(|e| e.ends_with("-containers")) {
                let Some(ids) = list_dir(&root.join(&driver))? else {
                    continue;
                };
                for id in ids.into_iter().take(MAX_CONTAINERS) {
                    let userdata = root.join(&driver).join(&id).join("userdata");
                    found.push(Found {
                        runtime: Runtime::CriO,
                        containerd_ns: None,
                        id,
                        config: userdata.join("config.json"),
                        pid_file: Some(userdata.join("pidfile")),
                    });
                }
            }
        }
        if !any_dir {
            return Err(Error::CriNoStateDir {
                dirs: self
                    .containerd_state_dirs
                    .iter()
                    .map(|d| d.join(CONTAINERD_TASKS))
                    .chain(self.crio_storage_dirs.iter().cloned())
                    .collect(),
            });
        }
        let mut scan = Scan::default();
        let mut seen = HashMap::new();
        for Found {
            runtime,
            containerd_ns,
            id,
            config,
            pid_file,
        } in found
        {
            let Ok(meta) = fs::metadata(&config) else {
                continue; // Being created or removed.
            };
            let stamp = Stamp::of(&meta);
            let parsed = match self.cache.remove(&config) {
                Some((s, p)) if s == stamp => p,
                _ => match read_bounded(&config) {
                    Some(bytes) => pod_container(&bytes),
                    None => continue,
                },
            };
            seen.insert(config.clone(), (stamp, parsed.clone()));
            let pod = match parsed {
                Ok(Ok(pod)) if pod.runtime == runtime => pod,
                Ok(Ok(_)) | Ok(Err(_)) => continue,
                Err(problem) => {
                    scan.problems.push(Problem {
                        container_id: id,
                        path: config,
                        problem,
                    });
                    continue;
                }
            };
            if !is_container_id(&id) {
                scan.problems.push(Problem {
                    container_id: id,
                    path: config,
                    problem: "the container ID is not 64 hex digits, so its processes cannot be told by their cgroup".to_owned(),
                });
                continue;
            }
            if let Some(pid_file) = pid_file
                && !self.is_running(&pid_file, &id)
            {
                continue;
            }
            let mut labels = pod.labels(&id);
            if let Some(ns) = containerd_ns {
                labels.set(LABEL_CONTAINERD_NAMESPACE, ns);
            }
            if let Some(node) = &self.node_name {
                labels.set(LABEL_NODE_NAME, node.clone());
            }
            scan.targets.push(labels);
        }
        // Forget what is gone.
        self.cache = seen;
        Ok(scan)
    }

    /// Whether the process in `pid_file` runs in container `id`. A missing PID file (the
    /// runtime writes none, or not yet) counts as running; a PID whose process is gone or in
    /// another cgroup (an exited container, a reused PID) does not.
    fn is_running(&self, pid_file: &Path, id: &str) -> bool {
        let Some(text) = read_bounded(pid_file) else {
            return true;
        };
        let Ok(pid) = String::from_utf8_lossy(&text).trim().parse::<u32>() else {
            return true;
        };
        let cgroup = self.proc_root.join(pid.to_string()).join("cgroup");
        match fs::read_to_string(cgroup) {
            Ok(text) => text.contains(id),
            Err(_) => false,
        }
    }
}

/// The names in `dir`, sorted; `None` if it does not exist.
fn list_dir(dir: &Path) -> Result<Option<Vec<String>>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::CriStateDir {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort_unstable();
    Ok(Some(names))
}

fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_CONFIG_BYTES)
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uid_from_cgroup_paths() {
        assert_eq!(
            pod_uid_from_cgroup(
                "kubepods-burstable-pod0a1b2c3d_4e5f_6a7b_8c9d_0e1f2a3b4c5d.slice:cri-containerd:abc"
            )
            .as_deref(),
            Some("0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d")
        );
        assert_eq!(
            pod_uid_from_cgroup("/kubepods/besteffort/pod7a4c2d1e-9b8f-4c3a-8e2d-1f0a9b8c7d6e/abc")
                .as_deref(),
            Some("7a4c2d1e-9b8f-4c3a-8e2d-1f0a9b8c7d6e")
        );
        assert_eq!(pod_uid_from_cgroup("/k8s.io/abc"), None);
        assert_eq!(pod_uid_from_cgroup("/podman/pod"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(is_dns_label("shop"));
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("Shop"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(checked_subdomain("k", "checkout-7d9f8b6c5-x2x4q").is_ok());
        assert!(checked_subdomain("k", "a.b.c").is_ok());
        assert!(checked_subdomain("k", "a..b").is_err());
        assert!(checked_uid("k", "1b2c3d4e-0000-4000-8000-000000000001").is_ok());
        assert!(checked_uid("k", "x y").is_err());
    }
}
