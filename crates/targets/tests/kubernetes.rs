//! `discovery.kubernetes` (role pod): the labels Prometheus gives Pods, and the kube-rs watch
//! against recorded API answers (no API server installs here: `harness::kubeapi` replays the
//! answers of `fixtures/kubernetes/`), through a kubeconfig file and through an API server
//! URL with TLS and a bearer token; a relist after the watch expired; an RBAC error and the
//! recovery; an unreachable server.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ferroscope_targets::kubernetes::{self, Connection, KubernetesDiscovery, Update};
use ferroscope_targets::{Labels, Target};
use ferroscope_test_harness::kubeapi::{self, ApiServer, Reply, Request};

const CHECKOUT_ID: &str = "9c8f13c4b8a8e5c8ddf57e9b3d5c1f43a1b1e9c7f3dd0e4b6e1a2b3c4d5e6f70";
const ENVOY_ID: &str = "a3f1c2d4e5b6a7980102030405060708090a0b0c0d0e0f101112131415161718";
const CART_ID: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn pod(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/kubernetes")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("{{CHECKOUT_ID}}", CHECKOUT_ID)
        .replace("{{ENVOY_ID}}", ENVOY_ID)
        .replace("{{CART_ID}}", CART_ID)
}

fn compact(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
    v.to_string()
}

fn list(resource_version: &str, pods: &[String]) -> String {
    format!(
        r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"{resource_version}"}},"items":[{}]}}"#,
        pods.iter()
            .map(|p| compact(p))
            .collect::<Vec<_>>()
            .join(",")
    )
}

fn event(kind: &str, object: &str) -> String {
    format!(r#"{{"type":"{kind}","object":{}}}"#, compact(object))
}

fn with_resource_version(pod: &str, rv: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(pod).unwrap_or_else(|e| panic!("{e}"));
    v["metadata"]["resourceVersion"] = rv.into();
    v.to_string()
}

fn targets_of(json: &str) -> Vec<Labels> {
    kubernetes::pod_targets_from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn pod_labels_are_prometheus_labels() {
    let targets = targets_of(&pod("pod-checkout.json"));
    // checkout (1 port), envoy (2 ports), the init container migrate (no port).
    assert_eq!(targets.len(), 4);
    let checkout = &targets[0];
    let want: Labels = [
        ("__address__", "10.244.1.17:8080"),
        ("__meta_kubernetes_namespace", "shop"),
        (
            "__meta_kubernetes_pod_annotation_kubectl_kubernetes_io_restartedAt",
            "2026-11-30T08:12:40Z",
        ),
        (
            "__meta_kubernetes_pod_annotationpresent_kubectl_kubernetes_io_restartedAt",
            "true",
        ),
        (
            "__meta_kubernetes_pod_container_id",
            &format!("containerd://{CHECKOUT_ID}"),
        ),
        (
            "__meta_kubernetes_pod_container_image",
            "registry.example.com/shop/checkout:2.14.0",
        ),
        ("__meta_kubernetes_pod_container_init", "false"),
        ("__meta_kubernetes_pod_container_name", "checkout"),
        ("__meta_kubernetes_pod_container_port_name", "http"),
        ("__meta_kubernetes_pod_container_port_number", "8080"),
        ("__meta_kubernetes_pod_container_port_protocol", "TCP"),
        ("__meta_kubernetes_pod_controller_kind", "ReplicaSet"),
        (
            "__meta_kubernetes_pod_controller_name",
            "checkout-7d9f8b6c5",
        ),
        ("__meta_kubernetes_pod_host_ip", "10.0.0.11"),
        ("__meta_kubernetes_pod_ip", "10.244.1.17"),
        (
            "__meta_kubernetes_pod_label_app_kubernetes_io_name",
            "checkout",
        ),
        (
            "__meta_kubernetes_pod_label_app_kubernetes_io_part_of",
            "shop",
        ),
        ("__meta_kubernetes_pod_label_pod_template_hash", "7d9f8b6c5"),
        (
            "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name",
            "true",
        ),
        (
            "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_part_of",
            "true",
        ),
        (
            "__meta_kubernetes_pod_labelpresent_pod_template_hash",
            "true",
        ),
        ("__meta_kubernetes_pod_name", "checkout-7d9f8b6c5-x2x4q"),
        ("__meta_kubernetes_pod_node_name", "node-a"),
        ("__meta_kubernetes_pod_phase", "Running"),
        ("__meta_kubernetes_pod_ready", "true"),
        (
            "__meta_kubernetes_pod_uid",
            "3f0c1a52-8d6e-4b7a-9c21-5e4d3b2a1f00",
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(checkout, &want);
    let ports: Vec<(&str, &str)> = targets
        .iter()
        .map(|l| {
            (
                l.value("__meta_kubernetes_pod_container_name"),
                l.value("__address__"),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("checkout", "10.244.1.17:8080"),
            ("envoy", "10.244.1.17:15001"),
            ("envoy", "10.244.1.17:15000"),
            ("migrate", "10.244.1.17"),
        ]
    );
    assert_eq!(
        targets[3].get("__meta_kubernetes_pod_container_init"),
        Some("true")
    );
    assert_eq!(
        Target::new(checkout.clone())
            .map(|t| t.service_name().to_owned())
            .as_deref(),
        Some("ebpf/shop/checkout")
    );

    // The annotation pyroscope.io/service_name names the service (seed 001); not ready.
    let cart = targets_of(&pod("pod-cart.json"));
    assert_eq!(cart.len(), 1);
    assert_eq!(cart[0].get("__meta_kubernetes_pod_ready"), Some("false"));
    assert_eq!(
        cart[0].get("__meta_kubernetes_pod_container_id"),
        Some(format!("cri-o://{CART_ID}").as_str())
    );
    assert_eq!(
        Target::new(cart[0].clone())
            .map(|t| t.service_name().to_owned())
            .as_deref(),
        Some("shop-cart")
    );
    // A Pod without an IP has no targets yet.
    assert!(targets_of(&pod("pod-pending.json")).is_empty());
    assert_eq!(
        targets_of(&pod("pod-report-succeeded.json"))[0].get("__meta_kubernetes_pod_phase"),
        Some("Succeeded")
    );
    // Not a Pod: an error, not a panic.
    assert!(kubernetes::pod_targets_from_json(b"{\"spec\": 3}").is_err());
    assert!(kubernetes::pod_targets_from_json(b"[]").is_err());
}

/// Runs `discovery` on its own runtime thread, sending what it reports.
fn run(discovery: KubernetesDiscovery) -> mpsc::Receiver<Result<Vec<Labels>, String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let tx = Mutex::new(tx);
        rt.block_on(discovery.run(|u| {
            let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(match u {
                Update::Targets(t) => Ok(t),
                Update::Failed(e) => Err(e.to_string()),
            });
        }));
    });
    rx
}

/// Waits for a report that `accept` returns true for, failing with what came.
fn wait_for(
    rx: &mpsc::Receiver<Result<Vec<Labels>, String>>,
    what: &str,
    mut accept: impl FnMut(&Result<Vec<Labels>, String>) -> bool,
) -> Result<Vec<Labels>, String> {
    let end = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(r) if accept(&r) => return r,
            Ok(r) => seen.push(r),
            Err(_) => break,
        }
    }
    panic!("no report {what}; got {seen:#?}");
}

