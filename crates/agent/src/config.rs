//! Configuration of `ferroscope run`: one TOML file standing in for Alloy's
//! `pyroscope.ebpf` + `discovery.process` + `discovery.relabel` + `pyroscope.write`.
//!
//! ```toml
//! [ebpf]                       # every pyroscope.ebpf argument, same names and defaults
//! collect_interval = "15s"
//! sample_rate = 19
//!
//! [[discovery.process]]        # built-in process discovery (discovery.process)
//! refresh_interval = "60s"
//!
//! [[relabel]]                  # Prometheus relabel rules, applied to every target
//! source_labels = ["__meta_process_exe"]
//! regex = ".*/(.*)"
//! target_label = "service_name"
//!
//! [[targets]]                  # static targets (label maps)
//! __process_pid__ = "1234"
//!
//! [[write.endpoint]]           # pyroscope.write endpoints
//! url = "http://pyroscope:4040"
//! ```
//!
//! [`parse`] and [`load`] reject a wrong key, type or value with the file, line and column,
//! the key, and what is allowed; deprecated no-op arguments are accepted and returned as
//! warnings for the caller to log.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferroscope_targets::{Labels, RelabelRule};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use crate::Error;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The `pyroscope.ebpf` arguments.
    pub ebpf: EbpfConfig,
    /// Static targets: label maps with `__process_pid__` or a container-ID label.
    pub targets: Vec<Labels>,
    /// Target discovery.
    pub discovery: DiscoveryConfig,
    /// Relabel rules applied, in order, to every static and discovered target.
    pub relabel: Vec<RelabelRule>,
    /// Where profiles are sent.
    pub write: WriteConfig,
    /// Labels added to every series sent, overriding the target's.
    #[serde(deserialize_with = "de_external_labels")]
    pub external_labels: BTreeMap<String, String>,
    /// The agent's own HTTP server.
    pub server: ServerConfig,
    /// The local profile sink.
    pub output: OutputConfig,
    /// How much the agent holds at once (kernel map sizes, table extraction's CPU).
    pub limits: LimitsConfig,
}

/// The `[ebpf]` table: the arguments of Alloy's `pyroscope.ebpf`, same names, types and
/// defaults.
///
/// Every `<runtime>_enabled` key (`python_enabled`, `hotspot_enabled`, ...) is collected in
/// [`EbpfConfig::runtimes`]: which runtimes exist is up to the plug-ins linked into the
/// binary, so the keys are not fixed here. [`parse`] checks them against those plug-ins
/// and the runtimes `pyroscope.ebpf` knows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct EbpfConfig {
    /// How often profiles are collected and sent (`"15s"`).
    #[serde(deserialize_with = "de_positive_duration")]
    pub collect_interval: Duration,
    /// Samples per second per CPU (19).
    #[serde(deserialize_with = "de_sample_rate")]
    pub sample_rate: u32,
    /// `<runtime>_enabled` switches, by runtime name; a runtime not listed is on.
    #[serde(flatten)]
    pub runtimes: RuntimeSwitches,
    /// C++ demangling ("none").
    pub demangle: Demangle,
    /// Probability in [0, 1] that a context switch is recorded for off-CPU profiles (0).
    #[serde(deserialize_with = "de_probability")]
    pub off_cpu_threshold: f64,
    /// Attach the probe links also to files of their name that processes map later: a
    /// library loaded with `dlopen`, a container's copy (false).
    pub load_probe: bool,
    /// Deprecated form of `probe_links`: `PATH:SYMBOL` entries, read as `uprobe:PATH:SYMBOL`
    /// (`[]`).
    #[serde(deserialize_with = "de_probe_links")]
    pub u_probe_links: Vec<String>,
    /// Functions whose calls are counted with their stacks: `uprobe:PATH:SYMBOL`,
    /// `uretprobe:PATH:SYMBOL` (`[]`; `kprobe:` links are refused).
    pub probe_links: Vec<String>,
    /// Most probe hits recorded per second on each CPU; more are counted as
    /// `ProbeRateLimited_total` (100000; 0: no limit).
    pub probe_rate_limit: u64,
    /// Verbose profiler logging (false).
    pub verbose_mode: bool,
    /// Start eBPF only once the target list is non-empty (false).
    pub lazy_mode: bool,
    /// Where the thread's comm goes ("none").
    pub comm: Comm,
    /// A `pid` label on every sample (false).
    pub pid_label: bool,
    /// With `targets_only`: the processes a `__process_pid__` target starts (and theirs)
    /// are profiled as that target too, followed in the kernel from their fork (false).
    pub follow_children: bool,
    /// A `thread_name` label on every sample (false): the runtime's name for the thread
    /// (Python's `threading` name) where it has one, else the thread's own name (its comm).
    pub thread_name_label: bool,
    /// Kernel frames in stacks (true).
    pub kernel_frames: bool,
    /// Profile only processes that match a target (true); false sends the rest to
    /// `{service_name="ebpf/unspecified"}`.
    pub targets_only: bool,
    /// Directory of the symbol cache ("/tmp/symb-cache").
    pub symb_cache_path: PathBuf,
    /// Entries of the symbol cache (2048).
    pub symb_cache_size: u64,

    /// Deprecated no-op.
    pub pid_cache_size: Option<Spanned<i64>>,
    /// Deprecated no-op.
    pub build_id_cache_size: Option<Spanned<i64>>,
    /// Deprecated no-op.
    pub same_file_cache_size: Option<Spanned<i64>>,
    /// Deprecated no-op.
    pub cache_rounds: Option<Spanned<i64>>,
    /// Deprecated no-op.
    pub go_table_fallback: Option<Spanned<bool>>,
    /// Deprecated no-op.
    pub symbols_map_size: Option<Spanned<i64>>,
    /// Deprecated no-op.
    pub pid_map_size: Option<Spanned<i64>>,
    /// Deprecated no-op.
    pub collect_user_profile: Option<Spanned<bool>>,
    /// Deprecated no-op.
    pub collect_kernel_profile: Option<Spanned<bool>>,
    /// Deprecated no-op.
    pub container_id_cache_size: Option<Spanned<i64>>,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        Self {
            collect_interval: Duration::from_secs(15),
            sample_rate: 19,
            runtimes: RuntimeSwitches::default(),
            demangle: Demangle::None,
            off_cpu_threshold: 0.0,
            load_probe: false,
            u_probe_links: Vec::new(),
            probe_links: Vec::new(),
            probe_rate_limit: 100_000,
            verbose_mode: false,
            lazy_mode: false,
            comm: Comm::None,
            pid_label: false,
            thread_name_label: false,
            follow_children: false,
            kernel_frames: true,
            targets_only: true,
            symb_cache_path: PathBuf::from("/tmp/symb-cache"),
            symb_cache_size: 2048,
            pid_cache_size: None,
            build_id_cache_size: None,
            same_file_cache_size: None,
            cache_rounds: None,
            go_table_fallback: None,
            symbols_map_size: None,
            pid_map_size: None,
            collect_user_profile: None,
            collect_kernel_profile: None,
            container_id_cache_size: None,
        }
    }
}

