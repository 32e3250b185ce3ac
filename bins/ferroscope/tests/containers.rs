//! Containers and Kubernetes as users run them: the shipped examples, run by the real agent
//! against real containers, pushing to this repository's Pyroscope receiver.
//!
//! - `examples/docker.toml` with podman (crun) and its Docker-compatible API as the daemon:
//!   two containers, each its own series named after it; a container that exits and a new
//!   one under the same name; nothing outside the containers.
//! - `examples/kubernetes-cri.toml` with containerd: a container started with kubelet's CRI
//!   annotations gets the Pod's labels and `service_name = ebpf/<namespace>/<container>` from
//!   the seed's rule; the Pod's sandbox and a container with malformed annotations are not
//!   profiled under Pod labels (one log line, `/healthz` names the discovery).
//! - `examples/kubernetes.toml` (API server, in-cluster configuration) against recorded API
//!   answers replayed over TLS (no API server installs here; see fixtures/kubernetes), the
//!   Pod's container being a real containerd container; an API error later: one log line,
//!   profiling goes on, `/healthz` names the discovery.
//! - An unreachable Docker socket: one log line, the static target is still profiled,
//!   `/healthz` says which discovery fails.
//!
//! They need root (eBPF, containers); with `FERROSCOPE_REQUIRE=1` anything missing fails them.
#![allow(clippy::print_stderr)]

mod common;
use common::{FERROSCOPE_LIMIT, WORKLOAD_LIMIT, can_run_bpf, fixture};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferroscope_test_harness::containers::{self, Containerd, Podman};
use ferroscope_test_harness::kubeapi::{self, ApiServer, Reply, Request};
use ferroscope_test_harness::{self as harness, Guard};
use ferroscope_test_receiver::{Config as ReceiverConfig, Receiver, SeriesRecord};

static SERIAL: Mutex<()> = Mutex::new(());

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn example(name: &str) -> String {
    std::fs::read_to_string(repo(&format!("examples/{name}")))
        .unwrap_or_else(|e| panic!("examples/{name}: {e}"))
}

/// `text` with `from` replaced by `to`, which must be there.
#[track_caller]
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "{from:?} is not in the example any more"
    );
    text.replace(from, to)
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `GET path`: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap_or_else(|e| panic!("{e}"));
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_for(mut cond: impl FnMut() -> bool, limit: Duration, what: &str, agent: &Guard) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {} s waiting for {what}\n--- agent's stderr:\n{}",
            limit.as_secs(),
            agent.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Checks the configuration with `--check-config`, then starts the agent with `cmd`'s
/// environment and wrapper (the binary and its arguments are appended).
fn start_agent(config: &str, dir: &Path, mut wrapper: Command) -> Guard {
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("{e}"));
    harness::run_ok(
        Command::new(env!("CARGO_BIN_EXE_ferroscope"))
            .args(["run", "--check-config", "--config"])
            .arg(&path),
        FERROSCOPE_LIMIT,
    );
    // Warnings only: what a test counts must not scroll out of the tail it reads.
    wrapper
        .env("RUST_LOG", "warn")
        .arg(env!("CARGO_BIN_EXE_ferroscope"))
        .args(["run", "--config"])
        .arg(&path);
    Guard::spawn(&mut wrapper, WORKLOAD_LIMIT)
}

/// No wrapper: `env` runs the binary.
fn plain() -> Command {
    Command::new("env")
}

fn stop_agent(mut agent: Guard) {
    let status = agent.terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "agent exited with {status}\n{}",
        agent.stderr_tail()
    );
}

fn receiver() -> (tokio::runtime::Runtime, SocketAddr, Receiver) {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let (addr, receiver) = rt
        .block_on(ferroscope_test_receiver::spawn(ReceiverConfig::default()))
        .unwrap_or_else(|e| panic!("{e}"));
    (rt, addr, receiver)
}

fn label<'a>(s: &'a SeriesRecord, name: &str) -> Option<&'a str> {
    s.labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Every series received so far, in order.
fn series(r: &Receiver) -> Vec<SeriesRecord> {
    r.accepted()
        .into_iter()
        .flat_map(|rec| rec.series)
        .collect()
}

fn of_service(r: &Receiver, service: &str) -> Vec<SeriesRecord> {
    series(r)
        .into_iter()
        .filter(|s| label(s, "service_name") == Some(service))
        .collect()
}

