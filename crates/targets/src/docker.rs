//! Docker discovery, like Alloy's `discovery.docker` (Prometheus's `docker_sd_config`): the
//! running containers of a Docker Engine API (Docker, or podman's Docker-compatible service)
//! as targets, with the same labels:
//!
//! - `__meta_docker_container_id`, `__meta_docker_container_name` (as the API gives it, with
//!   its leading `/`), `__meta_docker_container_network_mode`,
//!   `__meta_docker_container_label_<name>` (names sanitized to `[a-zA-Z0-9_]`);
//! - per network: `__meta_docker_network_id`, `_name`, `_scope`, `_internal`, `_ingress`,
//!   `_label_<name>`, `__meta_docker_network_ip`;
//! - per TCP port: `__meta_docker_port_private`, `__meta_docker_port_public`,
//!   `__meta_docker_port_public_ip`; and `__address__`.
//!
//! One target per container, network and TCP port (or per network when it has no TCP port),
//! as Prometheus makes them; a profiler matches them by container ID, so the duplicates are
//! harmless. One difference: Prometheus makes no target for a container with no network
//! (`--network none`), which a profiler must not miss, so such a container gets one target
//! with the container labels only.
//!
//! [`targets_from_json`] is the whole transformation from the two API responses, with no I/O
//! (it is what the fuzz target runs); [`DockerDiscovery::discover`] asks the daemon.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;
use crate::labels::{Labels, sanitize_label_name};

/// `__meta_docker_container_id`.
pub const LABEL_CONTAINER_ID: &str = "__meta_docker_container_id";
/// `__meta_docker_container_name`.
pub const LABEL_CONTAINER_NAME: &str = "__meta_docker_container_name";
/// `__meta_docker_container_network_mode`.
pub const LABEL_NETWORK_MODE: &str = "__meta_docker_container_network_mode";
/// Prefix of `__meta_docker_container_label_<name>`.
pub const LABEL_CONTAINER_LABEL_PREFIX: &str = "__meta_docker_container_label_";
/// `__meta_docker_network_ip`.
pub const LABEL_NETWORK_IP: &str = "__meta_docker_network_ip";
/// `__meta_docker_port_private`.
pub const LABEL_PORT_PRIVATE: &str = "__meta_docker_port_private";
/// `__meta_docker_port_public`.
pub const LABEL_PORT_PUBLIC: &str = "__meta_docker_port_public";
/// `__meta_docker_port_public_ip`.
pub const LABEL_PORT_PUBLIC_IP: &str = "__meta_docker_port_public_ip";
/// `__address__`.
pub const LABEL_ADDRESS: &str = "__address__";

/// Bytes of one API response read, at most.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Where the Docker daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerHost {
    /// `unix:///var/run/docker.sock`.
    Unix(PathBuf),
    /// `tcp://host:port` or `http://host:port` (plain HTTP).
    Tcp(String),
}

impl DockerHost {
    /// Parses a `host` as Alloy's `discovery.docker` takes it.
    pub fn parse(host: &str) -> Result<DockerHost, Error> {
        let invalid = |problem: &str| Error::DockerHost {
            host: host.to_owned(),
            problem: problem.to_owned(),
        };
        if let Some(path) = host.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(invalid(
                    "a unix socket needs an absolute path, e.g. \"unix:///var/run/docker.sock\"",
                ));
            }
            return Ok(DockerHost::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            let authority = rest.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                return Err(invalid(
                    "give host and port only, e.g. \"tcp://127.0.0.1:2375\"",
                ));
            }
            let authority = if authority
                .rsplit_once(':')
                .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                && !authority.ends_with(']')
            {
                authority.to_owned()
            } else {
                format!("{authority}:2375")
            };
            return Ok(DockerHost::Tcp(authority));
        }
        if host.starts_with("https://") {
            return Err(invalid(
                "TLS to the Docker daemon is not supported; use its unix socket (mount it into the agent's container) or a plain tcp:// endpoint",
            ));
        }
        Err(invalid(
            "use unix:///path/to/docker.sock, tcp://host:port or http://host:port",
        ))
    }
}

impl std::fmt::Display for DockerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DockerHost::Unix(p) => write!(f, "unix://{}", p.display()),
            DockerHost::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// One `filter` of `discovery.docker`: a Docker API list filter (`name`, `label`, `status`,
/// `network`, ...), each value a separate condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The filter's name.
    pub name: String,
    /// Its values.
    pub values: Vec<String>,
}

/// How targets are made from the containers (the options of `discovery.docker` that are not
/// about the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOptions {
    /// The port of `__address__` for a container with no TCP port (80).
    pub port: u16,
    /// `__address__` of containers in host network mode ("localhost").
    pub host_networking_host: String,
    /// Only the first network (by name) of a container with several (true).
    pub match_first_network: bool,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            port: 80,
            host_networking_host: "localhost".to_owned(),
            match_first_network: true,
        }
    }
}

