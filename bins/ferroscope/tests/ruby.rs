//! End-to-end tests of Ruby stacks: Debian's Ruby 3.1 on the host and Debian trixie's Ruby
//! 3.3 in a debootstrap chroot (the harness builds and caches it; its libruby has no symbol
//! table and exports none of the VM's globals) run real scripts while the real `ferroscope`
//! binary records them, and the tests read the pprof it wrote.
//!
//! They need root. With `FERROSCOPE_REQUIRE=1` (CI) running without root, or without the
//! Ruby runtimes, fails them.

#![allow(clippy::print_stderr)]

mod common;
use common::source::{line_of, share, tagged_lines};
use common::{WORKLOAD_LIMIT, can_run_bpf, ferroscope, fixture, metric, run_agent};
use ferroscope_test_harness::{self as harness, Guard, runtimes::Runtime};

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use ferroscope_pprof::proto::Profile;

/// Each test keeps the CPUs busy and measures CPU shares: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long a fixture may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The Rubies the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rb {
    /// Debian bookworm's ruby3.1 on the host (exports its symbols, has YJIT).
    Host31,
    /// Debian trixie's ruby3.3 in the chroot (stripped, hides its symbols, built without
    /// YJIT).
    Trixie33,
}

impl Rb {
    fn runtime(self) -> Option<Runtime> {
        match self {
            Rb::Host31 => {
                let exe = harness::file("/usr/bin/ruby3.1", "apt-get install ruby3.1")?;
                Some(Runtime {
                    name: "ruby 3.1 (Debian bookworm)".into(),
                    exe,
                    env: Vec::new(),
                    chroot: None,
                })
            }
            Rb::Trixie33 => harness::runtimes::ruby_trixie(),
        }
    }
}

/// A process started for a test that prints `ready` once set up; killed when dropped.
struct Ready {
    guard: Guard,
    _runtime: Runtime,
}

impl Ready {
    /// Runs `fixtures/ruby/<script>` with `args` before it.
    fn start(rb: Rb, script: &str, args: &[&str]) -> Option<Ready> {
        let runtime = rb.runtime()?;
        let host_script = fixture(&format!("ruby/{script}"));
        let script_arg = match &runtime.chroot {
            Some((chroot, _)) => chroot.copy_in(&host_script),
            None => host_script,
        };
        let mut cmd = runtime.command();
        cmd.args(args).arg(script_arg);
        let mut guard = Guard::spawn(&mut cmd, WORKLOAD_LIMIT);
        guard.wait_for_line("ready", READY_TIMEOUT);
        std::thread::sleep(Duration::from_millis(300));
        Some(Ready {
            guard,
            _runtime: runtime,
        })
    }

    fn pid(&self) -> u32 {
        self.guard.pid()
    }
}

/// One frame of a decoded sample.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    function: String,
    file: String,
    line: i64,
    /// A Ruby frame: a location with no mapping but a source file (`<cfunc>` for C methods).
    ruby: bool,
}

/// A decoded sample: frames leaf first, number of samples, thread ID.
#[derive(Debug)]
struct Sample {
    frames: Vec<Frame>,
    count: i64,
    tid: String,
}

impl Sample {
    fn ruby(&self) -> Vec<&Frame> {
        self.frames.iter().filter(|f| f.ruby).collect()
    }

    fn ruby_names(&self) -> Vec<&str> {
        self.ruby().iter().map(|f| f.function.as_str()).collect()
    }

    /// Ruby frames of the program's own files (not C methods, nor the core methods 3.3
    /// writes in Ruby, `<internal:kernel>`).
    fn iseq_names(&self) -> Vec<&str> {
        self.ruby()
            .iter()
            .filter(|f| f.file != "<cfunc>" && !f.file.starts_with("<internal:"))
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
            tid: s.label("tid").unwrap_or_default().to_owned(),
            count: s.count,
            frames: s
                .frames
                .into_iter()
                .map(|f| Frame {
                    ruby: f.runtime,
                    function: f.function,
                    file: f.file,
                    line: f.line,
                })
                .collect(),
        })
        .collect()
}