fn has_frame(s: &SeriesRecord, frame: &str) -> bool {
    s.profiles
        .iter()
        .flat_map(|p| &p.stacks)
        .any(|(stack, _)| stack.iter().any(|f| f == frame))
}

fn rootfs(program: &str) -> Option<PathBuf> {
    containers::static_rootfs(program, &fixture(&format!("c/{program}.c")))
}

/// The `/debug/targets` entry whose labels have `name` = `value`: (labels, PIDs).
fn debug_target(
    addr: SocketAddr,
    name: &str,
    value: &str,
) -> Option<(serde_json::Value, Vec<u64>)> {
    let (_, body) = http_get(addr, "/debug/targets");
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["matched"].as_array()?.iter().find_map(|t| {
        (t["labels"][name].as_str() == Some(value)).then(|| {
            let pids = t["pids"]
                .as_array()
                .map(|p| p.iter().filter_map(|x| x.as_u64()).collect())
                .unwrap_or_default();
            (t["labels"].clone(), pids)
        })
    })
}

/// Lines of the agent's log tail that contain every one of `words`.
fn log_lines(agent: &Guard, words: &[&str]) -> usize {
    agent
        .stderr_tail()
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .count()
}

#[test]
fn docker_example_profiles_podman_containers_by_name() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(two_chains), Some(nofp)) = (rootfs("two_chains"), rootfs("nofp_chain")) else {
        return;
    };
    let Some(podman) = Podman::start() else {
        return;
    };
    let web1 = podman.run(
        "web-1",
        &[("app", "shop")],
        &[],
        &two_chains,
        &["/two_chains"],
    );
    let web2 = podman.run("web-2", &[("app", "shop")], &[], &nofp, &["/nofp_chain"]);
    // The same program outside any container: not profiled (targets_only).
    let host_exe = two_chains.join("two_chains");
    let outside = Guard::spawn(&mut Command::new(&host_exe), WORKLOAD_LIMIT);

    let (_rt, addr, receiver) = receiver();
    let metrics = free_port();
    let mut config = example("docker.toml");
    config = replace(
        &config,
        "host = \"unix:///var/run/docker.sock\"",
        &format!("host = \"unix://{}\"", podman.socket().display()),
    );
    config = replace(
        &config,
        "url = \"http://pyroscope:4040\"",
        &format!("url = \"http://{addr}\""),
    );
    config = replace(
        &config,
        "collect_interval = \"15s\"",
        "collect_interval = \"2s\"",
    );
    config = replace(&config, "sample_rate = 19", "sample_rate = 97");
    config = replace(
        &config,
        "refresh_interval = \"15s\"",
        "refresh_interval = \"1s\"",
    );
    // One rule more, to see which container each series came from.
    config.push_str(&format!(
        "\n[[relabel]]\nsource_labels = [\"__meta_docker_container_id\"]\ntarget_label = \"container_id\"\n\n[server]\nlisten_address = \"{metrics}\"\n"
    ));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let agent = start_agent(&config, dir.path(), plain());

    wait_for(
        || {
            of_service(&receiver, "/web-1")
                .iter()
                .any(|s| has_frame(s, "alpha_work"))
                && of_service(&receiver, "/web-2")
                    .iter()
                    .any(|s| has_frame(s, "hot_leaf"))
        },
        Duration::from_secs(60),
        "profiles of /web-1 and /web-2",
        &agent,
    );
    // Each container is its own series, with its own ID and only its own program's frames.
    for s in series(&receiver) {
        match label(&s, "service_name") {
            Some("/web-1") => {
                assert_eq!(
                    label(&s, "container_id"),
                    Some(web1.id.as_str()),
                    "{:?}",
                    s.labels
                );
                assert!(
                    !has_frame(&s, "hot_leaf"),
                    "web-2's frames in web-1's series"
                );
            }
            Some("/web-2") => {
                assert_eq!(
                    label(&s, "container_id"),
                    Some(web2.id.as_str()),
                    "{:?}",
                    s.labels
                );
                assert!(
                    !has_frame(&s, "alpha_work"),
                    "web-1's frames in web-2's series"
                );
            }
            other => panic!("a series of {other:?}: only the two containers are profiled"),
        }
    }
    let (labels, pids) = debug_target(metrics, "__meta_docker_container_id", &web1.id)
        .unwrap_or_else(|| panic!("/debug/targets has web-1"));
    assert_eq!(pids, [u64::from(web1.pid)], "{labels}");
    assert_eq!(labels["__meta_docker_container_label_app"], "shop");
    let (_, pids) = debug_target(metrics, "__meta_docker_container_id", &web2.id)
        .unwrap_or_else(|| panic!("/debug/targets has web-2"));
    assert_eq!(pids, [u64::from(web2.pid)]);
    let (_, m) = http_get(metrics, "/metrics");
    assert_eq!(
        metric(
            &m,
            "ferroscope_discovery_targets",
            "discovery=\"discovery.docker #1\""
        ),
        2.0,
        "{m}"
    );
    assert_eq!(http_get(metrics, "/healthz").0, 200);

    // web-1 exits; a new container takes its name. Its series carry its own ID, and once
    // it is profiled nothing more comes under the old one.
    podman.remove("web-1");
    let new = podman.run(
        "web-1",
        &[("app", "shop")],
        &[],
        &two_chains,
        &["/two_chains"],
    );
    assert_ne!(new.id, web1.id);
    wait_for(
        || {
            of_service(&receiver, "/web-1").iter().any(|s| {
                label(s, "container_id") == Some(new.id.as_str()) && has_frame(s, "alpha_work")
            })
        },
        Duration::from_secs(60),
        "profiles of the new /web-1",
        &agent,
    );
    let first_new = series(&receiver)
        .iter()
        .position(|s| label(s, "container_id") == Some(new.id.as_str()))
        .unwrap_or_default();
    std::thread::sleep(Duration::from_secs(5));
    let after: Vec<SeriesRecord> = series(&receiver).split_off(first_new + 1);
    assert!(
        after
            .iter()
            .all(|s| label(s, "container_id") != Some(web1.id.as_str())),
        "the exited container's ID still arrives"
    );
    assert!(
        after
            .iter()
            .any(|s| label(s, "container_id") == Some(new.id.as_str()))
    );
    assert!(debug_target(metrics, "__meta_docker_container_id", &web1.id).is_none());
    let (_, pids) = debug_target(metrics, "__meta_docker_container_id", &new.id)
        .unwrap_or_else(|| panic!("/debug/targets has the new web-1"));
    assert_eq!(pids, [u64::from(new.pid)]);
    stop_agent(agent);
    drop(outside);
}

