//! The container discoveries of `ferroscope run` (`[[discovery.docker]]`,
//! `[[discovery.kubernetes]]`, `[[discovery.cri]]`), each running on its own task of the
//! agent's I/O runtime so that a slow daemon or API server never holds up sampling.
//!
//! Each keeps its last target list and whether it is failing; the collect loop takes the
//! lists when one changed (a generation count) and relabels them with the static targets and
//! the process discovery's. A failure keeps the last list (as Prometheus's discoveries do),
//! is logged once when it starts or changes (later repeats at debug level), counted in
//! `ferroscope_discovery_failures_total{discovery}`, and named by `/healthz` until the
//! discovery works again.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferroscope_targets::Labels;
use ferroscope_targets::cri::CriDiscovery;
use ferroscope_targets::docker::{DockerDiscovery, Filter, TargetOptions};
use ferroscope_targets::kubernetes::{Connection, KubernetesDiscovery, Update};

use crate::config::{
    Config, CriDiscoveryConfig, DockerDiscoveryConfig, KubernetesDiscoveryConfig, expand_env,
};
use crate::metrics::AgentMetrics;

/// The service account's namespace file (for `namespaces.own_namespace`).
const OWN_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// One running discovery's state.
#[derive(Debug)]
struct Source {
    /// `discovery.docker #1`, ...
    name: String,
    /// Where it looks (the Docker host, the API server, the state directories).
    place: String,
    state: Mutex<State>,
    generation: AtomicU64,
    metrics: AgentMetrics,
}

#[derive(Debug, Default)]
struct State {
    targets: Vec<Labels>,
    /// Why it is failing now, if it is.
    failure: Option<String>,
    /// Whether it ever produced a list.
    listed: bool,
}

impl Source {
    fn labels(&self) -> Vec<(String, String)> {
        vec![("discovery".to_owned(), self.name.clone())]
    }

    /// A new list: kept (and the generation bumped) if it differs from the last.
    fn publish(&self, targets: Vec<Labels>) {
        self.update(Some(targets), None, true);
    }

    /// A failure: logged when it starts or changes, the last list kept.
    fn fail(&self, why: String) {
        self.update(None, Some(why), true);
    }

    /// A new list (if any) and whether the discovery is failing; `log_failure: false` when
    /// the caller logged the failure's details itself.
    fn update(&self, targets: Option<Vec<Labels>>, failure: Option<String>, log_failure: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(targets) = targets {
            self.metrics
                .discovery_targets
                .get_or_create(&self.labels())
                .set(targets.len() as i64);
            if !state.listed || state.targets != targets {
                tracing::debug!(discovery = %self.name, targets = targets.len(), "discovered targets changed");
                state.targets = targets;
                state.listed = true;
                self.generation.fetch_add(1, Ordering::Relaxed);
            }
        }
        match failure {
            None => {
                if let Some(why) = state.failure.take() {
                    tracing::info!(
                        discovery = %self.name,
                        targets = state.targets.len(),
                        "{} ({}) works again (it failed: {why})",
                        self.name,
                        self.place
                    );
                }
            }
            Some(why) => {
                self.metrics
                    .discovery_failures
                    .get_or_create(&self.labels())
                    .inc();
                if state.failure.as_deref() == Some(why.as_str()) {
                    tracing::debug!(discovery = %self.name, "still failing: {why}");
                    return;
                }
                if log_failure {
                    let kept = if state.listed {
                        format!("the {} targets it found last are kept", state.targets.len())
                    } else {
                        "it has found no targets yet".to_owned()
                    };
                    tracing::warn!(
                        discovery = %self.name,
                        "{} ({}) is failing: {why}; it keeps retrying, {kept}, and everything else is still profiled",
                        self.name,
                        self.place,
                    );
                }
                state.failure = Some(why);
            }
        }
    }
}

/// The running container discoveries.
#[derive(Debug, Default)]
pub(crate) struct Discoveries {
    sources: Vec<Arc<Source>>,
}

