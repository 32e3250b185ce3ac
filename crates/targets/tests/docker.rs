//! `discovery.docker`: the labels Prometheus's Docker discovery makes, from podman's recorded
//! answers and from answers in the Docker Engine API's shape; then the client against a real
//! podman API service with real containers, its filters, and an unreachable daemon.

use std::path::{Path, PathBuf};

use ferroscope_targets::docker::{self, DockerDiscovery, Filter, TargetOptions};
use ferroscope_targets::{Labels, Target, TargetId};
use ferroscope_test_harness as harness;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/containers")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn targets(containers: &str, networks: &str, options: &TargetOptions) -> Vec<Labels> {
    docker::targets_from_json(&fixture(containers), &fixture(networks), options)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().copied().collect()
}

#[test]
fn podmans_recorded_answers() {
    let options = TargetOptions::default();
    // A container on podman's bridge with a published TCP port. podman names the network
    // "podman" in the container but lists it by its hash ID, so (as with Prometheus) no
    // network labels are added.
    assert_eq!(
        targets(
            "podman-4.3.1-containers-bridge.json",
            "podman-4.3.1-networks-bridge.json",
            &options
        ),
        [labels(&[
            ("__address__", "10.88.0.4:80"),
            (
                "__meta_docker_container_id",
                "30131725631e5ae26c31a99168b69aa8edc65db5e5170e70f424e2d5cc4a2ff4"
            ),
            ("__meta_docker_container_label_app", "shop"),
            ("__meta_docker_container_name", "/web-2"),
            ("__meta_docker_network_ip", "10.88.0.4"),
            ("__meta_docker_port_private", "80"),
            ("__meta_docker_port_public", "18080"),
        ])]
    );
    // --network none: podman answers "Networks": null. Prometheus makes no target; a
    // profiler must not miss the container: one target with the container's labels.
    let none = targets(
        "podman-4.3.1-containers-none.json",
        "podman-4.3.1-networks.json",
        &options,
    );
    assert_eq!(
        none,
        [labels(&[
            (
                "__meta_docker_container_id",
                "eeb52e204d37b9b83b6f06cc8b6c2698ca7ac2773faec39b5f511d23a41473f3"
            ),
            ("__meta_docker_container_name", "/pod-c"),
        ])]
    );
    // The seed's rule: service_name from __meta_docker_container_name, and the target
    // matches the container's processes by ID.
    let t = Target::new(none[0].clone()).unwrap_or_else(|| panic!("a target"));
    assert_eq!(t.service_name(), "/pod-c");
    assert_eq!(
        t.id(),
        &TargetId::Container(
            "eeb52e204d37b9b83b6f06cc8b6c2698ca7ac2773faec39b5f511d23a41473f3".into()
        )
    );
}

#[test]
fn docker_engine_answers_as_prometheus_labels_them() {
    let options = TargetOptions::default();
    let all = targets(
        "docker-engine-containers.json",
        "docker-engine-networks.json",
        &options,
    );
    let of = |name: &str| -> Vec<&Labels> {
        all.iter()
            .filter(|l| l.value("__meta_docker_container_name") == name)
            .collect()
    };
    // Two TCP port entries (IPv4 and IPv6 bindings), the UDP port ignored; compose labels
    // sanitized; the network's own labels added.
    let web = of("/shop-web-1");
    assert_eq!(web.len(), 2, "{web:?}");
    for l in &web {
        assert_eq!(l.get("__address__"), Some("172.18.0.2:80"));
        assert_eq!(l.get("__meta_docker_port_private"), Some("80"));
        assert_eq!(l.get("__meta_docker_port_public"), Some("8080"));
        assert_eq!(
            l.get("__meta_docker_container_network_mode"),
            Some("shop_default")
        );
        assert_eq!(
            l.get("__meta_docker_container_label_com_docker_compose_service"),
            Some("web")
        );
        assert_eq!(l.get("__meta_docker_network_name"), Some("shop_default"));
        assert_eq!(l.get("__meta_docker_network_scope"), Some("local"));
        assert_eq!(l.get("__meta_docker_network_internal"), Some("false"));
        assert_eq!(l.get("__meta_docker_network_ingress"), Some("false"));
        assert_eq!(
            l.get("__meta_docker_network_label_com_docker_compose_project"),
            Some("shop")
        );
    }
    let mut ips: Vec<&str> = web
        .iter()
        .map(|l| l.value("__meta_docker_port_public_ip"))
        .collect();
    ips.sort_unstable();
    assert_eq!(ips, ["0.0.0.0", "::"]);
    // container:<id> network mode: the networks of the container it shares, no ports of its
    // own: the fallback port.
    let sidecar = of("/shop-sidecar-1");
    assert_eq!(sidecar.len(), 1);
    assert_eq!(sidecar[0].get("__address__"), Some("172.18.0.2:80"));
    assert_eq!(
        sidecar[0].get("__meta_docker_network_name"),
        Some("shop_default")
    );
    // Several networks: the first by name (match_first_network); all with it off.
    let multi = of("/multi");
    assert_eq!(multi.len(), 1);
    assert_eq!(multi[0].get("__meta_docker_network_name"), Some("backend"));
    assert_eq!(multi[0].get("__meta_docker_network_internal"), Some("true"));
    assert_eq!(multi[0].get("__address__"), Some("172.21.0.5:80"));
    // Host networking: host_networking_host.
    let host = of("/node-exporter");
    assert_eq!(host[0].get("__address__"), Some("localhost"));
    // No name: no target (as in Prometheus).
    assert_eq!(all.len(), 5, "{all:#?}");

    let all = targets(
        "docker-engine-containers.json",
        "docker-engine-networks.json",
        &TargetOptions {
            port: 9100,
            host_networking_host: "node-1".into(),
            match_first_network: false,
        },
    );
    let multi: Vec<&Labels> = all
        .iter()
        .filter(|l| l.value("__meta_docker_container_name") == "/multi")
        .collect();
    let mut addresses: Vec<&str> = multi.iter().map(|l| l.value("__address__")).collect();
    addresses.sort_unstable();
    assert_eq!(addresses, ["172.20.0.5:9100", "172.21.0.5:9100"]);
    assert!(all.iter().any(|l| l.value("__address__") == "node-1"));
}