#[test]
fn unreachable_docker_socket_fails_that_discovery_only() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(two_chains) = rootfs("two_chains") else {
        return;
    };
    let work = Guard::spawn(
        &mut Command::new(two_chains.join("two_chains")),
        WORKLOAD_LIMIT,
    );
    let (_rt, addr, receiver) = receiver();
    let metrics = free_port();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.path().join("no-daemon.sock");
    let config = format!(
        r#"
[ebpf]
collect_interval = "2s"
sample_rate = 97

[[discovery.docker]]
host = "unix://{socket}"
refresh_interval = "1s"

[[targets]]
__process_pid__ = "{pid}"
service_name = "still-profiled"

[[write.endpoint]]
url = "http://{addr}"

[server]
listen_address = "{metrics}"
"#,
        socket = socket.display(),
        pid = work.pid(),
    );
    let agent = start_agent(&config, dir.path(), plain());
    wait_for(
        || {
            of_service(&receiver, "still-profiled")
                .iter()
                .any(|s| has_frame(s, "alpha_work"))
        },
        Duration::from_secs(60),
        "the static target's profiles",
        &agent,
    );
    let (status, body) = http_get(metrics, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!(
            "discovery.docker #1 (unix://{})",
            socket.display()
        )) && body.contains("cannot connect to the Docker daemon")
            && body.contains("profiling goes on"),
        "{body}"
    );
    // Several refreshes later: still one log line about it.
    std::thread::sleep(Duration::from_secs(4));
    let (_, m) = http_get(metrics, "/metrics");
    assert!(
        metric(
            &m,
            "ferroscope_discovery_failures_total",
            "discovery=\"discovery.docker #1\""
        ) >= 4.0,
        "{m}"
    );
    assert_eq!(
        log_lines(
            &agent,
            &[
                "discovery.docker #1",
                "is failing",
                "cannot connect to the Docker daemon"
            ]
        ),
        1,
        "{}",
        agent.stderr_tail()
    );
    stop_agent(agent);
}

