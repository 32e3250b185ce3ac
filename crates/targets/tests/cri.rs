//! Pod metadata from the container runtimes' state (`[[discovery.cri]]`): the recorded
//! `config.json` files of containerd and of the containers/storage layout (CRI-O's), laid out
//! as the runtimes lay them out, with malformed and exited containers; then a real
//! containerd container started with kubelet's annotations.

use std::fs;
use std::path::{Path, PathBuf};

use ferroscope_targets::cri::{self, CriDiscovery, NotAPodContainer, PodContainer, Runtime};
use ferroscope_targets::{Labels, Target, TargetId};
use ferroscope_test_harness as harness;

const CONTAINER: &str = "f7f7a6a811c55ca696b9ef5444bda754f6a98938cc6fd52d66acbf50dbde3642";
const SANDBOX: &str = "c1a874db6553d462a65f64106cd6bb442721ea8d252754fd7f0b0b703ccf888b";
const CRIO: &str = "eeb52e204d37b9b83b6f06cc8b6c2698ca7ac2773faec39b5f511d23a41473f3";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/containers")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    fs::read(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The annotations of a recorded configuration, with `edit` applied to its JSON text.
fn edited(name: &str, edit: impl Fn(String) -> String) -> Vec<u8> {
    edit(String::from_utf8(read(name)).unwrap_or_default()).into_bytes()
}