/// Records `pid` for `seconds` with `extra` arguments.
fn record(pid: u32, seconds: u32, extra: &[&str]) -> Vec<Sample> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ruby.pb.gz");
    let (pid, duration, out_s) = (
        pid.to_string(),
        format!("{seconds}s"),
        out.to_str().unwrap(),
    );
    let mut args = vec![
        "record", "-p", &pid, "-d", &duration, "-o", out_s, "--top", "5",
    ];
    args.extend_from_slice(extra);
    let result = ferroscope(&args);
    assert!(result.status.success(), "ferroscope record failed");
    decode(&ferroscope_pprof::decode(&std::fs::read(&out).unwrap()).expect("a valid pprof"))
}

/// Runs `script` on `rb` (with `ruby_args`) and records it; `None` when skipped.
fn record_script(
    rb: Rb,
    script: &str,
    ruby_args: &[&str],
    seconds: u32,
    extra: &[&str],
) -> Option<Vec<Sample>> {
    if !can_run_bpf() {
        return None;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let workload = Ready::start(rb, script, ruby_args)?;
    let samples = record(workload.pid(), seconds, extra);
    drop(workload);
    Some(samples)
}

/// Samples, for failure messages.
fn show(samples: &[&Sample]) -> String {
    let mut sorted: Vec<&&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| -s.count);
    let mut out = String::new();
    for s in sorted.iter().take(10) {
        let frames: Vec<String> = s
            .frames
            .iter()
            .map(|f| {
                if f.ruby {
                    format!("{}:{}", f.function, f.line)
                } else {
                    f.function.clone()
                }
            })
            .collect();
        out.push_str(&format!("  {} x {}\n", s.count, frames.join(" <- ")));
    }
    out
}

