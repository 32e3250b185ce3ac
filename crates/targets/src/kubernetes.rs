//! Kubernetes discovery, like Alloy's `discovery.kubernetes` with `role = "pod"` (Prometheus's
//! `kubernetes_sd_config`): the Pods the API server lists, watched with kube-rs (one list,
//! then a watch that the client resumes from the last resource version, relisting when the
//! server says it expired), one target per container with the same labels:
//!
//! `__meta_kubernetes_namespace`, `__meta_kubernetes_pod_name`, `_ip`, `_ready`, `_phase`,
//! `_node_name`, `_host_ip`, `_uid`, `_controller_kind`, `_controller_name`,
//! `__meta_kubernetes_pod_label_<name>` / `_labelpresent_<name>`,
//! `__meta_kubernetes_pod_annotation_<name>` / `_annotationpresent_<name>` (names sanitized
//! to `[a-zA-Z0-9_]`), and per container (init containers too) `_container_name`,
//! `_container_id` (`containerd://<id>`, what processes are matched by), `_container_image`,
//! `_container_init`, and per declared port `_container_port_name`, `_number`, `_protocol`,
//! with `__address__`. As in Prometheus, a Pod without an IP yet has no targets.
//!
//! [`pod_targets`] is the whole transformation of one Pod, with no I/O (it is what the fuzz
//! target runs on arbitrary JSON); [`KubernetesDiscovery::run`] watches the API server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use crate::Error;
use crate::labels::{Labels, sanitize_label_name};

const PREFIX: &str = "__meta_kubernetes_";

/// The targets of each Pod, by (namespace, name).
type PodTargets = BTreeMap<(String, String), Vec<Labels>>;

/// The targets of one Pod (none while it has no IP).
pub fn pod_targets(pod: &Pod) -> Vec<Labels> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let Some(pod_ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) else {
        return Vec::new();
    };
    let meta = &pod.metadata;
    let mut common = Labels::new();
    let mut set = |name: &str, value: &str| common.set(format!("{PREFIX}{name}"), value);
    set("namespace", meta.namespace.as_deref().unwrap_or_default());
    set("pod_name", meta.name.as_deref().unwrap_or_default());
    set("pod_ip", pod_ip);
    set("pod_phase", status.phase.as_deref().unwrap_or_default());
    set("pod_host_ip", status.host_ip.as_deref().unwrap_or_default());
    set("pod_uid", meta.uid.as_deref().unwrap_or_default());
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map_or("unknown".to_owned(), |c| c.status.to_lowercase());
    set("pod_ready", &ready);
    let spec = pod.spec.as_ref();
    set(
        "pod_node_name",
        spec.and_then(|s| s.node_name.as_deref())
            .unwrap_or_default(),
    );
    if let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        set("pod_controller_kind", &owner.kind);
        set("pod_controller_name", &owner.name);
    }
    for (k, v) in meta.labels.iter().flatten() {
        let n = sanitize_label_name(k);
        set(&format!("pod_label_{n}"), v);
        set(&format!("pod_labelpresent_{n}"), "true");
    }
    for (k, v) in meta.annotations.iter().flatten() {
        let n = sanitize_label_name(k);
        set(&format!("pod_annotation_{n}"), v);
        set(&format!("pod_annotationpresent_{n}"), "true");
    }
    let Some(spec) = spec else {
        return Vec::new();
    };
    let containers = spec.containers.iter().map(|c| (c, false));
    let inits = spec.init_containers.iter().flatten().map(|c| (c, true));
    let mut out = Vec::new();
    for (c, init) in containers.chain(inits) {
        let statuses = if init {
            status.init_container_statuses.as_deref()
        } else {
            status.container_statuses.as_deref()
        };
        let id = container_id(statuses, &c.name);
        let base = |address: String| {
            let mut l = common.clone();
            l.set("__address__", address);
            l.set(format!("{PREFIX}pod_container_name"), c.name.clone());
            l.set(format!("{PREFIX}pod_container_id"), id.clone());
            l.set(
                format!("{PREFIX}pod_container_image"),
                c.image.clone().unwrap_or_default(),
            );
            l.set(format!("{PREFIX}pod_container_init"), init.to_string());
            l
        };
        let ports = ports(c);
        if ports.is_empty() {
            out.push(base(pod_ip.to_owned()));
            continue;
        }
        for (number, name, protocol) in ports {
            let mut l = base(join_host_port(pod_ip, number));
            l.set(
                format!("{PREFIX}pod_container_port_number"),
                number.to_string(),
            );
            l.set(format!("{PREFIX}pod_container_port_name"), name);
            l.set(format!("{PREFIX}pod_container_port_protocol"), protocol);
            out.push(l);
        }
    }
    out
}

