//! End-to-end tests of Perl stacks: Debian's Perl 5.36 on the host, 5.40 in the trixie
//! chroot and 5.42 in the sid chroot (all threaded, libperl linked into `/usr/bin/perl`) run
//! real scripts of `fixtures/perl/` while the real `ferroscope` binary records them, and the
//! test reads the pprof it wrote.
//!
//! They need root. With `FERROSCOPE_REQUIRE=1` (CI) running without root, or without a
//! chroot, fails them.

#![allow(clippy::print_stderr)]

mod common;
use common::source::share;
use common::{WORKLOAD_LIMIT, can_run_bpf, ferroscope, fixture, metric, run_agent};
use ferroscope_test_harness::runtimes::{self, Runtime};
use ferroscope_test_harness::{self as harness, Guard};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use ferroscope_pprof::proto::Profile;

/// Each test keeps the CPUs busy and measures CPU shares: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long a fixture may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A Perl of the machine: 5.36 on the host, 5.40 (trixie) and 5.42 (sid) in chroots. `None`
/// skips the test (logged), unless tests are required, which fails it.
fn perl(minor: u8) -> Option<Runtime> {
    match minor {
        36 => runtimes::perl_debian(),
        40 => runtimes::perl_trixie(),
        42 => runtimes::perl_sid(),
        _ => unreachable!("no Perl 5.{minor} here"),
    }
}

/// A fixture as the interpreter sees it (copied into the chroot's /tmp).
fn script_for(perl: &Runtime, name: &str) -> PathBuf {
    let host = fixture(&format!("perl/{name}"));
    match &perl.chroot {
        Some((chroot, _)) => chroot.copy_in(&host),
        None => host,
    }
}

/// A process started for a test that prints `ready` once set up; killed when dropped, or
/// when it outlives [`WORKLOAD_LIMIT`].
struct Ready(Guard);

impl Ready {
    fn start(mut cmd: Command) -> Ready {
        let mut guard = Guard::spawn(&mut cmd, WORKLOAD_LIMIT);
        guard.wait_for_line("ready", READY_TIMEOUT);
        // Let it run its loop for a moment, so that every library it loads is mapped.
        std::thread::sleep(Duration::from_millis(200));
        Ready(guard)
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }
}

/// One frame of a decoded sample.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    function: String,
    file: String,
    line: i64,
    /// A Perl frame: a location with no mapping but a source file.
    perl: bool,
}

/// A decoded sample: frames leaf first, number of samples, thread ID.
#[derive(Debug)]
struct Sample {
    frames: Vec<Frame>,
    count: i64,
    tid: String,
}

impl Sample {
    fn perl(&self) -> Vec<&Frame> {
        self.frames.iter().filter(|f| f.perl).collect()
    }

    fn perl_names(&self) -> Vec<&str> {
        self.perl().iter().map(|f| f.function.as_str()).collect()
    }

    fn position(&self, pred: impl Fn(&Frame) -> bool) -> Option<usize> {
        self.frames.iter().position(pred)
    }
}

fn record(pid: u32, seconds: u32, extra: &[&str]) -> Vec<Sample> {
    record_env(pid, seconds, extra, &[]).0
}

/// Records `pid` with `env` set for ferroscope; the samples and what it printed on stderr.
fn record_env(
    pid: u32,
    seconds: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Vec<Sample>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("perl.pb.gz");
    let (pid, duration, out_s) = (
        pid.to_string(),
        format!("{seconds}s"),
        out.to_str().unwrap(),
    );
    let mut args = vec![
        "record", "-p", &pid, "-d", &duration, "-o", out_s, "--top", "5",
    ];
    args.extend_from_slice(extra);
    let result = if env.is_empty() {
        ferroscope(&args)
    } else {
        let out = harness::run(
            Command::new(env!("CARGO_BIN_EXE_ferroscope"))
                .args(&args)
                .envs(env.iter().copied()),
            common::FERROSCOPE_LIMIT,
        );
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        out
    };
    assert!(result.status.success(), "ferroscope record failed");
    (
        decode(&ferroscope_pprof::decode(&std::fs::read(&out).unwrap()).expect("a valid pprof")),
        String::from_utf8_lossy(&result.stderr).into_owned(),
    )
}

