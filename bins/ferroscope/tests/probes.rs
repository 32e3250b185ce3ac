//! Probes: `ferroscope record --probe` and the agent's `probe_links` count the calls of a
//! function with the full stack of each, on a uprobe (entry) or uretprobe (return), in
//! libraries found by name, given by path, or (with `load_probe`) loaded later with dlopen.
//! Bad links are one clear error at start-up, with nothing started.
//!
//! They need root and gcc; with `FERROSCOPE_REQUIRE=1` (CI) a missing one fails them.

#![allow(clippy::print_stderr)]

mod common;
use common::samples::{Sample, read_samples, samples, show, total_with};
use common::{
    can_run_bpf, ferroscope, fixture, gcc, record_signalled, run_agent, signalled_workload,
};
use ferroscope_test_harness as harness;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// The tests count calls under load of their own: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The value of `key=N` in what a fixture printed.
fn printed(stdout: &str, key: &str) -> i64 {
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in\n{stdout}"))
        .parse()
        .unwrap()
}

/// Records `workload` with `ferroscope record --probe LINK ... -o DIR/NAME.pb.gz` (and
/// `extra` arguments); returns what record printed, the probe profile's samples and what
/// the workload printed.
fn record_probes(
    w: &mut harness::Guard,
    dir: &std::path::Path,
    name: &str,
    link: &str,
    extra: &[&str],
) -> (String, Vec<Sample>, String) {
    let out = dir.join(format!("{name}.pb.gz"));
    let pid = w.pid().to_string();
    let mut args = vec!["record", "-p", &pid, "-d", "60s", "--probe", link];
    args.extend_from_slice(extra);
    args.extend(["-o", out.to_str().unwrap()]);
    let said = record_signalled(w, &args);
    let probe_path = dir.join(format!("{name}.uprobe.pb.gz"));
    assert!(
        said.contains(probe_path.to_str().unwrap()),
        "record names the probe file"
    );
    let stdout = w.expect_success(Duration::from_secs(30));
    (said, read_samples(&probe_path), stdout)
}

/// Records the malloc fixture (20000 rounds: 60000 calls from alloc_a, 20000 from alloc_b)
/// with probe `link`; returns the probe profile's samples and the true counts.
fn count_mallocs(link: &str) -> (Vec<Sample>, i64, i64) {
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(dir.path(), "probes/mallocs.c", "mallocs", &[]);
    let mut w = signalled_workload(Command::new(&exe).arg("20000"));
    let (_, samples, stdout) = record_probes(&mut w, dir.path(), "m", link, &[]);
    (samples, printed(&stdout, "a"), printed(&stdout, "b"))
}

fn check_counts(what: &str, samples: &[Sample], a: i64, b: i64) {
    let got_a = total_with(samples, &["alloc_a"]);
    let got_b = total_with(samples, &["alloc_b"]);
    for (name, got, want) in [("alloc_a", got_a, a), ("alloc_b", got_b, b)] {
        assert!(
            (got - want).abs() as f64 <= 0.1 * want as f64,
            "{what}: {got} hits under {name}, it called malloc {want} times\n{}",
            show(samples)
        );
    }
    // Whole stacks: every hit of the two chains goes down to main.
    let whole = samples
        .iter()
        .filter(|s| (s.has("alloc_a") || s.has("alloc_b")) && s.has("main"))
        .map(|s| s.count)
        .sum::<i64>();
    assert!(
        whole * 100 >= (got_a + got_b) * 99,
        "{what}: {whole} of {} hits have the whole stack\n{}",
        got_a + got_b,
        show(samples)
    );
}

#[test]
fn a_uprobe_on_malloc_counts_the_calls_of_each_chain() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (samples, a, b) = count_mallocs("uprobe:libc.so.6:malloc");
    check_counts("uprobe", &samples, a, b);
    assert!(
        samples
            .iter()
            .filter(|s| s.has("alloc_a"))
            .all(|s| s.frames[0].function.contains("malloc")),
        "an entry probe's leaf is malloc\n{}",
        show(&samples)
    );
}

#[test]
fn a_uretprobe_on_malloc_counts_the_returns_of_each_chain() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let libc_path = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib64/libc.so.6"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("libc.so.6");
    let (samples, a, b) = count_mallocs(&format!("uretprobe:{libc_path}:malloc"));
    check_counts("uretprobe", &samples, a, b);
}

