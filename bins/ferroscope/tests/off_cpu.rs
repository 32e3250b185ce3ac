//! Off-CPU profiles: `ferroscope record --off-cpu` and the agent's `off_cpu_threshold` record
//! where threads wait, weighed by the time until they run again, on the same unwinders as
//! CPU samples (native code and runtime frames alike).
//!
//! The workloads print `ready` and wait for SIGUSR1, sent once sampling runs, so that what
//! they report (the time they slept) is what the profile covers. They need root, gcc and
//! pyenv's CPython 3.8 and 3.12 (environment.md); with `FERROSCOPE_REQUIRE=1` (CI) a missing
//! one fails them.

#![allow(clippy::print_stderr)]

mod common;
use common::samples::{Sample, read_samples, samples, show, total_with};
use common::{can_run_bpf, fixture, gcc, record_signalled, run_agent, signalled_workload};
use ferroscope_test_harness as harness;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// The tests measure time: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The `slept_ns=N` a fixture printed.
fn slept_ns(stdout: &str) -> i64 {
    stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .trim_start_matches('|')
                .trim()
                .strip_prefix("slept_ns=")
        })
        .unwrap_or_else(|| panic!("no slept_ns= line in\n{stdout}"))
        .parse()
        .unwrap()
}

/// Records `workload` with `ferroscope record --off-cpu THRESHOLD -o DIR/NAME.pb.gz` (it
/// stops when the workload exits); returns the off-CPU profile's and the CPU profile's
/// samples and the slept time the workload printed.
fn record_off_cpu(
    w: &mut harness::Guard,
    dir: &std::path::Path,
    name: &str,
    threshold: &str,
) -> (Vec<Sample>, Vec<Sample>, i64) {
    let out = dir.join(format!("{name}.pb.gz"));
    let printed = record_signalled(
        w,
        &[
            "record",
            "-p",
            &w.pid().to_string(),
            "-d",
            "60s",
            "--off-cpu",
            threshold,
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let slept = slept_ns(&w.expect_success(Duration::from_secs(30)));
    let off_path = dir.join(format!("{name}.offcpu.pb.gz"));
    assert!(
        printed.contains(off_path.to_str().unwrap()),
        "record names the off-CPU file"
    );
    (read_samples(&off_path), read_samples(&out), slept)
}

#[test]
fn a_c_program_sleeping_in_a_chain_has_its_sleep_in_the_off_cpu_profile_only() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(dir.path(), "offcpu/sleeper.c", "sleeper", &["-pthread"]);
    let mut w = signalled_workload(Command::new(&exe).arg("2"));
    let (off, cpu, slept) = record_off_cpu(&mut w, dir.path(), "p", "1");
    let chain = total_with(&off, &["wait_mid", "wait_outer", "main"]);
    let ratio = chain as f64 / slept as f64;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "the sleeping chain has {chain} ns off CPU, the program slept {slept} ns ({ratio:.3})\n{}",
        show(&off)
    );
    // The stack as it left the CPU: the kernel's sleep under the chain, not the tracepoint's
    // own frames.
    assert!(
        off.iter()
            .filter(|s| s.has("wait_mid"))
            .all(|s| s.has("do_nanosleep") && !s.frames[0].function.starts_with("bpf_")),
        "{}",
        show(&off)
    );

    let cpu_total: i64 = cpu.iter().map(|s| s.count).sum();
    let cpu_sleeping = total_with(&cpu, &["wait_mid"]);
    assert!(
        cpu_total > 50 && total_with(&cpu, &["burn"]) * 10 >= cpu_total * 9,
        "the CPU profile is the burning thread's\n{}",
        show(&cpu)
    );
    assert!(
        cpu_sleeping * 50 <= cpu_total,
        "the sleeping chain has {cpu_sleeping} of {cpu_total} CPU samples\n{}",
        show(&cpu)
    );
}