fn ports(c: &Container) -> Vec<(i32, String, String)> {
    c.ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.container_port,
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn container_id(statuses: Option<&[ContainerStatus]>, name: &str) -> String {
    statuses
        .into_iter()
        .flatten()
        .find(|s| s.name == name)
        .and_then(|s| s.container_id.clone())
        .unwrap_or_default()
}

fn join_host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The targets of the Pod in `json` (one Pod object as the API server sends it). The error
/// says why it is not one.
pub fn pod_targets_from_json(json: &[u8]) -> Result<Vec<Labels>, String> {
    let pod: Pod = serde_json::from_slice(json).map_err(|e| format!("not a Pod object ({e})"))?;
    Ok(pod_targets(&pod))
}

/// How the client reaches the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// From inside a Pod: `KUBERNETES_SERVICE_HOST`/`_PORT` and the service account's token
    /// and CA under `/var/run/secrets/kubernetes.io/serviceaccount/`.
    InCluster,
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// An API server URL, with an optional bearer token file and CA file.
    ApiServer {
        /// `https://host:port` (or `http://` for a local proxy).
        url: String,
        /// A file holding the bearer token (re-read as it rotates).
        bearer_token_file: Option<PathBuf>,
        /// The PEM file of the CA that signed the server's certificate.
        ca_file: Option<PathBuf>,
        /// Skip the server certificate's verification.
        insecure_skip_verify: bool,
    },
}

impl std::fmt::Display for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connection::InCluster => f.write_str("in-cluster"),
            Connection::Kubeconfig(p) => write!(f, "kubeconfig {}", p.display()),
            Connection::ApiServer { url, .. } => f.write_str(url),
        }
    }
}

/// What a running discovery reports.
#[derive(Debug)]
pub enum Update {
    /// The targets of every Pod listed now.
    Targets(Vec<Labels>),
    /// The discovery cannot list or watch; it retries with backoff (the last targets stay).
    Failed(Error),
}

/// A Pod discovery.
#[derive(Debug, Clone)]
pub struct KubernetesDiscovery {
    /// How to reach the API server.
    pub connection: Connection,
    /// The namespaces watched; empty: all.
    pub namespaces: Vec<String>,
    /// A label selector (`app=shop,tier!=db`).
    pub label_selector: Option<String>,
    /// A field selector (`spec.nodeName=node-a`).
    pub field_selector: Option<String>,
}

/// How long to wait before building a client again after it failed.
const RETRY: Duration = Duration::from_secs(5);

