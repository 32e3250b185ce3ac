//! End-to-end tests of `ferroscope record` against real processes: the real binary, the
//! real eBPF sampler, real C programs compiled for the test, and the pprof it writes.
//!
//! They need root. With `FERROSCOPE_REQUIRE=1` (CI) running without root fails them.

#![allow(clippy::print_stderr)]

mod common;
use common::{FERROSCOPE_LIMIT, Workload, can_run_bpf, ferroscope, fixture};
use ferroscope_test_harness::{self as harness, Guard};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use ferroscope_pprof::proto::Profile;

/// Each test keeps the CPUs busy and measures CPU shares: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Compiles a fixture with frame pointers into `dir`.
fn compile(dir: &Path, source: &str, exe: &str) -> PathBuf {
    let out = dir.join(exe);
    harness::run_ok(
        Command::new("gcc")
            .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&out)
            .arg(fixture(&format!("c/{source}"))),
        Duration::from_secs(120),
    );
    out
}

fn read_profile(path: &Path) -> Profile {
    ferroscope_pprof::decode(&std::fs::read(path).unwrap()).expect("a valid pprof")
}

/// A decoded sample: function names leaf first, value, labels.
type Sample = (Vec<String>, i64, Vec<(String, String)>);

fn samples(p: &Profile) -> Vec<Sample> {
    let s = |i: i64| p.string_table[i as usize].clone();
    let function_name = |id: u64| {
        p.function
            .iter()
            .find(|f| f.id == id)
            .map(|f| s(f.name))
            .unwrap()
    };
    p.sample
        .iter()
        .map(|sample| {
            let mut names = Vec::new();
            for loc_id in &sample.location_id {
                let loc = p.location.iter().find(|l| l.id == *loc_id).unwrap();
                for line in &loc.line {
                    names.push(function_name(line.function_id));
                }
            }
            let labels = sample.label.iter().map(|l| (s(l.key), s(l.str))).collect();
            (names, sample.value[0], labels)
        })
        .collect()
}

/// True when `chain` appears in `stack` as consecutive frames.
fn has_chain(stack: &[String], chain: &[&str]) -> bool {
    stack
        .windows(chain.len())
        .any(|w| w.iter().zip(chain).all(|(a, b)| a == b))
}

#[test]
fn two_chains_by_pid_have_the_right_stacks_ratio_and_sample_count() {
    // At 499 Hz the 5 s give ~2,500 samples: the ratio's sampling noise (about 5 %) stays
    // well inside the 25 % allowed (at 97 Hz it was about 10 %, and the test failed now and
    // then).
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "two_chains.c", "two_chains");
    let work = Workload::start(&exe, &[]);
    let out_path = dir.path().join("p.pb.gz");
    let svg = dir.path().join("f.svg");
    let pid = work.pid().to_string();
    // Follow the workload's CPU time while ferroscope runs, to know how much CPU it got
    // inside the sampling window that the profile reports.
    let (out, cpu_log) = common::cpu::logging_cpu(&[work.pid()], || {
        ferroscope(&[
            "record",
            "--pid",
            &pid,
            "--duration",
            "5s",
            "--sample-rate",
            "499",
            "--output",
            out_path.to_str().unwrap(),
            "--flamegraph",
            svg.to_str().unwrap(),
        ])
    });
    assert!(out.status.success(), "ferroscope record failed");

    let p = read_profile(&out_path);
    let cpu = cpu_log.in_window(0, &p);
    assert_eq!(p.period, 1_000_000_000 / 499);
    let samples = samples(&p);
    let count: i64 = samples.iter().map(|s| s.1).sum::<i64>() / p.period;

    // Leaf to root, in order.
    let alpha = [
        "alpha_work",
        "alpha_inner",
        "alpha_outer",
        "run_forever",
        "main",
    ];
    let beta = [
        "beta_work",
        "beta_inner",
        "beta_outer",
        "run_forever",
        "main",
    ];
    let value_of = |chain: &[&str]| -> i64 {
        samples
            .iter()
            .filter(|(names, _, _)| has_chain(names, chain))
            .map(|s| s.1)
            .sum()
    };
    let (a, b) = (value_of(&alpha), value_of(&beta));
    assert!(
        a > 0 && b > 0,
        "both chains must appear leaf to root: alpha {a}, beta {b}"
    );
    let ratio = a as f64 / b as f64;
    assert!(
        (2.25..=3.75).contains(&ratio),
        "alpha:beta = {ratio:.2}, expected 3 within 25%"
    );
    // Nearly all of the time is in the two chains.
    let total: i64 = samples.iter().map(|s| s.1).sum();
    assert!(
        (a + b) as f64 >= 0.9 * total as f64,
        "chains {a}+{b} of {total}"
    );

    // Samples: rate x time on CPU (what the process really got) within 10 %.
    let expected = 499.0 * cpu.as_secs_f64();
    assert!(
        (count as f64 - expected).abs() <= 0.1 * expected,
        "{count} samples, expected {expected:.0} (499 Hz x {:.2} s of CPU)",
        cpu.as_secs_f64()
    );

    // Labels on every sample.
    for (_, _, labels) in &samples {
        let get = |k: &str| {
            labels
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("pid"), Some(pid.as_str()));
        assert_eq!(get("tid"), Some(pid.as_str()));
        assert_eq!(get("comm"), Some("two_chains"));
    }
    // The mapping of the executable carries its file name and build ID.
    let s = |i: i64| p.string_table[i as usize].as_str();
    let main_map = p
        .mapping
        .iter()
        .find(|m| s(m.filename) == "two_chains")
        .expect("a mapping for the executable");
    assert!(
        !s(main_map.build_id).is_empty(),
        "build ID of the executable"
    );

    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains("alpha_work") && svg.contains("beta_work"),
        "flame graph names the hot functions"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("top 10 functions by self time") && stdout.contains("alpha_work"),
        "{stdout}"
    );
}

