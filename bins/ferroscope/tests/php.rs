//! End-to-end tests of PHP stacks: the PHP builds the harness installs (npm's @libphp 7.4,
//! 8.2, 8.3, 8.4 and 8.5, Debian's 8.2 on the host and Debian trixie's 8.4 in a debootstrap
//! chroot) run real scripts, with and without the opcache JIT, while the real `ferroscope`
//! binary records them, and the test reads the pprof it wrote.
//!
//! They need root. With `FERROSCOPE_REQUIRE=1` (CI) running without root, or without the PHP
//! builds, fails them.

#![allow(clippy::print_stderr)]

mod common;
use common::source::{line_of, share, tagged_lines};
use common::{WORKLOAD_LIMIT, can_run_bpf, ferroscope, fixture, metric, run_agent};
use ferroscope_test_harness::Guard;
use ferroscope_test_harness::runtimes::{self, Runtime};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use ferroscope_pprof::proto::Profile;

/// Each test keeps the CPUs busy and measures CPU shares: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long a fixture may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The opcache JIT, as `-d` settings (the tracing JIT, 16 MiB of code).
const JIT: &[&str] = &[
    "-d",
    "opcache.enable_cli=1",
    "-d",
    "opcache.jit=tracing",
    "-d",
    "opcache.jit_buffer_size=16M",
];

/// Which PHP runs a test.
#[derive(Debug, Clone, Copy)]
enum Build {
    /// npm's `@libphp` build of this version.
    Npm(&'static str),
    /// Debian's php8.2-cli.
    Debian,
    /// Debian trixie's php8.4-cli, in the harness's debootstrap chroot.
    Trixie,
}

impl Build {
    fn runtime(self) -> Option<Runtime> {
        match self {
            Build::Npm(v) => runtimes::php(v),
            Build::Debian => runtimes::php_debian(),
            Build::Trixie => runtimes::php_trixie(),
        }
    }

    /// `php -n` and the settings that load opcache (shared before 8.5) with its JIT on.
    fn command(self, rt: &Runtime, jit: bool) -> Command {
        let mut cmd = rt.command();
        cmd.arg("-n");
        if jit {
            match self {
                Build::Npm("8.5") => {}
                Build::Npm(_) => {
                    let so = rt.exe.with_file_name("modules/opcache.so");
                    cmd.arg("-d")
                        .arg(format!("zend_extension={}", so.display()));
                }
                Build::Debian | Build::Trixie => {
                    cmd.args(["-d", "zend_extension=opcache"]);
                }
            }
            cmd.args(JIT);
        }
        cmd
    }
}

/// A process started for a test that prints `ready` once set up; killed when dropped, or
/// when it outlives [`WORKLOAD_LIMIT`].
struct Ready(Guard);

impl Ready {
    fn start(mut cmd: Command) -> Ready {
        let mut guard = Guard::spawn(&mut cmd, WORKLOAD_LIMIT);
        guard.wait_for_line("ready", READY_TIMEOUT);
        // Let it run its loop for a moment, so that every library it loads is mapped (and
        // the JIT compiled the hot code).
        std::thread::sleep(Duration::from_millis(300));
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
    /// A PHP frame: a location with no mapping and no address.
    php: bool,
}

/// A decoded sample: frames leaf first, number of samples.
#[derive(Debug)]
struct Sample {
    frames: Vec<Frame>,
    count: i64,
}

impl Sample {
    fn php(&self) -> Vec<&Frame> {
        self.frames.iter().filter(|f| f.php).collect()
    }