#[test]
fn recorded_containerd_and_crio_configurations() {
    let pod = cri::pod_container(&read("containerd-1.6.20-container-config.json"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        pod,
        PodContainer {
            runtime: Runtime::Containerd,
            namespace: "shop".into(),
            pod_name: "checkout-7d9f8b6c5-x2x4q".into(),
            pod_uid: Some("3f0c1a52-8d6e-4b7a-9c21-5e4d3b2a1f00".into()),
            container_name: "checkout".into(),
            image: Some("docker.io/ferroscope/test:1".into()),
            sandbox_id: Some(SANDBOX.into()),
        }
    );
    assert_eq!(
        cri::pod_container(&read("containerd-1.6.20-sandbox-config.json")),
        Ok(Err(NotAPodContainer::Sandbox))
    );
    let crio = cri::pod_container(&read("podman-4.3.1-crio-annotations-config.json"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(crio.runtime, Runtime::CriO);
    assert_eq!(
        (
            crio.namespace.as_str(),
            crio.pod_name.as_str(),
            crio.container_name.as_str()
        ),
        ("shop", "cart-5f7d9c-abcde", "cart")
    );
    assert_eq!(
        crio.pod_uid.as_deref(),
        Some("0a1b2c3d-4e5f-4a7b-8c9d-0e1f2a3b4c5d")
    );
    assert_eq!(crio.image.as_deref(), Some("docker.io/ferroscope/test:1"));

    // The labels are those discovery.kubernetes gives, and they make a container target
    // whose service name is the seed's ebpf/<namespace>/<container>.
    let labels = pod.labels(CONTAINER);
    assert_eq!(
        labels.get("__meta_kubernetes_pod_container_id"),
        Some(format!("containerd://{CONTAINER}").as_str())
    );
    let target = Target::new(labels).unwrap_or_else(|| panic!("a target"));
    assert_eq!(target.id(), &TargetId::Container(CONTAINER.into()));
    assert_eq!(target.service_name(), "ebpf/shop/checkout");

    // A podman container without CRI annotations (podman sets some io.kubernetes.cri-o.*
    // ones on every container, never the container type) is not a Pod container.
    let plain = edited("podman-4.3.1-crio-annotations-config.json", |t| {
        t.replace("\"io.kubernetes.cri-o.ContainerType\"", "\"x\"")
    });
    assert_eq!(
        cri::pod_container(&plain),
        Ok(Err(NotAPodContainer::NotKubernetes))
    );
}

#[test]
fn older_containerd_gives_the_pod_uid_only_in_the_cgroup_path() {
    let config = edited("containerd-1.6.20-container-config.json", |t| {
        t.replace(
            "\"io.kubernetes.cri.sandbox-uid\":\"3f0c1a52-8d6e-4b7a-9c21-5e4d3b2a1f00\",",
            "",
        )
        .replace(
            &format!("\"cgroupsPath\":\"/k8s.io/{CONTAINER}\""),
            &format!(
                "\"cgroupsPath\":\"kubepods-burstable-pod3f0c1a52_8d6e_4b7a_9c21_5e4d3b2a1f00.slice:cri-containerd:{CONTAINER}\""
            ),
        )
    });
    let pod = cri::pod_container(&config)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        pod.pod_uid.as_deref(),
        Some("3f0c1a52-8d6e-4b7a-9c21-5e4d3b2a1f00")
    );
}

#[test]
fn malformed_annotations_say_which_and_why() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "not valid JSON"),
        (b"[1, 2]".to_vec(), "not a JSON object"),
        (
            edited("containerd-1.6.20-container-config.json", |t| {
                t.replace(
                    "\"io.kubernetes.cri.sandbox-namespace\":\"shop\"",
                    "\"io.kubernetes.cri.sandbox-namespace\":\"Shop_Prod!\"",
                )
            }),
            "annotation io.kubernetes.cri.sandbox-namespace = \"Shop_Prod!\" is not a Kubernetes namespace name",
        ),
        (
            edited("containerd-1.6.20-container-config.json", |t| {
                t.replace("\"io.kubernetes.cri.container-name\":\"checkout\",", "")
            }),
            "annotation io.kubernetes.cri.container-name is missing",
        ),
        (
            edited("containerd-1.6.20-container-config.json", |t| {
                t.replace(
                    "\"io.kubernetes.cri.container-type\":\"container\"",
                    "\"io.kubernetes.cri.container-type\":\"vm\"",
                )
            }),
            "neither \"container\" nor \"sandbox\"",
        ),
        (
            edited("containerd-1.6.20-container-config.json", |t| {
                t.replace(
                    "\"io.kubernetes.cri.sandbox-name\":\"checkout-7d9f8b6c5-x2x4q\"",
                    "\"io.kubernetes.cri.sandbox-name\":7",
                )
            }),
            "annotation io.kubernetes.cri.sandbox-name is not a string",
        ),
        (
            edited("podman-4.3.1-crio-annotations-config.json", |t| {
                t.replace("\"io.kubernetes.pod.namespace\":\"shop\",", "")
                    .replace("\\\"io.kubernetes.pod.namespace\\\":\\\"shop\\\",", "")
                    .replace(
                        "\"io.kubernetes.cri-o.Labels\":\"{",
                        "\"io.kubernetes.cri-o.Labels\":\"{{",
                    )
            }),
            "annotation io.kubernetes.cri-o.Labels is not a JSON object of strings",
        ),
        (
            edited("containerd-1.6.20-container-config.json", |t| {
                t.replace(
                    "\"io.kubernetes.cri.sandbox-uid\":\"3f0c1a52-8d6e-4b7a-9c21-5e4d3b2a1f00\"",
                    "\"io.kubernetes.cri.sandbox-uid\":\"../../etc\"",
                )
            }),
            "is not a Pod UID",
        ),
    ];
    for (config, want) in cases {
        let got = cri::pod_container(&config);
        match got {
            Err(problem) => assert!(problem.contains(want), "{problem}\n  wanted: {want}"),
            other => panic!("accepted ({other:?}), wanted an error with: {want}"),
        }
    }
}

/// A `/proc` with one process per (PID, container ID).
fn fake_proc(dir: &Path, processes: &[(u32, &str)]) -> PathBuf {
    let proc_root = dir.join("proc");
    for (pid, id) in processes {
        write(
            &proc_root.join(pid.to_string()).join("cgroup"),
            format!("8:pids:/k8s.io/{id}\n0::/\n").as_bytes(),
        );
    }
    proc_root
}