#[test]
fn kernel_frames_join_user_frames_in_syscalls() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "syscalls.c", "syscalls");
    let work = Workload::start(&exe, &[]);
    let out_path = dir.path().join("k.pb.gz");
    let pid = work.pid().to_string();
    let out = ferroscope(&[
        "record",
        "-p",
        &pid,
        "-d",
        "3",
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let p = read_profile(&out_path);
    let samples = samples(&p);
    let total: i64 = samples.iter().map(|s| s.1).sum();
    let s = |i: i64| p.string_table[i as usize].as_str();
    let kernel_functions: std::collections::HashSet<u64> = p
        .location
        .iter()
        .filter(|l| {
            p.mapping
                .iter()
                .any(|m| m.id == l.mapping_id && s(m.filename) == "vmlinux")
        })
        .flat_map(|l| l.line.iter().map(|line| line.function_id))
        .collect();
    assert!(
        !kernel_functions.is_empty(),
        "kernel locations use the vmlinux mapping"
    );

    // Kernel frames at the leaf end, then the user chain in order, copy_once included: libc's
    // read and write have no frame pointer, but the stack-delta unwinder uses their CFI
    // (a frame-pointer walk skipped their caller).
    let user = ["copy_once", "io_loop", "main"];
    let is_libc_io = |n: &str| {
        ["read", "write", "__read", "__write"].contains(&n)
            || n.ends_with("libc_read")
            || n.ends_with("libc_write")
    };
    let mut joined = 0;
    for (names, value, _) in &samples {
        let Some(first_user) = names.iter().position(|n| is_libc_io(n)) else {
            continue;
        };
        // A syscall entry point must be among the kernel frames (the kernel's own unwinder
        // occasionally gives up early, e.g. in a retpoline thunk: such samples do not count).
        let kernel_part = &names[..first_user];
        let has_entry = kernel_part
            .iter()
            .any(|n| n.contains("syscall") || n.starts_with("__x64_sys") || n.starts_with("ksys_"));
        if first_user > 0 && has_entry && has_chain(&names[first_user + 1..], &user) {
            joined += value;
        }
    }
    assert!(
        joined as f64 >= 0.5 * total as f64,
        "kernel+user stacks are {joined} of {total}"
    );
    let names: Vec<&String> = samples.iter().flat_map(|s| s.0.iter()).collect();
    assert!(
        names.iter().any(|n| [
            "read_zero",
            "ksys_read",
            "vfs_read",
            "write_null",
            "ksys_write",
            "vfs_write"
        ]
        .contains(&n.as_str())),
        "the read/write paths are named"
    );
}

#[test]
fn whole_host_sees_several_busy_processes() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let a = Workload::start(&compile(dir.path(), "two_chains.c", "busy_one"), &[]);
    let b = Workload::start(&compile(dir.path(), "syscalls.c", "busy_two"), &[]);
    let out_path = dir.path().join("h.pb.gz");
    let (out, cpu_log) = common::cpu::logging_cpu(&[a.pid(), b.pid()], || {
        ferroscope(&["record", "-d", "3s", "-o", out_path.to_str().unwrap()])
    });
    assert!(out.status.success());
    let p = read_profile(&out_path);
    let used = [cpu_log.in_window(0, &p), cpu_log.in_window(1, &p)];
    let samples = samples(&p);
    let pid_value = |pid: u32| -> i64 {
        let pid = pid.to_string();
        samples
            .iter()
            .filter(|s| s.2.iter().any(|(k, v)| k == "pid" && *v == pid))
            .map(|s| s.1)
            .sum()
    };
    for ((w, name), used) in [(&a, "busy_one"), (&b, "busy_two")].into_iter().zip(used) {
        // Each is always busy: it is sampled for the CPU time it got inside the sampling
        // window, however loaded the machine.
        let v = pid_value(w.pid()) / p.period;
        assert!(
            used > Duration::from_millis(300),
            "{name} ran only {used:?} while recorded: the machine is too busy for this test"
        );
        let expected = used.as_secs_f64() * 97.0;
        assert!(
            (v as f64 - expected).abs() <= 0.25 * expected,
            "{name} has {v} samples for {used:?} of CPU in the window ({expected:.0} expected, within 25 %)"
        );
        // In whole-host mode each stack's root frame is its process's comm.
        assert!(
            samples
                .iter()
                .any(|(names, _, _)| names.last().map(String::as_str) == Some(name))
        );
    }
}