/// The two-chains script: whole chains in order with `Class#method` names and the right
/// lines, a 3:1 work ratio within 25 %, at 499 Hz.
fn two_chains(rb: Rb, ruby_args: &[&str]) {
    let Some(samples) = record_script(rb, "chains.rb", ruby_args, 5, &["-r", "499"]) else {
        return;
    };
    let script = fixture("ruby/chains.rb");
    let what = format!("{rb:?} {ruby_args:?}");
    let jit = ruby_args.contains(&"--yjit");
    // <main> calls through Kernel#loop (a C method) and its block.
    let chain_a = [
        "Shop::Cart#leaf_a",
        "Shop::Cart#run_a",
        "block in <main>",
        "Kernel#loop",
        "<main>",
    ];
    let chain_b = [
        "Shop::Billing#leaf_b",
        "Shop::Cart.build",
        "block in <main>",
        "Kernel#loop",
        "<main>",
    ];
    let hot_a = tagged_lines(&script, "# HOT_A");
    let hot_b = tagged_lines(&script, "# HOT_B");
    // Kernel#loop's line is not checked: a C method in 3.1 (line 0), Ruby in
    // <internal:kernel> from 3.3.
    let callers_a = [
        line_of(&script, "leaf_a(n)"),
        line_of(&script, "cart.run_a(3 * UNIT)"),
        -1,
        line_of(&script, "loop do"),
    ];
    let callers_b = [
        line_of(&script, "Billing.new.leaf_b(n)"),
        line_of(&script, "Shop::Cart.build(UNIT)"),
        -1,
        line_of(&script, "loop do"),
    ];

    let total: i64 = samples.iter().map(|s| s.count).sum();
    // 2,495 when the workload has a CPU to itself; the machine may be shared.
    assert!(
        total >= 300,
        "{what}: only {total} samples in 5 s at 499 Hz"
    );
    let mut report = String::new();
    let mut counts = Vec::new();
    for (chain, hot, callers) in [
        (&chain_a[..], &hot_a, &callers_a[..]),
        (&chain_b[..], &hot_b, &callers_b[..]),
    ] {
        let leaf = chain[0];
        let with_leaf: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.ruby_names().contains(&leaf))
            .collect();
        let n: i64 = with_leaf.iter().map(|s| s.count).sum();
        let full: Vec<&&Sample> = with_leaf
            .iter()
            .filter(|s| s.ruby_names() == chain)
            .collect();
        let n_full: i64 = full.iter().map(|s| s.count).sum();
        let on_hot_line: i64 = full
            .iter()
            .filter(|s| hot.contains(&s.ruby()[0].line))
            .map(|s| s.count)
            .sum();
        let right_callers: i64 = full
            .iter()
            .filter(|s| {
                let lines: Vec<i64> = s.ruby()[1..].iter().map(|f| f.line).collect();
                lines.len() == callers.len()
                    && lines.iter().zip(callers).all(|(l, c)| *c == -1 || l == c)
            })
            .map(|s| s.count)
            .sum();
        report.push_str(&format!(
            "{leaf}: {n} samples, {n_full} with the whole chain, {on_hot_line} on the hot lines {hot:?}, {right_callers} with caller lines {callers:?}\n"
        ));
        let wrong: Vec<&Sample> = with_leaf
            .iter()
            .copied()
            .filter(|s| s.ruby_names() != chain)
            .collect();
        assert!(
            n > 0 && share(n_full, n) >= 0.95,
            "{what}: fewer than 95 % of {leaf}'s samples carry the whole chain {chain:?}\n{report}samples without it:\n{}",
            show(&wrong)
        );
        // YJIT's code writes a frame's pc only before calls: the line of a leaf running
        // compiled code is not known (README, Ruby limits); its callers' lines are.
        assert!(
            jit || share(on_hot_line, n_full) >= 0.9,
            "{what}: {leaf}'s line is not its hot loop's\n{report}{}",
            show(&full.iter().map(|s| **s).collect::<Vec<_>>())
        );
        assert!(
            share(right_callers, n_full) >= 0.95,
            "{what}: the callers of {leaf} are not at their call lines\n{report}{}",
            show(&full.iter().map(|s| **s).collect::<Vec<_>>())
        );
        counts.push(n);
    }
    let ratio = counts[0] as f64 / counts[1].max(1) as f64;
    eprintln!("{what}:\n{report}ratio A:B = {ratio:.2} (expected 3)");
    assert!(
        (2.25..=3.75).contains(&ratio),
        "{what}: work ratio A:B is {ratio:.2}, not within 25 % of 3\n{report}"
    );
    let ruby_share = share(
        samples
            .iter()
            .filter(|s| !s.ruby().is_empty())
            .map(|s| s.count)
            .sum(),
        total,
    );
    assert!(
        ruby_share >= 0.95,
        "{what}: only {:.1} % of samples have Ruby frames\n{}",
        ruby_share * 100.0,
        show(&samples.iter().collect::<Vec<_>>())
    );
}

#[test]
fn two_chains_ruby_3_1() {
    two_chains(Rb::Host31, &[]);
}

#[test]
fn two_chains_ruby_3_1_yjit() {
    two_chains(Rb::Host31, &["--yjit"]);
}

#[test]
fn two_chains_ruby_3_3() {
    two_chains(Rb::Trixie33, &[]);
}

/// Debian's 3.3 is built without YJIT: `--yjit` warns and interprets, which is what this
/// checks too (the YJIT of 3.3+ keeps frame pointers; see README).
#[test]
fn two_chains_ruby_3_3_yjit() {
    two_chains(Rb::Trixie33, &["--yjit"]);
}