    fn php_names(&self) -> Vec<&str> {
        self.php().iter().map(|f| f.function.as_str()).collect()
    }
}

fn decode(p: &Profile) -> Vec<Sample> {
    common::samples::samples(p)
        .into_iter()
        .map(|s| Sample {
            count: s.count,
            frames: s
                .frames
                .into_iter()
                .map(|f| Frame {
                    php: !f.mapped && f.address == 0 && !f.function.starts_with('['),
                    function: f.function,
                    file: f.file,
                    line: f.line,
                })
                .collect(),
        })
        .collect()
}

fn record(pid: u32, seconds: u32, extra: &[&str]) -> Vec<Sample> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("php.pb.gz");
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

/// Records `fixtures/php/<script>` run by `build` for `seconds`, again (up to 3 more times)
/// while fewer than `min_samples` were taken: on a loaded machine the workload gets less
/// than its CPU, and the shares the tests measure need enough samples. `None` when the test
/// is skipped (not root, or that PHP is missing and not required). A PHP in a chroot runs a
/// copy of the script in the chroot's `/tmp`.
#[allow(clippy::too_many_arguments)]
fn record_script(
    build: Build,
    jit: bool,
    script: &str,
    seconds: u32,
    min_samples: i64,
    output_lines: usize,
    extra: &[&str],
) -> Option<Recorded> {
    if !can_run_bpf() {
        return None;
    }
    let rt = build.runtime()?;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = build.command(&rt, jit);
    let host_script = fixture(&format!("php/{script}"));
    let file = match &rt.chroot {
        Some((chroot, _)) => chroot.copy_in(&host_script),
        None => std::fs::canonicalize(&host_script).unwrap(),
    };
    cmd.arg(&file);
    let workload = Ready::start(cmd);
    let mut samples = Vec::new();
    for _ in 0..4 {
        samples.extend(record(workload.pid(), seconds, extra));
        if samples.iter().map(|s| s.count).sum::<i64>() >= min_samples {
            break;
        }
    }
    let mut workload = workload;
    let mut lines = Vec::new();
    for _ in 0..output_lines {
        lines.extend(workload.0.next_line(READY_TIMEOUT));
    }
    drop(workload);
    Some(Recorded {
        samples,
        output: lines,
        file,
    })
}

/// What [`record_script`] recorded.
struct Recorded {
    samples: Vec<Sample>,
    /// The first lines the workload printed after `ready`.
    output: Vec<String>,
    /// The script's path as PHP sees it (inside its chroot, if it runs in one).
    file: PathBuf,
}

/// Samples with their counts, for failure messages.
fn show(samples: &[&Sample]) -> String {
    let mut sorted: Vec<&&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| -s.count);
    let mut out = String::new();
    for s in sorted.iter().take(8) {
        let frames: Vec<String> = s
            .frames
            .iter()
            .map(|f| {
                if f.php {
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

const CHAIN_A: [&str; 4] = [
    "App\\Worker::{closure}",
    "App\\Worker::run",
    "App\\chain_a",
    "<main>",
];
const CHAIN_B: [&str; 3] = ["App\\leaf_b", "App\\chain_b", "<main>"];

/// The two-chains script: chains in order with their names, files and lines, a 3:1 work
/// ratio within 25 %, and at least 95 % of each leaf's samples carrying its whole chain.
fn two_chains(build: Build, jit: bool) {
    // 499 Hz: ~2,000 samples, so that the ratio's sampling noise (about 5 % at this count)
    // stays well inside the 25 % the test allows.
    let Some(Recorded {
        samples,
        output,
        file,
    }) = record_script(build, jit, "chains.php", 5, 1000, 1, &["-r", "499"])
    else {
        return;
    };
    let what = format!("{build:?}{}", if jit { " with the JIT" } else { "" });
    // The script says how much code the JIT compiled: some with it on, none without.
    let jit_bytes: u64 = output
        .iter()
        .find_map(|l| l.strip_prefix("jit ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("PHP {what}: no `jit N` line in {output:?}"));
    assert_eq!(
        jit,
        jit_bytes > 0,
        "PHP {what}: {jit_bytes} bytes of JIT code"
    );
    let script = fixture("php/chains.php");
    let hot_a = tagged_lines(&script, "// HOT_A");
    let hot_b = tagged_lines(&script, "// HOT_B");
    let callers_a = [
        line_of(&script, "return $inner($n);"),
        line_of(&script, "return $worker->run(UNIT);"),
        line_of(&script, "chain_a($worker);"),
    ];
    let callers_b = [
        line_of(&script, "return leaf_b(UNIT);"),
        line_of(&script, "chain_b();"),
    ];

    let total: i64 = samples.iter().map(|s| s.count).sum();
    assert!(
        total >= 1000,
        "{what}: only {total} samples in 4 records of 5 s at 499 Hz"
    );
    let mut report = String::new();
    let mut counts = Vec::new();
    for (chain, hot, callers) in [
        (&CHAIN_A[..], &hot_a, &callers_a[..]),
        (&CHAIN_B[..], &hot_b, &callers_b[..]),
    ] {
        let leaf = chain[0];
        let with_leaf: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.php_names().contains(&leaf))
            .collect();
        let n: i64 = with_leaf.iter().map(|s| s.count).sum();
        let full: Vec<&Sample> = with_leaf
            .iter()
            .copied()
            .filter(|s| s.php_names() == chain)
            .collect();
        let n_full: i64 = full.iter().map(|s| s.count).sum();
        let right_file = full
            .iter()
            .all(|s| s.php().iter().all(|f| Path::new(&f.file) == file));
        let on_hot_line: i64 = full
            .iter()
            .filter(|s| hot.contains(&s.php()[0].line))
            .map(|s| s.count)
            .sum();
        let right_callers: i64 = full
            .iter()
            .filter(|s| {
                let lines: Vec<i64> = s.php()[1..].iter().map(|f| f.line).collect();
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
            .filter(|s| s.php_names() != chain)
            .collect();
        assert!(
            n > 0 && share(n_full, n) >= 0.95,
            "PHP {what}: fewer than 95 % of {leaf}'s samples carry the whole chain\n{report}samples without it:\n{}",
            show(&wrong)
        );
        assert!(
            right_file,
            "PHP {what}: every frame is in {}",
            file.display()
        );
        // The JIT keeps the line executing in a register; the frame's line is where it was
        // last saved (the loop's entry), still inside the leaf.
        let leaf_lines_ok = if jit {
            full.iter()
                .filter(|s| s.php()[0].line > 0)
                .map(|s| s.count)
                .sum::<i64>()
        } else {
            on_hot_line
        };
        assert!(
            share(leaf_lines_ok, n_full) >= 0.9,
            "PHP {what}: {leaf}'s line is not its hot loop's\n{report}{}",
            show(&full)
        );
        assert!(
            share(right_callers, n_full) >= 0.95,
            "PHP {what}: the callers of {leaf} are not at their call lines\n{report}{}",
            show(&full)
        );
        counts.push(n);
    }
    let ratio = counts[0] as f64 / counts[1].max(1) as f64;
    eprintln!("PHP {what}:\n{report}ratio A:B = {ratio:.2} (expected 3)");
    assert!(
        (2.25..=3.75).contains(&ratio),
        "PHP {what}: work ratio A:B is {ratio:.2}, not within 25 % of 3\n{report}"
    );
    let php_share = share(
        samples
            .iter()
            .filter(|s| !s.php().is_empty())
            .map(|s| s.count)
            .sum(),
        total,
    );
    assert!(
        php_share >= 0.95,
        "PHP {what}: only {:.1} % of samples have PHP frames\n{}",
        php_share * 100.0,
        show(&samples.iter().collect::<Vec<_>>())
    );
}

#[test]
fn two_chains_php_7_4() {
    two_chains(Build::Npm("7.4"), false);
}

#[test]
fn two_chains_php_8_2() {
    two_chains(Build::Npm("8.2"), false);
}

#[test]
fn two_chains_php_8_3() {
    two_chains(Build::Npm("8.3"), false);
}

#[test]
fn two_chains_php_8_4() {
    two_chains(Build::Npm("8.4"), false);
}

#[test]
fn two_chains_php_8_5() {
    two_chains(Build::Npm("8.5"), false);
}

#[test]
fn two_chains_debian_php_8_2() {
    two_chains(Build::Debian, false);
}

#[test]
fn two_chains_trixie_php_8_4() {
    two_chains(Build::Trixie, false);
}

#[test]
fn two_chains_php_8_2_jit() {
    two_chains(Build::Npm("8.2"), true);
}

#[test]
fn two_chains_php_8_5_jit() {
    two_chains(Build::Npm("8.5"), true);
}

#[test]
fn two_chains_debian_php_8_2_jit() {
    two_chains(Build::Debian, true);
}

#[test]
fn two_chains_trixie_php_8_4_jit() {
    two_chains(Build::Trixie, true);
}

/// A method of a namespaced class and a closure are named as PHP users read them, with their
/// file and line; hash() and preg_match_all() show in place: their native work first, then
/// the internal function's own frame, then the PHP functions that called it.
#[test]
fn names_and_internal_functions_in_place() {
    // PCRE's JIT code has no unwind information (see the README): the regular expression
    // runs in PCRE's interpreter here, whose frames unwind.
    let Some(Recorded { samples, file, .. }) = record_script(
        Build::Npm("8.3"),
        false,
        "names.php",
        4,
        600,
        0,
        &["-r", "499"],
    ) else {
        return;
    };
    let script = fixture("php/names.php");
    let callers = [
        "App\\Shop\\Cart::{closure}",
        "App\\Shop\\Cart::checkout",
        "App\\Shop\\handle",
        "<main>",
    ];
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let mut report = String::new();
    for (internal, tag, min_share) in [("hash", "// HASH", 0.2), ("preg_match_all", "// PREG", 0.2)]
    {
        let line = *tagged_lines(&script, tag).iter().next().unwrap();
        let with: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.php_names().first() == Some(&internal))
            .collect();
        let n: i64 = with.iter().map(|s| s.count).sum();
        let in_place: i64 = with
            .iter()
            .filter(|s| {
                let php = s.php();
                let names: Vec<&str> = php.iter().map(|f| f.function.as_str()).collect();
                let first = s.frames.iter().position(|f| f.php).unwrap_or(0);
                names[1..] == callers
                    && first > 0
                    && php[1].line == line
                    && Path::new(&php[1].file) == file
                    && php[0].file.is_empty()
            })
            .map(|s| s.count)
            .sum();
        report.push_str(&format!(
            "{internal}: {n} of {total} samples, {in_place} in place under {callers:?} at line {line}\n"
        ));
        assert!(
            share(n, total) >= min_share,
            "{internal} should take at least {:.0} % of the time\n{report}{}",
            min_share * 100.0,
            show(&samples.iter().collect::<Vec<_>>())
        );
        assert!(
            share(in_place, n) >= 0.95,
            "{internal}: native frames, then {internal}, then {callers:?}\n{report}{}",
            show(&with)
        );
    }
    eprintln!("{report}");
}

/// With the PHP unwinder off, the same script shows only native frames: the VM loop
/// `execute_ex`.
#[test]
fn php_unwinder_off_gives_native_stacks() {
    let Some(Recorded { samples, .. }) = record_script(
        Build::Npm("8.3"),
        false,
        "chains.php",
        2,
        0,
        0,
        &["--no-interpreter", "php"],
    ) else {
        return;
    };
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let php_frames = samples.iter().filter(|s| !s.php().is_empty()).count();
    let vm: i64 = samples
        .iter()
        .filter(|s| s.frames.iter().any(|f| f.function == "execute_ex"))
        .map(|s| s.count)
        .sum();
    assert_eq!(php_frames, 0, "no PHP frames when the unwinder is off");
    assert!(
        share(vm, total) >= 0.9,
        "the VM loop shows instead: {vm} of {total}\n{}",
        show(&samples.iter().collect::<Vec<_>>())
    );
}

/// Runs `ferroscope run` on the two-chains script with `php_enabled` as given until it
/// wrote three profiles; returns the samples of the last two (the first one has the samples
/// taken before the agent loaded the process, which have no PHP frames yet) and the agent's
/// `/metrics` at the end.
fn agent_samples(rt: &Runtime, php_enabled: bool) -> (Vec<Sample>, String) {
    let mut cmd = Build::Debian.command(rt, false);
    cmd.arg(fixture("php/chains.php"));
    let workload = Ready::start(cmd);
    let run = run_agent(
        workload.pid(),
        &format!("php_enabled = {php_enabled}"),
        "php",
        3,
        Duration::from_secs(60),
    );
    drop(workload);
    let samples = run.profiles.iter().skip(1).flat_map(decode).collect();
    (samples, run.metrics)
}

/// The agent (`ferroscope run`) names PHP frames in the profiles it writes and counts them
/// in its metrics, and `php_enabled = false` in its configuration turns that off: native
/// frames only.
#[test]
fn agent_php_enabled_true_and_false() {
    if !can_run_bpf() {
        return;
    }
    let Some(rt) = runtimes::php_debian() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());

    let (on, metrics) = agent_samples(&rt, true);
    for name in [
        "UnwindPHPAttempts_total",
        "UnwindPHPFrames_total",
        "PHPSymbolizationSuccesses_total",
    ] {
        assert!(metric(&metrics, name) > 0.0, "{name} counts what happened");
    }
    assert_eq!(metric(&metrics, "PHPSymbolizationFailures_total"), 0.0);
    let total: i64 = on.iter().map(|s| s.count).sum();
    let whole: i64 = on
        .iter()
        .filter(|s| s.php_names() == CHAIN_A || s.php_names() == CHAIN_B)
        .map(|s| s.count)
        .sum();
    assert!(total > 50, "only {total} samples");
    assert!(
        share(whole, total) >= 0.9,
        "php_enabled = true: only {whole} of {total} samples have a whole PHP chain; those \
         without:\n{}",
        show(
            &on.iter()
                .filter(|s| s.php_names() != CHAIN_A && s.php_names() != CHAIN_B)
                .collect::<Vec<_>>()
        )
    );

    let (off, metrics) = agent_samples(&rt, false);
    assert_eq!(metric(&metrics, "UnwindPHPFrames_total"), 0.0);
    let total: i64 = off.iter().map(|s| s.count).sum();
    assert!(total > 50, "only {total} samples");
    assert!(
        off.iter().all(|s| s.php().is_empty()),
        "no PHP frames with php_enabled = false"
    );
    let vm: i64 = off
        .iter()
        .filter(|s| s.frames.iter().any(|f| f.function == "execute_ex"))
        .map(|s| s.count)
        .sum();
    assert!(
        share(vm, total) >= 0.9,
        "the VM loop shows instead: {vm} of {total}\n{}",
        show(&off.iter().collect::<Vec<_>>())
    );
}
