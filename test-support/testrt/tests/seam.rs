//! The runtime seam end to end, with real processes and the real programs:
//!
//! - two runtimes in one process (CPython and the test JIT, whose code is anonymous memory
//!   its plug-in owns) are both unwound, in order, in the same stacks;
//! - a JIT range the plug-in releases is no longer owned;
//! - a runtime whose program the kernel rejects turns off alone: it is reported by `check`,
//!   `record` and the agent's `/metrics`, and native and CPython unwinding go on.
//!
//! They need root; with `FERROSCOPE_REQUIRE=1` they fail without it, or without CPython 3.12.

#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferroscope_pprof::proto::Profile;
use ferroscope_test_harness::{self as harness, Guard};

/// The tests measure shares of busy CPUs: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const LIMIT: Duration = Duration::from_secs(120);

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(path)
}

/// One decoded frame: function name and whether a runtime recorded it (no mapping).
#[derive(Debug, Clone)]
struct Frame {
    function: String,
    runtime: bool,
}

#[derive(Debug)]
struct Sample {
    frames: Vec<Frame>,
    count: i64,
}

impl Sample {
    fn position(&self, pred: impl Fn(&Frame) -> bool) -> Option<usize> {
        self.frames.iter().position(pred)
    }
}

fn decode(p: &Profile) -> Vec<Sample> {
    let s = |i: i64| p.string_table[i as usize].clone();
    let period = p.period.max(1);
    let functions: HashMap<u64, String> = p.function.iter().map(|f| (f.id, s(f.name))).collect();
    let locations: HashMap<u64, &ferroscope_pprof::proto::Location> =
        p.location.iter().map(|l| (l.id, l)).collect();
    p.sample
        .iter()
        .map(|sample| Sample {
            frames: sample
                .location_id
                .iter()
                .flat_map(|id| {
                    let loc = locations[id];
                    loc.line
                        .iter()
                        .map(move |l| (loc.mapping_id, l.function_id))
                })
                .map(|(mapping, f)| Frame {
                    function: functions[&f].clone(),
                    runtime: mapping == 0,
                })
                .collect(),
            count: sample.value[0] / period,
        })
        .collect()
}

fn show(samples: &[Sample]) -> String {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| -s.count);
    sorted
        .iter()
        .take(8)
        .map(|s| {
            let f: Vec<&str> = s.frames.iter().map(|f| f.function.as_str()).collect();
            format!("  {} x {}\n", s.count, f.join(" <- "))
        })
        .collect()
}

/// fixtures/seam/jit_embed.c built against CPython 3.12; `None` when skipped.
fn jit_embed(dir: &Path) -> Option<PathBuf> {
    if !harness::root("loading eBPF programs") {
        return None;
    }
    let python = harness::cpython(12)?;
    let config = python.with_file_name("python3.12-config");
    let flags = harness::run_ok(
        Command::new(&config).args(["--cflags", "--ldflags", "--embed"]),
        Duration::from_secs(60),
    );
    let exe = dir.join("jit_embed");
    harness::run_ok(
        Command::new("gcc")
            .args(["-O2", "-g"])
            .arg(fixture("seam/jit_embed.c"))
            .arg("-o")
            .arg(&exe)
            .args(flags.split_whitespace()),
        Duration::from_secs(120),
    );
    Some(exe)
}