impl EbpfConfig {
    /// The runtime unwinders the `*_enabled` arguments turn off, by plug-in name.
    pub fn disabled_runtimes(&self) -> Vec<String> {
        self.runtimes
            .0
            .iter()
            .filter(|(_, on)| !**on)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether the runtime `name` is on (true unless `<name>_enabled = false`).
    pub fn runtime_enabled(&self, name: &str) -> bool {
        self.runtimes.0.get(name).copied().unwrap_or(true)
    }

    /// The deprecated arguments that are set, with the byte range of their values.
    pub fn deprecated_set(&self) -> Vec<(&'static str, Range<usize>)> {
        let ints = [
            ("pid_cache_size", &self.pid_cache_size),
            ("build_id_cache_size", &self.build_id_cache_size),
            ("same_file_cache_size", &self.same_file_cache_size),
            ("cache_rounds", &self.cache_rounds),
            ("symbols_map_size", &self.symbols_map_size),
            ("pid_map_size", &self.pid_map_size),
            ("container_id_cache_size", &self.container_id_cache_size),
        ];
        let bools = [
            ("go_table_fallback", &self.go_table_fallback),
            ("collect_user_profile", &self.collect_user_profile),
            ("collect_kernel_profile", &self.collect_kernel_profile),
        ];
        let mut set: Vec<_> = ints
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|s| (k, s.span())))
            .chain(
                bools
                    .into_iter()
                    .filter_map(|(k, v)| v.as_ref().map(|s| (k, s.span()))),
            )
            .collect();
        set.sort_by_key(|(_, span)| span.start);
        set
    }
}

/// The runtimes `pyroscope.ebpf` has a `<name>_enabled` argument for. A configuration
/// written for Alloy may set any of them, whether this binary has the runtime or not (`go`
/// is native code here: always on, accepted for compatibility).
pub const PYROSCOPE_RUNTIME_KEYS: &[&str] = &[
    "python", "perl", "php", "hotspot", "ruby", "v8", "dotnet", "go",
];

/// The keys of `[ebpf]` besides the `<runtime>_enabled` switches (for the message about an
/// unknown key; a test checks the list against [`EbpfConfig`]'s fields).
pub const EBPF_KEYS: &[&str] = &[
    "collect_interval",
    "sample_rate",
    "demangle",
    "off_cpu_threshold",
    "load_probe",
    "u_probe_links",
    "probe_links",
    "probe_rate_limit",
    "verbose_mode",
    "lazy_mode",
    "comm",
    "pid_label",
    "follow_children",
    "thread_name_label",
    "kernel_frames",
    "targets_only",
    "symb_cache_path",
    "symb_cache_size",
    "pid_cache_size",
    "build_id_cache_size",
    "same_file_cache_size",
    "cache_rounds",
    "go_table_fallback",
    "symbols_map_size",
    "pid_map_size",
    "collect_user_profile",
    "collect_kernel_profile",
    "container_id_cache_size",
];

/// The `<runtime>_enabled` keys of `[ebpf]`, by runtime name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeSwitches(pub BTreeMap<String, bool>);