/// Digest::SHA256 runs in the digest extension's C code, Array#sort_by in the VM's: their
/// native frames come first, then the C method's frame, then the Ruby methods that called it.
fn ruby_calling_c(rb: Rb) {
    let Some(samples) = record_script(rb, "cfuncs.rb", &[], 4, &["-r", "199"]) else {
        return;
    };
    let what = format!("{rb:?}");
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let mut report = String::new();
    for (cfunc, caller) in [
        // Digest::SHA256.digest is Digest::Class.digest, calling Digest::Instance#digest,
        // calling Digest::Base#update, whose C code hashes.
        ("Digest::Base#update", "Hasher#digest_loop"),
        // Array#sort_by is Enumerable's, in C, calling Array#each, yielding to the block.
        ("Enumerable#sort_by", "Hasher#sort_loop"),
    ] {
        let with: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.ruby_names().contains(&cfunc))
            .collect();
        let n: i64 = with.iter().map(|s| s.count).sum();
        let in_place: i64 = with
            .iter()
            .filter(|s| {
                let c = s.position(|f| f.ruby && f.function == cfunc);
                let m = s.position(|f| f.ruby && f.function == caller);
                let main = s.position(|f| f.ruby && f.function == "<main>");
                let native_before = c.is_some_and(|c| s.frames[..c].iter().any(|f| !f.ruby));
                matches!((c, m, main), (Some(c), Some(m), Some(t)) if c < m && m < t)
                    && native_before
            })
            .map(|s| s.count)
            .sum();
        report.push_str(&format!(
            "{cfunc}: {n} samples, {in_place} with native frames, then it, then {caller}, then <main>\n"
        ));
        assert!(
            share(n, total) >= 0.15,
            "{what}: {cfunc} has too few samples\n{report}{}",
            show(&samples.iter().collect::<Vec<_>>())
        );
        assert!(
            share(in_place, n) >= 0.95,
            "{what}: {cfunc}'s C frames are not in place\n{report}{}",
            show(&with)
        );
    }
    eprintln!("{what}:\n{report}");
}

#[test]
fn ruby_3_1_calling_c_shows_the_c_frames_in_place() {
    ruby_calling_c(Rb::Host31);
}

#[test]
fn ruby_3_3_calling_c_shows_the_c_frames_in_place() {
    ruby_calling_c(Rb::Trixie33);
}

