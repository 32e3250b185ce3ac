//! Container IDs, targets, service names, matching and discovery.

use std::fs;
use std::path::Path;

use ferroscope_targets::cgroup;
use ferroscope_targets::discovery::{self, ProcessDiscovery};
use ferroscope_targets::target::{self, infer_service_name};
use ferroscope_targets::{FinderOptions, Labels, Target, TargetFinder, TargetId, build_targets};

const ID64: &str = "9c8f13c4b8a8e5c8ddf57e9b3d5c1f43a1b1e9c7f3dd0e4b6e1a2b3c4d5e6f70";
const ID64B: &str = "a3f1c2d4e5b6a7980102030405060708090a0b0c0d0e0f101112131415161718";

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().copied().collect()
}

#[track_caller]
fn check_cid(cgroup_text: &str, expected: Option<&str>) {
    assert_eq!(
        cgroup::container_id(cgroup_text).as_deref(),
        expected,
        "{cgroup_text:?}"
    );
}

#[test]
fn container_id_from_real_cgroup_files() {
    let cases: Vec<(String, Option<&str>)> = vec![
        // cgroup v2, host process.
        ("0::/user.slice/user-1000.slice/session-3.scope\n".into(), None),
        // cgroup v2 root line alone: skipped.
        ("0::/\n".into(), None),
        // Docker, cgroup v1 (cgroupfs driver).
        (
            format!("12:pids:/docker/{ID64}\n11:memory:/docker/{ID64}\n1:name=systemd:/docker/{ID64}\n"),
            Some(ID64),
        ),
        // Docker, cgroup v2, systemd driver.
        (format!("0::/system.slice/docker-{ID64}.scope\n"), Some(ID64)),
        // Docker, cgroup v2, cgroupfs driver, with a nested `init` cgroup.
        (format!("0::/docker/{ID64}/init\n"), Some(ID64)),
        // containerd (Kubernetes, systemd driver), besteffort pod.
        (
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1c2b8a3e_5f6d_4e7a_9b8c_0d1e2f3a4b5c.slice/cri-containerd-{ID64}.scope\n"
            ),
            Some(ID64),
        ),
        // containerd, burstable pod, cgroupfs driver, cgroup v1.
        (
            format!(
                "11:cpuset:/kubepods/burstable/pod7a4c2d1e-9b8f-4c3a-8e2d-1f0a9b8c7d6e/{ID64}\n10:memory:/kubepods/burstable/pod7a4c2d1e-9b8f-4c3a-8e2d-1f0a9b8c7d6e/{ID64}\n"
            ),
            Some(ID64),
        ),
        // CRI-O.
        (
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_4e5f_6a7b_8c9d_0e1f2a3b4c5d.slice/crio-{ID64}.scope\n"
            ),
            Some(ID64),
        ),
        // Guaranteed pod, cgroup v1 with the systemd hierarchy.
        (
            format!("1:name=systemd:/kubepods/pod9f8e7d6c-5b4a-3c2d-1e0f-a9b8c7d6e5f4/{ID64}\n"),
            Some(ID64),
        ),
        // ECS (Fargate / awsvpc): <32 hex>-<digits>.
        (
            "0::/ecs/8e4f0e4b3a2d4c1e9f8a7b6c5d4e3f2a/8e4f0e4b3a2d4c1e9f8a7b6c5d4e3f2a-3141592653\n".into(),
            Some("8e4f0e4b3a2d4c1e9f8a7b6c5d4e3f2a-3141592653"),
        ),
        // First matching line wins; the `0::/` line is skipped.
        (format!("0::/\n2:cpu:/docker/{ID64B}\n1:memory:/docker/{ID64}\n"), Some(ID64B)),
        // Too short, upper case, or not the last segment: no container.
        ("0::/docker/abc123\n".into(), None),
        (format!("0::/docker/{}\n", ID64.to_uppercase()), None),
        (format!("0::/docker/{ID64}/sub/more\n"), None),
        // Not a cgroup line at all.
        (format!("garbage /docker/{ID64}\n"), None),
        (String::new(), None),
    ];
    for (text, want) in cases {
        check_cid(&text, want);
    }
}