/// Python 3.8 (the legacy eval-loop walker) and 3.12: the off-CPU stack of `time.sleep`
/// carries the Python frames that called it.
fn python_sleep_has_its_python_frames(minor: u8) {
    if !can_run_bpf() {
        return;
    }
    let Some(python) = harness::cpython(minor) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut w = signalled_workload(
        Command::new(&python)
            .arg(fixture("python/off_cpu_sleep.py"))
            .arg("2"),
    );
    let (off, _, slept) = record_off_cpu(&mut w, dir.path(), "py", "1");
    let with_frames = off
        .iter()
        .filter(|s| {
            let names = s.runtime_names();
            let mid = names.iter().position(|n| *n == "wait_mid");
            let outer = names.iter().position(|n| *n == "wait_outer");
            matches!((mid, outer), (Some(m), Some(o)) if m < o)
        })
        .map(|s| s.count)
        .sum::<i64>();
    let ratio = with_frames as f64 / slept as f64;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "Python {minor}: {with_frames} ns off CPU under wait_mid < wait_outer, {slept} ns \
         slept ({ratio:.3})\n{}",
        show(&off)
    );
}

#[test]
fn python_3_8_time_sleep_is_off_cpu_under_its_python_frames() {
    python_sleep_has_its_python_frames(8);
}

#[test]
fn python_3_12_time_sleep_is_off_cpu_under_its_python_frames() {
    python_sleep_has_its_python_frames(12);
}

#[test]
fn a_threshold_records_about_that_share_of_the_switches() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(dir.path(), "offcpu/sleeper.c", "sleeper", &["-pthread"]);
    let mut w = signalled_workload(Command::new(&exe).arg("3"));
    let (off, _, slept) = record_off_cpu(&mut w, dir.path(), "half", "0.5");
    // About 150 sleeps, each recorded with probability 1/2: the sum's standard deviation is
    // about 4 % of the slept time.
    let ratio = total_with(&off, &["wait_mid"]) as f64 / slept as f64;
    assert!(
        (0.3..=0.7).contains(&ratio),
        "at 0.5, {ratio:.3} of the sleep was recorded\n{}",
        show(&off)
    );
}

#[test]
fn the_agent_pushes_off_cpu_profiles_as_their_own_series() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(dir.path(), "offcpu/sleeper.c", "sleeper", &["-pthread"]);
    let w = signalled_workload(Command::new(&exe).arg("30"));
    w.signal(libc::SIGUSR1);
    let run = run_agent(
        w.pid(),
        "off_cpu_threshold = 1",
        "sleeper",
        2,
        Duration::from_secs(60),
    );
    assert!(!run.off_cpu.is_empty(), "no off-CPU profile was written");
    let p = &run.off_cpu[run.off_cpu.len() - 1];
    let st = &p.sample_type[0];
    assert_eq!(
        (
            p.string_table[st.r#type as usize].as_str(),
            p.string_table[st.unit as usize].as_str()
        ),
        ("offcpu", "nanoseconds")
    );
    let off: Vec<Sample> = run.off_cpu.iter().flat_map(samples).collect();
    let chain = total_with(&off, &["wait_mid", "wait_outer"]);
    // The sleeping thread is off CPU nearly all the time each profile covers (its own
    // duration: the first starts before the target is in the filter, the last is cut short
    // by the stop, so not every profile covers 2 s); one sleep may fall across two.
    let covered: i64 = run.off_cpu.iter().map(|p| p.duration_nanos).sum();
    assert!(
        chain as f64 >= 0.8 * covered as f64 - 2e9,
        "{chain} ns in {} off-CPU profiles covering {covered} ns\n{}",
        run.off_cpu.len(),
        show(&off)
    );
    let cpu: Vec<Sample> = run.profiles.iter().flat_map(samples).collect();
    assert!(cpu.iter().any(|s| s.has("burn")), "{}", show(&cpu));
    assert!(common::metric(&run.metrics, "OffCpuSampled_total") > 0.0);
}
