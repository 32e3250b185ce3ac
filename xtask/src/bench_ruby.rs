//! `cargo xtask bench-ruby [RUBY]`: the eBPF cost per sample of a 50-deep Ruby stack, and
//! the naming cache's hit rate over 60 s of an application-like script (figures in
//! docs/benchmarks.md).

use anyhow::{Context, Result, bail};
use std::process::Command;

use super::{build_release, is_root, number_before, record_stderr, root, start_ready};

pub fn bench_ruby(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the Ruby benchmark loads eBPF programs and must run as root");
    }
    let ruby = args
        .first()
        .cloned()
        .unwrap_or_else(|| "/usr/bin/ruby3.1".to_owned());
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

    let mut deep = start_ready(&ruby, &root.join("fixtures/ruby/deep.rb"), &[])?;
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
        "50-deep Ruby stack ({ruby}): {samples} samples unwound, {runs} eBPF runs, {:.0} µs in all;\n\
         baseline (filtered runs only): {base_runs} runs, {base_us:.2} µs each\n\
         => eBPF cost per unwound sample: {per_sample:.1} µs (goal < 20 µs)",
        total_us
    );

    let mut app = start_ready(&ruby, &root.join("fixtures/ruby/app.rb"), &[])?;
    let out = record_stderr(&exe, app.id(), 60, rate);
    let _ = app.kill();
    let _ = app.wait();
    let out = out?;
    let line = out
        .lines()
        .find(|l| l.contains("Ruby frames:"))
        .context("the Ruby metrics line of `ferroscope record`")?;
    // "... (RubyProcessesAttached_total 1, RubyFrameCacheHits_total H, RubyFrameCacheMisses_total M)"
    let hits = number_before(line, ", RubyFrameCacheMisses_total").context("the cache hits")?;
    let misses = number_before(line, ")").context("the cache misses")?;
    println!(
        "application-like script, 60 s at {rate} Hz: {}\n=> naming cache hit rate {:.2} % (goal > 99 %)",
        line.trim_start_matches("ferroscope: "),
        100.0 * hits / (hits + misses).max(1.0)
    );
    Ok(())
}