/// kubelet's CRI annotations of one Pod container.
fn cri_annotations<'a>(
    sandbox: &'a str,
    namespace: &'a str,
    pod: &'a str,
    container: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut a = vec![
        ("io.kubernetes.cri.sandbox-id", sandbox),
        ("io.kubernetes.cri.sandbox-namespace", namespace),
        ("io.kubernetes.cri.sandbox-name", pod),
        (
            "io.kubernetes.cri.sandbox-uid",
            "3f0c1a52-8d6e-4b7a-9c21-5e4d3b2a1f00",
        ),
    ];
    match container {
        Some(name) => {
            a.push(("io.kubernetes.cri.container-type", "container"));
            a.push(("io.kubernetes.cri.container-name", name));
            a.push((
                "io.kubernetes.cri.image-name",
                "docker.io/ferroscope/two-chains:1",
            ));
        }
        None => a.push(("io.kubernetes.cri.container-type", "sandbox")),
    }
    a
}

const IMAGE: &str = "docker.io/ferroscope/two-chains:1";

fn containerd_with_image() -> Option<Containerd> {
    let two_chains = rootfs("two_chains")?;
    let image = containers::oci_image(&two_chains, IMAGE, &["/two_chains"])?;
    let containerd = Containerd::start()?;
    containerd.import(&image);
    Some(containerd)
}

#[test]
fn kubernetes_cri_example_labels_a_containerd_pod_container() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(containerd) = containerd_with_image() else {
        return;
    };
    let pod = "checkout-7d9f8b6c5-x2x4q";
    let sandbox = containers::random_id();
    containerd.run(
        &sandbox,
        IMAGE,
        &cri_annotations(&sandbox, "shop", pod, None),
        &["/two_chains"],
    );
    let app_id = containers::random_id();
    let app = containerd.run(
        &app_id,
        IMAGE,
        &cri_annotations(&sandbox, "shop", pod, Some("checkout")),
        &["/two_chains"],
    );
    let bad_id = containers::random_id();
    containerd.run(
        &bad_id,
        IMAGE,
        &cri_annotations(&sandbox, "Shop_Prod!", pod, Some("worker")),
        &["/two_chains"],
    );

    let (_rt, addr, receiver) = receiver();
    let metrics = free_port();
    let mut config = example("kubernetes-cri.toml");
    config = replace(
        &config,
        "containerd_state_dirs = [\"/run/containerd\"]",
        &format!(
            "containerd_state_dirs = [\"{}\"]",
            containerd.state_dir().display()
        ),
    );
    config = replace(
        &config,
        "url = \"http://pyroscope:4040\"",
        &format!("url = \"http://{addr}\""),
    );
    config = replace(
        &config,
        "listen_address = \"0.0.0.0:4100\"",
        &format!("listen_address = \"{metrics}\""),
    );
    config = replace(
        &config,
        "collect_interval = \"15s\"",
        "collect_interval = \"2s\"",
    );
    config = replace(&config, "sample_rate = 19", "sample_rate = 97");
    config = replace(
        &config,
        "refresh_interval = \"5s\"",
        "refresh_interval = \"1s\"",
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut env = plain();
    env.env("NODE_NAME", "node-a");
    let agent = start_agent(&config, dir.path(), env);

    wait_for(
        || {
            of_service(&receiver, "ebpf/shop/checkout")
                .iter()
                .any(|s| has_frame(s, "alpha_work"))
        },
        Duration::from_secs(60),
        "profiles of ebpf/shop/checkout",
        &agent,
    );
    for s in series(&receiver) {
        // The sandbox (pause) container and the malformed one have no Pod target.
        assert_eq!(
            label(&s, "service_name"),
            Some("ebpf/shop/checkout"),
            "{:?}",
            s.labels
        );
        assert_eq!(label(&s, "namespace"), Some("shop"));
        assert_eq!(label(&s, "pod"), Some(pod));
        assert_eq!(label(&s, "container"), Some("checkout"));
        assert_eq!(label(&s, "node"), Some("node-a"));
    }
    let (labels, pids) = debug_target(
        metrics,
        "__meta_kubernetes_pod_container_id",
        &format!("containerd://{app_id}"),
    )
    .unwrap_or_else(|| panic!("/debug/targets has the Pod container"));
    assert_eq!(pids, [u64::from(app.pid)], "{labels}");
    assert_eq!(
        labels["__meta_kubernetes_pod_uid"],
        "3f0c1a52-8d6e-4b7a-9c21-5e4d3b2a1f00"
    );
    assert_eq!(labels["__meta_kubernetes_pod_container_image"], IMAGE);

    // The malformed container: one log line naming it, /healthz names the discovery.
    let (status, body) = http_get(metrics, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("discovery.cri #1")
            && body.contains(&bad_id)
            && body.contains("\"Shop_Prod!\" is not a Kubernetes namespace name"),
        "{body}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        log_lines(&agent, &[bad_id.as_str()]),
        1,
        "{}",
        agent.stderr_tail()
    );

    // The Pod's container restarts (kubelet makes a new container): the old one's target
    // goes, the new one is profiled under the same Pod labels.
    containerd.remove(&app_id);
    let again_id = containers::random_id();
    let again = containerd.run(
        &again_id,
        IMAGE,
        &cri_annotations(&sandbox, "shop", pod, Some("checkout")),
        &["/two_chains"],
    );
    wait_for(
        || {
            debug_target(
                metrics,
                "__meta_kubernetes_pod_container_id",
                &format!("containerd://{again_id}"),
            )
            .is_some_and(|(_, pids)| pids == [u64::from(again.pid)])
                && debug_target(
                    metrics,
                    "__meta_kubernetes_pod_container_id",
                    &format!("containerd://{app_id}"),
                )
                .is_none()
        },
        Duration::from_secs(30),
        "the restarted container as the Pod's target",
        &agent,
    );
    stop_agent(agent);
}

