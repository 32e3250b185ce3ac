//! End-to-end tests of Python stacks: every CPython on the machine (3.6 to 3.13 under
//! /root/.pyenv/versions, see environment.md) runs a real script while the real
//! `ferroscope` binary records it, and the test reads the pprof it wrote.
//!
//! They need root. With `FERROSCOPE_REQUIRE=1` (CI) running without root, or without the
//! CPython builds, fails them.

#![allow(clippy::print_stderr)]

mod common;
use common::source::{line_of, share, tagged_lines};
use common::{WORKLOAD_LIMIT, can_run_bpf, ferroscope, fixture, metric, run_agent};
use ferroscope_test_harness::{self as harness, Guard};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use ferroscope_pprof::proto::Profile;

/// Each test keeps the CPUs busy and measures CPU shares: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The interpreter of CPython 3.`minor` on this machine (`python3.minor` of the newest micro
/// version under `$FERROSCOPE_PYENV_VERSIONS`, default /root/.pyenv/versions). `None` skips
/// the test (logged), unless tests are required (`FERROSCOPE_REQUIRE=1`), which fails it.
fn python(minor: u8) -> Option<PathBuf> {
    harness::cpython(minor)
}

/// Which CPython build a test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Py {
    /// pyenv's build with a shared libpython (3.6-3.13, not stripped).
    Pyenv(u8),
    /// pyenv's build run with a stripped copy of its libpython (no `.symtab`).
    PyenvStripped(u8),
    /// Debian's own build in the harness's chroot (trixie: 3.13; sid: 3.14, 3.15):
    /// statically linked, stripped, its eval loop split by GCC. The profiler reads its files
    /// through `/proc/PID/root`, as for a container.
    Debian(u8),
}

impl Py {
    fn minor(self) -> u8 {
        match self {
            Py::Pyenv(m) | Py::PyenvStripped(m) | Py::Debian(m) => m,
        }
    }
}

impl std::fmt::Display for Py {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Py::Pyenv(m) => write!(f, "CPython 3.{m} (pyenv)"),
            Py::PyenvStripped(m) => write!(f, "CPython 3.{m} (pyenv, stripped libpython)"),
            Py::Debian(m) => write!(f, "CPython 3.{m} (Debian)"),
        }
    }
}

/// A command that runs `fixtures/python/<script>` on `py`, and what must live while it runs
/// (the chroot's `/proc` mount, the stripped library's directory); `None` after a skip.
fn python_command(py: Py, script: &str) -> Option<(Command, Box<dyn std::any::Any>)> {
    let script = fixture(&format!("python/{script}"));
    match py {
        Py::Pyenv(minor) => {
            let mut cmd = Command::new(python(minor)?);
            cmd.arg(script);
            Some((cmd, Box::new(())))
        }
        Py::PyenvStripped(minor) => {
            let exe = python(minor)?;
            let lib = exe
                .parent()
                .and_then(Path::parent)
                .map(|d| d.join(format!("lib/libpython3.{minor}.so.1.0")))
                .filter(|l| l.exists())?;
            let strip = harness::tool("strip")?;
            let dir = tempfile::tempdir().unwrap();
            let copy = dir.path().join(lib.file_name().unwrap());
            harness::run_ok(
                Command::new(strip)
                    .arg("--strip-all")
                    .arg("-o")
                    .arg(&copy)
                    .arg(&lib),
                Duration::from_secs(120),
            );
            let mut cmd = Command::new(exe);
            // The launcher's RUNPATH names pyenv's lib directory; LD_LIBRARY_PATH comes first.
            cmd.env("LD_LIBRARY_PATH", dir.path()).arg(script);
            Some((cmd, Box::new(dir)))
        }
        Py::Debian(minor) => {
            let runtime = harness::runtimes::python_chroot(minor)?;
            let (chroot, _) = runtime.chroot.as_ref().expect("a chroot runtime");
            let inside = chroot.copy_in(&script);
            let mut cmd = runtime.command();
            cmd.arg(inside);
            Some((cmd, Box::new(runtime)))
        }
    }
}

/// How long a fixture may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A process started for a test that prints `ready` once set up; killed when dropped, or
/// when it outlives [`WORKLOAD_LIMIT`].
struct Ready(Guard);

impl Ready {
    fn start(mut cmd: Command) -> Ready {
        let mut guard = Guard::spawn(&mut cmd, WORKLOAD_LIMIT);
        guard.wait_for_line("ready", READY_TIMEOUT);
        // Let it run its loop for a moment, so that every library it loads is mapped.
        std::thread::sleep(Duration::from_millis(200));
        Ready(guard)
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }
}

