//! End-to-end tests of `ferroscope run` (the continuous agent): the real binary profiles
//! real processes and pushes to the Pyroscope-compatible receiver of this repository
//! (test-support/pyroscope-receiver), which decodes the real message definitions.
//!
//! They need root (eBPF, cgroups). With `FERROSCOPE_REQUIRE=1` running without root
//! fails them.
#![allow(clippy::print_stderr)]

mod common;
use common::{FERROSCOPE_LIMIT, WORKLOAD_LIMIT, can_run_bpf, fixture};
use ferroscope_test_harness::{self as harness, Guard};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferroscope_test_receiver::{Config as ReceiverConfig, Fault, Receiver};

static SERIAL: Mutex<()> = Mutex::new(());

fn compile_workload(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let src = fixture("c/two_chains.c");
    harness::run_ok(
        Command::new("gcc")
            .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&out)
            .arg(src),
        Duration::from_secs(120),
    );
    out
}

/// A process of the test (a workload or the agent), killed when dropped or after
/// [`WORKLOAD_LIMIT`].
fn spawn(cmd: &mut Command) -> Guard {
    Guard::spawn(cmd, WORKLOAD_LIMIT)
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A v1 cgroup named like a Docker container's, removed on drop.
struct FakeContainer {
    dir: PathBuf,
    id: String,
}

impl FakeContainer {
    fn new() -> FakeContainer {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let seed = (std::process::id() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ now;
        let id: String = (0..4u32)
            .map(|i| {
                format!(
                    "{:016x}",
                    seed.rotate_left(i * 13)
                        ^ (u64::from(i) + 1).wrapping_mul(0x1234_5678_9abc_def1)
                )
            })
            .collect();
        assert_eq!(id.len(), 64);
        let hierarchy = [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists())
        .expect("a writable cgroup hierarchy");
        let dir = hierarchy
            .join("ferroscope-test")
            .join(format!("docker-{id}.scope"));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        FakeContainer { dir, id }
    }
    fn adopt(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cgroup.contains(&self.id), "{cgroup}");
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        // Processes must have left (been killed) before the cgroup can be removed.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(self.dir.parent().unwrap());
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

fn start_agent(config: &str, dir: &Path) -> Guard {
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).unwrap();
    harness::run_ok(
        Command::new(env!("CARGO_BIN_EXE_ferroscope"))
            .args(["run", "--check-config", "--config"])
            .arg(&path),
        FERROSCOPE_LIMIT,
    );
    spawn(
        Command::new(env!("CARGO_BIN_EXE_ferroscope"))
            .args(["run", "--config"])
            .arg(&path),
    )
}

/// Sends SIGTERM and checks the agent exits cleanly within 5 s.
fn stop_agent(mut agent: Guard) {
    let status = agent.terminate(Duration::from_secs(5));
    assert!(
        status.success(),
        "agent exited with {status}\n{}",
        agent.stderr_tail()
    );
}

fn wait_for(mut cond: impl FnMut() -> bool, limit: Duration, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pushes_per_process_profiles_for_pid_and_container_targets() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, receiver) = rt
        .block_on(ferroscope_test_receiver::spawn(ReceiverConfig::default()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_workload(dir.path(), "two_chains");
    let by_pid = spawn(&mut Command::new(&exe));
    let container = FakeContainer::new();
    let in_container = spawn(&mut Command::new(&exe));
    container.adopt(in_container.pid());
    let metrics_addr = free_port();
    let config = format!(
        r#"
[ebpf]
collect_interval = "2s"
sample_rate = 97
pid_label = true

[[targets]]
__process_pid__ = "{pid}"
service_name = "pid-svc"
env = "test"

[[targets]]
__container_id__ = "{cid}"
service_name = "container-svc"

[[write.endpoint]]
url = "http://{addr}"
tenant_id = "team-a"

[external_labels]
cluster = "ci"

[server]
listen_address = "{metrics_addr}"
"#,
        pid = by_pid.pid(),
        cid = container.id,
    );
    let agent = start_agent(&config, dir.path());
    fn has(r: &Receiver, svc: &str) -> bool {
        r.accepted()
            .iter()
            .flat_map(|rec| rec.series.iter())
            .any(|s| {
                s.labels
                    .iter()
                    .any(|(k, v)| k == "service_name" && v == svc)
            })
    }
    wait_for(
        || has(&receiver, "pid-svc") && has(&receiver, "container-svc"),
        Duration::from_secs(20),
        "both services at the receiver",
    );
    let metrics = http_get(metrics_addr, "/metrics");
    let targets = http_get(metrics_addr, "/debug/targets");
    stop_agent(agent);

    let records = receiver.accepted();
    for rec in &records {
        assert_eq!(rec.path, "/push.v1.PusherService/Push");
        assert_eq!(
            rec.headers.get("x-scope-orgid").map(String::as_str),
            Some("team-a")
        );
        assert_eq!(
            rec.headers.get("content-type").map(String::as_str),
            Some("application/proto")
        );
    }
    for (svc, pid) in [
        ("pid-svc", by_pid.pid()),
        ("container-svc", in_container.pid()),
    ] {
        let series: Vec<_> = records
            .iter()
            .flat_map(|r| r.series.iter())
            .filter(|s| {
                s.labels
                    .iter()
                    .any(|(k, v)| k == "service_name" && v == svc)
            })
            .collect();
        assert!(!series.is_empty(), "{svc}");
        for s in &series {
            let get = |k: &str| {
                s.labels
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(get("__name__"), Some("process_cpu"), "{:?}", s.labels);
            assert_eq!(get("cluster"), Some("ci"), "external label");
            assert!(
                s.labels
                    .iter()
                    .all(|(k, _)| !k.starts_with("__") || k == "__name__"),
                "{:?}",
                s.labels
            );
            if svc == "pid-svc" {
                assert_eq!(get("env"), Some("test"));
            }
            let mut names: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
            let sorted = {
                let mut n = names.clone();
                n.sort();
                n
            };
            assert_eq!(names, sorted, "labels are sorted");
            names.clear();
            for p in &s.profiles {
                assert_eq!(p.sample_types, vec!["cpu/nanoseconds".to_string()]);
                assert_eq!(p.period_type, "cpu/nanoseconds");
                assert_eq!(p.period, 1_000_000_000 / 97);
                let alpha: i64 = p
                    .stacks
                    .iter()
                    .filter(|(st, _)| st.iter().any(|f| f == "alpha_work"))
                    .map(|x| x.1)
                    .sum();
                let beta: i64 = p
                    .stacks
                    .iter()
                    .filter(|(st, _)| st.iter().any(|f| f == "beta_work"))
                    .map(|x| x.1)
                    .sum();
                assert!(alpha > 0 && beta >= 0, "{svc}: stacks {:?}", p.stacks);
                // Root first: main comes before the hot function.
                assert!(p.stacks.iter().any(|(st, _)| {
                    let m = st.iter().position(|f| f == "main");
                    let a = st.iter().position(|f| f == "alpha_work");
                    matches!((m, a), (Some(m), Some(a)) if m < a)
                }));
            }
        }
        assert!(
            targets.contains(&pid.to_string()),
            "/debug/targets lists PID {pid}:\n{targets}"
        );
    }
    assert!(
        metric(&metrics, "pyroscope_ebpf_active_targets") >= 2.0,
        "{metrics}"
    );
    assert!(metric(&metrics, "pyroscope_ebpf_pprofs_total") >= 2.0);
    assert!(metric(&metrics, "pyroscope_write_sent_profiles_total") >= 2.0);
    drop(in_container);
    drop(container);
}

#[test]
fn faults_are_retried_dropped_and_counted_and_memory_stays_flat() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Runtime::new().unwrap();
    // One profile per round (one target), so the faults apply one per round, in order:
    // 503 then 200 (retried), 400 with invalid_argument (not retried, dropped),
    // 429 then 200 (retried), a hang past remote_timeout then 200 (retried).
    let faults = vec![
        Fault::Status(503, None),
        Fault::Status(400, Some("invalid_argument".into())),
        Fault::Status(429, None),
        Fault::Hang(Duration::from_secs(3)),
    ];
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::new(ReceiverConfig {
        faults,
        ..ReceiverConfig::default()
    })
    .unwrap();
    let server = rt.spawn(ferroscope_test_receiver::serve_receiver(
        listener,
        receiver.clone(),
    ));

    let dir = tempfile::tempdir().unwrap();
    let exe = compile_workload(dir.path(), "two_chains");
    let work = spawn(&mut Command::new(&exe));
    let metrics_addr = free_port();
    let config = format!(
        r#"
[ebpf]
collect_interval = "2s"
sample_rate = 97

[[targets]]
__process_pid__ = "{pid}"
service_name = "faulty"

[[write.endpoint]]
url = "http://{addr}"
remote_timeout = "1s"
min_backoff_period = "50ms"
max_backoff_period = "200ms"
max_backoff_retries = 3

[server]
listen_address = "{metrics_addr}"
"#,
        pid = work.pid()
    );
    let agent = start_agent(&config, dir.path());
    let agent_pid = agent.pid();
    let endpoint = format!("http://{addr}");
    let scrape = || http_get(metrics_addr, "/metrics");
    let counter = |text: &str, name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(&endpoint))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // The four faulty rounds, and one good one after them.
    wait_for(
        || receiver.accepted().len() >= 4,
        Duration::from_secs(30),
        "four accepted profiles",
    );
    let m = scrape();
    assert_eq!(
        counter(&m, "pyroscope_write_retries_total"),
        3.0,
        "503, 429 and the hang are retried once each:\n{m}"
    );
    assert_eq!(
        counter(&m, "pyroscope_write_dropped_profiles_total"),
        1.0,
        "the 400 is dropped:\n{m}"
    );
    let steady_rss = rss_kib(agent_pid);

    // The server goes down for three intervals (every connection closed unanswered: one
    // try and three retries per round): everything is dropped and counted, and the agent
    // keeps running with flat memory.
    let before = scrape();
    let dropped_before = counter(&before, "pyroscope_write_dropped_profiles_total");
    let accepted_before = receiver.accepted().len();
    receiver.push_faults([Fault::Down(12)]);
    wait_for(
        || counter(&scrape(), "pyroscope_write_dropped_profiles_total") - dropped_before >= 3.0,
        Duration::from_secs(20),
        "three rounds dropped while the server is down",
    );
    let m = scrape();
    assert_eq!(
        counter(&m, "pyroscope_write_dropped_profiles_total") - dropped_before,
        3.0,
        "{m}"
    );
    assert_eq!(
        counter(&m, "pyroscope_write_retries_total"),
        3.0 + 9.0,
        "three retries per dropped round:\n{m}"
    );
    let down_rss = rss_kib(agent_pid);
    assert!(
        (down_rss as f64) < steady_rss as f64 * 1.2,
        "RSS grew from {steady_rss} KiB to {down_rss} KiB while the server was down"
    );

    // Back up: profiles arrive again.
    wait_for(
        || receiver.accepted().len() > accepted_before,
        Duration::from_secs(10),
        "profiles after recovery",
    );
    stop_agent(agent);
    server.abort();
    assert!(
        TcpStream::connect(metrics_addr).is_err(),
        "the metrics endpoint closes with the agent"
    );
}