#[test]
fn cgroup_path_prefers_v2() {
    let text = format!("3:cpu:/docker/{ID64}\n0::/system.slice/x.service\n");
    assert_eq!(
        cgroup::cgroup_path(&text).as_deref(),
        Some("/system.slice/x.service")
    );
    assert_eq!(
        cgroup::cgroup_path("2:cpu:/a\n1:mem:/b\n").as_deref(),
        Some("/a")
    );
    assert_eq!(cgroup::cgroup_path("nonsense"), None);
}

#[test]
fn service_name_inference_order() {
    let annotation = (
        "__meta_kubernetes_pod_annotation_pyroscope_io_service_name",
        "annotated",
    );
    let ns = ("__meta_kubernetes_namespace", "prod");
    let container = ("__meta_kubernetes_pod_container_name", "api");
    let docker = ("__meta_docker_container_name", "/web");
    let swarm_label = (
        "__meta_dockerswarm_container_label_service_name",
        "swarm-label",
    );
    let swarm = ("__meta_dockerswarm_service_name", "swarm-svc");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![annotation, ns, container, docker, swarm_label, swarm],
            "annotated",
        ),
        (
            vec![ns, container, docker, swarm_label, swarm],
            "ebpf/prod/api",
        ),
        (vec![ns, docker], "/web"), // namespace without container name is not enough
        (vec![docker, swarm_label, swarm], "/web"),
        (vec![swarm_label, swarm], "swarm-label"),
        (vec![swarm], "swarm-svc"),
        (vec![("__process_pid__", "1")], "unspecified"),
    ];
    for (pairs, want) in cases {
        assert_eq!(infer_service_name(&labels(&pairs)), want, "{pairs:?}");
    }
    // An explicit service_name wins over inference.
    let t = Target::new(labels(&[
        ("service_name", "mine"),
        annotation,
        ("__process_pid__", "5"),
    ]));
    assert_eq!(
        t.map(|t| t.service_name().to_owned()).as_deref(),
        Some("mine")
    );
}

#[test]
fn target_ids() {
    type Case = (Vec<(&'static str, &'static str)>, Option<TargetId>);
    let cases: Vec<Case> = vec![
        (vec![("__process_pid__", "42")], Some(TargetId::Pid(42))),
        // A PID beats a container ID on the same target.
        (
            vec![("__process_pid__", "42"), ("__container_id__", "abc")],
            Some(TargetId::Pid(42)),
        ),
        // PID 0 or not a u32: not a PID target, fall back to the container ID.
        (
            vec![("__process_pid__", "0"), ("__container_id__", "abc")],
            Some(TargetId::Container("abc".into())),
        ),
        (vec![("__process_pid__", "4294967296")], None),
        (vec![("__process_pid__", "x")], None),
        (
            vec![
                ("__container_id__", "c1"),
                ("__meta_docker_container_id", "c2"),
            ],
            Some(TargetId::Container("c1".into())),
        ),
        (
            vec![("__meta_kubernetes_pod_container_id", "containerd://c3")],
            Some(TargetId::Container("c3".into())),
        ),
        (
            vec![("__meta_kubernetes_pod_container_id", "docker://c4")],
            Some(TargetId::Container("c4".into())),
        ),
        (
            vec![("__meta_kubernetes_pod_container_id", "cri-o://c5")],
            Some(TargetId::Container("c5".into())),
        ),
        // Another runtime: the target is ignored, even with a Docker ID.
        (
            vec![
                ("__meta_kubernetes_pod_container_id", "rkt://c6"),
                ("__meta_docker_container_id", "c7"),
            ],
            None,
        ),
        (
            vec![("__meta_docker_container_id", "c8")],
            Some(TargetId::Container("c8".into())),
        ),
        (
            vec![("__meta_dockerswarm_task_container_id", "c9")],
            Some(TargetId::Container("c9".into())),
        ),
        // Empty values are absent values.
        (
            vec![
                ("__container_id__", ""),
                ("__meta_docker_container_id", "c10"),
            ],
            Some(TargetId::Container("c10".into())),
        ),
        (vec![("service_name", "x")], None),
    ];
    for (pairs, want) in cases {
        assert_eq!(target::target_id(&labels(&pairs)), want, "{pairs:?}");
    }
}