/// One frame of a decoded sample.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    function: String,
    file: String,
    line: i64,
    /// An interpreted (Python) frame: a location with no mapping but a source file.
    python: bool,
}

/// A decoded sample: frames leaf first, number of samples, thread ID.
#[derive(Debug)]
struct Sample {
    frames: Vec<Frame>,
    count: i64,
    tid: String,
}

impl Sample {
    fn python(&self) -> Vec<&Frame> {
        self.frames.iter().filter(|f| f.python).collect()
    }

    fn python_names(&self) -> Vec<&str> {
        self.python().iter().map(|f| f.function.as_str()).collect()
    }

    fn position(&self, pred: impl Fn(&Frame) -> bool) -> Option<usize> {
        self.frames.iter().position(pred)
    }
}

fn record(pid: u32, seconds: u32, extra: &[&str]) -> Vec<Sample> {
    record_with_log(pid, seconds, extra).0
}

/// [`record`], and what `ferroscope record` printed on stderr (its summary).
fn record_with_log(pid: u32, seconds: u32, extra: &[&str]) -> (Vec<Sample>, String) {
    let (samples, log, _) = record_with_cpu(pid, seconds, extra);
    (samples, log)
}

/// [`record_with_log`], and the CPU time the process got inside the profile's window (not
/// the start-up before it, which takes seconds on a loaded machine).
fn record_with_cpu(pid: u32, seconds: u32, extra: &[&str]) -> (Vec<Sample>, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("python.pb.gz");
    let (pid, duration, out_s) = (
        pid.to_string(),
        format!("{seconds}s"),
        out.to_str().unwrap(),
    );
    let mut args = vec![
        "record", "-p", &pid, "-d", &duration, "-o", out_s, "--top", "5",
    ];
    args.extend_from_slice(extra);
    let target: u32 = pid.parse().unwrap();
    let (result, cpu_log) = common::cpu::logging_cpu(&[target], || ferroscope(&args));
    assert!(result.status.success(), "ferroscope record failed");
    let profile = ferroscope_pprof::decode(&std::fs::read(&out).unwrap()).expect("a valid pprof");
    let used = cpu_log.in_window(0, &profile);
    (
        decode(&profile),
        String::from_utf8_lossy(&result.stderr).into_owned(),
        used,
    )
}

/// Records `fixtures/python/<script>` run by `py` for `seconds`; `None` when the test is
/// skipped (not root, or that CPython is missing and not required).
fn record_script(py: Py, script: &str, seconds: u32, extra: &[&str]) -> Option<Vec<Sample>> {
    record_script_with_log(py, script, seconds, extra).map(|(s, _)| s)
}

/// [`record_script`], and the recording's stderr.
fn record_script_with_log(
    py: Py,
    script: &str,
    seconds: u32,
    extra: &[&str],
) -> Option<(Vec<Sample>, String)> {
    record_until(py, script, seconds, extra, 0).map(|(s, log, _)| (s, log))
}

/// Records `script` on `py` for `seconds`, and again (at most 4 times in all) while fewer
/// than `min_samples` samples came: on a loaded machine the workload gets less CPU, and the
/// statistics of a test need their sample count whatever the load. The samples of every
/// round, the last round's stderr, and the CPU time the script got inside the profiles'
/// windows.
fn record_until(
    py: Py,
    script: &str,
    seconds: u32,
    extra: &[&str],
    min_samples: i64,
) -> Option<(Vec<Sample>, String, Duration)> {
    if !can_run_bpf() {
        return None;
    }
    let (cmd, keep) = python_command(py, script)?;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let workload = Ready::start(cmd);
    if let Py::PyenvStripped(minor) = py {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", workload.pid())).unwrap();
        let lib = format!("libpython3.{minor}.so.1.0");
        let mapped: Vec<&str> = maps.lines().filter(|l| l.ends_with(&lib)).collect();
        assert!(
            !mapped.is_empty() && mapped.iter().all(|l| !l.contains("/.pyenv/")),
            "{py}: the stripped copy, not pyenv's libpython, is mapped:\n{}",
            mapped.join("\n")
        );
    }
    let mut samples = Vec::new();
    let mut log = String::new();
    let mut used = Duration::ZERO;
    for round in 1..=4 {
        let (more, l, cpu) = record_with_cpu(workload.pid(), seconds, extra);
        samples.extend(more);
        log = l;
        used += cpu;
        let total: i64 = samples.iter().map(|s| s.count).sum();
        if total >= min_samples {
            break;
        }
        eprintln!("{py}: {total} samples after {round} recordings of {seconds} s, recording again");
    }
    drop(workload);
    drop(keep);
    Some((samples, log, used))
}

