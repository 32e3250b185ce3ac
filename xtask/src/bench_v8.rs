//! `cargo xtask bench-v8 [NODE]`: the eBPF cost per sample of a 50-deep optimized
//! JavaScript stack, the naming cache's hit rate over 60 s of an application-like script,
//! and the agent's (`ferroscope record`'s) peak RSS meanwhile (figures in
//! docs/benchmarks.md).

use anyhow::{Context, Result, bail};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{build_release, is_root, number_before, record_stderr, root, start_ready};

pub fn bench_v8(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the V8 benchmark loads eBPF programs and must run as root");
    }
    let node = args
        .first()
        .cloned()
        .unwrap_or_else(|| "/usr/bin/node".to_owned());
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

    let mut deep = start_ready(&node, &root.join("fixtures/node/deep.js"), &[])?;
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
        "50-deep optimized JavaScript stack ({node}): {samples} samples unwound, {runs} eBPF \
         runs, {:.0} µs in all;\n\
         baseline (filtered runs only): {base_runs} runs, {base_us:.2} µs each\n\
         => eBPF cost per unwound sample: {per_sample:.1} µs (goal < 20 µs)",
        total_us
    );

    let mut app = start_ready(&node, &root.join("fixtures/node/app.js"), &[])?;
    let out = record_with_rss(&exe, app.id(), 60, rate);
    let _ = app.kill();
    let _ = app.wait();
    let (out, rss_kib) = out?;
    let line = out
        .lines()
        .find(|l| l.contains("V8 frames:"))
        .context("the V8 metrics line of `ferroscope record`")?;
    // "... (V8ProcessesAttached_total 1, V8FrameCacheHits_total H, V8FrameCacheMisses_total M, ...)"
    let after = |name: &str| -> Option<f64> {
        let rest = &line[line.find(name)? + name.len()..];
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let hits = after("V8FrameCacheHits_total").context("the cache hits")?;
    let misses = after("V8FrameCacheMisses_total").context("the cache misses")?;
    println!(
        "application-like script, 60 s at {rate} Hz: {}\n\
         => naming cache hit rate {:.2} % (goal > 99 %)\n\
         => peak RSS of `ferroscope record` meanwhile: {:.1} MiB (goal < 64 MiB)",
        line.trim_start_matches("ferroscope: "),
        100.0 * hits / (hits + misses).max(1.0),
        rss_kib as f64 / 1024.0
    );
    Ok(())
}

/// `ferroscope record` of `pid` (its stderr), with the largest RSS it reached (KiB), read
/// from /proc every 200 ms.
fn record_with_rss(exe: &Path, pid: u32, seconds: u32, rate: u32) -> Result<(String, u64)> {
    let mut child = Command::new(exe)
        .args([
            "record",
            "-p",
            &pid.to_string(),
            "-d",
            &format!("{seconds}s"),
        ])
        .args(["-r", &rate.to_string(), "-o", "/dev/null", "--top", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run ferroscope record")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut peak = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("VmHWM:")
                .or_else(|| line.strip_prefix("VmRSS:"))
            {
                let kib: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
                peak = peak.max(kib);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("ferroscope record failed:\n{stderr}");
    }
    Ok((stderr, peak))
}
