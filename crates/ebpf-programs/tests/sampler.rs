//! Loads and attaches the real sampler. Needs root (or CAP_BPF + CAP_PERFMON); with
//! `FERROSCOPE_REQUIRE=1` (set by CI, implied by `CI=true`) a missing privilege fails the
//! test instead of skipping it.

#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use ferroscope_ebpf_abi::{Counter, TRACE_IN_KERNEL, TraceHeader, TraceRecord, UserFrame};
use ferroscope_ebpf_programs::{Build, Sampler, SamplerConfig, UnwinderConfig, Verdict};

fn required() -> bool {
    let on = |v: &str| std::env::var(v).is_ok_and(|v| v == "1" || v == "true");
    on("FERROSCOPE_REQUIRE") || on("FERROSCOPE_REQUIRE_BPF") || on("CI")
}

fn bpf_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if required() {
            panic!("FERROSCOPE_REQUIRE=1 but the tests do not run as root: eBPF tests cannot run");
        }
        eprintln!(
            "SKIPPED: not root, eBPF sampler tests need root (set FERROSCOPE_REQUIRE=1 to fail instead)"
        );
    }
    root
}

/// A record as the decoder hands it over, kept beyond the drain callback.
#[derive(Debug, Clone)]
struct Owned {
    header: TraceHeader,
    user: Vec<UserFrame>,
}

fn own(r: &TraceRecord<'_>) -> Owned {
    Owned {
        header: r.header,
        user: r.user_frames().collect(),
    }
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
    // A separate busy process, so that other tests running in this process do not count;
    // killed however the test ends (a failed start once left it spinning, and holding the
    // test's stdout).
    struct Busy(std::process::Child);
    impl Drop for Busy {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Busy(
        std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap(),
    );
    let me = child.0.id();
    let mut sampler = Sampler::start(&SamplerConfig::frame_pointers(200, Some(vec![me])))
        .unwrap_or_else(|e| panic!("sampler did not start: {e}"));
    let cpu_before = cpu_seconds(me);
    std::thread::sleep(Duration::from_millis(1500));
    let cpu = cpu_seconds(me) - cpu_before;
    let mut events = Vec::new();
    sampler.drain(|e| events.push(own(e)));
    let counters = sampler.counters().unwrap();
    drop(child);

    assert!(
        events.iter().all(|e| e.header.pid == me),
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
    assert_eq!(counters.get(Counter::LostRingbufFull), 0);
    assert!(counters.get(Counter::Sent) >= events.len() as u64);
    let with_user = events.iter().filter(|e| !e.user.is_empty()).count();
    assert!(
        with_user * 10 >= events.len() * 9,
        "{with_user} of {} samples have a user stack",
        events.len()
    );
    assert!(
        events
            .iter()
            .all(|e| &e.header.comm[..3] == b"sh\0" && e.header.tid == me),
        "comm and tid of the child"
    );
}

#[test]
fn kernel_stacks_are_captured_in_syscalls() {
    if !bpf_available() {
        return;
    }
    let me = std::process::id();
    let mut sampler = Sampler::start(&SamplerConfig::frame_pointers(500, Some(vec![me])))
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
        if e.header.flags & TRACE_IN_KERNEL != 0 {
            in_kernel += 1;
            if e.kernel_frames().len() > 0 && e.user_frames().len() > 0 {
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
    use ferroscope_ebpf_abi::DeltaEntry;
    if !bpf_available() {
        return;
    }
    let mut sampler = Sampler::start(&SamplerConfig {
        unwinder: Some(UnwinderConfig {
            max_delta_entries: 300_000,
            ..UnwinderConfig::default()
        }),
        ..SamplerConfig::frame_pointers(19, Some(vec![]))
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
    // Read back through the bpf syscall, not the mapping the writes went through: a wrong
    // stride or page offset in the writer shows here.
    assert_eq!(maps.read_entries(first, 200_003).unwrap(), entries);
    // The entry before the written range is untouched.
    assert_eq!(
        maps.read_entries(first - 1, 1).unwrap(),
        vec![DeltaEntry::default()]
    );
    assert!(maps.write_entries(299_999, &entries[..2]).is_err());
}

/// Native programs in each build: they load, and the verifier's work stays within budget.
/// The budget is half of the verifier's 1M processed-instruction limit, so a change that
/// doubles a program's complexity fails here long before a kernel refuses it.
const VERIFIED_INSTRUCTION_BUDGET: u32 = 500_000;

#[test]
fn native_programs_load_in_both_builds_within_the_verifier_budget() {
    if !bpf_available() {
        return;
    }
    for build in [Build::Loop, Build::Legacy] {
        let sampler = Sampler::start(&SamplerConfig {
            unwinder: Some(UnwinderConfig::default()),
            build: Some(build),
            ..SamplerConfig::frame_pointers(19, Some(vec![]))
        })
        .unwrap_or_else(|e| panic!("{build:?} build did not start: {e}"));
        assert_eq!(sampler.build(), build, "the requested build was loaded");
        let programs = sampler.programs();
        let names: Vec<&str> = programs.iter().map(|p| p.program.as_str()).collect();
        assert_eq!(
            names,
            [
                "fs_sample",
                "fs_native",
                "fs_process_exit",
                "fs_process_exec",
                "fs_process_fork"
            ]
        );
        for p in programs {
            let Verdict::Loaded {
                verified_instructions,
            } = &p.verdict
            else {
                panic!("{build:?} {}: {:?}", p.program, p.verdict);
            };
            let n = verified_instructions.expect("this kernel (5.16+) reports verified_insns");
            eprintln!("verified instructions: {build:?} {} {n}", p.program);
            assert!(
                n <= VERIFIED_INSTRUCTION_BUDGET,
                "{build:?} {} took {n} verified instructions, over the budget of {VERIFIED_INSTRUCTION_BUDGET}",
                p.program
            );
        }
    }
}