impl Discoveries {
    /// Starts every configured container discovery on `runtime`.
    pub(crate) fn start(
        config: &Config,
        runtime: &tokio::runtime::Runtime,
        metrics: &AgentMetrics,
    ) -> Discoveries {
        let source = |name: String, place: String| {
            Arc::new(Source {
                name,
                place,
                state: Mutex::new(State::default()),
                generation: AtomicU64::new(0),
                metrics: metrics.clone(),
            })
        };
        let mut sources = Vec::new();
        for (i, d) in config.discovery.docker.iter().enumerate() {
            let s = source(format!("discovery.docker #{}", i + 1), d.host.clone());
            start_docker(d, s.clone(), runtime);
            sources.push(s);
        }
        for (i, d) in config.discovery.kubernetes.iter().enumerate() {
            let name = format!("discovery.kubernetes #{}", i + 1);
            match kubernetes_discovery(d) {
                Ok(discovery) => {
                    let s = source(name, discovery.connection.to_string());
                    start_kubernetes(discovery, d.namespaces.own_namespace, s.clone(), runtime);
                    sources.push(s);
                }
                Err(why) => {
                    let s = source(name, "selectors".to_owned());
                    s.fail(why);
                    sources.push(s);
                }
            }
        }
        for (i, d) in config.discovery.cri.iter().enumerate() {
            let dirs: Vec<String> = d
                .containerd_state_dirs
                .iter()
                .chain(&d.crio_storage_dirs)
                .map(|p| p.display().to_string())
                .collect();
            let s = source(format!("discovery.cri #{}", i + 1), dirs.join(", "));
            start_cri(d, s.clone(), runtime);
            sources.push(s);
        }
        Discoveries { sources }
    }

    /// One discovery that the caller feeds by hand (tests of what uses the lists): the
    /// discoveries and a function that publishes a new list.
    #[cfg(test)]
    pub(crate) fn by_hand(metrics: &AgentMetrics) -> (Discoveries, impl Fn(Vec<Labels>) + use<>) {
        let source = Arc::new(Source {
            name: "discovery.test #1".to_owned(),
            place: "by hand".to_owned(),
            state: Mutex::new(State::default()),
            generation: AtomicU64::new(0),
            metrics: metrics.clone(),
        });
        let s = source.clone();
        (
            Discoveries {
                sources: vec![source],
            },
            move |targets| s.publish(targets),
        )
    }

    /// Changes whenever a discovery's target list changes.
    pub(crate) fn generation(&self) -> u64 {
        self.sources
            .iter()
            .map(|s| s.generation.load(Ordering::Relaxed))
            .sum()
    }

    /// Every discovery's last target list.
    pub(crate) fn targets(&self) -> Vec<Labels> {
        self.sources
            .iter()
            .flat_map(|s| {
                s.state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .targets
                    .clone()
            })
            .collect()
    }

    /// The failing discoveries: `"<name> (<where>): <why>"` each.
    pub(crate) fn failures(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter_map(|s| {
                let state = s.state.lock().unwrap_or_else(|e| e.into_inner());
                let why = state.failure.as_ref()?;
                Some(format!("{} ({}): {why}", s.name, s.place))
            })
            .collect()
    }

    /// For `/debug/targets`.
    pub(crate) fn debug_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.sources
                .iter()
                .map(|s| {
                    let state = s.state.lock().unwrap_or_else(|e| e.into_inner());
                    serde_json::json!({
                        "name": s.name,
                        "where": s.place,
                        "targets": state.targets.len(),
                        "listed": state.listed,
                        "failing": state.failure,
                    })
                })
                .collect(),
        )
    }
}

