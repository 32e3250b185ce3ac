//! `threading` thread names through the plug-in, on live CPython processes (3.6-3.15): ten
//! named threads and the main thread each resolved by OS thread ID (from `/proc/PID/task`), a
//! thread started with `_thread` (no `threading.Thread`) and unknown IDs resolved to nothing.
#![allow(clippy::print_stderr)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ferroscope_test_harness::Guard;
use ferroscope_unwind_api::{AttachContext, Interpreter, RemoteMemory};
use ferroscope_unwind_python::{Python, threading_threads};
use serde_json::Value;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/scripts/named_threads.py"
);

#[derive(Debug, Clone, Copy)]
enum Build {
    Pyenv(u8),
    Debian(u8),
}

fn tids(pid: u32) -> Vec<u32> {
    let mut t: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read /proc/PID/task")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    t.sort_unstable();
    t
}

fn names(build: Build) {
    let (minor, debian) = match build {
        Build::Pyenv(m) => (m, false),
        Build::Debian(m) => (m, true),
    };
    let test = format!(
        "thread_names_3_{minor}{}",
        if debian { "_debian" } else { "" }
    );
    let (mut cmd, runtime_file, _keep): (Command, PathBuf, Box<dyn std::any::Any>) = if debian {
        let Some(py) = common::debian::debian_python(minor) else {
            return;
        };
        let (chroot, _) = py.runtime.chroot.as_ref().expect("a chroot runtime");
        let inside = chroot.copy_in(std::path::Path::new(SCRIPT));
        let mut cmd = py.runtime.command();
        cmd.arg(&inside);
        let exe = py.exe().to_path_buf();
        (cmd, exe, Box::new(py))
    } else {
        let Some(py) = common::python(minor) else {
            return;
        };
        let mut cmd = Command::new(&py.exe);
        cmd.arg(SCRIPT);
        (cmd, py.lib.clone(), Box::new(()))
    };
    let data = std::fs::read(&runtime_file).expect("read the runtime's file");
    let elf = common::Elf::new(&runtime_file.to_string_lossy(), &data);
    let plugin = Python::default();
    let file_data = plugin
        .detect(&elf)
        .unwrap_or_else(|e| panic!("{test}: {e}"))
        .unwrap_or_else(|| panic!("{test}: {} is not detected", runtime_file.display()));

    let mut child = Guard::spawn(cmd.stdin(Stdio::piped()), Duration::from_secs(120));
    let pid = child.pid();
    let line = child
        .next_line(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{test}: the script closed its stdout without a line"));
    let info: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("{test}: bad JSON from the script ({e}): {line:?}"));
    let want: HashMap<u32, String> = info["names"]
        .as_object()
        .expect("names")
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_owned()))
        .collect();
    let bare = info["bare"].as_u64().map(|t| t as u32);

    let file = object::File::parse(&*data).expect("parse the runtime's file");
    let bias = common::load_bias(pid, &runtime_file, &file);
    let memory = Arc::new(RemoteMemory::new(pid));
    let mut process = plugin
        .attach(
            &file_data,
            &AttachContext {
                pid,
                path: &runtime_file.to_string_lossy(),
                bias,
                mappings: &[],
                memory,
            },
        )
        .unwrap_or_else(|e| panic!("{test}: attach: {e}"));

    let all = tids(pid);
    let got: HashMap<u32, Option<String>> =
        all.iter().map(|&t| (t, process.thread_name(t))).collect();
    eprintln!("{test}: {got:?}");
    assert_eq!(want.len(), 11, "{test}: the script's threads: {want:?}");
    let mut expected: Vec<&str> = want.values().map(String::as_str).collect();
    expected.sort_unstable();
    let mut workers: Vec<String> = (0..10).map(|i| format!("worker-{i}")).collect();
    workers.push("MainThread".into());
    workers.sort_unstable();
    assert_eq!(expected, workers, "{test}: the script's names");
    for tid in &all {
        let expect = want.get(tid).cloned();
        assert_eq!(got[tid], expect, "{test}: thread {tid}");
    }
    assert_eq!(got[&pid].as_deref(), Some("MainThread"), "{test}: main");
    let bare = bare.expect("the _thread thread's native id");
    assert!(all.contains(&bare), "{test}: the _thread thread is a task");
    assert_eq!(
        got[&bare], None,
        "{test}: a thread without threading.Thread"
    );
    // Unknown threads have no name, and asking again is answered from the cache.
    assert_eq!(process.thread_name(0), None);
    assert_eq!(process.thread_name(u32::MAX), None);
    assert_eq!(process.thread_name(pid).as_deref(), Some("MainThread"));
    // The reader under the plug-in: idents are the threads' pthread_self (non-zero, distinct).
    let py = file_data
        .downcast_ref::<ferroscope_unwind_python::PythonFile>()
        .unwrap();
    let head = ferroscope_unwind_python::ebpf_proc(py, bias).interp_head;
    let threads = threading_threads(&RemoteMemory::new(pid), &py.layout, head).unwrap();
    assert_eq!(threads.len(), 11, "{test}: {threads:?}");
    let mut idents: Vec<u64> = threads.iter().map(|t| t.ident).collect();
    idents.sort_unstable();
    idents.dedup();
    assert_eq!(idents.len(), 11, "{test}: idents {threads:x?}");
    assert!(idents.iter().all(|&i| i > 0xffff), "{test}: {threads:x?}");
    drop(child);
}

#[test]
fn thread_names_3_6() {
    names(Build::Pyenv(6));
}
#[test]
fn thread_names_3_7() {
    names(Build::Pyenv(7));
}
#[test]
fn thread_names_3_8() {
    names(Build::Pyenv(8));
}
#[test]
fn thread_names_3_9() {
    names(Build::Pyenv(9));
}
#[test]
fn thread_names_3_10() {
    names(Build::Pyenv(10));
}
#[test]
fn thread_names_3_11() {
    names(Build::Pyenv(11));
}
#[test]
fn thread_names_3_12() {
    names(Build::Pyenv(12));
}
#[test]
fn thread_names_3_13() {
    names(Build::Pyenv(13));
}
#[test]
fn thread_names_3_13_debian() {
    names(Build::Debian(13));
}
#[test]
fn thread_names_3_14_debian() {
    names(Build::Debian(14));
}
#[test]
fn thread_names_3_15_debian() {
    names(Build::Debian(15));
}