fn decode(p: &Profile) -> Vec<Sample> {
    let s = |i: i64| p.string_table[i as usize].clone();
    let period = p.period.max(1);
    let functions: HashMap<u64, (String, String)> = p
        .function
        .iter()
        .map(|f| (f.id, (s(f.name), s(f.filename))))
        .collect();
    let locations: HashMap<u64, &ferroscope_pprof::proto::Location> =
        p.location.iter().map(|l| (l.id, l)).collect();
    p.sample
        .iter()
        .map(|sample| {
            let mut frames = Vec::new();
            for id in &sample.location_id {
                let loc = locations[id];
                for line in &loc.line {
                    let (function, file) = functions[&line.function_id].clone();
                    frames.push(Frame {
                        python: loc.mapping_id == 0 && !file.is_empty(),
                        function,
                        file,
                        line: line.line,
                    });
                }
            }
            let tid = sample
                .label
                .iter()
                .find(|l| s(l.key) == "tid")
                .map(|l| s(l.str))
                .unwrap_or_default();
            Sample {
                frames,
                count: sample.value[0] / period,
                tid,
            }
        })
        .collect()
}

/// Samples with their share of the total, for failure messages.
fn show(samples: &[&Sample]) -> String {
    let mut out = String::new();
    for s in samples.iter().take(8) {
        let frames: Vec<String> = s
            .frames
            .iter()
            .map(|f| {
                if f.python {
                    format!("{}:{}", f.function, f.line)
                } else {
                    f.function.clone()
                }
            })
            .collect();
        out.push_str(&format!("  {} x {}\n", s.count, frames.join(" <- ")));
    }
    out
}

/// Samples of the two-chains script (CPython 3.11+) whose Python frames are exactly one of
/// its two chains, and all samples.
fn whole_chains(samples: &[Sample]) -> (i64, i64) {
    let chain_a = [
        "Worker.run.<locals>.inner",
        "Worker.run",
        "chain_a",
        "<module>",
    ];
    let chain_b = ["leaf_b", "chain_b", "<module>"];
    let total = samples.iter().map(|s| s.count).sum();
    let whole = samples
        .iter()
        .filter(|s| {
            let names = s.python_names();
            names == chain_a || names == chain_b
        })
        .map(|s| s.count)
        .sum();
    (whole, total)
}

