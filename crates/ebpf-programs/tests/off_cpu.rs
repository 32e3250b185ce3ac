//! The off-CPU entry, loaded and attached for real: a process that sleeps is recorded as it
//! leaves the CPU, and the report of its return says how long it was off. Needs root; with
//! `FERROSCOPE_REQUIRE=1` (set by CI) a missing privilege fails the test instead of skipping.

#![allow(clippy::print_stderr)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferroscope_ebpf_abi::{Counter, PidEventKind, TRACE_IN_KERNEL, TRACE_OFF_CPU};
use ferroscope_ebpf_programs::{Build, OffCpuConfig, Sampler, SamplerConfig, UnwinderConfig};

fn bpf_available() -> bool {
    let on = |v: &str| std::env::var(v).is_ok_and(|v| v == "1" || v == "true");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if on("FERROSCOPE_REQUIRE") || on("CI") {
            panic!("FERROSCOPE_REQUIRE=1 but the tests do not run as root: eBPF tests cannot run");
        }
        eprintln!("SKIPPED: not root (set FERROSCOPE_REQUIRE=1 to fail instead)");
    }
    root
}

/// Starts a shell that waits for a line, then becomes `sleep 0.6` (same PID): the sampler
/// is attached before it sleeps.
fn sleeper() -> std::process::Child {
    Command::new("sh")
        .args(["-c", "read x; exec sleep 0.6"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap()
}

fn off_cpu_sleep_is_recorded_with_its_length(build: Build, unwinder: bool) {
    let mut child = sleeper();
    let pid = child.id();
    let mut sampler = Sampler::start(&SamplerConfig {
        off_cpu: Some(OffCpuConfig { threshold: 1.0 }),
        build: Some(build),
        unwinder: unwinder.then(UnwinderConfig::default),
        ..SamplerConfig::frame_pointers(19, Some(vec![pid]))
    })
    .unwrap_or_else(|e| panic!("sampler with off-CPU did not start ({build:?}): {e}"));
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(50));

    let mut records = Vec::new();
    sampler.drain(|r| {
        if r.header.pid == pid && r.header.flags & TRACE_OFF_CPU != 0 {
            records.push((r.header, r.kernel_frames().len()));
        }
    });
    let mut ends = Vec::new();
    sampler.drain_pid_events(|e, kind| {
        if kind == PidEventKind::OffCpuEnd && e.pid == pid {
            ends.push(e);
        }
    });
    let counters = sampler.counters().unwrap();
    assert!(
        !records.is_empty(),
        "no off-CPU record of the sleeper ({build:?}); counters {counters:?}"
    );
    assert!(
        records
            .iter()
            .all(|(h, kernel)| h.flags & TRACE_IN_KERNEL != 0 && *kernel > 0),
        "off-CPU records carry the kernel stack: {records:?}"
    );
    // Every end matches a record (same thread, same switch-out time); the longest is the
    // sleep.
    for e in &ends {
        assert!(
            records
                .iter()
                .any(|(h, _)| h.ktime_ns == e.address && h.tid == e.pid),
            "an end without its record: {e:?}"
        );
    }
    let longest = ends
        .iter()
        .map(|e| e.ktime_ns - e.address)
        .max()
        .unwrap_or(0);
    let secs = longest as f64 / 1e9;
    assert!(
        (0.55..0.9).contains(&secs),
        "the longest time off CPU was {secs:.3} s, the sleep was 0.6 s ({build:?})"
    );
    assert!(counters.get(Counter::OffCpuSampled) >= records.len() as u64);
    assert!(counters.get(Counter::OffCpuEnds) >= ends.len() as u64);
    assert_eq!(counters.get(Counter::OffCpuEndsLost), 0);
}

#[test]
fn off_cpu_records_a_sleep_and_its_length_in_the_loop_build() {
    if !bpf_available() {
        return;
    }
    off_cpu_sleep_is_recorded_with_its_length(Build::Loop, true);
}

#[test]
fn off_cpu_records_a_sleep_and_its_length_in_the_legacy_build() {
    if !bpf_available() {
        return;
    }
    off_cpu_sleep_is_recorded_with_its_length(Build::Legacy, true);
}

#[test]
fn off_cpu_works_with_frame_pointers_only() {
    if !bpf_available() {
        return;
    }
    off_cpu_sleep_is_recorded_with_its_length(Build::Loop, false);
}

#[test]
fn threshold_zero_records_nothing() {
    if !bpf_available() {
        return;
    }
    let mut child = sleeper();
    let pid = child.id();
    let mut sampler = Sampler::start(&SamplerConfig {
        off_cpu: Some(OffCpuConfig { threshold: 0.0 }),
        ..SamplerConfig::frame_pointers(19, Some(vec![pid]))
    })
    .unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    child.wait().unwrap();
    let mut n = 0;
    sampler.drain(|r| n += usize::from(r.header.flags & TRACE_OFF_CPU != 0));
    let counters = sampler.counters().unwrap();
    assert_eq!(n, 0);
    assert!(counters.get(Counter::OffCpuSwitches) > 0, "{counters:?}");
    assert_eq!(counters.get(Counter::OffCpuSampled), 0);
}