#[test]
fn state_directories_as_the_runtimes_lay_them_out() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = dir.path().join("containerd");
    let tasks = state.join("io.containerd.runtime.v2.task");
    let k8s = tasks.join("k8s.io");
    // The Pod container (running: its init.pid's process is in its cgroup) and its sandbox.
    write(
        &k8s.join(CONTAINER).join("config.json"),
        &read("containerd-1.6.20-container-config.json"),
    );
    write(&k8s.join(CONTAINER).join("init.pid"), b"4242");
    write(
        &k8s.join(SANDBOX).join("config.json"),
        &read("containerd-1.6.20-sandbox-config.json"),
    );
    write(&k8s.join(SANDBOX).join("init.pid"), b"4241");
    // An exited container: its PID is gone.
    let exited = "aa".repeat(32);
    write(
        &k8s.join(&exited).join("config.json"),
        &edited("containerd-1.6.20-container-config.json", |t| {
            t.replace("\"checkout\"", "\"old\"")
        }),
    );
    write(&k8s.join(&exited).join("init.pid"), b"999999");
    // A reused PID: the process is in another container's cgroup.
    let reused = "bb".repeat(32);
    write(
        &k8s.join(&reused).join("config.json"),
        &edited("containerd-1.6.20-container-config.json", |t| {
            t.replace("\"checkout\"", "\"stale\"")
        }),
    );
    write(&k8s.join(&reused).join("init.pid"), b"4242");
    // A malformed one, and one not started by kubelet (another containerd namespace).
    let bad = "cc".repeat(32);
    write(
        &k8s.join(&bad).join("config.json"),
        &edited("containerd-1.6.20-container-config.json", |t| {
            t.replace(
                "\"io.kubernetes.cri.sandbox-namespace\":\"shop\"",
                "\"io.kubernetes.cri.sandbox-namespace\":\"-bad-\"",
            )
        }),
    );
    write(&k8s.join(&bad).join("init.pid"), b"4243");
    write(
        &tasks.join("moby").join("dd".repeat(32)).join("config.json"),
        br#"{"ociVersion":"1.0.2","annotations":{}}"#,
    );
    // CRI-O's layout: <run root>/overlay-containers/<id>/userdata/config.json.
    let storage = dir.path().join("storage");
    write(
        &storage
            .join("overlay-containers")
            .join(CRIO)
            .join("userdata/config.json"),
        &read("podman-4.3.1-crio-annotations-config.json"),
    );
    write(&storage.join("overlay-containers/containers.json"), b"[]");
    let mut discovery = CriDiscovery::new(
        vec![state.clone(), dir.path().join("missing")],
        vec![storage],
        Some("node-a".into()),
    );
    discovery.proc_root = fake_proc(
        dir.path(),
        &[(4241, SANDBOX), (4242, CONTAINER), (4243, &bad)],
    );

    let scan = discovery.scan().unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<(String, String)> = scan
        .targets
        .iter()
        .map(|l| {
            (
                l.value("__meta_kubernetes_pod_container_id").to_owned(),
                l.value("__meta_kubernetes_pod_container_name").to_owned(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            (format!("containerd://{CONTAINER}"), "checkout".to_owned()),
            (format!("cri-o://{CRIO}"), "cart".to_owned()),
        ]
    );
    let checkout: &Labels = scan
        .targets
        .iter()
        .find(|l| l.value("__meta_kubernetes_pod_container_name") == "checkout")
        .unwrap_or_else(|| panic!("checkout"));
    assert_eq!(
        checkout.get("__meta_kubernetes_pod_node_name"),
        Some("node-a")
    );
    assert_eq!(
        checkout.get("__meta_cri_containerd_namespace"),
        Some("k8s.io")
    );
    assert_eq!(checkout.get("__meta_cri_runtime"), Some("containerd"));
    assert_eq!(
        checkout.get("__meta_kubernetes_pod_uid"),
        Some("3f0c1a52-8d6e-4b7a-9c21-5e4d3b2a1f00")
    );
    assert_eq!(checkout.get("__meta_cri_sandbox_id"), Some(SANDBOX));
    // The malformed container is reported once, with what is wrong, and left out.
    assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
    let problem = scan.problems[0].to_string();
    assert!(
        problem.contains(&bad) && problem.contains("\"-bad-\" is not a Kubernetes namespace name"),
        "{problem}"
    );

    // The container exits: the next scan drops it (its task directory stays until
    // containerd deletes the task; its init process is gone).
    discovery.proc_root = fake_proc(&dir.path().join("later"), &[]);
    let scan = discovery.scan().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        scan.targets.len(),
        1,
        "only the CRI-O one (no pidfile to tell)"
    );

    // No directory at all: an error that says where to mount them from.
    let mut nowhere =
        CriDiscovery::new(vec![dir.path().join("a")], vec![dir.path().join("b")], None);
    let e = nowhere
        .scan()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("none of the container runtime state directories exists")
            && e.contains("io.containerd.runtime.v2.task")
            && e.contains("mount"),
        "{e}"
    );
}