/// Records `fixtures/perl/<script>` run by Perl 5.`minor` for `seconds`; `None` when the
/// test is skipped (not root, or that Perl is missing and not required). Also returns the
/// script's path as Perl sees it.
fn record_script(
    minor: u8,
    script: &str,
    seconds: u32,
    extra: &[&str],
) -> Option<(Vec<Sample>, PathBuf)> {
    if !can_run_bpf() {
        return None;
    }
    let perl = perl(minor)?;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let path = script_for(&perl, script);
    let mut cmd = perl.command();
    cmd.arg(&path);
    let workload = Ready::start(cmd);
    let samples = record(workload.pid(), seconds, extra);
    drop(workload);
    Some((samples, path))
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
                    perl: f.runtime,
                    function: f.function,
                    file: f.file,
                    line: f.line,
                })
                .collect(),
        })
        .collect()
}

/// Line numbers of the lines of `fixtures/perl/<script>` that contain `tag`.
fn tagged_lines(script: &str, tag: &str) -> HashSet<i64> {
    common::source::tagged_lines(&fixture(&format!("perl/{script}")), tag)
}

/// The line number of the line of `fixtures/perl/<script>` that is exactly `text` (trimmed).
fn line_of(script: &str, text: &str) -> i64 {
    common::source::line_of(&fixture(&format!("perl/{script}")), text)
}