/// Lists the containers every `refresh_interval`.
fn start_docker(d: &DockerDiscoveryConfig, source: Arc<Source>, runtime: &tokio::runtime::Runtime) {
    let mut discovery = match DockerDiscovery::new(&d.host) {
        Ok(discovery) => discovery,
        Err(e) => {
            // The configuration was checked when it was loaded; report it anyway.
            source.fail(crate::error::Chain(&e).to_string());
            return;
        }
    };
    discovery.filters = d
        .filter
        .iter()
        .map(|f| Filter {
            name: f.name.clone(),
            values: f.values.clone(),
        })
        .collect();
    discovery.options = TargetOptions {
        port: d.port,
        host_networking_host: d.host_networking_host.clone(),
        match_first_network: d.match_first_network,
    };
    discovery.timeout = d
        .refresh_interval
        .clamp(Duration::from_secs(1), Duration::from_secs(30));
    let every = d.refresh_interval;
    runtime.spawn(async move {
        loop {
            match discovery.discover().await {
                Ok(targets) => source.publish(targets),
                Err(e) => source.fail(crate::error::Chain(&e).to_string()),
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// Watches the Pods (the watch resumes and relists by itself).
fn start_kubernetes(
    mut discovery: KubernetesDiscovery,
    own_namespace: bool,
    source: Arc<Source>,
    runtime: &tokio::runtime::Runtime,
) {
    runtime.spawn(async move {
        if own_namespace {
            match std::fs::read_to_string(OWN_NAMESPACE_FILE) {
                Ok(ns) if !ns.trim().is_empty() => discovery.namespaces.push(ns.trim().to_owned()),
                _ => {
                    source.fail(format!(
                        "namespaces.own_namespace is set but {OWN_NAMESPACE_FILE} cannot be read (the agent is not in a Pod with a service account); name the namespaces instead"
                    ));
                    return;
                }
            }
        }
        discovery
            .run(|update| match update {
                Update::Targets(targets) => source.publish(targets),
                // The source's name already says which discovery and server.
                Update::Failed(ferroscope_targets::Error::Kubernetes { problem, .. }) => {
                    source.fail(problem)
                }
                Update::Failed(e) => source.fail(crate::error::Chain(&e).to_string()),
            })
            .await;
    });
}

/// Reads the runtime state directories every `refresh_interval` (on a blocking thread).
fn start_cri(d: &CriDiscoveryConfig, source: Arc<Source>, runtime: &tokio::runtime::Runtime) {
    let every = d.refresh_interval;
    let node_name = match d.node_name.as_deref().map(expand_env).transpose() {
        Ok(n) => n,
        Err(why) => {
            source.fail(format!("node_name: {why}"));
            return;
        }
    };
    let mut discovery = Some(CriDiscovery::new(
        d.containerd_state_dirs.clone(),
        d.crio_storage_dirs.clone(),
        node_name,
    ));
    runtime.spawn(async move {
        let mut reported = BTreeSet::new();
        while let Some(mut cri) = discovery.take() {
            let Ok((cri, result)) = tokio::task::spawn_blocking(move || {
                let result = cri.scan();
                (cri, result)
            })
            .await
            else {
                source.fail("the state directory reader stopped unexpectedly".to_owned());
                return;
            };
            discovery = Some(cri);
            match result {
                Ok(scan) => {
                    // One log line per malformed container, when it is first seen.
                    for p in &scan.problems {
                        if reported.insert(p.container_id.clone()) {
                            tracing::warn!(discovery = %source.name, "{} ({}): {p}", source.name, source.place);
                        }
                    }
                    reported.retain(|id| scan.problems.iter().any(|p| &p.container_id == id));
                    let failure = (!scan.problems.is_empty()).then(|| {
                        let problems: Vec<String> =
                            scan.problems.iter().map(ToString::to_string).collect();
                        format!(
                            "{} container(s) with malformed Kubernetes annotations left out: {}",
                            problems.len(),
                            problems.join("; ")
                        )
                    });
                    source.update(Some(scan.targets), failure, false);
                }
                Err(e) => source.fail(crate::error::Chain(&e).to_string()),
            }
            tokio::time::sleep(every).await;
        }
    });
}

fn kubernetes_discovery(d: &KubernetesDiscoveryConfig) -> Result<KubernetesDiscovery, String> {
    let connection = match (&d.api_server, &d.kubeconfig_file) {
        (Some(url), _) => Connection::ApiServer {
            url: url.clone(),
            bearer_token_file: d.bearer_token_file.clone(),
            ca_file: d.tls_config.ca_file.clone(),
            insecure_skip_verify: d.tls_config.insecure_skip_verify,
        },
        (None, Some(path)) => Connection::Kubeconfig(path.clone()),
        (None, None) => Connection::InCluster,
    };
    let selector = d.selectors.first();
    let expand = |s: &Option<String>| s.as_deref().map(expand_env).transpose();
    Ok(KubernetesDiscovery {
        connection,
        namespaces: d.namespaces.names.clone(),
        label_selector: expand(&selector.and_then(|s| s.label.clone()))?,
        field_selector: expand(&selector.and_then(|s| s.field.clone()))?,
    })
}