impl<'de> Deserialize<'de> for RuntimeSwitches {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RuntimeSwitches;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`<runtime>_enabled = true|false` keys")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let Some(name) = key.strip_suffix("_enabled").filter(|n| {
                        !n.is_empty()
                            && n.bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    }) else {
                        let known: Vec<String> =
                            EBPF_KEYS.iter().map(|k| format!("`{k}`")).collect();
                        return Err(de::Error::custom(format!(
                            "unknown field `{key}`, expected one of {}, or `<runtime>_enabled`",
                            known.join(", ")
                        )));
                    };
                    let on: bool = map.next_value().map_err(|e| {
                        let e = e.to_string();
                        de::Error::custom(format!("{key}: {}; use true or false", e.trim()))
                    })?;
                    out.insert(name.to_owned(), on);
                }
                Ok(RuntimeSwitches(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// C++ demangling mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Demangle {
    /// Raw symbol names.
    #[default]
    None,
    /// No parameters, no template arguments.
    Simplified,
    /// No parameters, template arguments kept.
    Templates,
    /// Everything.
    Full,
}

/// Where the thread's command name (comm) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Comm {
    /// Nowhere.
    #[default]
    None,
    /// A `comm` label on each sample.
    Label,
    /// The root frame of each stack.
    Stackframe,
    /// Both a label and the root frame.
    Both,
}

/// The `[discovery]` table.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// `[[discovery.process]]`: built-in process discovery; present = enabled.
    pub process: Vec<ProcessDiscoveryConfig>,
    /// `[[discovery.docker]]`: containers of a Docker Engine API (Alloy's `discovery.docker`).
    pub docker: Vec<DockerDiscoveryConfig>,
    /// `[[discovery.kubernetes]]`: Pods from the API server (Alloy's `discovery.kubernetes`).
    pub kubernetes: Vec<KubernetesDiscoveryConfig>,
    /// `[[discovery.cri]]`: Pod containers from containerd's and CRI-O's state on this node.
    pub cri: Vec<CriDiscoveryConfig>,
}

impl DiscoveryConfig {
    /// Whether any discovery is configured.
    pub fn any(&self) -> bool {
        !(self.process.is_empty()
            && self.docker.is_empty()
            && self.kubernetes.is_empty()
            && self.cri.is_empty())
    }
}

/// One `[[discovery.docker]]` block, like Alloy's `discovery.docker`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerDiscoveryConfig {
    /// The daemon: `unix:///var/run/docker.sock`, `tcp://host:port` or `http://host:port`.
    #[serde(deserialize_with = "de_docker_host")]
    pub host: String,
    /// How often the containers are listed ("1m").
    #[serde(
        default = "default_docker_refresh",
        deserialize_with = "de_positive_duration"
    )]
    pub refresh_interval: Duration,
    /// The port of `__address__` for containers with no TCP port (80).
    #[serde(default = "default_docker_port")]
    pub port: u16,
    /// `__address__` of containers in host network mode ("localhost").
    #[serde(default = "default_host_networking_host")]
    pub host_networking_host: String,
    /// Only the first network of a container with several (true).
    #[serde(default = "default_true")]
    pub match_first_network: bool,
    /// `[[discovery.docker.filter]]` blocks: Docker API list filters.
    #[serde(default)]
    pub filter: Vec<DockerFilter>,
}

/// A `filter` of `discovery.docker`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerFilter {
    /// The filter's name (`name`, `label`, `status`, `network`, ...).
    pub name: String,
    /// Its values.
    pub values: Vec<String>,
}

fn default_docker_refresh() -> Duration {
    Duration::from_secs(60)
}
fn default_docker_port() -> u16 {
    80
}
fn default_host_networking_host() -> String {
    "localhost".to_owned()
}

fn de_docker_host<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let host = String::deserialize(d)?;
    ferroscope_targets::docker::DockerHost::parse(&host)
        .map_err(|e| de::Error::custom(e.to_string()))?;
    Ok(host)
}

/// One `[[discovery.kubernetes]]` block, like Alloy's `discovery.kubernetes` (role `pod`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct KubernetesDiscoveryConfig {
    /// The kind of object: only `"pod"` (a profiler matches processes by container).
    #[serde(deserialize_with = "de_role")]
    pub role: String,
    /// The API server's URL; unset with no `kubeconfig_file`: the in-cluster configuration.
    #[serde(default)]
    pub api_server: Option<String>,
    /// A kubeconfig file (its current context).
    #[serde(default)]
    pub kubeconfig_file: Option<PathBuf>,
    /// A file holding the bearer token for `api_server`.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// TLS to `api_server`.
    #[serde(default)]
    pub tls_config: KubernetesTlsConfig,
    /// Which namespaces to watch (all by default).
    #[serde(default)]
    pub namespaces: KubernetesNamespaces,
    /// `[[discovery.kubernetes.selectors]]`: label and field selectors (`${VAR}` is replaced
    /// by the environment variable when the agent starts, e.g.
    /// `field = "spec.nodeName=${NODE_NAME}"`).
    #[serde(default)]
    pub selectors: Vec<KubernetesSelector>,
}

/// `tls_config` of `discovery.kubernetes`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesTlsConfig {
    /// The CA certificate (PEM) that signed the API server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Skip the server certificate's verification.
    pub insecure_skip_verify: bool,
}

/// `namespaces` of `discovery.kubernetes`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesNamespaces {
    /// The agent's own namespace (from its service account).
    pub own_namespace: bool,
    /// These namespaces.
    pub names: Vec<String>,
}

/// A `selectors` block of `discovery.kubernetes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSelector {
    /// The role selected: `"pod"`.
    #[serde(deserialize_with = "de_role")]
    pub role: String,
    /// A label selector, e.g. `"app=shop"`.
    #[serde(default, deserialize_with = "de_env_option")]
    pub label: Option<String>,
    /// A field selector, e.g. `"spec.nodeName=${NODE_NAME}"`.
    #[serde(default, deserialize_with = "de_env_option")]
    pub field: Option<String>,
}