#[test]
fn series_labels() {
    let t = Target::new(labels(&[
        ("__container_id__", ID64),
        ("__meta_docker_container_name", "/web"),
        ("namespace", "prod"),
    ]))
    .unwrap_or_else(|| panic!("container target"));
    assert_eq!(
        t.series_labels(target::PROCESS_CPU),
        labels(&[
            ("__container_id__", ID64),
            ("__name__", "process_cpu"),
            ("namespace", "prod"),
            ("service_name", "/web"),
        ])
    );
    let p = Target::new(labels(&[
        ("__process_pid__", "7"),
        ("__container_id__", ID64),
    ]))
    .unwrap_or_else(|| panic!("pid target"));
    assert_eq!(
        p.series_labels("offcpu"),
        labels(&[
            ("__name__", "offcpu"),
            ("__process_pid__", "7"),
            ("service_name", "unspecified")
        ])
    );
    assert_eq!(
        Target::unmatched().series_labels("process_cpu"),
        labels(&[
            ("__name__", "process_cpu"),
            ("service_name", "ebpf/unspecified")
        ])
    );
}

/// Writes a fake `/proc/PID` directory.
fn fake_process(root: &Path, pid: u32, uid: u32, cgroup_text: &str, start: u64) {
    let dir = root.join(pid.to_string());
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let write =
        |name: &str, text: &str| fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{e}"));
    write(
        "status",
        &format!("Name:\tproc{pid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
    );
    write("cgroup", cgroup_text);
    write(
        "cmdline",
        &format!("/usr/bin/proc{pid}\0--flag\0value with space\0"),
    );
    write(
        "stat",
        &format!("{pid} (proc {pid}) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0\n"),
    );
    std::os::unix::fs::symlink(format!("/usr/bin/proc{pid}"), dir.join("exe"))
        .unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("/srv", dir.join("cwd")).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn finder_matches_pid_first_then_container() {
    let proc = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    fake_process(
        proc.path(),
        100,
        0,
        &format!("0::/system.slice/docker-{ID64}.scope\n"),
        1,
    );
    fake_process(
        proc.path(),
        101,
        0,
        &format!("0::/system.slice/docker-{ID64}.scope\n"),
        1,
    );
    fake_process(proc.path(), 102, 0, "0::/user.slice\n", 1);
    let targets = build_targets([
        labels(&[("__container_id__", ID64), ("service_name", "first")]),
        labels(&[("__process_pid__", "101"), ("service_name", "by-pid")]),
        labels(&[("__container_id__", ID64), ("service_name", "container")]), // later wins
        labels(&[("service_name", "ignored")]),
    ]);
    assert_eq!(targets.len(), 3);
    for targets_only in [true, false] {
        let mut finder = TargetFinder::new(FinderOptions {
            proc_root: proc.path().to_owned(),
            targets_only,
            container_id_cache_size: 2,
        });
        finder.set_targets(targets.clone());
        assert_eq!(finder.len(), 2);
        let name = |f: &mut TargetFinder, pid| f.find(pid).map(|t| t.service_name().to_owned());
        assert_eq!(name(&mut finder, 100).as_deref(), Some("container"));
        assert_eq!(name(&mut finder, 101).as_deref(), Some("by-pid"));
        let unmatched = if targets_only {
            None
        } else {
            Some("ebpf/unspecified")
        };
        assert_eq!(
            name(&mut finder, 102).as_deref(),
            unmatched,
            "targets_only = {targets_only}"
        );
        assert_eq!(
            name(&mut finder, 999).as_deref(),
            unmatched,
            "a process that does not exist"
        );
    }
}

#[test]
fn container_id_cache_survives_pid_reuse() {
    let proc = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    fake_process(proc.path(), 200, 0, &format!("0::/docker/{ID64}\n"), 10);
    let mut finder = TargetFinder::new(FinderOptions {
        proc_root: proc.path().to_owned(),
        ..Default::default()
    });
    assert_eq!(finder.container_id(200).as_deref(), Some(ID64));
    // Same process, cgroup file changed behind our back: the cache answers.
    fs::write(
        proc.path().join("200/cgroup"),
        format!("0::/docker/{ID64B}\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(finder.container_id(200).as_deref(), Some(ID64));
    // PID reused by a new process (new start time): looked up again.
    fs::write(
        proc.path().join("200/stat"),
        "200 (new) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 11 0 0\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(finder.container_id(200).as_deref(), Some(ID64B));
    finder.forget(200);
    fs::remove_dir_all(proc.path().join("200")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(finder.container_id(200), None);
}

#[test]
fn discovery_over_a_fixture_tree() {
    let proc = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    fake_process(
        proc.path(),
        300,
        1000,
        &format!("0::/system.slice/docker-{ID64}.scope\n"),
        5,
    );
    fake_process(proc.path(), 31, 0, "0::/init.scope\n", 5);
    // Odd entries: non-numeric names, a PID directory with nothing in it (process exited
    // mid-read), a file named like a PID, PID 0.
    fs::create_dir(proc.path().join("self")).unwrap_or_else(|e| panic!("{e}"));
    fs::create_dir(proc.path().join("400")).unwrap_or_else(|e| panic!("{e}"));
    fs::create_dir(proc.path().join("0")).unwrap_or_else(|e| panic!("{e}"));
    fs::write(proc.path().join("500"), "").unwrap_or_else(|e| panic!("{e}"));
    // A kernel thread: status but no exe, cwd or cgroup.
    fs::create_dir(proc.path().join("2")).unwrap_or_else(|e| panic!("{e}"));
    fs::write(
        proc.path().join("2/status"),
        "Name:\tkthreadd\nUid:\t0\t0\t0\t0\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let passwd = proc.path().join("passwd");
    fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/sh\nbroken line\nalice:x:1000:1000::/home/alice:/bin/sh\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let found = ProcessDiscovery {
        passwd_path: Some(passwd),
        ..ProcessDiscovery::new(proc.path())
    }
    .discover()
    .unwrap_or_else(|e| panic!("{e}"));
    let pids: Vec<&str> = found.iter().map(|l| l.value("__process_pid__")).collect();
    assert_eq!(pids, ["2", "31", "300"]);
    assert_eq!(
        found[2],
        labels(&[
            ("__container_id__", ID64),
            (
                "__meta_process_cgroup_path",
                &format!("/system.slice/docker-{ID64}.scope")
            ),
            (
                "__meta_process_commandline",
                "/usr/bin/proc300 --flag value with space"
            ),
            ("__meta_process_cwd", "/srv"),
            ("__meta_process_exe", "/usr/bin/proc300"),
            ("__meta_process_uid", "1000"),
            ("__meta_process_username", "alice"),
            ("__process_pid__", "300"),
        ])
    );
    assert_eq!(found[1].get("__container_id__"), None);
    assert_eq!(found[1].get("__meta_process_username"), Some("root"));
    assert_eq!(
        found[0],
        labels(&[
            ("__meta_process_uid", "0"),
            ("__meta_process_username", "root"),
            ("__process_pid__", "2")
        ])
    );

    let missing = ProcessDiscovery::new(proc.path().join("nope"))
        .discover()
        .expect_err("no such directory");
    // The cause is the source, not part of the message, so a printed chain shows it once.
    let cause = std::error::Error::source(&missing).map(|c| c.to_string());
    let msg = missing.to_string();
    assert!(
        msg.contains("cannot list processes") && msg.contains("procfs"),
        "{msg}"
    );
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("No such file"))
            && !msg.contains("No such file"),
        "{msg} / cause {cause:?}"
    );
}

#[test]
fn discovery_of_the_real_proc_finds_this_process() {
    let me = std::process::id();
    let found = ProcessDiscovery::default()
        .discover()
        .unwrap_or_else(|e| panic!("{e}"));
    let mine = found
        .iter()
        .find(|l| l.value("__process_pid__") == me.to_string())
        .unwrap_or_else(|| panic!("PID {me} not discovered among {} processes", found.len()));
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let cwd = std::env::current_dir().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mine.value("__meta_process_exe"), exe.to_string_lossy());
    assert_eq!(mine.value("__meta_process_cwd"), cwd.to_string_lossy());
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    assert_eq!(mine.value("__meta_process_uid"), uid.to_string());
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(mine.value("__meta_process_commandline"), args.join(" "));
    assert!(mine.contains("__meta_process_cgroup_path"), "{mine}");
    // The PID finds itself as a target.
    let mut finder = TargetFinder::new(FinderOptions::default());
    finder.set_targets(build_targets([mine.clone()]));
    assert_eq!(
        finder.find(me).map(|t| t.id().clone()),
        Some(TargetId::Pid(me))
    );
    assert!(discovery::start_time(Path::new("/proc"), me).is_some());
}