/// The two-chains script on `py`: chains in order with qualified names (3.11+) and the
/// right lines, a 3:1 work ratio within 25 %, and at least 95 % of the hot functions' samples
/// carrying their whole Python chain.
fn two_chains(py: Py) {
    let minor = py.minor();
    // 499 Hz: ~2,000 samples, so that the ratio's sampling noise (about 5 % at this count)
    // stays well inside the 25 % the test allows.
    let Some((samples, _, used)) = record_until(py, "chains.py", 5, &["-r", "499"], 1000) else {
        return;
    };
    let script = fixture("python/chains.py");

    let qualified = minor >= 11;
    let (inner, run) = if qualified {
        ("Worker.run.<locals>.inner", "Worker.run")
    } else {
        ("inner", "run")
    };
    let chain_a = [inner, run, "chain_a", "<module>"];
    let chain_b = ["leaf_b", "chain_b", "<module>"];
    let hot_a = tagged_lines(&script, "# HOT_A");
    let hot_b = tagged_lines(&script, "# HOT_B");
    let callers_a = [
        line_of(&script, "return inner(n)"),
        line_of(&script, "return worker.run(UNIT)"),
        line_of(&script, "chain_a(worker)"),
    ];
    let callers_b = [
        line_of(&script, "return leaf_b(UNIT)"),
        line_of(&script, "chain_b()"),
    ];

    let total: i64 = samples.iter().map(|s| s.count).sum();
    // Samples for the CPU time the script got inside the sampling windows (always busy),
    // within 20 %, and enough of them for the ratio below (recorded again until there are
    // 1000); a machine too busy to give it that fails the test.
    let expected = used.as_secs_f64() * 499.0;
    assert!(
        (total as f64 - expected).abs() <= 0.2 * expected,
        "{py}: {total} samples for {used:?} of CPU in the windows at 499 Hz ({expected:.0} expected, within 20 %)"
    );
    assert!(
        total >= 1000,
        "{py}: only {total} samples in 4 records of 5 s at 499 Hz: the script ran only {used:?} (too busy a machine)"
    );
    let mut report = String::new();
    let mut counts = Vec::new();
    for (chain, hot, callers) in [
        (&chain_a[..], &hot_a, &callers_a[..]),
        (&chain_b[..], &hot_b, &callers_b[..]),
    ] {
        let leaf = chain[0];
        let with_leaf: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.python_names().contains(&leaf))
            .collect();
        let n: i64 = with_leaf.iter().map(|s| s.count).sum();
        let full: Vec<&&Sample> = with_leaf
            .iter()
            .filter(|s| s.python_names() == chain)
            .collect();
        let n_full: i64 = full.iter().map(|s| s.count).sum();
        let on_hot_line: i64 = full
            .iter()
            .filter(|s| hot.contains(&s.python()[0].line))
            .map(|s| s.count)
            .sum();
        let right_callers: i64 = full
            .iter()
            .filter(|s| {
                let lines: Vec<i64> = s.python()[1..].iter().map(|f| f.line).collect();
                lines == callers
            })
            .map(|s| s.count)
            .sum();
        report.push_str(&format!(
            "{leaf}: {n} samples, {n_full} with the whole chain {chain:?}, {on_hot_line} on the hot lines {hot:?}, {right_callers} with caller lines {callers:?}\n"
        ));
        let wrong: Vec<&Sample> = with_leaf
            .iter()
            .copied()
            .filter(|s| s.python_names() != chain)
            .collect();
        assert!(
            n > 0 && share(n_full, n) >= 0.95,
            "{py}: fewer than 95 % of {leaf}'s samples carry the whole chain\n{report}samples without it:\n{}",
            show(&wrong)
        );
        assert!(
            share(on_hot_line, n_full) >= 0.9,
            "{py}: {leaf}'s line is not its hot loop's\n{report}"
        );
        assert!(
            share(right_callers, n_full) >= 0.95,
            "{py}: the callers of {leaf} are not at their call lines\n{report}{}",
            show(&full.iter().map(|s| **s).collect::<Vec<_>>())
        );
        counts.push(n);
    }
    let ratio = counts[0] as f64 / counts[1].max(1) as f64;
    eprintln!("{py}:\n{report}ratio A:B = {ratio:.2} (expected 3)");
    assert!(
        (2.25..=3.75).contains(&ratio),
        "{py}: work ratio A:B is {ratio:.2}, not within 25 % of 3\n{report}"
    );
    let python_share = share(
        samples
            .iter()
            .filter(|s| !s.python().is_empty())
            .map(|s| s.count)
            .sum(),
        total,
    );
    assert!(
        python_share >= 0.95,
        "{py}: only {:.1} % of samples have Python frames",
        python_share * 100.0
    );
}

#[test]
fn two_chains_python_3_6() {
    two_chains(Py::Pyenv(6));
}

#[test]
fn two_chains_python_3_7() {
    two_chains(Py::Pyenv(7));
}

#[test]
fn two_chains_python_3_8() {
    two_chains(Py::Pyenv(8));
}

#[test]
fn two_chains_python_3_9() {
    two_chains(Py::Pyenv(9));
}

#[test]
fn two_chains_python_3_10() {
    two_chains(Py::Pyenv(10));
}

#[test]
fn two_chains_python_3_11() {
    two_chains(Py::Pyenv(11));
}

#[test]
fn two_chains_python_3_12() {
    two_chains(Py::Pyenv(12));
}

#[test]
fn two_chains_python_3_13() {
    two_chains(Py::Pyenv(13));
}

#[test]
fn two_chains_debian_python_3_13() {
    two_chains(Py::Debian(13));
}

#[test]
fn two_chains_debian_python_3_14() {
    two_chains(Py::Debian(14));
}

#[test]
fn two_chains_debian_python_3_15() {
    two_chains(Py::Debian(15));
}

/// A libpython without `.symtab` (`strip --strip-all`): the eval loop's `.cold` part is found
/// from the CFI instead of its symbol, and the chains are whole as with the symbols.
#[test]
fn two_chains_stripped_libpython_3_12() {
    two_chains(Py::PyenvStripped(12));
}