impl KubernetesDiscoveryConfig {
    fn validate(&self) -> Result<(), String> {
        if self.api_server.is_some() && self.kubeconfig_file.is_some() {
            return Err("set at most one of api_server and kubeconfig_file".to_owned());
        }
        if self.api_server.is_none()
            && (self.bearer_token_file.is_some()
                || self.tls_config != KubernetesTlsConfig::default())
        {
            return Err(
                "bearer_token_file and tls_config go with api_server (in-cluster and kubeconfig connections bring their own)"
                    .to_owned(),
            );
        }
        if let Some(url) = &self.api_server
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(format!(
                "api_server {url:?} must start with https:// (or http:// for a local proxy), e.g. \"https://10.0.0.1:6443\""
            ));
        }
        if self.selectors.len() > 1 {
            return Err(
                "give at most one selectors block for role \"pod\" (combine conditions with commas, e.g. label = \"app=a,tier=web\")"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for KubernetesDiscoveryConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let c = KubernetesDiscoveryConfig::deserialize(d)?;
        c.validate().map_err(de::Error::custom)?;
        Ok(c)
    }
}

fn de_role<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let role = String::deserialize(d)?;
    match role.as_str() {
        "pod" => Ok(role),
        "node" | "service" | "endpoints" | "endpointslice" | "ingress" => {
            Err(de::Error::custom(format!(
                "role \"{role}\" is not supported: a profiler matches processes by container, so use role = \"pod\""
            )))
        }
        _ => Err(de::Error::custom(format!(
            "unknown role \"{role}\": use role = \"pod\""
        ))),
    }
}

/// One `[[discovery.cri]]` block: the Pod containers of this node from the container
/// runtime's state, with the labels `discovery.kubernetes` gives them, without API access.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriDiscoveryConfig {
    /// How often the state directories are read ("5s").
    #[serde(deserialize_with = "de_positive_duration")]
    pub refresh_interval: Duration,
    /// containerd's state directories (["/run/containerd"]).
    pub containerd_state_dirs: Vec<PathBuf>,
    /// CRI-O's containers/storage run roots (["/run/containers/storage"]).
    pub crio_storage_dirs: Vec<PathBuf>,
    /// This node's name, given as `__meta_kubernetes_pod_node_name` (`${VAR}` is replaced by
    /// the environment variable when the agent starts, e.g. `"${NODE_NAME}"` from the
    /// downward API).
    #[serde(deserialize_with = "de_env_option")]
    pub node_name: Option<String>,
}

impl Default for CriDiscoveryConfig {
    fn default() -> Self {
        CriDiscoveryConfig {
            refresh_interval: Duration::from_secs(5),
            containerd_state_dirs: vec![PathBuf::from("/run/containerd")],
            crio_storage_dirs: vec![PathBuf::from("/run/containers/storage")],
            node_name: None,
        }
    }
}

/// Replaces every `${NAME}` in `s` by the environment variable `NAME`; an unset variable or
/// an unclosed `${` is an error saying which.
pub fn expand_env(s: &str) -> Result<String, String> {
    env_references(s)?;
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after.find('}').unwrap_or(after.len());
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => out.push_str(&v),
            _ => {
                return Err(format!(
                    "{s:?} uses the environment variable {name}, which is not set: set it (in a DaemonSet, e.g. from the downward API: valueFrom.fieldRef.fieldPath = spec.nodeName)"
                ));
            }
        }
        rest = after.get(end + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

/// The names of the `${NAME}` variables in `s`; an error for a malformed reference.
pub fn env_references(s: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("{s:?} has an unclosed \"${{\": write ${{NAME}}"));
        };
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "{s:?}: ${{{name}}} is not an environment variable name (letters, digits and '_')"
            ));
        }
        names.push(name);
        rest = &after[end + 1..];
    }
    Ok(names)
}

/// A string that may hold `${NAME}` references, checked when the file is read and
/// replaced (by [`expand_env`]) when the agent starts.
fn de_env_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    if let Some(v) = &value {
        env_references(v).map_err(de::Error::custom)?;
    }
    Ok(value)
}

/// One `[[discovery.process]]` block, like Alloy's `discovery.process`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessDiscoveryConfig {
    /// How often `/proc` is scanned ("60s").
    #[serde(deserialize_with = "de_positive_duration")]
    pub refresh_interval: Duration,
}

impl Default for ProcessDiscoveryConfig {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(60),
        }
    }
}

/// The `[write]` table.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriteConfig {
    /// `[[write.endpoint]]` blocks: each is sent every profile independently.
    pub endpoint: Vec<Endpoint>,
}

/// Which server API an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Connect `push.v1.PusherService/Push` (what `pyroscope.write` sends).
    #[default]
    Push,
    /// The legacy `POST /ingest?name=...&format=pprof`.
    Ingest,
}

/// A secret string (password, token): its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// `basic_auth` of an endpoint: a username and a password or a password file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: Option<Secret>,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
}

