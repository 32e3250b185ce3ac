//! `record --children`: the processes a profiled process starts are profiled too, followed
//! in the kernel from their fork (a shell starting Python after sampling began, a
//! multiprocessing pool), with their Python frames.
//!
//! They need root and CPython 3.12 and 3.13 (pyenv's builds, see environment.md); with
//! `FERROSCOPE_REQUIRE=1` (CI) a missing one fails them.

#![allow(clippy::print_stderr)]

mod common;
use common::samples::{Sample, read_samples, samples};
use common::{FERROSCOPE_LIMIT, WORKLOAD_LIMIT, can_run_bpf, ferroscope, fixture, run_agent};
use ferroscope_test_harness::{self as harness, Guard};

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Each test keeps the CPUs busy: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Samples by process, with how many of them have any of `functions` among their frames.
fn by_process(samples: &[Sample], functions: &[&str]) -> BTreeMap<u32, (i64, i64)> {
    let mut out: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
    for s in samples {
        let Some(pid) = s.pid() else { continue };
        let e = out.entry(pid).or_default();
        e.0 += s.count;
        if functions.iter().any(|f| s.has(f)) {
            e.1 += s.count;
        }
    }
    out
}

fn show(samples: &[Sample]) -> String {
    let mut lines: Vec<(i64, String)> = samples
        .iter()
        .map(|s| {
            (
                s.count,
                format!(
                    "{:>5} pid {:>7} {}",
                    s.count,
                    s.label("pid").unwrap_or("?"),
                    s.frames
                        .iter()
                        .map(|f| f.function.as_str())
                        .collect::<Vec<_>>()
                        .join(" < ")
                ),
            )
        })
        .collect();
    lines.sort_by_key(|l| std::cmp::Reverse(l.0));
    lines
        .into_iter()
        .take(15)
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A shell that waits for a flag file, then starts a busy Python program (and keeps forking
/// `sleep`s while it waits): `record --pid SHELL --children` started before the flag was
/// set shows the Python child with its Python frames, though it did not exist when
/// sampling began; without `--children` the same recording has no sample of it.
#[test]
fn a_python_program_a_shell_starts_after_sampling_began_is_profiled() {
    if !can_run_bpf() {
        return;
    }
    let Some(python) = harness::cpython(12) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for children in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("go");
        let mut shell = Guard::spawn(
            Command::new("sh")
                .arg("-c")
                .arg(r#"while [ ! -e "$0" ]; do sleep 0.05; done; "$1" "$2" > /dev/null; true"#)
                .arg(&flag)
                .arg(&python)
                .arg(fixture("python/chains.py")),
            WORKLOAD_LIMIT,
        );
        let out = dir.path().join("children.pb.gz");
        let pid = shell.pid().to_string();
        let mut args = vec!["record", "-p", &pid, "-d", "6s", "-o"];
        args.push(out.to_str().unwrap());
        if children {
            args.push("--children");
        }
        let mut record = Guard::spawn(
            Command::new(env!("CARGO_BIN_EXE_ferroscope"))
                .args(&args)
                .env("RUST_LOG", "warn,ferroscope_agent::record=debug"),
            FERROSCOPE_LIMIT,
        );
        let start = Instant::now();
        while !record
            .stderr_tail()
            .contains("sampling these processes from now on")
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "record did not start sampling in 60 s\n{}",
                record.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(1));
        std::fs::write(&flag, b"").unwrap();
        let status = record.wait(FERROSCOPE_LIMIT);
        eprintln!(
            "--- record (children: {children})\n{}",
            record.stderr_tail()
        );
        assert!(status.success(), "record failed");
        assert!(shell.running(), "the shell ran the whole time");
        drop(shell);

        let samples = read_samples(&out);
        let procs = by_process(&samples, &["chain_a", "chain_b"]);
        let shell_pid: u32 = pid.parse().unwrap();
        let python: Vec<(u32, (i64, i64))> = procs
            .iter()
            .filter(|(p, (_, with))| **p != shell_pid && *with > 0)
            .map(|(p, c)| (*p, *c))
            .collect();
        if !children {
            assert!(
                procs.keys().all(|&p| p == shell_pid),
                "without --children only the shell is sampled: {procs:?}\n{}",
                show(&samples)
            );
            continue;
        }
        assert_eq!(
            python.len(),
            1,
            "one Python child with its frames: {procs:?}\n{}",
            show(&samples)
        );
        let (child, (total, with)) = python[0];
        // About 5 s of one busy CPU at 97 Hz: ~480 samples.
        assert!(total >= 150, "only {total} samples of the child {child}");
        assert!(
            with as f64 >= 0.95 * total as f64,
            "{with} of the child's {total} samples have its Python chain\n{}",
            show(&samples)
        );
    }
}

/// A multiprocessing pool of two busy workers started before the recording: `record --pid
/// PARENT --children` has the parent and both workers, each with its own Python frames.
fn pool(minor: u8) {
    if !can_run_bpf() {
        return;
    }
    let Some(python) = harness::cpython(minor) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut parent = Guard::spawn(
        Command::new(&python).arg(fixture("python/pool.py")),
        WORKLOAD_LIMIT,
    );
    parent.wait_for_line("ready", Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pool.pb.gz");
    let pid = parent.pid().to_string();
    let result = ferroscope(&[
        "record",
        "-p",
        &pid,
        "--children",
        "-d",
        "4s",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(result.status.success(), "record failed");
    drop(parent);

    let samples = read_samples(&out);
    let workers = by_process(&samples, &["worker_loop"]);
    let parents = by_process(&samples, &["parent_loop"]);
    let parent_pid: u32 = pid.parse().unwrap();
    let busy_workers: BTreeSet<u32> = workers
        .iter()
        .filter(|(_, (total, with))| *total >= 100 && *with as f64 >= 0.95 * *total as f64)
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(
        busy_workers.len(),
        2,
        "3.{minor}: two workers, each with >= 100 samples, >= 95 % of them in worker_loop: \
         {workers:?}\n{}",
        show(&samples)
    );
    assert!(!busy_workers.contains(&parent_pid));
    let (total, with) = parents.get(&parent_pid).copied().unwrap_or_default();
    assert!(
        total >= 100 && with as f64 >= 0.95 * total as f64,
        "3.{minor}: the parent's {total} samples, {with} in parent_loop\n{}",
        show(&samples)
    );
}

#[test]
fn multiprocessing_pool_workers_are_profiled_with_children_3_12() {
    pool(12);
}

#[test]
fn multiprocessing_pool_workers_are_profiled_with_children_3_13() {
    pool(13);
}

/// The agent with `follow_children = true`: a Python program that a `__process_pid__`
/// target (a shell) starts while the agent runs is profiled as the shell's target, with its
/// Python frames.
#[test]
fn the_agent_profiles_what_a_pid_target_starts_as_that_target() {
    if !can_run_bpf() {
        return;
    }
    let Some(python) = harness::cpython(12) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let shell = Guard::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(r#"sleep 4; "$0" "$1" > /dev/null; true"#)
            .arg(&python)
            .arg(fixture("python/chains.py")),
        WORKLOAD_LIMIT,
    );
    let shell_pid = shell.pid();
    let run = run_agent(
        shell_pid,
        "follow_children = true\npid_label = true",
        "sh",
        6,
        Duration::from_secs(90),
    );
    drop(shell);
    let all: Vec<Sample> = run.profiles.iter().flat_map(samples).collect();
    let procs = by_process(&all, &["chain_a", "chain_b"]);
    let children: Vec<_> = procs
        .iter()
        .filter(|(p, (_, with))| **p != shell_pid && *with > 0)
        .collect();
    assert_eq!(
        children.len(),
        1,
        "the shell's Python child, under the shell's target: {procs:?}\n{}",
        show(&all)
    );
    let (_, (total, with)) = children[0];
    assert!(*total >= 50, "only {total} samples of the child");
    // The child's first samples come before its tables and its interpreter are loaded
    // (it is a new process, found at its first sample): most, not all, have the chain.
    assert!(
        *with as f64 >= 0.5 * *total as f64,
        "{with} of the child's {total} samples have its Python chain\n{}",
        show(&all)
    );
}