impl KubernetesDiscovery {
    /// A client for the configured connection.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let server = self.connection.to_string();
        let fail = |problem: String| Error::Kubernetes {
            server: server.clone(),
            problem,
        };
        let mut config = match &self.connection {
            Connection::InCluster => kube::Config::incluster().map_err(|e| {
                fail(format!(
                    "cannot load the in-cluster configuration ({}); run the agent in a Pod with a service account, or set kubeconfig_file or api_server",
                    chain(&e)
                ))
            })?,
            Connection::Kubeconfig(path) => {
                let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    fail(format!("cannot read the kubeconfig file ({}); check kubeconfig_file", chain(&e)))
                })?;
                kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| fail(format!("the kubeconfig file cannot be used ({})", chain(&e))))?
            }
            Connection::ApiServer {
                url,
                bearer_token_file,
                ca_file,
                insecure_skip_verify,
            } => {
                let uri: http::Uri = url.parse().map_err(|e| {
                    fail(format!("api_server {url:?} is not a URL ({e}), e.g. \"https://10.0.0.1:6443\""))
                })?;
                let mut config = kube::Config::new(uri);
                if let Some(file) = bearer_token_file {
                    // kube-rs sends the file's bytes as they are (client-go trims them): a
                    // token file written by `echo` would make every request fail.
                    let token = std::fs::read_to_string(file).map_err(|e| {
                        fail(format!("cannot read bearer_token_file {} ({e})", file.display()))
                    })?;
                    if token.trim().is_empty() || token.trim() != token {
                        return Err(fail(format!(
                            "bearer_token_file {} must hold the token alone, without a trailing newline or spaces (write it with printf '%s' \"$TOKEN\")",
                            file.display()
                        )));
                    }
                    config.auth_info.token_file = Some(file.display().to_string());
                }
                config.root_cert_file = ca_file.clone();
                config.accept_invalid_certs = *insecure_skip_verify;
                config
            }
        };
        config.connect_timeout = Some(Duration::from_secs(10));
        kube::Client::try_from(config)
            .map_err(|e| fail(format!("cannot build the client ({})", describe(&e))))
    }

    /// Watches the Pods forever, reporting every change of the target list and every
    /// failure (after which it retries with backoff).
    pub async fn run(&self, mut report: impl FnMut(Update) + Send) {
        loop {
            let client = match self.client().await {
                Ok(c) => c,
                Err(e) => {
                    report(Update::Failed(e));
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            self.watch(client, &mut report).await;
        }
    }

    async fn watch(&self, client: kube::Client, report: &mut (impl FnMut(Update) + Send)) {
        let mut config = watcher::Config::default();
        if let Some(s) = &self.field_selector {
            config = config.fields(s);
        }
        if let Some(s) = &self.label_selector {
            config = config.labels(s);
        }
        let namespaces: Vec<Option<&str>> = if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().map(|n| Some(n.as_str())).collect()
        };
        let streams = namespaces.iter().enumerate().map(|(i, ns)| {
            let api: kube::Api<Pod> = match ns {
                None => kube::Api::all(client.clone()),
                Some(ns) => kube::Api::namespaced(client.clone(), ns),
            };
            watcher::watcher(api, config.clone())
                .default_backoff()
                .map(move |e| (i, e))
                .boxed()
        });
        let mut events = futures_util::stream::select_all(streams).ready_chunks(256);
        let server = self.connection.to_string();
        // Per watched namespace: the Pods' targets by (namespace, name), and the buffer of a
        // relist in progress.
        let mut stores: Vec<PodTargets> = vec![BTreeMap::new(); namespaces.len()];
        let mut relists: Vec<Option<PodTargets>> = vec![None; namespaces.len()];
        let mut listed = vec![false; namespaces.len()];
        while let Some(batch) = events.next().await {
            let mut changed = false;
            for (i, event) in batch {
                match event {
                    Ok(Event::Init) => relists[i] = Some(BTreeMap::new()),
                    Ok(Event::InitApply(pod)) => {
                        if let Some(buffer) = relists[i].as_mut() {
                            buffer.insert(key(&pod), pod_targets(&pod));
                        }
                    }
                    Ok(Event::InitDone) => {
                        stores[i] = relists[i].take().unwrap_or_default();
                        listed[i] = true;
                        changed = true;
                    }
                    Ok(Event::Apply(pod)) => {
                        stores[i].insert(key(&pod), pod_targets(&pod));
                        changed = true;
                    }
                    Ok(Event::Delete(pod)) => {
                        stores[i].remove(&key(&pod));
                        changed = true;
                    }
                    // A watch whose resource version the server no longer has ends with
                    // 410 Gone: routine (etcd compaction), the client lists again.
                    Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                        tracing::debug!(
                            server,
                            "the Pod watch expired ({}); listing again",
                            status.message
                        );
                    }
                    Err(e) => report(Update::Failed(Error::Kubernetes {
                        server: server.clone(),
                        problem: describe_watcher(&e),
                    })),
                }
            }
            if changed && listed.iter().all(|&l| l) {
                report(Update::Targets(
                    stores
                        .iter()
                        .flat_map(|s| s.values().flatten().cloned())
                        .collect(),
                ));
            }
        }
    }
}

fn key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// An error and its causes, `: `-joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

fn describe_watcher(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(e) => format!("listing Pods failed: {}", describe(e)),
        watcher::Error::WatchStartFailed(e) => {
            format!("starting to watch Pods failed: {}", describe(e))
        }
        watcher::Error::WatchFailed(e) => format!("watching Pods failed: {}", describe(e)),
        watcher::Error::WatchError(status) => format!(
            "the API server ended the watch: {}",
            describe_status(status.code, &status.reason, &status.message)
        ),
        watcher::Error::NoResourceVersion => {
            "the API server's Pod list has no resourceVersion, so it cannot be watched".to_owned()
        }
    }
}

fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => describe_status(status.code, &status.reason, &status.message),
        kube::Error::Auth(_) => format!(
            "{}; check the bearer token file or the kubeconfig's credentials",
            chain(e)
        ),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            let text = chain(e);
            let hint = if text.contains("certificate") {
                "check the CA (tls_config.ca_file, the kubeconfig's certificate-authority, or the service account's ca.crt) and that the server's certificate names the address used"
            } else if text.contains("bearer token") {
                "check the token file: it must hold the token alone"
            } else {
                "check the address and that this node can reach it"
            };
            format!("cannot reach the API server ({text}); {hint}")
        }
        other => chain(other),
    }
}

fn describe_status(code: u16, reason: &str, message: &str) -> String {
    let hint = match code {
        401 => {
            "; the credentials are not accepted: check the service account token or the kubeconfig"
        }
        403 => {
            "; give the agent's service account get, list and watch on pods (the ClusterRole in deploy/kubernetes/daemonset.yaml)"
        }
        404 => "; check api_server and the namespaces",
        _ => "",
    };
    let reason = if reason.is_empty() {
        String::new()
    } else {
        format!(" {reason}")
    };
    format!("the API server answered {code}{reason}: {message}{hint}")
}