/// One `[[write.endpoint]]` block (Alloy's `pyroscope.write` `endpoint`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Endpoint {
    /// Base URL of the server, `http://` or `https://`.
    pub url: String,
    /// A name for logs and metrics (default: the URL).
    #[serde(default)]
    pub name: Option<String>,
    /// Which API to use ("push"); a ferroscope extra.
    #[serde(default)]
    pub api: Api,
    /// HTTP basic authentication.
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// A bearer token.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// A file holding a bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Extra HTTP headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The tenant, sent as `X-Scope-OrgID`.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Timeout of each request ("10s").
    #[serde(
        default = "default_remote_timeout",
        deserialize_with = "de_positive_duration"
    )]
    pub remote_timeout: Duration,
    /// First retry backoff ("500ms").
    #[serde(
        default = "default_min_backoff",
        deserialize_with = "de_positive_duration"
    )]
    pub min_backoff_period: Duration,
    /// Largest retry backoff ("5m").
    #[serde(
        default = "default_max_backoff",
        deserialize_with = "de_positive_duration"
    )]
    pub max_backoff_period: Duration,
    /// Retries before a profile is dropped, 0 = forever (10).
    #[serde(default = "default_max_retries")]
    pub max_backoff_retries: u32,
    /// Retry on HTTP 429 Too Many Requests (true).
    #[serde(default = "default_true")]
    pub retry_on_http_429: bool,
}

fn default_remote_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_min_backoff() -> Duration {
    Duration::from_millis(500)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
fn default_max_retries() -> u32 {
    10
}
fn default_true() -> bool {
    true
}

impl Endpoint {
    /// An endpoint for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: None,
            api: Api::Push,
            basic_auth: None,
            bearer_token: None,
            bearer_token_file: None,
            headers: BTreeMap::new(),
            tenant_id: None,
            remote_timeout: default_remote_timeout(),
            min_backoff_period: default_min_backoff(),
            max_backoff_period: default_max_backoff(),
            max_backoff_retries: default_max_retries(),
            retry_on_http_429: true,
        }
    }

    /// Checks what one field alone cannot.
    fn validate(&self) -> Result<(), String> {
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"))
            .ok_or_else(|| {
                format!(
                    "url {:?} must start with http:// or https://, e.g. \"http://pyroscope:4040\"",
                    self.url
                )
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!(
                "url {:?} has no host, e.g. \"http://pyroscope:4040\"",
                self.url
            ));
        }
        let auths = [
            self.basic_auth.is_some(),
            self.bearer_token.is_some(),
            self.bearer_token_file.is_some(),
        ];
        if auths.iter().filter(|&&a| a).count() > 1 {
            return Err(
                "set at most one of basic_auth, bearer_token and bearer_token_file".to_owned(),
            );
        }
        if let Some(auth) = &self.basic_auth {
            match (&auth.password, &auth.password_file) {
                (Some(_), Some(_)) => {
                    return Err(
                        "basic_auth: set either password or password_file, not both".to_owned()
                    );
                }
                (None, None) => return Err("basic_auth: set password or password_file".to_owned()),
                _ => {}
            }
        }
        if self.min_backoff_period > self.max_backoff_period {
            return Err(format!(
                "min_backoff_period ({}) is longer than max_backoff_period ({}): make it shorter",
                format_duration(self.min_backoff_period),
                format_duration(self.max_backoff_period)
            ));
        }
        for name in self.headers.keys() {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return Err(format!(
                    "header name {name:?} is not a valid HTTP header name"
                ));
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let endpoint = Endpoint::deserialize(d)?;
        endpoint.validate().map_err(de::Error::custom)?;
        Ok(endpoint)
    }
}

/// The `[server]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the HTTP server (metrics, health) ("127.0.0.1:4100").
    #[serde(deserialize_with = "de_socket_addr")]
    pub listen_address: SocketAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_address: SocketAddr::from(([127, 0, 0, 1], 4100)),
        }
    }
}

/// The `[output]` table: the local profile sink.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Directory profiles are written to ("/var/lib/ferroscope/profiles").
    pub dir: PathBuf,
    /// Oldest files are removed beyond this many bytes in total; 0 = no limit (1 GiB).
    pub max_bytes: u64,
    /// Files older than this are removed; "0s" = no limit ("24h").
    #[serde(deserialize_with = "de_duration")]
    pub max_age: Duration,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/ferroscope/profiles"),
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// The `[limits]` table: how much the agent holds at once. The kernel maps are sized from it
/// when sampling starts, so their memory is taken then, whether used or not.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Processes profiled at once: the PID filter (with `targets_only`), the processes whose
    /// unwind tables are loaded, and each runtime's per-process maps (16384).
    #[serde(deserialize_with = "de_map_size")]
    pub processes: u32,
    /// Address prefixes of all loaded processes' mappings; a mapping takes a handful, at most
    /// about 70 (262144).
    #[serde(deserialize_with = "de_map_size")]
    pub mapping_prefixes: u32,
    /// 64 KiB pages of all loaded unwind tables (131072).
    #[serde(deserialize_with = "de_map_size")]
    pub table_pages: u32,
    /// Stack-delta entries of all loaded unwind tables, 8 bytes each in kernel memory;
    /// tables no loaded process uses are evicted above it (2097152, 16 MiB).
    #[serde(deserialize_with = "de_map_size")]
    pub table_entries: u32,
    /// Share of one CPU that building unwind tables may use over time, after a burst (0.25).
    #[serde(deserialize_with = "de_cpu_share")]
    pub extract_cpu_share: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let kernel = ferroscope_ebpf_programs::UnwinderConfig::default();
        LimitsConfig {
            processes: kernel.max_pids,
            mapping_prefixes: kernel.max_mapping_prefixes,
            table_pages: kernel.max_delta_pages,
            table_entries: kernel.max_delta_entries,
            extract_cpu_share: 0.25,
        }
    }
}