fn containers(targets: &[Labels]) -> Vec<String> {
    let mut names: Vec<String> = targets
        .iter()
        .map(|l| {
            format!(
                "{}/{}",
                l.value("__meta_kubernetes_pod_name"),
                l.value("__meta_kubernetes_pod_container_name")
            )
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn watch_list_then_events_then_relist_after_expiry() {
    let lists = Arc::new(AtomicUsize::new(0));
    let watches = Arc::new(AtomicUsize::new(0));
    let (l, w) = (lists.clone(), watches.clone());
    let search = with_resource_version(
        &pod("pod-pending.json").replace(
            r#""hostIP": "10.0.0.11","#,
            r#""hostIP": "10.0.0.11", "podIP": "10.244.1.30","#,
        ),
        "482315",
    );
    let cart_ready = with_resource_version(
        &pod("pod-cart.json").replace(
            r#""status": "False", "lastProbeTime": null, "lastTransitionTime": "2026-11-30T09:01:02Z", "reason": "ContainersNotReady""#,
            r#""status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-30T09:01:09Z", "reason": "ContainersReady""#,
        ),
        "482310",
    );
    let (first, second) = (
        list(
            "482300",
            &[
                pod("pod-checkout.json"),
                pod("pod-cart.json"),
                pod("pod-report-succeeded.json"),
                pod("pod-pending.json"),
            ],
        ),
        list("482900", &[pod("pod-checkout.json"), cart_ready.clone()]),
    );
    let expired = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/kubernetes/status-410-expired.json"),
    )
    .unwrap_or_default();
    let report = with_resource_version(&pod("pod-report-succeeded.json"), "482320");
    let server = ApiServer::start(None, move |r: &Request| {
        assert_eq!(r.path(), "/api/v1/pods", "{r:?}");
        if !r.is_watch() {
            let n = l.fetch_add(1, Ordering::SeqCst);
            return Reply::Json {
                status: 200,
                body: if n == 0 {
                    first.clone()
                } else {
                    second.clone()
                },
            };
        }
        match w.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::Watch {
                events: vec![
                    event("MODIFIED", &cart_ready),
                    event("ADDED", &search),
                    event("DELETED", &report),
                    r#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"482330"}}}"#.to_owned(),
                ],
                hold: Duration::from_millis(300),
            },
            1 => Reply::Watch {
                events: vec![event("ERROR", &expired)],
                hold: Duration::ZERO,
            },
            _ => Reply::Watch {
                events: vec![],
                hold: Duration::from_secs(60),
            },
        }
    });
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let rx = run(KubernetesDiscovery {
        connection: Connection::Kubeconfig(kubeconfig),
        namespaces: vec![],
        label_selector: None,
        field_selector: Some("spec.nodeName=node-a".into()),
    });

    let listed = wait_for(&rx, "after the first list", |r| {
        assert!(r.is_ok(), "{r:?}");
        true
    })
    .unwrap_or_default();
    assert_eq!(
        containers(&listed),
        [
            "cart-5f7d9c-abcde/cart",
            "checkout-7d9f8b6c5-x2x4q/checkout",
            "checkout-7d9f8b6c5-x2x4q/envoy",
            "checkout-7d9f8b6c5-x2x4q/migrate",
            "report-28855140-7xk2p/report",
        ],
        "the Pending Pod has no IP, so no targets yet"
    );
    // The watch's events: cart became ready, search got its IP, the Job's Pod was deleted.
    let watched = wait_for(&rx, "after the watch events", |r| {
        assert!(r.is_ok(), "{r:?}");
        r.as_ref().is_ok_and(|t| {
            containers(t).contains(&"search-6c8d7f9b4-q9w8e/search".to_owned())
                && !containers(t).iter().any(|c| c.starts_with("report"))
        })
    })
    .unwrap_or_default();
    assert!(watched.iter().any(
        |l| l.value("__meta_kubernetes_pod_name") == "cart-5f7d9c-abcde"
            && l.value("__meta_kubernetes_pod_ready") == "true"
    ));
    // The second watch says the resource version expired: the client lists again, and the
    // Pods missing from the new list (search) are gone.
    let relisted = wait_for(&rx, "after the relist", |r| {
        assert!(r.is_ok(), "the expired watch is not a failure: {r:?}");
        r.as_ref()
            .is_ok_and(|t| !containers(t).contains(&"search-6c8d7f9b4-q9w8e/search".to_owned()))
    })
    .unwrap_or_default();
    assert_eq!(
        containers(&relisted).len(),
        4,
        "{:?}",
        containers(&relisted)
    );
    assert_eq!(lists.load(Ordering::SeqCst), 2);
    // The expiry is routine: not reported as a failure.
    while let Ok(r) = rx.try_recv() {
        assert!(r.is_ok(), "{r:?}");
    }

    let requests = server.requests();
    let first_list = &requests[0];
    assert!(!first_list.is_watch());
    assert_eq!(
        first_list.query("fieldSelector").as_deref(),
        Some("spec.nodeName=node-a")
    );
    let first_watch = requests
        .iter()
        .find(|r| r.is_watch())
        .unwrap_or_else(|| panic!("a watch"));
    assert_eq!(
        first_watch.query("resourceVersion").as_deref(),
        Some("482300")
    );
    assert_eq!(
        first_watch.query("fieldSelector").as_deref(),
        Some("spec.nodeName=node-a")
    );
    let second_watch = requests
        .iter()
        .filter(|r| r.is_watch())
        .nth(1)
        .unwrap_or_else(|| panic!("a second watch"));
    assert_eq!(
        second_watch.query("resourceVersion").as_deref(),
        Some("482330"),
        "resumed from the bookmark"
    );
}

#[test]
fn rbac_errors_are_reported_and_the_watch_recovers_over_tls_with_a_token() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let Some(cert) = ferroscope_test_harness::need(kubeapi::self_signed(dir.path())) else {
        return;
    };
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.test-token").unwrap_or_else(|e| panic!("{e}"));
    let forbidden = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/kubernetes/status-403-forbidden.json"),
    )
    .unwrap_or_default();
    let allowed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a = allowed.clone();
    let body = list("500", &[pod("pod-checkout.json")]);
    let server = ApiServer::start(Some(&cert), move |r: &Request| {
        if !a.load(Ordering::SeqCst) {
            return Reply::Json {
                status: 403,
                body: forbidden.clone(),
            };
        }
        if r.is_watch() {
            Reply::Watch {
                events: vec![],
                hold: Duration::from_secs(60),
            }
        } else {
            Reply::Json {
                status: 200,
                body: body.clone(),
            }
        }
    });
    let rx = run(KubernetesDiscovery {
        connection: Connection::ApiServer {
            url: server.url(),
            bearer_token_file: Some(token),
            ca_file: Some(cert.ca.clone()),
            insecure_skip_verify: false,
        },
        namespaces: vec!["shop".into()],
        label_selector: Some("app.kubernetes.io/part-of=shop".into()),
        field_selector: None,
    });
    let e = wait_for(&rx, "of the 403", |r| r.is_err())
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("listing Pods failed: the API server answered 403 Forbidden: pods is forbidden: User \"system:serviceaccount:ferroscope:ferroscope\" cannot list resource \"pods\"")
            && e.contains("give the agent's service account get, list and watch on pods"),
        "{e}"
    );
    allowed.store(true, Ordering::SeqCst);
    let t = wait_for(&rx, "after the RBAC fix", |r| r.is_ok()).unwrap_or_default();
    assert_eq!(t.len(), 4);
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.path() == "/api/v1/namespaces/shop/pods"),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer eyJhbGciOiJSUzI1NiJ9.test-token"))
    );
    assert_eq!(
        requests[0].query("labelSelector").as_deref(),
        Some("app.kubernetes.io/part-of=shop")
    );
}

