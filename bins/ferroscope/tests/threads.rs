//! Thread names: every sample of `ferroscope record` carries a `thread_name` label, the
//! runtime's name for the thread where it has one (Python's `threading` names), else the
//! thread's own name (`pthread_setname_np`, its comm).
//!
//! They need root, gcc and pyenv's CPython 3.8, 3.11 and 3.13 (environment.md); with
//! `FERROSCOPE_REQUIRE=1` (CI) a missing one fails them.

#![allow(clippy::print_stderr)]

mod common;
use common::samples::{Sample, read_samples};
use common::{WORKLOAD_LIMIT, can_run_bpf, ferroscope, fixture, gcc};
use ferroscope_test_harness::{self as harness, Guard};

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Each test keeps the CPUs busy: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Records process `pid` for `seconds` with the real binary.
fn record(pid: u32, seconds: u32) -> Vec<Sample> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("threads.pb.gz");
    let result = ferroscope(&[
        "record",
        "-p",
        &pid.to_string(),
        "-d",
        &format!("{seconds}s"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(result.status.success(), "record failed");
    read_samples(&out)
}

/// For each thread (`tid` label) whose samples have `function`: how many samples, and the
/// `thread_name` labels they carry.
fn names_by_thread(
    samples: &[Sample],
    function: &str,
) -> BTreeMap<String, (i64, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (i64, BTreeSet<String>)> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.has(function)) {
        let tid = s.label("tid").expect("a tid label").to_owned();
        let e = out.entry(tid).or_default();
        e.0 += s.count;
        e.1.insert(s.label("thread_name").unwrap_or("<none>").to_owned());
    }
    out
}

/// Checks that the threads busy in `function` are exactly `expected`, each thread with one
/// name and at least a few samples.
fn check(what: &str, samples: &[Sample], function: &str, expected: &BTreeSet<String>) {
    let threads = names_by_thread(samples, function);
    let mut seen = BTreeSet::new();
    for (tid, (count, names)) in &threads {
        assert_eq!(
            names.len(),
            1,
            "{what}: thread {tid} has one name, not {names:?}"
        );
        assert!(*count >= 5, "{what}: thread {tid} has only {count} samples");
        let name = names.iter().next().unwrap();
        assert!(
            seen.insert(name.clone()),
            "{what}: two threads are named {name}: {threads:?}"
        );
    }
    assert_eq!(
        &seen, expected,
        "{what}: the busy threads' names: {threads:?}"
    );
}

/// A C program naming its threads with `pthread_setname_np`: each thread's samples carry
/// its name.
#[test]
fn threads_named_with_pthread_setname_np_carry_their_names() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(
        dir.path(),
        "c/named_threads.c",
        "named_threads",
        &["-pthread"],
    );
    let mut workload = Guard::spawn(&mut Command::new(&exe), WORKLOAD_LIMIT);
    workload.wait_for_line("ready", Duration::from_secs(30));
    let samples = record(workload.pid(), 3);
    drop(workload);
    let expected: BTreeSet<String> = (0..4).map(|i| format!("crunch-{i}")).collect();
    check("C", &samples, "spin", &expected);
}

/// Ten Python threads with `threading` names, busy in one function: each thread's samples
/// carry its own name (the OS names them all `python3.x` before 3.14).
fn python_threads(minor: u8) {
    if !can_run_bpf() {
        return;
    }
    let Some(python) = harness::cpython(minor) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut workload = Guard::spawn(
        Command::new(&python).arg(fixture("python/named_threads.py")),
        WORKLOAD_LIMIT,
    );
    workload.wait_for_line("ready", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(200));
    let samples = record(workload.pid(), 4);
    drop(workload);
    let expected: BTreeSet<String> = (0..10).map(|i| format!("CustomThreadName-{i}")).collect();
    check(&format!("CPython 3.{minor}"), &samples, "busy", &expected);
}

#[test]
fn python_3_8_threads_carry_their_threading_names() {
    python_threads(8);
}

#[test]
fn python_3_11_threads_carry_their_threading_names() {
    python_threads(11);
}

#[test]
fn python_3_13_threads_carry_their_threading_names() {
    python_threads(13);
}