impl LimitsConfig {
    /// The kernel map sizes these limits ask for.
    pub fn unwinder(&self) -> ferroscope_ebpf_programs::UnwinderConfig {
        ferroscope_ebpf_programs::UnwinderConfig {
            max_pids: self.processes,
            max_mapping_prefixes: self.mapping_prefixes,
            max_delta_pages: self.table_pages,
            max_delta_entries: self.table_entries,
        }
    }
}

/// Largest map size `[limits]` accepts (the loader's own bound).
const MAX_MAP_SIZE: u32 = 1 << 28;

fn de_map_size<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64::deserialize(d)?;
    u32::try_from(n)
        .ok()
        .filter(|&n| (1..=MAX_MAP_SIZE).contains(&n))
        .ok_or_else(|| {
            de::Error::custom(format!(
                "{n} is not a usable size: give a count from 1 to {MAX_MAP_SIZE}"
            ))
        })
}

fn de_cpu_share<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let share = f64::deserialize(d)?;
    if share > 0.0 && share <= 8.0 {
        Ok(share)
    } else {
        Err(de::Error::custom(format!(
            "{share} is not a CPU share: give a fraction of one CPU above 0 (0.25 is a quarter of a CPU)"
        )))
    }
}

/// Reads and parses a configuration file; see [`parse`].
pub fn load(path: &Path) -> Result<(Config, Vec<String>), Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses configuration `text` read from `file_name` (used in messages). Returns the
/// configuration and warnings (deprecated arguments, a configuration that profiles nothing)
/// for the caller to log.
pub fn parse(text: &str, file_name: &str) -> Result<(Config, Vec<String>), Error> {
    let config_error = |at: usize, message: String| {
        let (line, column) = line_column(text, at);
        Error::Config {
            file: file_name.to_owned(),
            line,
            column,
            key: key_at(text, at),
            message,
        }
    };
    let config: Config = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_owned();
        // Keys of [ebpf] that are not its own fields reach the runtime switches, whose errors
        // carry no position: find the key in the text.
        let named_key = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .or_else(|| {
                message
                    .split_once("_enabled: ")
                    .map(|(name, _)| &message[..name.len() + 8])
            })
            .and_then(|key| ebpf_key_position(text, key));
        let at = named_key.or_else(|| e.span().map(|s| s.start)).unwrap_or(0);
        config_error(at, message)
    })?;
    let mut warnings = Vec::new();
    let linked = crate::interp::built_in();
    for name in config.ebpf.runtimes.0.keys() {
        let key = format!("{name}_enabled");
        let at = ebpf_key_position(text, &key).unwrap_or(0);
        if linked.contains(&name.as_str()) {
            continue;
        }
        if PYROSCOPE_RUNTIME_KEYS.contains(&name.as_str()) {
            // Turning a runtime off that is not there changes nothing; asking for one that is
            // not there deserves a word.
            if name != "go" && config.ebpf.runtime_enabled(name) {
                let (line, column) = line_column(text, at);
                warnings.push(format!(
                    "{file_name}:{line}:{column}: ebpf.{key}: this ferroscope was built without the {name} runtime, so the setting has no effect (built in: {})",
                    linked.join(", ")
                ));
            }
            continue;
        }
        return Err(config_error(
            at,
            format!(
                "unknown runtime `{name}`: the runtimes built into this ferroscope are {}, and pyroscope.ebpf knows {}",
                if linked.is_empty() {
                    "none".to_owned()
                } else {
                    linked.join(", ")
                },
                PYROSCOPE_RUNTIME_KEYS.join(", ")
            ),
        ));
    }
    for (name, span) in config.ebpf.deprecated_set() {
        let (line, column) = line_column(text, span.start);
        warnings.push(format!(
            "{file_name}:{line}:{column}: ebpf.{name} is deprecated and has no effect (as in pyroscope.ebpf); remove it"
        ));
    }
    if config.ebpf.targets_only && config.targets.is_empty() && !config.discovery.any() {
        warnings.push(format!(
            "{file_name}: no [[targets]] and no discovery ([[discovery.process]], [[discovery.docker]], [[discovery.kubernetes]], [[discovery.cri]]) while ebpf.targets_only = true: nothing will be profiled; add one or set targets_only = false"
        ));
    }
    if config.ebpf.follow_children && !config.ebpf.targets_only {
        warnings.push(format!(
            "{file_name}: ebpf.follow_children = true has no effect while ebpf.targets_only = false (every process is profiled then, children included, as ebpf/unspecified when they match no target); set targets_only = true to profile the children of __process_pid__ targets as their parent's target"
        ));
    }
    // `${NAME}` references are replaced when the agent starts; say now if one is unset.
    let templates = config
        .discovery
        .kubernetes
        .iter()
        .flat_map(|k| &k.selectors)
        .flat_map(|s| [&s.field, &s.label])
        .chain(config.discovery.cri.iter().map(|c| &c.node_name))
        .flatten();
    for template in templates {
        for name in env_references(template).unwrap_or_default() {
            if std::env::var(name).is_ok_and(|v| !v.is_empty()) {
                continue;
            }
            let at = text.find(&format!("${{{name}}}")).unwrap_or(0);
            let (line, column) = line_column(text, at);
            warnings.push(format!(
                "{file_name}:{line}:{column}: {}: the environment variable {name} is not set here; the agent needs it when it runs (in a DaemonSet, set it from the downward API: valueFrom.fieldRef.fieldPath = spec.nodeName)",
                key_at(text, at)
            ));
        }
    }
    // A static target must name what it matches (after relabelling, which may add or drop
    // it); seed 001: one of the special labels must be present.
    for (i, target) in config.targets.iter().enumerate() {
        let Some(labels) = ferroscope_targets::relabel::relabel(&config.relabel, target.clone())
        else {
            continue;
        };
        if ferroscope_targets::target::target_id(&labels).is_none() {
            let at = nth_target_position(text, i).unwrap_or(0);
            return Err(config_error(
                at,
                format!(
                    "target {target} names neither a process nor a container: give it __process_pid__, __container_id__, __meta_docker_container_id or __meta_kubernetes_pod_container_id (\"containerd://<id>\", \"cri-o://<id>\" or \"docker://<id>\")"
                ),
            ));
        }
    }
    Ok((config, warnings))
}

