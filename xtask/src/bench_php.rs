//! `cargo xtask bench-php [VERSION...]`: the PHP unwinder's cost and naming cache.
//!
//! For each PHP build (npm's @libphp `7.4`, `8.2`, `8.3`, `8.4`, `8.5` and `debian` for
//! Debian's 8.2, all by default; the harness installs them into the test cache):
//!
//! 1. the eBPF cost per sample of a 50-deep PHP stack (`fixtures/php/deep.php 50`), with the
//!    interpreter and, on 8.2 and 8.5, with the opcache JIT: `ferroscope record` at 97 Hz for
//!    10 s reports the programs' run count and time (bpf_stats); a sleeping process's record
//!    gives the cost of a run that unwinds nothing; the cost per unwound sample is
//!    `(total − (runs − samples) × baseline) / samples`, as `bench-python` computes it;
//! 2. the naming cache hit rate over 60 s of `fixtures/php/app.php` at 97 Hz, from the PHP
//!    line `record` prints (functions read from the process against frames named).

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferroscope_test_harness::runtimes::{self, Runtime};

use crate::{build_release, is_root, number_before, record_stderr, root};

/// The opcache JIT settings the benchmark (and the tests) use.
const JIT: &[&str] = &[
    "-d",
    "opcache.enable_cli=1",
    "-d",
    "opcache.jit=tracing",
    "-d",
    "opcache.jit_buffer_size=16M",
];

fn runtime(version: &str) -> Result<Runtime> {
    let rt = if version == "debian" {
        runtimes::try_php_debian()
    } else {
        runtimes::try_php(version)
    };
    rt.map_err(|e| anyhow::anyhow!("PHP {version}: {}", e.0))
}

/// `php -n` (and the JIT's settings, loading opcache where it is a shared extension) running
/// `script` with `args`, once it printed `ready`.
fn start(version: &str, rt: &Runtime, jit: bool, script: &Path, args: &[&str]) -> Result<Child> {
    let mut cmd: Command = rt.command();
    cmd.arg("-n");
    if jit {
        match version {
            "8.5" => {}
            "debian" => {
                cmd.args(["-d", "zend_extension=opcache"]);
            }
            _ => {
                let so = rt.exe.with_file_name("modules/opcache.so");
                cmd.arg("-d")
                    .arg(format!("zend_extension={}", so.display()));
            }
        }
        cmd.args(JIT);
    }
    let mut child = cmd
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", rt.name))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("{} did not start under {}", script.display(), rt.name);
    }
    // Let the JIT compile the hot code.
    std::thread::sleep(Duration::from_millis(500));
    Ok(child)
}

pub fn bench_php(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the PHP benchmark loads eBPF programs and must run as root");
    }
    let all = ["7.4", "8.2", "8.3", "8.4", "8.5", "debian"];
    let versions: Vec<&str> = if args.is_empty() {
        all.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    let root = root();
    let target = build_release(&root)?;
    let exe = target.join("release/ferroscope");
    let (seconds, rate) = (10, 97);

    // Baseline: a sleeping target, so every run of the program is filtered out.
    let mut sleeper = Command::new("sleep").arg("1000").spawn()?;
    let base = record_stderr(&exe, sleeper.id(), seconds, rate);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let base = base?;
    let base_runs =
        number_before(&base, " runs").context("eBPF runs (bpf_stats) in the baseline")?;
    let base_us = number_before(&base, " µs each").context("eBPF time in the baseline")?;
    println!("baseline (filtered runs only): {base_runs} runs, {base_us:.2} µs each");

    for version in versions {
        let rt = runtime(version)?;
        let jits: &[bool] = if matches!(version, "8.2" | "8.5" | "debian") {
            &[false, true]
        } else {
            &[false]
        };
        for &jit in jits {
            let mode = if jit { "JIT" } else { "interpreter" };
            let mut deep = start(
                version,
                &rt,
                jit,
                &root.join("fixtures/php/deep.php"),
                &["50"],
            )?;
            let out = record_stderr(&exe, deep.id(), seconds, rate);
            let _ = deep.kill();
            let _ = deep.wait();
            let out = out?;
            let runs = number_before(&out, " runs").context("eBPF runs")?;
            let us = number_before(&out, " µs each").context("eBPF time")?;
            let samples = number_before(&out, " samples from").context("samples")?;
            let total_us = runs * us;
            let filtered = (runs - samples).max(0.0);
            let per_sample = (total_us - filtered * base_us) / samples.max(1.0);
            println!(
                "{} ({mode}), 50-deep stack: {samples} samples, {runs} eBPF runs, {total_us:.0} µs \
                 in all => {per_sample:.1} µs per unwound sample (goal < 20 µs)",
                rt.name
            );
        }
        let mut app = start(version, &rt, false, &root.join("fixtures/php/app.php"), &[])?;
        let out = record_stderr(&exe, app.id(), 60, rate);
        let _ = app.kill();
        let _ = app.wait();
        let out = out?;
        let line = out
            .lines()
            .find(|l| l.contains("PHP frames:"))
            .context("the PHP line of `ferroscope record`")?;
        let rate_text = match (
            metric_in(line, "PHPFunctionCacheHits_total "),
            metric_in(line, "PHPFunctionCacheMisses_total "),
        ) {
            (Some(h), Some(m)) if h + m > 0.0 => {
                format!("{:.2} % (goal > 99 %)", 100.0 * h / (h + m))
            }
            _ => "unknown".into(),
        };
        println!(
            "{}, app.php 60 s at {rate} Hz: {}; naming cache hit rate {rate_text}",
            rt.name,
            line.trim_start_matches("ferroscope: ")
        );
    }
    Ok(())
}

/// The number after `name` in `line` (`... PHPFunctionCacheHits_total 123, ...`).
fn metric_in(line: &str, name: &str) -> Option<f64> {
    let rest = line.split(name).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