/// hashlib's sha256 runs in libcrypto: its native frames come first, then the Python
/// functions that called it, in order.
fn calling_c(py: Py) {
    let Some(samples) = record_script(py, "hashing.py", 3, &[]) else {
        return;
    };

    let in_crypto: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.frames
                .first()
                .is_some_and(|f| f.function.contains("libcrypto") || f.function.contains("sha256"))
        })
        .collect();
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let n: i64 = in_crypto.iter().map(|s| s.count).sum();
    assert!(
        share(n, total) >= 0.5,
        "{py}: hashing 1 MB per call should spend most time in libcrypto: {n} of {total}\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
    let ordered: i64 = in_crypto
        .iter()
        .filter(|s| {
            let digest = s.position(|f| f.python && f.function == "digest_loop");
            let main = s.position(|f| f.python && f.function == "main");
            let module = s.position(|f| f.python && f.function == "<module>");
            let native_before = s.frames[..digest.unwrap_or(0)].iter().all(|f| !f.python);
            matches!((digest, main, module), (Some(d), Some(m), Some(t)) if 0 < d && d < m && m < t)
                && native_before
        })
        .map(|s| s.count)
        .sum();
    assert!(
        share(ordered, n) >= 0.95,
        "{py}: libcrypto frames, then digest_loop, main, <module>: only {ordered} of {n}\n{}",
        show(&in_crypto)
    );
    eprintln!("{py}: {ordered} of {n} libcrypto samples with their Python callers in order");
}

#[test]
fn python_calling_c_shows_both_in_order() {
    calling_c(Py::Pyenv(12));
}

#[test]
fn python_calling_c_debian_3_13() {
    calling_c(Py::Debian(13));
}

#[test]
fn python_calling_c_debian_3_14() {
    calling_c(Py::Debian(14));
}

#[test]
fn python_calling_c_debian_3_15() {
    calling_c(Py::Debian(15));
}