/// The byte offset of the `i`-th (0-based) `[[targets]]` header of `text`, or of the
/// `targets =` key when they are written inline.
fn nth_target_position(text: &str, i: usize) -> Option<usize> {
    let mut offset = 0;
    let mut n = 0;
    let mut inline = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let at = offset + (line.len() - t.len());
        if t.starts_with("[[")
            && t.trim_start_matches('[')
                .trim_start()
                .starts_with("targets")
        {
            if n == i {
                return Some(at);
            }
            n += 1;
        } else if t.starts_with("targets") && t["targets".len()..].trim_start().starts_with('=') {
            inline.get_or_insert(at);
        }
        offset += line.len();
    }
    inline
}

/// The byte offset of `key = ...` in the `[ebpf]` table of `text`.
fn ebpf_key_position(text: &str, key: &str) -> Option<usize> {
    let mut in_ebpf = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') {
            in_ebpf = t.trim_start_matches('[').trim_start().starts_with("ebpf]")
                || t.trim_start_matches('[').trim_start().starts_with("ebpf ]");
        } else if in_ebpf
            && let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(offset + (line.len() - t.len()));
        }
        offset += line.len();
    }
    None
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The dotted key at byte `offset`: the enclosing `[table]` header and the nearest
/// `key =` at or above the offset's line within that table.
fn key_at(text: &str, offset: usize) -> String {
    let (line_no, _) = line_column(text, offset);
    let lines: Vec<&str> = text.lines().take(line_no).collect();
    let mut key = None;
    let mut table = None;
    for line in lines.iter().rev() {
        let t = line.trim_start();
        if t.starts_with('[') {
            let header = t.trim_start_matches('[');
            let end = header.find(']').unwrap_or(header.len());
            table = Some(header[..end].trim().to_owned());
            break;
        }
        if key.is_none()
            && let Some((k, _)) = t.split_once('=')
            && !k.trim().is_empty()
            && !k.trim_start().starts_with('#')
            && k.trim()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.\"' ".contains(&b))
        {
            key = Some(k.trim().to_owned());
        }
    }
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k,
        (None, None) => "(top level)".to_owned(),
    }
}

/// Parses a Go-style duration: `15s`, `500ms`, `1m`, `1h30m`, `1.5h`, `0`. Units: `ns`,
/// `us` (`µs`), `ms`, `s`, `m`, `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let help = || {
        format!(
            "invalid duration {s:?}: write a number and a unit (ns, us, ms, s, m, h), e.g. \"15s\", \"500ms\", \"1h30m\""
        )
    };
    let s_trim = s.trim();
    if s_trim == "0" {
        return Ok(Duration::ZERO);
    }
    if s_trim.is_empty() {
        return Err(help());
    }
    let mut rest = s_trim;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return Err(help());
        }
        let value: f64 = num.parse().map_err(|_| help())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(help()),
        };
        total += value * nanos_per;
        rest = tail;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(format!("duration {s:?} is too long"));
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// Formats a duration the way it is written in the file (`1h30m`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if !nanos.is_multiple_of(1_000_000_000) {
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"15s\", \"500ms\" or \"1h30m\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

fn de_positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = de_duration(d)?;
    if v.is_zero() {
        return Err(de::Error::custom("must be longer than zero, e.g. \"15s\""));
    }
    Ok(v)
}

struct SampleRateVisitor;

impl Visitor<'_> for SampleRateVisitor {
    type Value = u32;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer from 1 to 10000 (samples per second, default 19)")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
        match u32::try_from(v) {
            Ok(rate @ 1..=10_000) => Ok(rate),
            _ => Err(E::custom(format!(
                "sample rate {v} is out of range: use 1 to 10000 samples per second (default 19)"
            ))),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

fn de_sample_rate<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    d.deserialize_any(SampleRateVisitor)
}

struct ProbabilityVisitor;

impl Visitor<'_> for ProbabilityVisitor {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number between 0 and 1")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        if (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            Err(E::custom(format!(
                "{v} is out of range: use a number between 0 and 1, e.g. 0.01 (0 disables off-CPU profiling)"
            )))
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        self.visit_f64(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        self.visit_f64(v as f64)
    }
}