#[test]
fn a_probe_on_a_library_loaded_later_fires_with_load_probe() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libfsplugin.so");
    harness::run_ok(
        Command::new("gcc")
            .args(["-O1", "-g", "-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(fixture("probes/plugin.c")),
        Duration::from_secs(60),
    );
    let exe = gcc(dir.path(), "probes/dlopener.c", "dlopener", &["-ldl"]);
    // Waits 1.5 s after the signal, dlopens the library, calls it for 3 s.
    let mut w = signalled_workload(Command::new(&exe).arg(&lib).args(["1.5", "3"]));
    let (_, samples, stdout) = record_probes(
        &mut w,
        dir.path(),
        "dl",
        "uprobe:libfsplugin.so:plugin_work",
        &["--load-probe"],
    );
    let calls = printed(&stdout, "calls");
    let hits = total_with(&samples, &["plugin_work"]);
    let under = samples
        .iter()
        .filter(|s| s.has("plugin_work") && s.has("call_plugin") && s.has("main"))
        .map(|s| s.count)
        .sum::<i64>();
    // The library is looked for once a second: the calls of its first second may be missed.
    assert!(
        hits <= calls && hits * 2 >= calls,
        "{hits} hits of {calls} calls\n{}",
        show(&samples)
    );
    assert!(
        under * 10 >= hits * 9,
        "{under} of {hits} hits have the whole stack\n{}",
        show(&samples)
    );
}

#[test]
fn bad_probe_links_are_one_clear_error_before_anything_starts() {
    if !can_run_bpf() {
        return;
    }
    let me = std::process::id().to_string();
    // A kernel probe: refused as such on a kernel without kprobes (this machine's); where
    // the kernel has them, a function it does not have is refused instead.
    let kernel_link = if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        ("kprobe:no_such_kernel_function_here", "kallsyms")
    } else {
        ("kprobe:do_sys_openat2", "CONFIG_KPROBES")
    };
    for (link, says) in [
        ("tracepoint:sched:sched_switch", "unknown probe type"),
        ("uprobe:/no/such/libfoo.so:f", "no file"),
        ("uprobe:libc.so.6:no_such_function_in_libc", "no function"),
        kernel_link,
        ("kretprobe:", "kprobe:FUNCTION"),
        ("uprobe:malloc", "uprobe:PATH:SYMBOL"),
    ] {
        let out = ferroscope(&["record", "-p", &me, "-d", "1s", "--probe", link]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{link} was accepted");
        assert!(
            err.contains(link) && err.contains(says),
            "{link}: the error names the link and says {says:?}: {err}"
        );
        assert!(
            !err.contains("sampling"),
            "{link}: nothing starts before the links are checked: {err}"
        );
    }
}

#[test]
fn the_agent_counts_probe_links_and_rewrites_u_probe_links() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(dir.path(), "probes/mallocs.c", "mallocs", &[]);
    // Long enough to outlast the agent's two rounds.
    let w = signalled_workload(Command::new(&exe).arg("2000000"));
    w.signal(libc::SIGUSR1);
    let libc_path = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib64/libc.so.6"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("libc.so.6");
    let run = run_agent(
        w.pid(),
        &format!("u_probe_links = [\"{libc_path}:malloc\"]"),
        "mallocs",
        2,
        Duration::from_secs(60),
    );
    assert!(!run.probes.is_empty(), "no probe profile was written");
    let p = &run.probes[0];
    let st = &p.sample_type[0];
    assert_eq!(
        (
            p.string_table[st.r#type as usize].as_str(),
            p.string_table[st.unit as usize].as_str()
        ),
        ("uprobe", "count")
    );
    let all: Vec<Sample> = run.probes.iter().flat_map(samples).collect();
    let (a, b) = (
        total_with(&all, &["alloc_a"]),
        total_with(&all, &["alloc_b"]),
    );
    let ratio = a as f64 / b.max(1) as f64;
    assert!(
        (2.7..=3.3).contains(&ratio),
        "alloc_a:alloc_b hits {a}:{b}\n{}",
        show(&all)
    );
    assert!(common::metric(&run.metrics, "ProbeHits_total") > 0.0);
}

#[test]
fn hits_over_the_rate_limit_are_counted_not_recorded() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(dir.path(), "probes/mallocs.c", "mallocs", &[]);
    let mut w = signalled_workload(Command::new(&exe).arg("20000"));
    let (said, samples, stdout) = record_probes(
        &mut w,
        dir.path(),
        "limited",
        "uprobe:libc.so.6:malloc",
        &["--probe-rate-limit", "1000"],
    );
    let calls = printed(&stdout, "a") + printed(&stdout, "b");
    let recorded: i64 = samples.iter().map(|s| s.count).sum();
    // "probes: N hits, M over the rate limit"
    let line = said
        .lines()
        .find(|l| l.contains("ferroscope: probes:"))
        .unwrap_or_else(|| panic!("no probes line in\n{said}"));
    let numbers: Vec<i64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (hits, limited) = (numbers[0], numbers[1]);
    // 80000 calls in about 0.4 s on 2 CPUs: at most 1000 a second per CPU are recorded (a
    // window starts at a CPU's first hit, so up to 2 windows per CPU).
    assert_eq!(hits, calls, "every call is a hit: {line}");
    assert!(
        recorded <= 4 * 1000 && recorded > 0,
        "{recorded} recorded at 1000 a second per CPU: {line}"
    );
    assert!(
        (recorded + limited - hits).abs() <= hits / 100,
        "a hit is recorded ({recorded}) or counted as over the limit: {line}"
    );
}