/// The service account files of an in-cluster Pod.
fn service_account(dir: &Path, cert: &kubeapi::Certificate) -> PathBuf {
    let sa = dir.join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(&cert.ca, sa.join("ca.crt")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        sa.join("token"),
        "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.ferroscope-node-agent",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(sa.join("namespace"), "ferroscope").unwrap_or_else(|e| panic!("{e}"));
    sa
}

/// A command that runs the agent as in a Pod: in its own mount namespace whose /run is a
/// fresh tmpfs holding only the service account under /var/run/secrets/kubernetes.io/ (the
/// host's /run is untouched), with kubelet's KUBERNETES_SERVICE_* variables.
fn in_pod(sa: &Path, api: SocketAddr) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io && cp -r \"$SA\" /run/secrets/kubernetes.io/serviceaccount && exec \"$@\"",
        )
        .arg("in-pod")
        .env("SA", sa)
        .env("KUBERNETES_SERVICE_HOST", api.ip().to_string())
        .env("KUBERNETES_SERVICE_PORT", api.port().to_string())
        .env("NODE_NAME", "node-a");
    cmd
}

fn kube_fixture(name: &str) -> String {
    std::fs::read_to_string(repo(&format!("fixtures/kubernetes/{name}")))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn compact(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string()
}

#[test]
fn kubernetes_example_in_cluster_against_recorded_api_answers() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(containerd) = containerd_with_image() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let Some(cert) = harness::need(kubeapi::self_signed(dir.path())) else {
        return;
    };
    // The Pod's container is a real container (kubelet would have started it; its CRI
    // annotations do not matter here: the labels come from the API server).
    let checkout_id = containers::random_id();
    let checkout = containerd.run(&checkout_id, IMAGE, &[], &["/two_chains"]);
    let pods = [
        kube_fixture("pod-checkout.json")
            .replace("{{CHECKOUT_ID}}", &checkout_id)
            .replace("{{ENVOY_ID}}", &containers::random_id()),
        kube_fixture("pod-report-succeeded.json"),
    ];
    let list = format!(
        r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"482300"}},"items":[{}]}}"#,
        pods.iter()
            .map(|p| compact(p))
            .collect::<Vec<_>>()
            .join(",")
    );
    let broken = Arc::new(AtomicBool::new(false));
    let b = broken.clone();
    let forbidden = kube_fixture("status-403-forbidden.json");
    let expired = compact(&kube_fixture("status-410-expired.json"));
    let server = ApiServer::start(Some(&cert), move |r: &Request| {
        let broken = b.load(Ordering::SeqCst);
        match (r.is_watch(), broken) {
            (false, false) => Reply::Json {
                status: 200,
                body: list.clone(),
            },
            (false, true) => Reply::Json {
                status: 403,
                body: forbidden.clone(),
            },
            (true, false) => Reply::Watch {
                events: vec![],
                hold: Duration::from_millis(500),
            },
            (true, true) => Reply::Watch {
                events: vec![format!(r#"{{"type":"ERROR","object":{expired}}}"#)],
                hold: Duration::ZERO,
            },
        }
    });
    let sa = service_account(dir.path(), &cert);

    let (_rt, addr, receiver) = receiver();
    let metrics = free_port();
    let mut config = example("kubernetes.toml");
    config = replace(
        &config,
        "url = \"http://pyroscope:4040\"",
        &format!("url = \"http://{addr}\""),
    );
    config = replace(
        &config,
        "listen_address = \"0.0.0.0:4100\"",
        &format!("listen_address = \"{metrics}\""),
    );
    config = replace(
        &config,
        "collect_interval = \"15s\"",
        "collect_interval = \"2s\"",
    );
    config = replace(&config, "sample_rate = 19", "sample_rate = 97");
    let agent = start_agent(&config, dir.path(), in_pod(&sa, server.addr()));

    wait_for(
        || {
            of_service(&receiver, "ebpf/shop/checkout")
                .iter()
                .any(|s| has_frame(s, "alpha_work"))
        },
        Duration::from_secs(60),
        "profiles of ebpf/shop/checkout",
        &agent,
    );
    let all = series(&receiver);
    for s in &all {
        // The seed's rules: the finished Job Pod is dropped; namespace, pod, node, container
        // and the Pod's labels become series labels.
        assert_eq!(
            label(s, "service_name"),
            Some("ebpf/shop/checkout"),
            "{:?}",
            s.labels
        );
        assert_eq!(label(s, "namespace"), Some("shop"));
        assert_eq!(label(s, "pod"), Some("checkout-7d9f8b6c5-x2x4q"));
        assert_eq!(label(s, "node"), Some("node-a"));
        assert_eq!(label(s, "container"), Some("checkout"));
        assert_eq!(label(s, "app_kubernetes_io_name"), Some("checkout"));
        assert_eq!(label(s, "pod_template_hash"), Some("7d9f8b6c5"));
    }
    let (_, pids) = debug_target(
        metrics,
        "__meta_kubernetes_pod_container_id",
        &format!("containerd://{checkout_id}"),
    )
    .unwrap_or_else(|| panic!("/debug/targets has the Pod container"));
    assert_eq!(pids, [u64::from(checkout.pid)]);
    let requests = server.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r.path(), "/api/v1/pods", "{r:?}");
        assert_eq!(
            r.query("fieldSelector").as_deref(),
            Some("spec.nodeName=node-a"),
            "{r:?}"
        );
        assert_eq!(
            r.header("authorization"),
            Some("Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.ferroscope-node-agent")
        );
    }
    assert!(
        requests.iter().any(Request::is_watch),
        "the Pods are watched, not polled"
    );
    assert_eq!(http_get(metrics, "/healthz").0, 200);

    // The API server starts refusing (the watch expires, the relist is forbidden): one log
    // line, /healthz names the discovery, and the Pod is still profiled with its last
    // known labels.
    broken.store(true, Ordering::SeqCst);
    wait_for(
        || http_get(metrics, "/healthz").0 == 503,
        Duration::from_secs(60),
        "/healthz to report the failing discovery",
        &agent,
    );
    let (_, body) = http_get(metrics, "/healthz");
    assert!(
        body.contains("discovery.kubernetes #1 (in-cluster)")
            && body.contains("403 Forbidden: pods is forbidden")
            && body.contains("get, list and watch on pods"),
        "{body}"
    );
    let before = series(&receiver).len();
    wait_for(
        || series(&receiver).len() > before + 1,
        Duration::from_secs(30),
        "profiles while the API server refuses",
        &agent,
    );
    assert!(
        series(&receiver)[before..]
            .iter()
            .all(|s| label(s, "service_name") == Some("ebpf/shop/checkout"))
    );
    assert_eq!(
        log_lines(&agent, &["discovery.kubernetes #1", "is failing", "403"]),
        1,
        "{}",
        agent.stderr_tail()
    );
    stop_agent(agent);
}