/// `block in Shop::Cart#checkout` and `Shop::Cart.build`, with their lines.
fn blocks_and_singletons(rb: Rb) {
    let Some(samples) = record_script(rb, "blocks.rb", &[], 3, &["-r", "199"]) else {
        return;
    };
    let what = format!("{rb:?}");
    let script = fixture("ruby/blocks.rb");
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let block = [
        "block in Shop::Cart#checkout",
        "Integer#times",
        "Shop::Cart#checkout",
    ];
    let build = ["Shop::Cart.build"];
    let mut named = 0;
    for (chain, hot) in [
        (&block[..], tagged_lines(&script, "# HOT_BLOCK")),
        (&build[..], tagged_lines(&script, "# HOT_BUILD")),
    ] {
        let n: i64 = samples
            .iter()
            .filter(|s| {
                let names = s.ruby_names();
                names.len() > chain.len()
                    && names[..chain.len()] == *chain
                    && hot.contains(&s.ruby()[0].line)
            })
            .map(|s| s.count)
            .sum();
        assert!(
            share(n, total) >= 0.2,
            "{what}: {chain:?} on lines {hot:?} in only {n} of {total} samples\n{}",
            show(&samples.iter().collect::<Vec<_>>())
        );
        named += n;
    }
    assert!(
        share(named, total) >= 0.9,
        "{what}: only {named} of {total} samples are named as expected\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
}

#[test]
fn ruby_3_1_names_blocks_and_singleton_methods() {
    blocks_and_singletons(Rb::Host31);
}

#[test]
fn ruby_3_3_names_blocks_and_singleton_methods() {
    blocks_and_singletons(Rb::Trixie33);
}

/// Each thread's samples carry that thread's own Ruby stack.
fn threads(rb: Rb) {
    let Some(samples) = record_script(rb, "threads.rb", &[], 3, &["-r", "199"]) else {
        return;
    };
    let what = format!("{rb:?}");
    let mut tids: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut right = 0;
    let mut with_spin = 0;
    for s in &samples {
        let names = s.iseq_names();
        for spin in ["Object#spin_a", "Object#spin_b"] {
            if let Some(at) = names.iter().position(|n| *n == spin) {
                with_spin += s.count;
                tids.entry(spin).or_default().insert(&s.tid);
                // block (2 levels) in spin_x <- block in spin_x <- spin_x <- block in <main>
                // (C frames between them; a sample in Integer#times has no first block).
                if names.last() == Some(&"block in <main>")
                    && at + 2 == names.len()
                    && names[..at]
                        .iter()
                        .all(|n| n.starts_with("block ") && n.ends_with(spin))
                {
                    right += s.count;
                }
            }
        }
    }
    let (Some(a), Some(b)) = (tids.get("Object#spin_a"), tids.get("Object#spin_b")) else {
        panic!(
            "{what}: both threads should be sampled: {tids:?}\n{}",
            show(&samples.iter().collect::<Vec<_>>())
        );
    };
    assert!(
        a.len() == 1 && b.len() == 1 && a.is_disjoint(b),
        "{what}: each spinning method runs on its own thread: spin_a on {a:?}, spin_b on {b:?}"
    );
    assert!(
        share(right, with_spin) >= 0.95,
        "{what}: only {right} of {with_spin} samples have the whole thread stack\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
}

#[test]
fn ruby_3_1_threads_have_their_own_stacks() {
    threads(Rb::Host31);
}

#[test]
fn ruby_3_3_threads_have_their_own_stacks() {
    threads(Rb::Trixie33);
}

/// Runs `ferroscope run` on the two-chains script with `ruby_enabled` as given until it
/// wrote two profiles; returns their samples and the agent's `/metrics` at the end.
fn agent_samples(ruby_enabled: bool) -> Option<(Vec<Sample>, String)> {
    let workload = Ready::start(Rb::Host31, "chains.rb", &[])?;
    let run = run_agent(
        workload.pid(),
        &format!("ruby_enabled = {ruby_enabled}"),
        "rb",
        2,
        Duration::from_secs(60),
    );
    drop(workload);
    Some((run.profiles.iter().flat_map(decode).collect(), run.metrics))
}

/// The agent names Ruby frames with the reference profiler's metrics, and `ruby_enabled =
/// false` gives native-only stacks (the VM's own frames).
#[test]
fn agent_ruby_enabled_true_and_false() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((on, metrics)) = agent_samples(true) else {
        return;
    };
    for name in [
        "UnwindRubyAttempts_total",
        "UnwindRubyFrames_total",
        "RubySymbolizationSuccess_total",
    ] {
        assert!(metric(&metrics, name) > 0.0, "{name} counts what happened");
    }
    assert_eq!(metric(&metrics, "RubySymbolizationFailure_total"), 0.0);
    let total: i64 = on.iter().map(|s| s.count).sum();
    let named: i64 = on
        .iter()
        .filter(|s| {
            s.ruby_names()
                .first()
                .is_some_and(|n| n.starts_with("Shop::"))
        })
        .map(|s| s.count)
        .sum();
    assert!(total > 50, "only {total} samples");
    assert!(
        share(named, total) >= 0.9,
        "ruby_enabled = true: only {named} of {total} samples are in Shop's methods\n{}",
        show(&on.iter().collect::<Vec<_>>())
    );

    let Some((off, metrics)) = agent_samples(false) else {
        return;
    };
    assert_eq!(metric(&metrics, "UnwindRubyFrames_total"), 0.0);
    let total: i64 = off.iter().map(|s| s.count).sum();
    let vm: i64 = off
        .iter()
        .filter(|s| s.frames.iter().any(|f| f.function == "rb_vm_exec"))
        .map(|s| s.count)
        .sum();
    assert!(total > 50, "only {total} samples");
    assert!(
        off.iter().all(|s| s.ruby().is_empty()),
        "no Ruby frames with ruby_enabled = false"
    );
    assert!(
        share(vm, total) >= 0.9,
        "the VM's native frames show instead: {vm} of {total}"
    );
}
