//! The agent on a busy node: a PID reused by another program and a process that execs get
//! the new program's labels and frames, thousands of matched processes are all profiled, and
//! a file truncated while the agent loads it leaves the agent running.
//!
//! They need root (eBPF, clone3 with a chosen PID). With `FERROSCOPE_REQUIRE=1` running
//! without root fails them.
#![allow(clippy::print_stderr)]

mod common;
use common::{FERROSCOPE_LIMIT, WORKLOAD_LIMIT, can_run_bpf, gcc};
use ferroscope_test_harness::{self as harness, Guard};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// One sample of a profile the agent wrote: function names (leaf first) and labels.
#[derive(Debug)]
struct Sample {
    names: Vec<String>,
    labels: BTreeMap<String, String>,
    /// How many samples had this stack.
    count: i64,
}

fn decode(bytes: &[u8]) -> Vec<Sample> {
    let p = ferroscope_pprof::decode(bytes).expect("a valid pprof");
    let s = |i: i64| p.string_table[i as usize].clone();
    let functions: HashMap<u64, String> = p.function.iter().map(|f| (f.id, s(f.name))).collect();
    let locations: HashMap<u64, &ferroscope_pprof::proto::Location> =
        p.location.iter().map(|l| (l.id, l)).collect();
    let period = p.period.max(1);
    p.sample
        .iter()
        .map(|sample| Sample {
            count: sample.value.first().copied().unwrap_or(0) / period,
            names: sample
                .location_id
                .iter()
                .flat_map(|id| locations[id].line.iter())
                .map(|line| functions[&line.function_id].clone())
                .collect(),
            labels: sample.label.iter().map(|l| (s(l.key), s(l.str))).collect(),
        })
        .collect()
}

/// The samples of every profile written for service `service` under `out`.
fn service_samples(out: &Path, service: &str) -> Vec<Sample> {
    let Ok(dir) = std::fs::read_dir(out.join(service)) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .flat_map(|b| decode(&b))
        .collect()
}

/// The profile files written for `service`, oldest first.
fn profile_files(out: &Path, service: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join(service))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    // `<unix seconds>-<pid>[.n].pb.gz`: by time, then as written.
    files.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let secs: u64 = name
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (secs, name)
    });
    files
}

fn has(samples: &[Sample], function: &str) -> bool {
    samples
        .iter()
        .any(|s| s.names.iter().any(|n| n == function))
}

/// `ferroscope run` writing profiles under `out`, with process discovery keeping the
/// executables named in `programs` (service_name = the executable's name).
fn start_agent(dir: &Path, out: &Path, programs: &[&str], extra: &str, tail: &str) -> Guard {
    let config = format!(
        r#"
[ebpf]
collect_interval = "2s"
pid_label = true
{rate}
{extra}

[[discovery.process]]
refresh_interval = "1s"

[[relabel]]
action = "keep"
source_labels = ["__meta_process_exe"]
regex = ".*/({programs})"

[[relabel]]
source_labels = ["__meta_process_exe"]
regex = ".*/([^/]+)"
target_label = "service_name"

[output]
dir = "{out}"
{tail}
"#,
        programs = programs.join("|"),
        rate = if extra.contains("sample_rate") {
            ""
        } else {
            "sample_rate = 97"
        },
        out = out.display(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).unwrap();
    harness::run_ok(
        Command::new(env!("CARGO_BIN_EXE_ferroscope"))
            .args(["run", "--check-config", "--config"])
            .arg(&path),
        FERROSCOPE_LIMIT,
    );
    Guard::spawn(
        Command::new(env!("CARGO_BIN_EXE_ferroscope"))
            .args(["run", "--config"])
            .arg(&path),
        WORKLOAD_LIMIT,
    )
}

fn stop_agent(mut agent: Guard) {
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "agent: {status}\n{}", agent.stderr_tail());
}