#[test]
fn a_real_containerd_container_with_kubelets_annotations() {
    let Some(rootfs) = harness::containers::static_rootfs(
        "two_chains",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/c/two_chains.c"),
    ) else {
        return;
    };
    let Some(image) = harness::containers::oci_image(
        &rootfs,
        "docker.io/ferroscope/two-chains:1",
        &["/two_chains"],
    ) else {
        return;
    };
    let Some(containerd) = harness::containers::Containerd::start() else {
        return;
    };
    containerd.import(&image);
    let sandbox = harness::containers::random_id();
    let id = harness::containers::random_id();
    let common = [
        ("io.kubernetes.cri.sandbox-id", sandbox.as_str()),
        ("io.kubernetes.cri.sandbox-namespace", "shop"),
        ("io.kubernetes.cri.sandbox-name", "checkout-7d9f8b6c5-x2x4q"),
        (
            "io.kubernetes.cri.sandbox-uid",
            "3f0c1a52-8d6e-4b7a-9c21-5e4d3b2a1f00",
        ),
    ];
    let mut pause: Vec<(&str, &str)> = common.to_vec();
    pause.push(("io.kubernetes.cri.container-type", "sandbox"));
    containerd.run(
        &sandbox,
        "docker.io/ferroscope/two-chains:1",
        &pause,
        &["/two_chains", "60"],
    );
    let mut app: Vec<(&str, &str)> = common.to_vec();
    app.push(("io.kubernetes.cri.container-type", "container"));
    app.push(("io.kubernetes.cri.container-name", "checkout"));
    app.push((
        "io.kubernetes.cri.image-name",
        "docker.io/ferroscope/two-chains:1",
    ));
    let container = containerd.run(
        &id,
        "docker.io/ferroscope/two-chains:1",
        &app,
        &["/two_chains", "60"],
    );

    let mut discovery = CriDiscovery::new(vec![containerd.state_dir().to_owned()], vec![], None);
    let scan = discovery.scan().unwrap_or_else(|e| panic!("{e}"));
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    assert_eq!(
        scan.targets.len(),
        1,
        "the sandbox is left out: {:?}",
        scan.targets
    );
    let labels = &scan.targets[0];
    assert_eq!(labels.get("__meta_kubernetes_namespace"), Some("shop"));
    assert_eq!(
        labels.get("__meta_kubernetes_pod_name"),
        Some("checkout-7d9f8b6c5-x2x4q")
    );
    assert_eq!(
        labels.get("__meta_kubernetes_pod_container_name"),
        Some("checkout")
    );
    assert_eq!(
        labels.get("__meta_kubernetes_pod_container_image"),
        Some("docker.io/ferroscope/two-chains:1")
    );
    // The process in the container is matched to this target by its cgroup.
    let target = Target::new(labels.clone()).unwrap_or_else(|| panic!("a target"));
    let mut finder =
        ferroscope_targets::TargetFinder::new(ferroscope_targets::FinderOptions::default());
    finder.set_targets([target]);
    let found = finder
        .find(container.pid)
        .unwrap_or_else(|| panic!("PID {} matches", container.pid));
    assert_eq!(found.service_name(), "ebpf/shop/checkout");

    // The container exits: it is no longer a target.
    containerd.remove(&id);
    let scan = discovery.scan().unwrap_or_else(|e| panic!("{e}"));
    assert!(scan.targets.is_empty(), "{:?}", scan.targets);
}
