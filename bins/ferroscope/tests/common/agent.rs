//! Runs the agent (`ferroscope run`) on one process the way each runtime's suite does: its
//! profiles go to a directory, its `/metrics` are read at the end.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ferroscope_pprof::proto::Profile;
use ferroscope_test_harness::Guard;

use super::WORKLOAD_LIMIT;

/// What one agent run wrote: its profiles in the order written, and `/metrics` at the end.
pub struct AgentRun {
    pub profiles: Vec<Profile>,
    /// Off-CPU profiles (`<service>-offcpu`), when the agent wrote any.
    pub off_cpu: Vec<Profile>,
    /// Probe profiles (`<service>-uprobe`).
    pub probes: Vec<Profile>,
    pub metrics: String,
}

/// Runs `ferroscope run` with a config that profiles process `pid` as `service` at 97 Hz,
/// profiles written every 2 s, and `ebpf` as more lines of its `[ebpf]` table (a runtime's
/// `<name>_enabled = ...`), until it has written `profiles` profiles; fails the test if that
/// takes longer than `limit` (start-up loads and verifies every program: seconds on a busy
/// machine). Then reads `/metrics` and stops the agent, which must exit cleanly.
pub fn run_agent(
    pid: u32,
    ebpf: &str,
    service: &str,
    profiles: usize,
    limit: Duration,
) -> AgentRun {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profiles");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        r#"
[ebpf]
collect_interval = "2s"
sample_rate = 97
{ebpf}

[[targets]]
__process_pid__ = "{pid}"
service_name = "{service}"

[output]
dir = "{out}"

[server]
listen_address = "{port}"
"#,
        out = out.display(),
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let mut agent = Guard::spawn(
        Command::new(env!("CARGO_BIN_EXE_ferroscope"))
            .args(["run", "--config"])
            .arg(&path),
        WORKLOAD_LIMIT,
    );
    let service_dir = out.join(service);
    let start = Instant::now();
    while std::fs::read_dir(&service_dir).map_or(0, |d| d.count()) < profiles {
        assert!(
            start.elapsed() < limit,
            "the agent wrote fewer than {profiles} profiles in {limit:?}\n{}",
            agent.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(port).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut m = String::new();
        s.read_to_string(&mut m).unwrap();
        m
    };
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", agent.stderr_tail());

    AgentRun {
        profiles: read_profiles(&service_dir),
        off_cpu: read_profiles(&out.join(format!("{service}-offcpu"))),
        probes: read_profiles(&out.join(format!("{service}-uprobe"))),
        metrics,
    }
}

/// The profiles in `dir` (none when it does not exist), in the order they were written.
fn read_profiles(dir: &std::path::Path) -> Vec<Profile> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    // Named `<unix seconds>-<pid>[.<n>].pb.gz`: sorted so, in the order they were written.
    files.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let secs: u64 = name.split('-').next().unwrap().parse().unwrap();
        (secs, name.len(), name)
    });
    files
        .iter()
        .map(|p| ferroscope_pprof::decode(&std::fs::read(p).unwrap()).expect("a valid pprof"))
        .collect()
}

/// The value of the first `/metrics` line that starts with `name`.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}