fn wait_for(agent: &mut Guard, limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out ({limit:?}) waiting for {what}\n{}",
            agent.stderr_tail()
        );
        assert!(
            agent.running(),
            "the agent exited while waiting for {what}\n{}",
            agent.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A process exits and another program gets its PID (clone3 with set_tid): the new
/// program's samples carry its own service label and none of the old program's frames, and
/// the old program's profiles none of the new one's.
#[test]
fn a_reused_pid_gets_the_new_programs_labels() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profiles");
    let alpha_exe = gcc(dir.path(), "c/two_chains.c", "alpha_prog", &["-O0"]);
    let beta_exe = gcc(dir.path(), "c/nofp_chain.c", "beta_prog", &[]);
    let with_pid = gcc(dir.path(), "c/with_pid.c", "with_pid", &[]);
    let mut agent = start_agent(dir.path(), &out, &["alpha_prog", "beta_prog"], "", "");

    let alpha = Guard::spawn(&mut Command::new(&alpha_exe), WORKLOAD_LIMIT);
    let pid = alpha.pid();
    wait_for(
        &mut agent,
        Duration::from_secs(60),
        "alpha_prog's profile",
        || has(&service_samples(&out, "alpha_prog"), "alpha_work"),
    );
    drop(alpha); // killed and reaped: its PID is free
    let mut beta = Guard::spawn(
        Command::new(&with_pid).arg(pid.to_string()).arg(&beta_exe),
        WORKLOAD_LIMIT,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        beta.running(),
        "with_pid could not start beta_prog as PID {pid}\n{}",
        beta.stderr_tail()
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(stat.trim(), "beta_prog", "PID {pid} is beta_prog");
    wait_for(
        &mut agent,
        Duration::from_secs(60),
        "beta_prog's profile",
        || has(&service_samples(&out, "beta_prog"), "hot_leaf"),
    );
    drop(beta);
    stop_agent(agent);

    let alpha = service_samples(&out, "alpha_prog");
    let beta = service_samples(&out, "beta_prog");
    let pid_label = pid.to_string();
    for s in alpha.iter().chain(&beta) {
        assert_eq!(s.labels.get("pid"), Some(&pid_label), "{s:?}");
    }
    let listing = |service: &str| -> String {
        let mut files: Vec<_> = std::fs::read_dir(out.join(service))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                let samples = decode(&std::fs::read(f).unwrap());
                let fns: BTreeSet<&str> = samples
                    .iter()
                    .filter_map(|s| s.names.first().map(String::as_str))
                    .collect();
                format!("{}: {fns:?}", f.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        !has(&alpha, "hot_leaf"),
        "beta_prog's frames under alpha_prog:\n{}\n{}",
        listing("alpha_prog"),
        listing("beta_prog")
    );
    assert!(
        !has(&beta, "alpha_work") && !has(&beta, "beta_work"),
        "alpha_prog's frames under beta_prog:\n{}\n{}",
        listing("alpha_prog"),
        listing("beta_prog")
    );
}

/// A process that execs another program: its samples before the exec are the first
/// program's, under its label; after, the new program's frames under the new label.
#[test]
fn a_process_that_execs_gets_the_new_programs_frames_and_labels() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profiles");
    let first = gcc(dir.path(), "c/exec_after.c", "exec_after", &["-O0"]);
    let then = gcc(dir.path(), "c/nofp_chain.c", "beta_prog", &[]);
    let mut agent = start_agent(dir.path(), &out, &["exec_after", "beta_prog"], "", "");
    // The workload starts once the agent samples (start-up takes seconds on a busy machine).
    let started = Instant::now();
    while !agent.stderr_tail().contains("sampling started") {
        assert!(
            started.elapsed() < Duration::from_secs(120) && agent.running(),
            "the agent did not start sampling\n{}",
            agent.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let work = Guard::spawn(Command::new(&first).arg("6000").arg(&then), WORKLOAD_LIMIT);
    // Three profiles after the exec: the first may hold samples taken before the new
    // program's table was loaded (unwound by frame pointer meanwhile).
    wait_for(
        &mut agent,
        Duration::from_secs(120),
        "three of beta_prog's profiles",
        || profile_files(&out, "beta_prog").len() >= 3,
    );
    let pid = work.pid();
    drop(work);
    stop_agent(agent);

    let before = service_samples(&out, "exec_after");
    let after = service_samples(&out, "beta_prog");
    let settled: Vec<Sample> = profile_files(&out, "beta_prog")
        .iter()
        .skip(1)
        .flat_map(|f| decode(&std::fs::read(f).unwrap()))
        .collect();
    assert!(has(&before, "before_exec_work"), "{before:?}");
    assert!(
        !has(&before, "hot_leaf"),
        "the new program's frames under the old label"
    );
    assert!(
        !has(&after, "before_exec_work"),
        "the old program's frames under the new label"
    );
    let pid = pid.to_string();
    for s in before.iter().chain(&after) {
        assert_eq!(s.labels.get("pid"), Some(&pid));
    }
    // After the exec the new program is unwound from its tables: its whole chain.
    let chain = [
        "hot_leaf",
        "inner",
        "middle",
        "outer",
        "run_forever",
        "main",
    ];
    let hot: Vec<&Sample> = settled
        .iter()
        .filter(|s| s.names.first().is_some_and(|n| n == "hot_leaf"))
        .collect();
    let total: i64 = hot.iter().map(|s| s.count).sum();
    assert!(
        total >= 50,
        "only {total} hot_leaf samples after the first profile"
    );
    let whole: i64 = hot
        .iter()
        .filter(|s| s.names.windows(chain.len()).any(|w| w == chain))
        .map(|s| s.count)
        .sum();
    assert!(
        whole * 100 >= total * 95,
        "{whole} of {total} hot_leaf samples have the whole chain"
    );
}

/// 2,000 matched processes with `targets_only`: every one enters the PID filter and is
/// profiled under its own target (the filter was once fixed at 1,024).
#[test]
fn two_thousand_matched_processes_are_all_profiled() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const N: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profiles");
    let many = gcc(dir.path(), "c/many.c", "many_procs", &[]);
    // Each child burns 4 ms of CPU every 10 s: 0.8 CPU-seconds per second in all, at
    // 499 Hz about 2 samples per burst.
    let mut parent = Guard::spawn(
        Command::new(&many).args([N.to_string().as_str(), "10000", "4"]),
        WORKLOAD_LIMIT,
    );
    parent.wait_for_line("ready", Duration::from_secs(60));
    let server = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut agent = start_agent(
        dir.path(),
        &out,
        &["many_procs"],
        "sample_rate = 499\ntargets_only = true",
        &format!("[server]\nlisten_address = \"{server}\""),
    );
    // Profiles are read once each, as they are written.
    let mut read = std::collections::HashSet::new();
    let mut seen = BTreeSet::new();
    let started = Instant::now();
    let limit = Duration::from_secs(240);
    while seen.len() < N && started.elapsed() < limit && agent.running() {
        std::thread::sleep(Duration::from_millis(500));
        let files = std::fs::read_dir(out.join("many_procs"))
            .into_iter()
            .flatten();
        for e in files.flatten() {
            // Files being written are dot-files, renamed when complete.
            if e.file_name().to_string_lossy().starts_with('.') || !read.insert(e.path()) {
                continue;
            }
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue;
            };
            seen.extend(
                decode(&bytes)
                    .into_iter()
                    .filter(|s| s.names.iter().any(|n| n == "many_child_work"))
                    .filter_map(|s| s.labels.get("pid").cloned()),
            );
        }
    }
    assert!(
        seen.len() >= N,
        "{} of {N} children profiled in {:?}\n{}",
        seen.len(),
        started.elapsed(),
        agent.stderr_tail()
    );
    eprintln!("all {N} children profiled after {:?}", started.elapsed());

    // Once they are gone, every per-process structure shrinks back to at most the live
    // processes (the target cache holds every live process's match, most of them "none");
    // the periodic sweep runs every 10 s.
    let tracked = || -> Vec<(String, f64)> {
        let text = http_get(server, "/metrics");
        text.lines()
            .filter(|l| l.starts_with("ferroscope_tracked_processes{"))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    };
    let during = tracked();
    assert!(
        during.iter().any(|(_, v)| *v >= N as f64),
        "the structures held the {N} processes: {during:?}"
    );
    drop(parent);
    // The children die with the group; wait until /proc no longer lists them.
    let children_left = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "many_procs")
            })
            .count()
    };
    let killed = Instant::now();
    while children_left() > 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "the children did not exit"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut last = Vec::new();
    wait_for(
        &mut agent,
        Duration::from_secs(60),
        "the tracked structures to shrink",
        || {
            last = tracked();
            let live = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count() as f64;
            !last.is_empty() && last.iter().all(|(_, v)| *v <= live + 10.0)
        },
    );
    eprintln!("tracked with {N} processes: {during:?}\nafter they exited: {last:?}");
    stop_agent(agent);
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A large ELF file a process maps is truncated while the agent reads it: the agent keeps
/// running and still profiles the process.
#[test]
fn a_file_truncated_while_loaded_leaves_the_agent_running() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let map_exec = gcc(dir.path(), "c/map_exec.c", "map_exec", &[]);
    // A big ELF with a lot of CFI that no cache has seen: this test binary without its
    // build ID, with bytes of its own at the end (its identity is then its content).
    let big = dir.path().join("big.so");
    harness::run_ok(
        Command::new("objcopy")
            .arg("--remove-section=.note.gnu.build-id")
            .arg(std::env::current_exe().unwrap())
            .arg(&big),
        Duration::from_secs(120),
    );
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&big).unwrap();
        let nonce = format!("{:?}{}", Instant::now(), std::process::id());
        f.write_all(nonce.as_bytes()).unwrap();
    }
    let size = std::fs::metadata(&big).unwrap().len();
    let mut work = Guard::spawn(Command::new(&map_exec).arg(&big), WORKLOAD_LIMIT);
    work.wait_for_line("mapped", Duration::from_secs(10));
    let out_path = dir.path().join("t.pb.gz");
    let mut record = Guard::spawn(
        Command::new(env!("CARGO_BIN_EXE_ferroscope")).args([
            "record",
            "-p",
            &work.pid().to_string(),
            "-d",
            "6s",
            "-o",
            out_path.to_str().unwrap(),
        ]),
        FERROSCOPE_LIMIT,
    );
    // While the agent starts and loads the process's files.
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(4096)
        .unwrap();
    eprintln!("truncated {} from {size} to 4096 bytes", big.display());
    let status = record.wait(Duration::from_secs(120));
    assert!(status.success(), "{}", record.stderr_tail());
    let samples = decode(&std::fs::read(&out_path).unwrap());
    assert!(
        has(&samples, "map_exec_work"),
        "the process is still profiled"
    );
    assert!(work.running(), "the workload kept running");
}