#[test]
fn malformed_answers_are_errors_not_panics() {
    let options = TargetOptions::default();
    for (containers, networks, want) in [
        (
            "{",
            "[]",
            "the container list is not what the Docker API returns",
        ),
        (
            r#"{"message":"page not found"}"#,
            "[]",
            "the container list",
        ),
        ("[]", "nope", "the network list"),
        (r#"[{"Id": 5}]"#, "[]", "the container list"),
    ] {
        let e = docker::targets_from_json(containers.as_bytes(), networks.as_bytes(), &options)
            .err()
            .unwrap_or_default();
        assert!(e.contains(want), "{containers} / {networks}: {e}");
    }
    // Unknown fields and nulls are fine.
    let ok = docker::targets_from_json(
        br#"[{"Id":"x","Names":["/a"],"Labels":null,"Ports":null,"NetworkSettings":null,"Future":{"a":1}}]"#,
        b"null",
        &options,
    );
    assert!(ok.is_err(), "a null network list is not a list");
    let ok = docker::targets_from_json(
        br#"[{"Id":"x","Names":["/a"],"Labels":null,"Ports":null,"NetworkSettings":null,"Future":{"a":1}}]"#,
        b"[]",
        &options,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.len(), 1);
}

fn rootfs() -> Option<PathBuf> {
    harness::containers::static_rootfs(
        "two_chains",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/c/two_chains.c"),
    )
}

#[test]
fn the_client_against_a_real_podman_api() {
    let Some(rootfs) = rootfs() else { return };
    let Some(podman) = harness::containers::Podman::start() else {
        return;
    };
    let shop = podman.run(
        "shop-web-1",
        &[("app", "shop"), ("com.example.tier", "web")],
        &[],
        &rootfs,
        &["/two_chains", "60"],
    );
    let other = podman.run(
        "batch-1",
        &[("app", "batch")],
        &[],
        &rootfs,
        &["/two_chains", "60"],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let host = format!("unix://{}", podman.socket().display());
    let discovery = DockerDiscovery::new(&host).unwrap_or_else(|e| panic!("{e}"));
    let found = rt
        .block_on(discovery.discover())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<(&str, &str)> = found
        .iter()
        .map(|l| {
            (
                l.value("__meta_docker_container_name"),
                l.value("__meta_docker_container_id"),
            )
        })
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            ("/batch-1", other.id.as_str()),
            ("/shop-web-1", shop.id.as_str())
        ]
    );
    let web = found
        .iter()
        .find(|l| l.value("__meta_docker_container_name") == "/shop-web-1")
        .unwrap_or_else(|| panic!("shop-web-1"));
    assert_eq!(
        web.get("__meta_docker_container_label_com_example_tier"),
        Some("web")
    );

    // Filters go to the daemon.
    let mut filtered = DockerDiscovery::new(&host).unwrap_or_else(|e| panic!("{e}"));
    filtered.filters = vec![Filter {
        name: "label".into(),
        values: vec!["app=shop".into()],
    }];
    let found = rt
        .block_on(filtered.discover())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].get("__meta_docker_container_id"),
        Some(shop.id.as_str())
    );
    // A filter the daemon rejects: its message, with the status.
    filtered.filters = vec![Filter {
        name: "no-such-filter".into(),
        values: vec!["x".into()],
    }];
    let e = rt
        .block_on(filtered.discover())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("answered GET /containers/json?filters=") && e.contains("HTTP 500"),
        "{e}"
    );

    // The container's process is matched to its target by the ID in its cgroup.
    let target = Target::new(web.clone()).unwrap_or_else(|| panic!("a target"));
    let mut finder =
        ferroscope_targets::TargetFinder::new(ferroscope_targets::FinderOptions::default());
    finder.set_targets([target]);
    assert_eq!(
        finder
            .find(shop.pid)
            .map(|t| t.service_name().to_owned())
            .as_deref(),
        Some("/shop-web-1")
    );
    assert!(
        finder.find(other.pid).is_none(),
        "the other container is kept apart"
    );
}

#[test]
fn an_unreachable_daemon_says_so() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.path().join("docker.sock");
    let discovery = DockerDiscovery::new(&format!("unix://{}", socket.display()))
        .unwrap_or_else(|e| panic!("{e}"));
    let e = rt
        .block_on(discovery.discover())
        .err()
        .unwrap_or_else(|| panic!("no daemon there"));
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "cannot connect to the Docker daemon at unix://{}",
            socket.display()
        )) && text.contains("is its socket mounted"),
        "{text}"
    );
    let cause = std::error::Error::source(&e)
        .map(|c| c.to_string())
        .unwrap_or_default();
    assert!(cause.contains("No such file"), "{cause}");
    // Something that is not a Docker daemon (an HTTP server answering 404).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(2) {
            use std::io::{Read, Write};
            let mut s = stream;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found");
        }
    });
    let discovery =
        DockerDiscovery::new(&format!("tcp://{addr}")).unwrap_or_else(|e| panic!("{e}"));
    let text = rt
        .block_on(discovery.discover())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        text.contains("HTTP 404: not found (is this a Docker Engine API?)"),
        "{text}"
    );
}
