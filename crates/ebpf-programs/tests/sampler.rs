//! Loads and attaches the real sampler. Needs root (or CAP_BPF + CAP_PERFMON); with
//! `FERROSCOPE_REQUIRE_BPF=1` (set by CI) a missing privilege fails the test instead of
//! skipping it.

#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use ferroscope_ebpf_programs::abi::TRACE_IN_KERNEL;
use ferroscope_ebpf_programs::{Sampler, SamplerConfig};

fn bpf_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if std::env::var_os("FERROSCOPE_REQUIRE_BPF").is_some_and(|v| v == "1") {
            panic!(
                "FERROSCOPE_REQUIRE_BPF=1 but the tests do not run as root: eBPF tests cannot run"
            );
        }
        eprintln!(
            "SKIPPED: not root, eBPF sampler tests need root (set FERROSCOPE_REQUIRE_BPF=1 to fail instead)"
        );
    }
    root
}

/// User + system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[test]
fn samples_only_the_filtered_process_at_the_requested_rate() {
    if !bpf_available() {
        return;
    }
    // A separate busy process, so that other tests running in this process do not count.
    let mut child = std::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let me = child.id();
    let mut sampler = Sampler::start(&SamplerConfig {
        sample_rate_hz: 200,
        pids: Some(vec![me]),
        unwinder: None,
    })
    .unwrap_or_else(|e| panic!("sampler did not start: {e}"));
    let cpu_before = cpu_seconds(me);
    std::thread::sleep(Duration::from_millis(1500));
    let cpu = cpu_seconds(me) - cpu_before;
    let mut events = Vec::new();
    sampler.drain(|e| events.push(*e));
    let counters = sampler.counters().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(
        events.iter().all(|e| e.pid == me),
        "only our PID passes the filter"
    );
    // One busy thread at 200 Hz: 200 samples per second of CPU it really got (on a loaded
    // machine that is less than the 1.5 s of wall time). /proc's CPU time has 10 ms ticks.
    let expected = 200.0 * cpu;
    let got = events.len() as f64;
    assert!(expected > 20.0, "the busy child got only {cpu:.2} s of CPU");
    assert!(
        (got - expected).abs() <= 0.15 * expected + 4.0,
        "got {got} samples, expected {expected:.0} (200 Hz x {cpu:.2} s of CPU)"
    );
    assert_eq!(counters.lost_ringbuf_full, 0);
    assert!(counters.sent >= events.len() as u64);
    let with_user = events
        .iter()
        .filter(|e| !e.user_frames().is_empty())
        .count();
    assert!(
        with_user * 10 >= events.len() * 9,
        "{with_user} of {} samples have a user stack",
        events.len()
    );
    assert!(
        events.iter().all(|e| e.comm_str() == "sh" && e.tid == me),
        "comm and tid of the child"
    );
}

#[test]
fn kernel_stacks_are_captured_in_syscalls() {
    if !bpf_available() {
        return;
    }
    let me = std::process::id();
    let mut sampler = Sampler::start(&SamplerConfig {
        sample_rate_hz: 500,
        pids: Some(vec![me]),
        unwinder: None,
    })
    .unwrap_or_else(|e| panic!("sampler did not start: {e}"));
    let start = Instant::now();
    let buf = vec![0u8; 1 << 16];
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let mut z = std::fs::File::open("/dev/zero").unwrap();
    let mut rbuf = vec![0u8; 1 << 16];
    use std::io::{Read, Write};
    while start.elapsed() < Duration::from_secs(1) {
        f.write_all(&buf).unwrap();
        z.read_exact(&mut rbuf).unwrap();
    }
    let mut in_kernel = 0;
    let mut with_both = 0;
    sampler.drain(|e| {
        if e.flags & TRACE_IN_KERNEL != 0 {
            in_kernel += 1;
            if !e.kernel_frames().is_empty() && !e.user_frames().is_empty() {
                with_both += 1;
            }
        }
    });
    assert!(
        in_kernel > 50,
        "only {in_kernel} samples in the kernel while copying to /dev/null"
    );
    assert!(
        with_both * 10 >= in_kernel * 9,
        "{with_both} of {in_kernel} kernel samples have both stacks"
    );
}

#[test]
fn delta_entries_written_through_windows_read_back() {
    use ferroscope_ebpf_programs::UnwinderConfig;
    use ferroscope_ebpf_programs::abi::DeltaEntry;
    if !bpf_available() {
        return;
    }
    let mut sampler = Sampler::start(&SamplerConfig {
        sample_rate_hz: 19,
        pids: Some(vec![]),
        unwinder: Some(UnwinderConfig {
            max_delta_entries: 300_000,
            ..UnwinderConfig::default()
        }),
    })
    .unwrap_or_else(|e| panic!("sampler did not start: {e}"));
    let maps = sampler.unwind_maps().expect("unwinder maps");
    assert_eq!(maps.entries_capacity(), 300_000);
    // Unaligned start, longer than one 1 MiB window, ending at the array's last entry.
    let first = 300_000 - 200_003;
    let entries: Vec<DeltaEntry> = (0..200_003u32)
        .map(|i| DeltaEntry {
            address_low: i as u16,
            info_index: (i >> 16) as u16 ^ 0x5a5a,
        })
        .collect();
    maps.write_entries(first, &entries).unwrap();
    assert_eq!(maps.read_entries(first, 200_003).unwrap(), entries);
    // The entry before the written range is untouched.
    assert_eq!(
        maps.read_entries(first - 1, 1).unwrap(),
        vec![DeltaEntry::default()]
    );
    assert!(maps.write_entries(299_999, &entries[..2]).is_err());
}