/// Samples with their share of the total, for failure messages.
fn show(samples: &[&Sample]) -> String {
    let mut sorted: Vec<&&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| -s.count);
    let mut out = String::new();
    for s in sorted.iter().take(10) {
        let frames: Vec<String> = s
            .frames
            .iter()
            .map(|f| {
                if f.perl {
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

/// The anonymous sub of chains.pl as it is named: its package, the script's path as Perl
/// saw it, the line of its first statement.
fn chain_a_leaf(path: &Path) -> String {
    format!(
        "Worker::__ANON__[{}:{}]",
        path.display(),
        line_of("chains.pl", "my ($k) = @_;")
    )
}

/// The two-chains script on Perl 5.`minor`: chains in order with their names and lines, a
/// 3:1 work ratio within 25 %, and at least 95 % of the hot subs' samples carrying their
/// whole Perl chain.
fn two_chains(minor: u8) {
    // 499 Hz: ~2,000 samples, so that the ratio's sampling noise (about 5 % at this count)
    // stays well inside the 25 % the test allows.
    let Some((samples, path)) = record_script(minor, "chains.pl", 5, &["-r", "499"]) else {
        return;
    };
    let anon = chain_a_leaf(&path);
    let chain_a = [anon.as_str(), "Worker::run", "main::chain_a", "main"];
    let chain_b = ["main::leaf_b", "main::chain_b", "main"];
    let hot_a = tagged_lines("chains.pl", "# HOT_A");
    let hot_b = tagged_lines("chains.pl", "# HOT_B");
    let callers_a = [
        line_of("chains.pl", "return $inner->($n);"),
        line_of("chains.pl", "return $worker->run($UNIT);"),
        line_of("chains.pl", "chain_a($worker) if $pick < 0.75;"),
    ];
    let callers_b = [
        line_of("chains.pl", "return leaf_b($UNIT);"),
        line_of("chains.pl", "chain_b() if $pick >= 0.75;"),
    ];

    let total: i64 = samples.iter().map(|s| s.count).sum();
    // The workload gets what CPU the machine leaves it (2 shared CPUs here): 400 samples
    // keep the ratio's noise near 10 %, inside the 25 % allowed.
    assert!(total >= 400, "only {total} samples in 5 s at 499 Hz");
    let mut report = String::new();
    let mut counts = Vec::new();
    for (chain, hot, callers) in [
        (&chain_a[..], &hot_a, &callers_a[..]),
        (&chain_b[..], &hot_b, &callers_b[..]),
    ] {
        let leaf = chain[0];
        let with_leaf: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.perl_names().contains(&leaf))
            .collect();
        let n: i64 = with_leaf.iter().map(|s| s.count).sum();
        let full: Vec<&&Sample> = with_leaf
            .iter()
            .filter(|s| s.perl_names() == chain)
            .collect();
        let n_full: i64 = full.iter().map(|s| s.count).sum();
        let on_hot_line: i64 = full
            .iter()
            .filter(|s| hot.contains(&s.perl()[0].line))
            .map(|s| s.count)
            .sum();
        let right_callers: i64 = full
            .iter()
            .filter(|s| {
                let lines: Vec<i64> = s.perl()[1..].iter().map(|f| f.line).collect();
                lines == callers
            })
            .map(|s| s.count)
            .sum();
        report.push_str(&format!(
            "{leaf}: {n} samples, {n_full} with the whole chain {chain:?}, {on_hot_line} on the hot lines {hot:?}, {right_callers} with caller lines {callers:?}\n"
        ));
        let wrong: Vec<&Sample> = with_leaf
            .iter()
            .copied()
            .filter(|s| s.perl_names() != chain)
            .collect();
        assert!(
            n > 0 && share(n_full, n) >= 0.95,
            "Perl 5.{minor}: fewer than 95 % of {leaf}'s samples carry the whole chain\n{report}samples without it:\n{}",
            show(&wrong)
        );
        assert!(
            share(on_hot_line, n_full) >= 0.9,
            "Perl 5.{minor}: {leaf}'s line is not its hot loop's\n{report}{}",
            show(&full.iter().map(|s| **s).collect::<Vec<_>>())
        );
        assert!(
            share(right_callers, n_full) >= 0.95,
            "Perl 5.{minor}: the callers of {leaf} are not at their call lines\n{report}{}",
            show(&full.iter().map(|s| **s).collect::<Vec<_>>())
        );
        counts.push(n);
    }
    let ratio = counts[0] as f64 / counts[1].max(1) as f64;
    let perl_share = share(
        samples
            .iter()
            .filter(|s| !s.perl().is_empty())
            .map(|s| s.count)
            .sum(),
        total,
    );
    eprintln!(
        "Perl 5.{minor}:\n{report}ratio A:B = {ratio:.2} (expected 3); {:.1} % of {total} samples have Perl frames",
        perl_share * 100.0
    );
    assert!(
        (2.25..=3.75).contains(&ratio),
        "Perl 5.{minor}: work ratio A:B is {ratio:.2}, not within 25 % of 3\n{report}"
    );
    assert!(
        perl_share >= 0.95,
        "Perl 5.{minor}: only {:.1} % of samples have Perl frames\n{}",
        perl_share * 100.0,
        show(&samples.iter().collect::<Vec<_>>())
    );
}

#[test]
fn two_chains_perl_5_36() {
    two_chains(36);
}

#[test]
fn two_chains_perl_5_40() {
    two_chains(40);
}

#[test]
fn two_chains_perl_5_42() {
    two_chains(42);
}

/// A sub called from a sort block, and a signal handler, run in nested runlevels (the sort's
/// runops call per comparison, the handler's from Perl's signal dispatch in C): their outer
/// Perl frames stay in order, with the C frames that entered them in between.
fn nested_runlevels(minor: u8) {
    let Some((samples, _)) = record_script(minor, "nested.pl", 4, &["-r", "499"]) else {
        return;
    };
    let hot_sort = tagged_lines("nested.pl", "# HOT_SORT");
    let hot_signal = tagged_lines("nested.pl", "# HOT_SIGNAL");
    for (chain, hot, caller) in [
        (
            ["main::in_sort", "main::sorter", "main"],
            &hot_sort,
            line_of(
                "nested.pl",
                "my @sorted = sort { in_sort($a, $b) } 5, 3, 9, 1, 7, 2, 8;",
            ),
        ),
        (
            ["main::on_signal", "main::signaller", "main"],
            &hot_signal,
            line_of("nested.pl", "kill 'USR1', $$;"),
        ),
    ] {
        let leaf = chain[0];
        let with_leaf: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.perl_names().first() == Some(&leaf))
            .collect();
        let n: i64 = with_leaf.iter().map(|s| s.count).sum();
        let ordered: i64 = with_leaf
            .iter()
            .filter(|s| {
                let pos = |name: &str| s.position(|f| f.perl && f.function == name);
                let p = s.perl();
                let (Some(inner), Some(outer)) = (pos(chain[0]), pos(chain[1])) else {
                    return false;
                };
                // The C code that entered the nested runlevel (pp_sort, or the signal
                // dispatch and call_sv) is between the two.
                let between = &s.frames[inner + 1..outer];
                s.perl_names() == chain
                    && hot.contains(&p[0].line)
                    // The statement that entered the nested runlevel (the signal is
                    // dispatched by the op after `kill`).
                    && (p[1].line == caller || p[1].line == caller + 1)
                    && !between.is_empty()
                    && between.iter().all(|f| !f.perl)
            })
            .map(|s| s.count)
            .sum();
        eprintln!("Perl 5.{minor}: {leaf}: {ordered} of {n} samples in order");
        assert!(
            n > 20 && share(ordered, n) >= 0.95,
            "Perl 5.{minor}: {leaf} <- C frames <- {} <- main, at their lines: {ordered} of {n}\n{}",
            chain[1],
            show(&with_leaf)
        );
    }
}

#[test]
fn sort_blocks_and_signal_handlers_keep_the_outer_frames_in_order_5_36() {
    nested_runlevels(36);
}

#[test]
fn sort_blocks_and_signal_handlers_keep_the_outer_frames_in_order_5_42() {
    nested_runlevels(42);
}

/// Digest::SHA's sha256 runs in C (SHA.so): its native frames come first, then the Perl subs
/// that called it, in order.
fn xs_call(minor: u8) {
    let Some((samples, _)) = record_script(minor, "xs.pl", 3, &["-r", "499"]) else {
        return;
    };
    let in_sha: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.frames.first().is_some_and(|f| f.function.contains("SHA")))
        .collect();
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let n: i64 = in_sha.iter().map(|s| s.count).sum();
    assert!(
        share(n, total) >= 0.5,
        "hashing 1 MiB per call should spend most time in SHA.so: {n} of {total}\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
    let ordered: i64 = in_sha
        .iter()
        .filter(|s| {
            // SHA.so's frames, then the interpreter's (pp_entersub), then the Perl subs.
            let Some(digest) = s.position(|f| f.perl && f.function == "main::digest_loop") else {
                return false;
            };
            let native = &s.frames[..digest];
            s.perl_names() == ["main::digest_loop", "main::work", "main"]
                && native.iter().all(|f| !f.perl)
                && native.iter().any(|f| !f.function.contains("SHA"))
        })
        .map(|s| s.count)
        .sum();
    eprintln!("Perl 5.{minor}: {ordered} of {n} SHA samples in order");
    assert!(
        share(ordered, n) >= 0.95,
        "Perl 5.{minor}: SHA.so frames, the interpreter's, then digest_loop, work, main: only {ordered} of {n}\n{}",
        show(&in_sha)
    );
}

#[test]
fn an_xs_call_shows_its_c_frames_in_place_5_36() {
    xs_call(36);
}

#[test]
fn an_xs_call_shows_its_c_frames_in_place_5_40() {
    xs_call(40);
}

/// Each Perl thread (an interpreter of its own, found through the thread's own
/// `PL_current_context`, a thread-local variable of `/usr/bin/perl`) has its own stack.
#[test]
fn each_thread_has_its_own_perl_stack() {
    if !can_run_bpf() {
        return;
    }
    let Some(perl) = perl(36) else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = perl.command();
    cmd.arg(fixture("perl/threads.pl"));
    let workload = Ready::start(cmd);
    let (samples, log) = record_env(workload.pid(), 3, &["-r", "499", "-v"], &[]);
    drop(workload);
    assert!(
        log.contains("Perl process attached") && log.contains("ThreadLocal { offset: -8 }"),
        "the interpreter is found through PL_current_context, 8 bytes below the thread pointer"
    );
    let mut tids: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut right = 0;
    let mut with_spin = 0;
    for s in &samples {
        let names = s.perl_names();
        for (spin, entry) in [
            ("main::spin_a", "main::thread_a"),
            ("main::spin_b", "main::thread_b"),
        ] {
            if names.first() == Some(&spin) {
                with_spin += s.count;
                tids.entry(spin).or_default().insert(&s.tid);
                // A thread's outermost Perl frame is its entry sub (threads.xs calls it).
                if names == [spin, entry] {
                    right += s.count;
                }
            }
        }
    }
    let (Some(a), Some(b)) = (tids.get("main::spin_a"), tids.get("main::spin_b")) else {
        panic!(
            "no samples of both threads\n{}",
            show(&samples.iter().collect::<Vec<_>>())
        );
    };
    assert!(
        a.len() == 1 && b.len() == 1 && a.is_disjoint(b),
        "each spinning sub runs on its own thread: spin_a on {a:?}, spin_b on {b:?}"
    );
    assert!(
        share(right, with_spin) >= 0.95,
        "only {right} of {with_spin} samples have the whole thread stack\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
}

/// A 50-deep Perl stack is whole, in both builds of the walker (the legacy one goes on over
/// several runs of its program, chained by tail calls).
#[test]
fn a_deep_stack_is_whole_in_both_builds() {
    if !can_run_bpf() {
        return;
    }
    let Some(perl) = perl(36) else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = perl.command();
    cmd.arg(fixture("perl/deep.pl")).arg("50");
    let workload = Ready::start(cmd);
    for build in ["loop", "legacy"] {
        let (samples, _) = record_env(
            workload.pid(),
            3,
            &["-r", "499"],
            &[("FERROSCOPE_BPF_BUILD", build)],
        );
        let total: i64 = samples.iter().map(|s| s.count).sum();
        let whole: i64 = samples
            .iter()
            .filter(|s| {
                let names = s.perl_names();
                names.len() == 50
                    && names[0] == "main::spin"
                    && names[1..49].iter().all(|n| *n == "main::descend")
                    && names[49] == "main"
            })
            .map(|s| s.count)
            .sum();
        assert!(
            total > 50 && share(whole, total) >= 0.95,
            "{build} build: only {whole} of {total} samples have the 50 Perl frames\n{}",
            show(&samples.iter().collect::<Vec<_>>())
        );
    }
}

/// A C program linked against libperl.so runs Perl code: libperl's thread-local variables
/// are not at an offset the file alone gives, so the walker takes the interpreter from the
/// pthread key `PL_thr_key`; Perl frames sit above `perl_run` and the C `main`.
#[test]
fn embedded_perl_is_unwound_under_the_c_program() {
    if !can_run_bpf() {
        return;
    }
    let Some(lib) = harness::file(
        "/usr/lib/x86_64-linux-gnu/libperl.so.5.36",
        "apt-get install libperl5.36",
    ) else {
        return;
    };
    let Some(gcc) = harness::tool("gcc") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let core = "/usr/lib/x86_64-linux-gnu/perl/5.36/CORE";
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("embed");
    harness::run_ok(
        Command::new(gcc)
            .arg("-O1")
            .arg(fixture("perl/embed.c"))
            .arg("-o")
            .arg(&exe)
            .args([
                &format!("-I{core}"),
                "-D_REENTRANT",
                "-D_GNU_SOURCE",
                "-fwrapv",
                "-fno-strict-aliasing",
                "-D_LARGEFILE_SOURCE",
                "-D_FILE_OFFSET_BITS=64",
            ])
            .arg(&lib),
        Duration::from_secs(120),
    );
    let workload = Ready::start(Command::new(&exe));
    let samples = record(workload.pid(), 3, &["-r", "499"]);
    drop(workload);

    let total: i64 = samples.iter().map(|s| s.count).sum();
    let ordered: i64 = samples
        .iter()
        .filter(|s| {
            let run = s.position(|f| !f.perl && f.function == "perl_run");
            let main = s.position(|f| !f.perl && f.function == "main");
            let last_perl = s.frames.iter().rposition(|f| f.perl);
            s.perl_names() == ["main::embedded_work", "main::outer_embedded", "main"]
                && matches!((last_perl, run, main), (Some(p), Some(r), Some(m)) if p < r && r < m)
        })
        .map(|s| s.count)
        .sum();
    assert!(
        share(ordered, total) >= 0.9,
        "embedded_work <- outer_embedded <- main (Perl) <- perl_run <- main (C): only {ordered} of {total}\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
}

/// String evals compiled in a loop: while Perl's parser runs (PL_op is NULL then, as between
/// two calls of a sort block), the eval being compiled and its callers stay in place above
/// the runops frame that ran the entereval, and the eval's own code is named `(eval N)`.
#[test]
fn string_evals_keep_their_frames_while_they_compile_and_run() {
    let Some((samples, _)) = record_script(36, "evals.pl", 5, &["-r", "499"]) else {
        return;
    };
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let caller_lines = [
        line_of("evals.pl", "return eval \"# round $round\\n$SOURCE\";"),
        line_of("evals.pl", "evaluate($n++) while 1;"),
        line_of("evals.pl", "rounds();"),
    ];
    // The eval being compiled or run, with its callers at their call lines: at a line of its
    // source, or (entering and leaving it, PL_curcop is still or again the caller's) at the
    // line of the eval statement.
    let in_eval = |s: &Sample| {
        let p = s.perl();
        let names = s.perl_names();
        names.len() == 4
            && names[0].starts_with("(eval")
            && names[1..] == ["main::evaluate", "main::rounds", "main"]
            && (p[0].line <= 5 || p[0].line == caller_lines[0])
            && p[1..].iter().map(|f| f.line).eq(caller_lines)
    };
    // Any sample: the Perl frames of whatever runs (the eval, evaluate before or after it,
    // rounds between two calls) in order down to the main program, callers at their lines.
    let whole = |s: &Sample| {
        let p = s.perl();
        let names = s.perl_names();
        let n = names.len();
        in_eval(s)
            || (n == 3
                && names == ["main::evaluate", "main::rounds", "main"]
                && (15..=17).contains(&p[0].line)
                && p[1..]
                    .iter()
                    .map(|f| f.line)
                    .eq(caller_lines[1..].iter().copied()))
            || (n == 2
                && names == ["main::rounds", "main"]
                && p[0].line == caller_lines[1]
                && p[1].line == caller_lines[2])
    };
    let n_whole: i64 = samples.iter().filter(|s| whole(s)).map(|s| s.count).sum();
    let parsing: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.frames
                .iter()
                .any(|f| !f.perl && f.function == "Perl_yyparse")
        })
        .collect();
    let n_parsing: i64 = parsing.iter().map(|s| s.count).sum();
    let n_parsing_whole: i64 = parsing.iter().filter(|s| in_eval(s)).map(|s| s.count).sum();
    eprintln!(
        "Perl 5.36: {n_whole} of {total} samples with the whole chain; {n_parsing_whole} of \
         {n_parsing} in the parser; the others:\n{}",
        show(&samples.iter().filter(|s| !whole(s)).collect::<Vec<_>>())
    );
    // The workload gets what CPU the machine leaves it: 100 samples keep the share's noise
    // near 2 %.
    assert!(
        total >= 100 && share(n_whole, total) >= 0.95,
        "(eval N) <- evaluate <- rounds <- main (or its outer part) at their lines: {n_whole} of {total}; the others:\n{}",
        show(&samples.iter().filter(|s| !whole(s)).collect::<Vec<_>>())
    );
    assert!(
        n_parsing >= 10 && share(n_parsing_whole, n_parsing) >= 0.95,
        "samples in the parser keep the eval and its callers: {n_parsing_whole} of {n_parsing}\n{}",
        show(
            &parsing
                .iter()
                .copied()
                .filter(|s| !in_eval(s))
                .collect::<Vec<_>>()
        )
    );
}

/// With the Perl unwinder off, the same script shows only native frames: the runops loop.
#[test]
fn perl_unwinder_off_gives_native_stacks() {
    let Some((samples, _)) = record_script(
        36,
        "chains.pl",
        3,
        &["-r", "499", "--no-interpreter", "perl"],
    ) else {
        return;
    };
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let perl_frames = samples.iter().filter(|s| !s.perl().is_empty()).count();
    let runops: i64 = samples
        .iter()
        .filter(|s| {
            s.frames
                .iter()
                .any(|f| f.function == "Perl_runops_standard")
        })
        .map(|s| s.count)
        .sum();
    assert_eq!(perl_frames, 0, "no Perl frames when the unwinder is off");
    assert!(
        // The workload gets what CPU a loaded machine leaves it: 20 samples still show it.
        total >= 20 && share(runops, total) >= 0.9,
        "the runops loop shows instead: {runops} of {total}"
    );
}

/// Runs `ferroscope run` on the two-chains script with `perl_enabled` as given until it
/// wrote two profiles; returns their samples and the agent's `/metrics` at the end.
fn agent_samples(perl: &Runtime, perl_enabled: bool) -> (Vec<Sample>, String) {
    let mut cmd = perl.command();
    cmd.arg(script_for(perl, "chains.pl"));
    let workload = Ready::start(cmd);
    // Generous: on a loaded machine the debug agent takes 15-20 s to load its programs.
    let run = run_agent(
        workload.pid(),
        &format!("perl_enabled = {perl_enabled}"),
        "pl",
        2,
        Duration::from_secs(60),
    );
    drop(workload);
    (run.profiles.iter().flat_map(decode).collect(), run.metrics)
}

/// The agent (`ferroscope run`) names Perl frames in the profiles it writes and counts them
/// in its metrics, and `perl_enabled = false` in its configuration turns that off: native
/// frames only.
#[test]
fn agent_perl_enabled_true_and_false() {
    if !can_run_bpf() {
        return;
    }
    let Some(perl) = perl(36) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());

    let (on, metrics) = agent_samples(&perl, true);
    for name in [
        "UnwindPerlAttempts_total",
        "UnwindPerlFrames_total",
        "PerlSymbolizationSuccesses_total",
        "PerlNameCacheHits_total",
    ] {
        assert!(metric(&metrics, name) > 0.0, "{name} counts what happened");
    }
    assert_eq!(metric(&metrics, "PerlSymbolizationFailures_total"), 0.0);
    let total: i64 = on.iter().map(|s| s.count).sum();
    let whole: i64 = on
        .iter()
        .filter(|s| {
            let names = s.perl_names();
            names.ends_with(&["Worker::run", "main::chain_a", "main"])
                || names == ["main::leaf_b", "main::chain_b", "main"]
        })
        .map(|s| s.count)
        .sum();
    assert!(total > 50, "only {total} samples");
    assert!(
        share(whole, total) >= 0.9,
        "perl_enabled = true: only {whole} of {total} samples have a whole Perl chain\n{}",
        show(&on.iter().collect::<Vec<_>>())
    );

    let (off, metrics) = agent_samples(&perl, false);
    assert_eq!(metric(&metrics, "UnwindPerlFrames_total"), 0.0);
    let total: i64 = off.iter().map(|s| s.count).sum();
    let runops: i64 = off
        .iter()
        .filter(|s| {
            s.frames
                .iter()
                .any(|f| f.function == "Perl_runops_standard")
        })
        .map(|s| s.count)
        .sum();
    assert!(total > 50, "only {total} samples");
    assert!(
        off.iter().all(|s| s.perl().is_empty()),
        "no Perl frames with perl_enabled = false"
    );
    assert!(
        share(runops, total) >= 0.9,
        "the runops loop shows instead: {runops} of {total}"
    );
}