#[test]
fn bad_input_is_refused_before_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferroscope(&["record", "--pid", "999999999", "-d", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("process 999999999 does not exist"));

    let out = ferroscope(&["record", "--sample-rate", "5000", "-d", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sample rate 5000 Hz is out of range"));

    let out = ferroscope(&["record", "-d", "1", "-o", "/nonexistent-dir/p.pb.gz"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write /nonexistent-dir/p.pb.gz"),
        "{err}"
    );
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause is printed once: {err}"
    );

    let out = ferroscope(&["record", "-d", "10x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
    drop(dir);
}

#[test]
fn interrupt_stops_early_and_still_writes() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let work = Workload::start(&compile(dir.path(), "two_chains.c", "two_chains"), &[]);
    let out_path = dir.path().join("i.pb.gz");
    let start = std::time::Instant::now();
    let mut child = Guard::spawn(
        Command::new(env!("CARGO_BIN_EXE_ferroscope")).args([
            "record",
            "-p",
            &work.pid().to_string(),
            "-d",
            "60s",
            "-o",
            out_path.to_str().unwrap(),
        ]),
        FERROSCOPE_LIMIT,
    );
    std::thread::sleep(Duration::from_secs(2));
    child.signal(libc::SIGINT);
    let status = child.wait(Duration::from_secs(13));
    let stderr = child.stderr_tail();
    assert!(status.success(), "{stderr}");
    // Well before the 60 s asked for (start-up on a loaded machine can take seconds).
    assert!(start.elapsed() < Duration::from_secs(30), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let p = read_profile(&out_path);
    assert!(!p.sample.is_empty());
}

/// Puts a CPU back online when dropped (the test takes it offline).
struct CpuBackOnline(PathBuf);

impl Drop for CpuBackOnline {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "1");
    }
}

/// A CPU that comes online after sampling started is sampled too: with CPU 1 offline at
/// the start, a process pinned to it once it is back gets its samples.
#[test]
fn a_cpu_that_comes_online_later_is_sampled() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let online = PathBuf::from("/sys/devices/system/cpu/cpu1/online");
    if !online.exists() {
        harness::require::skip("CPU 1 cannot be taken offline on this machine (no cpu1/online)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "two_chains.c", "pinned_late");
    let out_path = dir.path().join("cpu.pb.gz");
    std::fs::write(&online, "0").expect("take CPU 1 offline");
    let back = CpuBackOnline(online.clone());
    let mut record = Guard::spawn(
        Command::new(env!("CARGO_BIN_EXE_ferroscope")).args([
            "record",
            "-d",
            "8s",
            "-o",
            out_path.to_str().unwrap(),
        ]),
        FERROSCOPE_LIMIT,
    );
    // Sampling has started once the first progress line is out.
    let started = std::time::Instant::now();
    while !record.stderr_tail().contains(" samples ") {
        assert!(
            started.elapsed() < Duration::from_secs(120) && record.running(),
            "sampling did not start: {}",
            record.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(back);
    assert_eq!(std::fs::read_to_string(&online).unwrap().trim(), "1");
    // The session looks at the online CPUs every 2 s.
    std::thread::sleep(Duration::from_secs(1));
    let pinned = Workload::start(
        Path::new("/usr/bin/taskset"),
        &["-c", "1", exe.to_str().unwrap()],
    );
    let status = record.wait(FERROSCOPE_LIMIT);
    assert!(status.success(), "{}", record.stderr_tail());
    let p = read_profile(&out_path);
    let pid = pinned.pid().to_string();
    let n: i64 = samples(&p)
        .iter()
        .filter(|s| s.2.iter().any(|(k, v)| k == "pid" && *v == pid))
        .map(|s| s.1)
        .sum::<i64>()
        / p.period;
    assert!(n > 50, "the process pinned to CPU 1 has {n} samples");
}