fn de_probability<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(ProbabilityVisitor)
}

fn de_probe_links<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let links = Vec::<String>::deserialize(d)?;
    for link in &links {
        let link_ok = match link.rsplit_once(':') {
            Some((path, sym)) => !path.is_empty() && !sym.is_empty(),
            None => false,
        };
        if !link_ok {
            return Err(de::Error::custom(format!(
                "u_probe_links entry {link:?} is not PATH:SYMBOL, e.g. \"/usr/lib/libc.so.6:malloc\""
            )));
        }
    }
    Ok(links)
}

impl EbpfConfig {
    /// Every probe link: `probe_links`, then the `u_probe_links` entries as `uprobe:` links.
    pub fn all_probe_links(&self) -> Vec<String> {
        self.probe_links
            .iter()
            .cloned()
            .chain(self.u_probe_links.iter().map(|l| format!("uprobe:{l}")))
            .collect()
    }
}

fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        de::Error::custom(format!(
            "{s:?} is not an IP address and port: use e.g. \"127.0.0.1:4100\" or \"0.0.0.0:4100\""
        ))
    })
}

fn de_external_labels<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let labels = BTreeMap::<String, String>::deserialize(d)?;
    for (name, value) in &labels {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(de::Error::custom(format!(
                "label name {name:?} is not accepted by Pyroscope: use letters, digits, '_' and '.'"
            )));
        }
        if value.is_empty() {
            return Err(de::Error::custom(format!(
                "label {name:?} has an empty value: give it a value or remove it"
            )));
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("15s", Duration::from_secs(15)),
            ("1m", Duration::from_secs(60)),
            ("500ms", Duration::from_millis(500)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5h", Duration::from_secs(5400)),
            ("2m3s4ms", Duration::from_millis(123_004)),
            ("10us", Duration::from_micros(10)),
            ("0", Duration::ZERO),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        for bad in ["", "15", "s", "15x", "1h-30m", "-1s", "1..2s", "h1"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for d in ["1h30m", "500ms", "15s", "5m", "0s"] {
            assert_eq!(format_duration(parse_duration(d).unwrap_or_default()), d);
        }
    }

    #[test]
    fn runtime_switches_name_the_plugins_to_turn_off() {
        let (c, _) = parse("[ebpf]\n", "a.toml").unwrap();
        assert!(c.ebpf.disabled_runtimes().is_empty());
        assert!(c.ebpf.runtime_enabled("python"));
        // This test binary links no plug-in: pyroscope.ebpf's runtimes are accepted with a
        // warning that they have no effect here.
        let (c, warnings) = parse(
            "[ebpf]\npython_enabled = false\nhotspot_enabled = false\ngo_enabled = true\nv8_enabled = true\n",
            "a.toml",
        )
        .unwrap();
        assert_eq!(c.ebpf.disabled_runtimes(), ["hotspot", "python"]);
        assert!(!c.ebpf.runtime_enabled("hotspot"));
        // Asking for a runtime this binary does not have is worth a warning (go is native
        // code here); turning one off that is not there changes nothing.
        let built_without: Vec<&String> = warnings
            .iter()
            .filter(|w| w.contains("built without"))
            .collect();
        assert_eq!(built_without.len(), 1, "{warnings:?}");
        assert!(
            built_without[0].starts_with("a.toml:5:1: ebpf.v8_enabled"),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_list_of_ebpf_keys_is_every_field() {
        // Field names from the Debug output, at the top level of the struct.
        let debug = format!("{:?}", EbpfConfig::default());
        let body = &debug[debug.find('{').unwrap() + 1..debug.rfind('}').unwrap()];
        let mut fields = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in body.char_indices() {
            match c {
                '{' | '(' | '[' => depth += 1,
                '}' | ')' | ']' => depth -= 1,
                ':' if depth == 0 => {
                    let name = body[start..i].trim().trim_start_matches(',').trim();
                    fields.push(name.to_owned());
                }
                ',' if depth == 0 => start = i,
                _ => {}
            }
        }
        fields.retain(|f| f != "runtimes");
        assert_eq!(
            fields, EBPF_KEYS,
            "EBPF_KEYS must list EbpfConfig's fields in order"
        );
    }

    #[test]
    fn unknown_runtimes_and_keys_are_refused_where_they_are() {
        let text = "[ebpf]\nsample_rate = 97\nlua_enabled = true\n";
        let e = parse(text, "a.toml").unwrap_err().to_string();
        assert!(
            e.contains("a.toml:3:1") && e.contains("unknown runtime `lua`"),
            "{e}"
        );
        let text = "[ebpf]\nsample_rate = 97\nsampel_rate = 3\n";
        let e = parse(text, "a.toml").unwrap_err().to_string();
        assert!(e.contains("a.toml:3:1") && e.contains("sampel_rate"), "{e}");
        let text = "[ebpf]\npython_enabled = 3\n";
        let e = parse(text, "a.toml").unwrap_err().to_string();
        assert!(e.contains("true or false"), "{e}");
    }

    #[test]
    fn positions() {
        let text = "a = 1\n[x]\nb = \"é\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, text.find('"').unwrap_or(0) + 3), (3, 7));
        assert_eq!(key_at(text, text.find('b').unwrap_or(0)), "x.b");
        assert_eq!(key_at(text, 2), "a");
    }
}