/// Each thread's samples carry that thread's own Python stack.
#[test]
fn each_thread_has_its_own_python_stack() {
    let Some(samples) = record_script(Py::Pyenv(12), "threads.py", 3, &[]) else {
        return;
    };

    let mut tids: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut right = 0;
    let mut with_spin = 0;
    for s in &samples {
        let names = s.python_names();
        for (spin, entry) in [("spin_a", "thread_a"), ("spin_b", "thread_b")] {
            if names.first() == Some(&spin) {
                with_spin += s.count;
                tids.entry(spin).or_default().insert(&s.tid);
                // spin_x <- thread_x <- Thread.run <- Thread._bootstrap_inner <- Thread._bootstrap
                if names.get(1) == Some(&entry)
                    && names.last().is_some_and(|n| n.ends_with("_bootstrap"))
                    && names.len() == 5
                {
                    right += s.count;
                }
            }
        }
    }
    let (a, b) = (&tids["spin_a"], &tids["spin_b"]);
    assert!(
        a.len() == 1 && b.len() == 1 && a.is_disjoint(b),
        "each spinning function runs on its own thread: spin_a on {a:?}, spin_b on {b:?}"
    );
    assert!(
        share(right, with_spin) >= 0.95,
        "only {right} of {with_spin} samples have the whole thread stack\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
}

/// A C program linked against libpython runs Python code: Python frames above its `main`.
#[test]
fn embedded_python_is_unwound_under_the_c_program() {
    if !can_run_bpf() {
        return;
    }
    let Some(python) = python(12) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = python.with_file_name("python3.12-config");
    let flags = harness::run_ok(
        Command::new(&config).args(["--cflags", "--ldflags", "--embed"]),
        Duration::from_secs(60),
    );
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("embed");
    harness::run_ok(
        Command::new("gcc")
            .arg(fixture("python/embed.c"))
            .arg("-o")
            .arg(&exe)
            .args(flags.split_whitespace()),
        Duration::from_secs(120),
    );
    let workload = Ready::start(Command::new(&exe));
    let samples = record(workload.pid(), 3, &[]);
    drop(workload);

    let total: i64 = samples.iter().map(|s| s.count).sum();
    let ordered: i64 = samples
        .iter()
        .filter(|s| {
            let work = s.position(|f| f.python && f.function == "embedded_work");
            let module = s.position(|f| f.python && f.function == "<module>");
            let main = s.position(|f| !f.python && f.function == "main");
            matches!((work, module, main), (Some(w), Some(t), Some(m)) if w < t && t < m)
        })
        .map(|s| s.count)
        .sum();
    assert!(
        share(ordered, total) >= 0.9,
        "embedded_work <- <module> <- ... <- main: only {ordered} of {total}\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
}

/// With the Python unwinder off, the same script shows only native frames: the
/// interpreter's `_PyEval_EvalFrameDefault`.
#[test]
fn python_unwinder_off_gives_native_stacks() {
    let Some(samples) = record_script(
        Py::Pyenv(12),
        "chains.py",
        2,
        &["--no-interpreter", "python"],
    ) else {
        return;
    };
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let python_frames = samples.iter().filter(|s| !s.python().is_empty()).count();
    let eval: i64 = samples
        .iter()
        .filter(|s| {
            s.frames
                .iter()
                .any(|f| f.function == "_PyEval_EvalFrameDefault")
        })
        .map(|s| s.count)
        .sum();
    assert_eq!(
        python_frames, 0,
        "no Python frames when the unwinder is off"
    );
    assert!(
        share(eval, total) >= 0.9,
        "the interpreter loop shows instead: {eval} of {total}"
    );
}

/// Runs `ferroscope run` on the two-chains script with `python_enabled` as given until it
/// wrote two profiles; returns their samples and the agent's `/metrics` at the end.
fn agent_samples(python: &Path, python_enabled: bool) -> (Vec<Sample>, String) {
    let mut cmd = Command::new(python);
    cmd.arg(fixture("python/chains.py"));
    agent_samples_of(cmd, python_enabled)
}

/// [`agent_samples`] of the workload `cmd` starts.
fn agent_samples_of(cmd: Command, python_enabled: bool) -> (Vec<Sample>, String) {
    let workload = Ready::start(cmd);
    let run = run_agent(
        workload.pid(),
        &format!("python_enabled = {python_enabled}"),
        "py",
        2,
        Duration::from_secs(20),
    );
    drop(workload);
    (run.profiles.iter().flat_map(decode).collect(), run.metrics)
}

/// The agent (`ferroscope run`) names Python frames in the profiles it writes, and
/// `python_enabled = false` in its configuration turns that off: native frames only.
#[test]
fn agent_python_enabled_true_and_false() {
    if !can_run_bpf() {
        return;
    }
    let Some(python) = python(12) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());

    let (on, metrics) = agent_samples(&python, true);
    for name in [
        "UnwindPythonAttempts_total",
        "UnwindPythonFrames_total",
        "PythonSymbolizationSuccesses_total",
    ] {
        assert!(metric(&metrics, name) > 0.0, "{name} counts what happened");
    }
    assert_eq!(metric(&metrics, "PythonSymbolizationFailures_total"), 0.0);
    let (with_chain, total) = whole_chains(&on);
    assert!(total > 50, "only {total} samples");
    assert!(
        share(with_chain, total) >= 0.9,
        "python_enabled = true: only {with_chain} of {total} samples have a whole Python chain\n{}",
        show(&on.iter().collect::<Vec<_>>())
    );

    let (off, metrics) = agent_samples(&python, false);
    assert_eq!(metric(&metrics, "UnwindPythonFrames_total"), 0.0);
    let total: i64 = off.iter().map(|s| s.count).sum();
    let eval: i64 = off
        .iter()
        .filter(|s| {
            s.frames
                .iter()
                .any(|f| f.function == "_PyEval_EvalFrameDefault")
        })
        .map(|s| s.count)
        .sum();
    assert!(total > 50, "only {total} samples");
    assert!(
        off.iter().all(|s| s.python().is_empty()),
        "no Python frames with python_enabled = false"
    );
    assert!(
        share(eval, total) >= 0.9,
        "the interpreter loop shows instead: {eval} of {total}"
    );
}

/// Debian's own `/usr/bin/python3` links the interpreter statically (no libpython): it is
/// detected in the executable itself, by its name and its exported symbols.
#[test]
fn statically_linked_python_executable() {
    if !can_run_bpf() {
        return;
    }
    let Some(exe) = harness::file("/usr/bin/python3", "apt-get install python3") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new(&exe);
    cmd.arg(fixture("python/chains.py"));
    let workload = Ready::start(cmd);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", workload.pid())).unwrap();
    let samples = record(workload.pid(), 3, &[]);
    drop(workload);
    assert!(
        !maps.contains("libpython"),
        "this test is about an interpreter without libpython"
    );
    // Debian's python3 is 3.11 (bookworm) or later: qualified names.
    let (whole, total) = whole_chains(&samples);
    assert!(
        share(whole, total) >= 0.9,
        "only {whole} of {total} samples have a whole Python chain\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
}

/// A C program with CPython linked in statically, exporting only `_PyRuntime` and
/// `Py_Version`, stripped: CPython is recognised but its eval loop has no symbol anywhere.
/// `record` says so, and so does the agent's `/metrics`, instead of silently giving native
/// stacks.
#[test]
fn cpython_without_an_eval_loop_symbol_is_reported() {
    if !can_run_bpf() {
        return;
    }
    let Some(python) = python(12) else {
        return;
    };
    let Some(strip) = harness::tool("strip") else {
        return;
    };
    let prefix = python
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let archive = prefix.join("lib/python3.12/config-3.12-x86_64-linux-gnu/libpython3.12.a");
    let Some(archive) = harness::file(
        &archive,
        "a pyenv CPython 3.12 built with its static library",
    ) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let linked = dir.path().join("embed-linked");
    let exe = dir.path().join("embed-static");
    harness::run_ok(
        Command::new("gcc")
            .arg(fixture("python/embed.c"))
            .arg(format!("-I{}", prefix.join("include/python3.12").display()))
            .arg("-o")
            .arg(&linked)
            .arg(&archive)
            .args(["-ldl", "-lm", "-lpthread", "-lutil"])
            .arg("-Wl,--export-dynamic-symbol=_PyRuntime")
            .arg("-Wl,--export-dynamic-symbol=Py_Version"),
        Duration::from_secs(300),
    );
    harness::run_ok(
        Command::new(strip)
            .arg("--strip-all")
            .arg("-o")
            .arg(&exe)
            .arg(&linked),
        Duration::from_secs(60),
    );

    let workload = Ready::start(Command::new(&exe));
    let (samples, log) = record_with_log(workload.pid(), 2, &[]);
    drop(workload);
    let path = exe.to_string_lossy();
    let line = log
        .lines()
        .find(|l| l.starts_with("ferroscope: python unwinder:"))
        .unwrap_or_else(|| panic!("record does not say why {path} has no Python frames:\n{log}"));
    assert!(
        line.contains(&*path)
            && line.contains("CPython 3.12")
            && line.contains("`_PyEval_EvalFrameDefault` is in none of its symbol tables"),
        "the reason names the file, the version and what is missing: {line}"
    );
    assert!(samples.iter().all(|s| s.python().is_empty()));
    assert!(samples.iter().map(|s| s.count).sum::<i64>() > 0);

    let (_, metrics) = agent_samples_of(Command::new(&exe), true);
    assert_eq!(
        metric(&metrics, "PythonDetectionFailures_total"),
        1.0,
        "{metrics}"
    );
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("ferroscope_runtime_detection_failed{"))
        .unwrap_or_else(|| panic!("no ferroscope_runtime_detection_failed in\n{metrics}"));
    assert!(
        gauge.contains("runtime=\"python\"")
            && gauge.contains(&format!("file=\"{path}\""))
            && gauge.contains("_PyEval_EvalFrameDefault")
            && gauge.ends_with(" 1"),
        "{gauge}"
    );
}

/// Thread churn on `py`: each of the 100 short threads of `thread_churn.py` (by `tid`) with
/// at least 5 samples where its interpreter runs has its Python frames, down to
/// `Thread._bootstrap`, in at least 99 % of them. A sample "where its interpreter runs" has
/// Python frames or the eval loop among its native frames (a thread's first and last
/// instants run only C: those samples have neither and are not counted).
fn thread_churn(py: Py) {
    let Some(samples) = record_script(py, "thread_churn.py", 12, &["-r", "499"]) else {
        return;
    };
    // tid -> (samples with the thread's Python frames, samples of its interpreter)
    let mut threads: HashMap<&str, (i64, i64)> = HashMap::new();
    let mut bad: HashMap<&str, Vec<&Sample>> = HashMap::new();
    for s in &samples {
        let names = s.python_names();
        let churn = names
            .iter()
            .any(|n| *n == "churn_busy" || *n == "churn_worker");
        let eval = s
            .frames
            .iter()
            .any(|f| !f.python && f.function.starts_with("_PyEval_EvalFrame"));
        let whole = churn && names.last().is_some_and(|n| n.ends_with("_bootstrap"));
        // A churn thread's Python frames, or the eval loop of a thread without them; not
        // the main thread's frames or a thread in C only.
        let interpreter_runs = churn || (names.is_empty() && eval);
        if !interpreter_runs {
            continue;
        }
        let t = threads.entry(&s.tid).or_default();
        t.1 += s.count;
        if whole {
            t.0 += s.count;
        } else {
            bad.entry(&s.tid).or_default().push(s);
        }
    }
    let counted: Vec<(&str, i64, i64)> = threads
        .iter()
        .filter(|(_, (_, n))| *n >= 5)
        .map(|(t, (ok, n))| (*t, *ok, *n))
        .collect();
    let (ok, all): (i64, i64) = counted.iter().fold((0, 0), |a, t| (a.0 + t.1, a.1 + t.2));
    let worst = counted
        .iter()
        .map(|t| share(t.1, t.2))
        .fold(1.0f64, f64::min);
    let failing: Vec<&(&str, i64, i64)> =
        counted.iter().filter(|t| share(t.1, t.2) < 0.99).collect();
    eprintln!(
        "{py}: thread churn: {} threads with >= 5 samples ({} seen), {ok} of {all} samples with \
         their Python frames ({:.2} %), worst thread {:.1} %, {} threads under 99 %",
        counted.len(),
        threads.len(),
        100.0 * share(ok, all),
        100.0 * worst,
        failing.len()
    );
    assert!(
        counted.len() >= 50,
        "{py}: only {} churn threads had 5 samples or more (of {} seen)",
        counted.len(),
        threads.len()
    );
    let detail: Vec<String> = failing
        .iter()
        .map(|(t, ok, n)| format!("tid {t}: {ok} of {n}\n{}", show(&bad[t])))
        .collect();
    assert!(
        failing.is_empty(),
        "{py}: threads whose samples lack their Python frames:\n{}",
        detail.join("\n")
    );
}

#[test]
fn thread_churn_keeps_python_frames_3_8() {
    thread_churn(Py::Pyenv(8));
}

#[test]
fn thread_churn_keeps_python_frames_3_11() {
    thread_churn(Py::Pyenv(11));
}

#[test]
fn thread_churn_keeps_python_frames_3_13() {
    thread_churn(Py::Pyenv(13));
}

/// Recursion on `py`: every sample has every Python frame in place, `<module>` outermost and
/// right under the native frame that runs the module (`..EvalCode..`), no eval-loop frame
/// left between Python frames. Up to 3.10 a sample taken while an eval-loop call has not yet
/// bound its frame to the thread state (or has unbound it on its way out) would otherwise
/// have its Python frames one eval call off.
fn recursion(py: Py) {
    let Some(samples) = record_script(py, "recursion.py", 5, &["-r", "499"]) else {
        return;
    };
    // The eval loop itself (and its `.cold` part), not its inlined `_PyEval_EvalFrame` caller.
    let eval = |f: &Frame| !f.python && f.function.starts_with("_PyEval_EvalFrameDefault");
    let mut total = 0;
    let mut bad: Vec<&Sample> = Vec::new();
    for s in &samples {
        let first = s.frames.iter().position(|f| f.python);
        let in_place = match first {
            None => !s.frames.iter().any(eval),
            Some(first) => {
                let last = s.frames.iter().rposition(|f| f.python).unwrap_or(first);
                s.frames[last].function == "<module>"
                    && s.frames[last + 1..]
                        .iter()
                        .take(4)
                        .any(|f| !f.python && f.function.contains("EvalCode"))
                    && !s.frames[first..].iter().any(eval)
            }
        };
        total += s.count;
        if !in_place {
            bad.push(s);
        }
    }
    let wrong: i64 = bad.iter().map(|s| s.count).sum();
    eprintln!(
        "{py}: recursion: {wrong} of {total} samples with Python frames out of place ({:.2} %)",
        100.0 * share(wrong, total)
    );
    assert!(total >= 200, "{py}: only {total} samples");
    assert!(
        bad.is_empty(),
        "{py}: {wrong} of {total} samples have Python frames out of place:\n{}",
        show(&bad)
    );
}

#[test]
fn recursion_keeps_python_frames_in_place_3_8() {
    recursion(Py::Pyenv(8));
}

#[test]
fn recursion_keeps_python_frames_in_place_3_10() {
    recursion(Py::Pyenv(10));
}

#[test]
fn recursion_keeps_python_frames_in_place_3_11() {
    recursion(Py::Pyenv(11));
}

#[test]
fn recursion_keeps_python_frames_in_place_3_13() {
    recursion(Py::Pyenv(13));
}