fn start(exe: &Path, args: &[&str]) -> Guard {
    let mut cmd = Command::new(exe);
    cmd.arg(fixture("seam/jit_embed.py")).args(args);
    let mut g = Guard::spawn(&mut cmd, LIMIT);
    g.wait_for_line("ready", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    g
}

/// Runs `bin record` of `pid`; the decoded samples and what it printed on stderr.
fn record(bin: &str, pid: u32, seconds: u32) -> (Vec<Sample>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.pb.gz");
    let output = harness::run(
        Command::new(bin)
            .args(["record", "-r", "499", "--top", "0", "-p"])
            .arg(pid.to_string())
            .arg("-d")
            .arg(format!("{seconds}s"))
            .arg("-o")
            .arg(&out),
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{bin} record failed:\n{stderr}");
    let bytes = std::fs::read(&out).unwrap();
    (
        decode(&ferroscope_pprof::decode(&bytes).expect("a valid pprof")),
        stderr,
    )
}

fn share(part: i64, total: i64) -> f64 {
    part as f64 / total.max(1) as f64
}

#[test]
fn two_runtimes_in_one_process_are_both_unwound() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = jit_embed(dir.path()) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let app = start(&exe, &[]);
    let (samples, stderr) = record(env!("CARGO_BIN_EXE_ferroscope-testrt"), app.pid(), 5);
    drop(app);

    // Leaf first: [burn <-] jit_code+... (test JIT) <- spin <- ... <- mid <- outer (CPython)
    // <- <module> <- ... <- main.
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let whole: i64 = samples
        .iter()
        .filter(|s| {
            let jit = s.position(|f| f.runtime && f.function.starts_with("jit_code+"));
            let spin = s.position(|f| !f.runtime && f.function == "spin");
            let mid = s.position(|f| f.runtime && f.function == "mid");
            let outer = s.position(|f| f.runtime && f.function == "outer");
            let main = s.position(|f| !f.runtime && f.function == "main");
            matches!((jit, spin, mid, outer, main),
                (Some(j), Some(sp), Some(m), Some(o), Some(mn)) if j < sp && sp < m && m < o && o < mn)
        })
        .map(|s| s.count)
        .sum();
    assert!(total > 500, "only {total} samples\n{stderr}");
    assert!(
        share(whole, total) >= 0.9,
        "jit_code <- spin <- mid <- outer <- main: only {whole} of {total}\n{}\n{stderr}",
        show(&samples)
    );
    // Samples in burn (C called from the JIT code) and in the JIT code's own loop.
    let in_burn: i64 = samples
        .iter()
        .filter(|s| s.frames.first().is_some_and(|f| f.function == "burn"))
        .map(|s| s.count)
        .sum();
    let in_jit: i64 = samples
        .iter()
        .filter(|s| {
            s.frames
                .first()
                .is_some_and(|f| f.function.starts_with("jit_code+"))
        })
        .map(|s| s.count)
        .sum();
    assert!(
        in_burn > 0 && in_jit > 0,
        "burn {in_burn}, JIT loop {in_jit}\n{}",
        show(&samples)
    );
    assert!(
        stderr.contains("Testjit frames:") && stderr.contains("Python frames:"),
        "both runtimes report frames:\n{stderr}"
    );
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the metric line that starts with `name` (and has the labels that follow).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Starts `bin run` profiling `pid`, with its /metrics on a free port.
fn agent(bin: &str, pid: u32, dir: &Path) -> (Guard, std::net::SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        "[ebpf]\ncollect_interval = \"1s\"\nsample_rate = 97\n\n[[targets]]\n__process_pid__ = \
         \"{pid}\"\nservice_name = \"seam\"\n\n[output]\ndir = \"{}\"\n\n[server]\nlisten_address = \"{port}\"\n",
        dir.join("profiles").display()
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let g = Guard::spawn(
        Command::new(bin).args(["run", "--config"]).arg(&path),
        LIMIT,
    );
    (g, port)
}

/// Polls /metrics until `ready` says yes (at most 30 s).
fn scrape_until(agent: &Guard, addr: std::net::SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = write!(s, "GET /metrics HTTP/1.0\r\n\r\n");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if ready(&text) {
                return text;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!("/metrics never got there:\n{text}\n{}", agent.stderr_tail());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_released_jit_range_is_no_longer_owned() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = jit_embed(dir.path()) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The JIT code is freed 6 s after start: well after the agent attached.
    let mut app = start(&exe, &["6"]);
    let (mut agent, addr) = agent(
        env!("CARGO_BIN_EXE_ferroscope-testrt"),
        app.pid(),
        dir.path(),
    );
    let owned = |t: &str| metric(t, "RuntimeOwnedRanges{").unwrap_or(0.0);
    let frames = |t: &str| metric(t, "UnwindTestjitFrames_total{").unwrap_or(0.0);
    let before = scrape_until(&agent, addr, |t| owned(t) >= 1.0 && frames(t) > 0.0);
    app.wait_for_line("released", Duration::from_secs(30));
    // One refresh (100 ms) later the range is gone; the CPython eval-loop ranges stay.
    let after = scrape_until(&agent, addr, |t| owned(t) < owned(&before));
    assert_eq!(
        owned(&after),
        owned(&before) - 1.0,
        "the JIT range, and only it, was released"
    );
    // And the JIT runtime records nothing more.
    let frames_then = frames(&after);
    std::thread::sleep(Duration::from_secs(2));
    let later = http_get(addr, "/metrics");
    assert_eq!(
        frames(&later),
        frames_then,
        "no JIT frames after the release"
    );
    assert!(
        agent.terminate(Duration::from_secs(10)).success(),
        "{}",
        agent.stderr_tail()
    );
}

#[test]
fn a_rejected_runtime_turns_off_alone() {
    if !harness::root("loading eBPF programs") {
        return;
    }
    let Some(python) = harness::cpython(12) else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_ferroscope-rejected");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());

    // check: a warning naming the rejected program and why; every other program loads.
    let check = harness::run(Command::new(bin).arg("check"), LIMIT);
    let text = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        check.status.success(),
        "a rejected runtime is not a failure:\n{text}"
    );
    assert!(
        text.contains("warn  eBPF programs")
            && text.contains("FAIL  fs_rt_rejected (rejected runtime")
            && text.contains("invalid bpf_context access"),
        "{text}"
    );
    for ok in ["fs_sample", "fs_native", "fs_rt_python"] {
        assert!(
            text.contains(&format!("ok    {ok} ")),
            "{ok} loads:\n{text}"
        );
    }

    // record: said once, and CPython and native unwinding work.
    let mut cmd = Command::new(&python);
    cmd.arg(fixture("python/chains.py"));
    let mut app = Guard::spawn(&mut cmd, LIMIT);
    app.wait_for_line("ready", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let (samples, stderr) = record(bin, app.pid(), 4);
    assert!(
        stderr.contains("the rejected unwinder is off: the kernel rejected its eBPF program"),
        "{stderr}"
    );
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let with_python: i64 = samples
        .iter()
        .filter(|s| {
            let py = s.position(|f| f.runtime && f.function == "<module>");
            // The interpreter's C entry (a distribution's python has no `main` symbol).
            let main = s.position(|f| !f.runtime && f.function == "Py_RunMain");
            matches!((py, main), (Some(p), Some(m)) if p < m)
        })
        .map(|s| s.count)
        .sum();
    assert!(
        share(with_python, total) >= 0.9,
        "CPython frames above Py_RunMain: only {with_python} of {total}\n{}",
        show(&samples)
    );

    // run: /metrics says which program is off, and why.
    let agent_dir = tempfile::tempdir().unwrap();
    let (mut agent, addr) = agent(bin, app.pid(), agent_dir.path());
    let text = scrape_until(&agent, addr, |t| {
        t.contains("ferroscope_bpf_program_loaded{")
    });
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("ferroscope_bpf_program_loaded{") && l.contains("owner=\"rejected\"")
        })
        .unwrap_or_else(|| panic!("no load verdict of the rejected program:\n{text}"));
    assert!(
        line.ends_with(" 0") && line.contains("invalid bpf_context access"),
        "{line}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ferroscope_bpf_program_loaded{")
                && l.contains("owner=\"python\"")
                && l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        agent.terminate(Duration::from_secs(10)).success(),
        "{}",
        agent.stderr_tail()
    );
    drop(app);
}