/// A container of `GET /containers/json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Container {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names")]
    names: Option<Vec<String>>,
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "Ports")]
    ports: Option<Vec<Port>>,
    #[serde(rename = "HostConfig")]
    host_config: Option<HostConfig>,
    #[serde(rename = "NetworkSettings")]
    network_settings: Option<NetworkSettings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Port {
    #[serde(rename = "IP")]
    ip: Option<String>,
    #[serde(rename = "PrivatePort")]
    private_port: u16,
    #[serde(rename = "PublicPort")]
    public_port: Option<u16>,
    #[serde(rename = "Type")]
    kind: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct HostConfig {
    #[serde(rename = "NetworkMode")]
    network_mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct NetworkSettings {
    #[serde(rename = "Networks")]
    networks: Option<BTreeMap<String, Option<Endpoint>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Endpoint {
    #[serde(rename = "NetworkID")]
    network_id: Option<String>,
    #[serde(rename = "IPAddress")]
    ip_address: Option<String>,
}

/// A network of `GET /networks`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Network {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Scope")]
    scope: String,
    #[serde(rename = "Internal")]
    internal: bool,
    #[serde(rename = "Ingress")]
    ingress: bool,
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

/// The targets of the containers in `containers_json` (a `GET /containers/json` response)
/// with the networks of `networks_json` (`GET /networks`). The error says what is malformed.
pub fn targets_from_json(
    containers_json: &[u8],
    networks_json: &[u8],
    options: &TargetOptions,
) -> Result<Vec<Labels>, String> {
    let containers: Vec<Container> = serde_json::from_slice(containers_json)
        .map_err(|e| format!("the container list is not what the Docker API returns ({e})"))?;
    let networks: Vec<Network> = serde_json::from_slice(networks_json)
        .map_err(|e| format!("the network list is not what the Docker API returns ({e})"))?;
    Ok(targets(&containers, &networks, options))
}

fn network_labels(networks: &[Network]) -> BTreeMap<&str, Labels> {
    networks
        .iter()
        .map(|n| {
            let mut l = Labels::new();
            l.set("__meta_docker_network_id", n.id.clone());
            l.set("__meta_docker_network_name", n.name.clone());
            l.set("__meta_docker_network_scope", n.scope.clone());
            l.set("__meta_docker_network_internal", n.internal.to_string());
            l.set("__meta_docker_network_ingress", n.ingress.to_string());
            for (k, v) in n.labels.iter().flatten() {
                l.set(
                    format!("__meta_docker_network_label_{}", sanitize_label_name(k)),
                    v.clone(),
                );
            }
            (n.id.as_str(), l)
        })
        .collect()
}

fn targets(containers: &[Container], networks: &[Network], options: &TargetOptions) -> Vec<Labels> {
    let by_network = network_labels(networks);
    let by_id: BTreeMap<&str, &Container> = containers.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut out = Vec::new();
    for c in containers {
        let Some(name) = c.names.as_ref().and_then(|n| n.first()) else {
            continue;
        };
        let network_mode = c
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.clone())
            .unwrap_or_default();
        let mut common = Labels::new();
        common.set(LABEL_CONTAINER_ID, c.id.clone());
        common.set(LABEL_CONTAINER_NAME, name.clone());
        common.set(LABEL_NETWORK_MODE, network_mode.clone());
        for (k, v) in c.labels.iter().flatten() {
            common.set(
                format!("{LABEL_CONTAINER_LABEL_PREFIX}{}", sanitize_label_name(k)),
                v.clone(),
            );
        }
        let mut nets: BTreeMap<String, Endpoint> = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        // `container:<id>` network mode: the networks of that container (followed a bounded
        // number of hops, as a chain of shared namespaces cannot loop in Docker but JSON can).
        let mut mode = network_mode.clone();
        for _ in 0..16 {
            if !nets.is_empty() {
                break;
            }
            let Some(other) = mode.strip_prefix("container:").and_then(|id| by_id.get(id)) else {
                break;
            };
            nets = other
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.clone())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
            mode = other
                .host_config
                .as_ref()
                .and_then(|h| h.network_mode.clone())
                .unwrap_or_default();
        }
        if options.match_first_network && nets.len() > 1 {
            nets = nets.into_iter().take(1).collect();
        }
        if nets.is_empty() {
            out.push(common);
            continue;
        }
        for endpoint in nets.values() {
            let ip = endpoint.ip_address.clone().unwrap_or_default();
            let net = endpoint
                .network_id
                .as_deref()
                .and_then(|id| by_network.get(id));
            let with_network = |mut l: Labels| {
                for (k, v) in &common {
                    l.set(k.clone(), v.clone());
                }
                if let Some(net) = net {
                    for (k, v) in net {
                        l.set(k.clone(), v.clone());
                    }
                }
                l
            };
            let mut added = false;
            for p in c.ports.iter().flatten().filter(|p| p.kind == "tcp") {
                let mut l = Labels::new();
                l.set(LABEL_NETWORK_IP, ip.clone());
                l.set(LABEL_PORT_PRIVATE, p.private_port.to_string());
                if let Some(public) = p.public_port.filter(|&p| p > 0) {
                    l.set(LABEL_PORT_PUBLIC, public.to_string());
                    l.set(LABEL_PORT_PUBLIC_IP, p.ip.clone().unwrap_or_default());
                }
                let mut l = with_network(l);
                l.set(LABEL_ADDRESS, join_host_port(&ip, p.private_port));
                out.push(l);
                added = true;
            }
            if !added {
                let mut l = Labels::new();
                l.set(LABEL_NETWORK_IP, ip.clone());
                let mut l = with_network(l);
                let address = if network_mode == "host" {
                    options.host_networking_host.clone()
                } else {
                    join_host_port(&ip, options.port)
                };
                l.set(LABEL_ADDRESS, address);
                out.push(l);
            }
        }
    }
    out
}

/// `host:port`, with brackets around an IPv6 address (Go's `net.JoinHostPort`).
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The `filters` query parameter: a JSON object of name → values, percent-encoded.
fn filters_query(filters: &[Filter]) -> String {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in filters {
        map.entry(&f.name)
            .or_default()
            .extend(f.values.iter().map(String::as_str));
    }
    let json = serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_owned());
    let mut out = String::with_capacity(json.len() * 3);
    for b in json.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Docker discovery: where the daemon is and how targets are made.
#[derive(Debug, Clone)]
pub struct DockerDiscovery {
    /// The daemon's address.
    pub host: DockerHost,
    /// List filters.
    pub filters: Vec<Filter>,
    /// How targets are made.
    pub options: TargetOptions,
    /// How long one request may take.
    pub timeout: Duration,
}

impl DockerDiscovery {
    /// A discovery of the running containers at `host` (see [`DockerHost::parse`]).
    pub fn new(host: &str) -> Result<Self, Error> {
        Ok(DockerDiscovery {
            host: DockerHost::parse(host)?,
            filters: Vec::new(),
            options: TargetOptions::default(),
            timeout: Duration::from_secs(30),
        })
    }

    /// The running containers' targets now.
    pub async fn discover(&self) -> Result<Vec<Labels>, Error> {
        let mut path = "/containers/json".to_owned();
        if !self.filters.is_empty() {
            path.push_str("?filters=");
            path.push_str(&filters_query(&self.filters));
        }
        let containers = self.get(&path).await?;
        let networks = self.get("/networks").await?;
        targets_from_json(&containers, &networks, &self.options).map_err(|problem| {
            Error::DockerResponse {
                host: self.host.to_string(),
                problem,
            }
        })
    }

    async fn get(&self, path: &str) -> Result<Vec<u8>, Error> {
        match tokio::time::timeout(self.timeout, crate::docker_http::get(&self.host, path)).await {
            Ok(result) => result,
            Err(_) => Err(Error::DockerTimeout {
                host: self.host.to_string(),
                path: path.to_owned(),
                after: self.timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            DockerHost::parse("unix:///var/run/docker.sock").ok(),
            Some(DockerHost::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            DockerHost::parse("tcp://10.0.0.1:2375").ok(),
            Some(DockerHost::Tcp("10.0.0.1:2375".into()))
        );
        assert_eq!(
            DockerHost::parse("http://docker").ok(),
            Some(DockerHost::Tcp("docker:2375".into()))
        );
        for bad in [
            "",
            "unix://run/docker.sock",
            "https://docker:2376",
            "npipe:////./pipe/docker_engine",
            "tcp://",
        ] {
            let e = DockerHost::parse(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("discovery.docker host"), "{bad}: {e}");
        }
    }

    #[test]
    fn filters_are_a_json_object() {
        let q = filters_query(&[
            Filter {
                name: "label".into(),
                values: vec!["app=shop".into()],
            },
            Filter {
                name: "status".into(),
                values: vec!["running".into()],
            },
        ]);
        assert_eq!(
            q,
            "%7B%22label%22%3A%5B%22app%3Dshop%22%5D%2C%22status%22%3A%5B%22running%22%5D%7D"
        );
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(join_host_port("fd00::2", 80), "[fd00::2]:80");
        assert_eq!(join_host_port("10.0.0.2", 80), "10.0.0.2:80");
    }
}