#[test]
fn unreachable_servers_and_missing_configuration_say_what_to_do() {
    // Nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(1);
    let rx = run(KubernetesDiscovery {
        connection: Connection::ApiServer {
            url: format!("http://127.0.0.1:{port}"),
            bearer_token_file: None,
            ca_file: None,
            insecure_skip_verify: false,
        },
        namespaces: vec![],
        label_selector: None,
        field_selector: None,
    });
    let e = wait_for(&rx, "of the refused connection", |r| r.is_err())
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("cannot reach the API server") && e.contains("Connection refused"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let rx = run(KubernetesDiscovery {
        connection: Connection::Kubeconfig(dir.path().join("nope")),
        namespaces: vec![],
        label_selector: None,
        field_selector: None,
    });
    let e = wait_for(&rx, "of the missing kubeconfig", |r| r.is_err())
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("cannot read the kubeconfig file") && e.contains("kubeconfig_file"),
        "{e}"
    );

    // A token file with a trailing newline (kube-rs would send it as is).
    let token = dir.path().join("token");
    std::fs::write(&token, "abc\n").unwrap_or_else(|e| panic!("{e}"));
    let rx = run(KubernetesDiscovery {
        connection: Connection::ApiServer {
            url: format!("http://127.0.0.1:{port}"),
            bearer_token_file: Some(token),
            ca_file: None,
            insecure_skip_verify: false,
        },
        namespaces: vec![],
        label_selector: None,
        field_selector: None,
    });
    let e = wait_for(&rx, "of the token with a newline", |r| r.is_err())
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("must hold the token alone, without a trailing newline"),
        "{e}"
    );

    // A server whose certificate is not signed by the CA given.
    let Some(cert) = ferroscope_test_harness::need(kubeapi::self_signed(dir.path())) else {
        return;
    };
    let other_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let Some(other) = ferroscope_test_harness::need(kubeapi::self_signed(other_dir.path())) else {
        return;
    };
    let server = ApiServer::start(Some(&cert), |_: &Request| Reply::Json {
        status: 200,
        body: list("1", &[]),
    });
    let rx = run(KubernetesDiscovery {
        connection: Connection::ApiServer {
            url: server.url(),
            bearer_token_file: None,
            ca_file: Some(other.ca),
            insecure_skip_verify: false,
        },
        namespaces: vec![],
        label_selector: None,
        field_selector: None,
    });
    let e = wait_for(&rx, "of the unknown CA", |r| r.is_err())
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("certificate") && e.contains("tls_config.ca_file"),
        "{e}"
    );

    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        let rx = run(KubernetesDiscovery {
            connection: Connection::InCluster,
            namespaces: vec![],
            label_selector: None,
            field_selector: None,
        });
        let e = wait_for(&rx, "of the missing in-cluster configuration", |r| {
            r.is_err()
        })
        .err()
        .unwrap_or_default();
        assert!(
            e.contains("cannot load the in-cluster configuration")
                && e.contains("set kubeconfig_file or api_server"),
            "{e}"
        );
    }
}
