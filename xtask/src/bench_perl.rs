//! `cargo xtask bench-perl [--binary PATH] [host|trixie|sid]...`: the Perl figures of
//! docs/benchmarks.md (with `--binary`, that ferroscope instead of a fresh release build: the
//! eBPF programs are the same objects either way).
//!
//! For each Perl (Debian's 5.36 on the host, 5.40 in the trixie chroot, 5.42 in the sid
//! chroot; default: all three): the eBPF cost per sample of a 50-deep Perl stack
//! (`fixtures/perl/deep.pl 50`, 10 s at 97 Hz, less the cost of the filtered runs measured on
//! a sleeping process), and the naming cache hit rate over 60 s of an application-like
//! script (`fixtures/perl/app.pl`).

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferroscope_test_harness::runtimes::{self, Runtime};

/// The Perl a name stands for (installing the chroot on first use).
fn perl(name: &str) -> Result<Runtime> {
    let r = match name {
        "host" => runtimes::try_perl_debian(),
        "trixie" => {
            runtimes::try_in_chroot(ferroscope_test_harness::chroot::TRIXIE, "/usr/bin/perl")
        }
        "sid" => runtimes::try_in_chroot(ferroscope_test_harness::chroot::SID, "/usr/bin/perl"),
        other => bail!("unknown Perl `{other}`: host, trixie or sid"),
    };
    r.map_err(|e| anyhow::anyhow!("Perl `{name}` is not available: {}", e.0))
}

/// Starts `script` (a fixture, copied into the chroot when the Perl runs in one) and waits
/// for its `ready` line.
fn start(perl: &Runtime, script: &Path, args: &[&str]) -> Result<Child> {
    let path = match &perl.chroot {
        Some((chroot, _)) => chroot.copy_in(script),
        None => script.to_path_buf(),
    };
    let mut child = perl
        .command()
        .arg(&path)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", perl.name))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("{} did not start under {}", script.display(), perl.name);
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

/// The number right after `prefix` in `text` (e.g. "123" after "PerlNameCacheHits_total ").
fn number_after(text: &str, prefix: &str) -> Option<f64> {
    let after = text.split(prefix).nth(1)?;
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn bench_perl(args: &[String]) -> Result<()> {
    if !crate::is_root() {
        bail!("the Perl benchmark loads eBPF programs and must run as root");
    }
    let mut binary = None;
    let mut names: Vec<&str> = Vec::new();
    let mut args = args.iter();
    while let Some(a) = args.next() {
        if a == "--binary" {
            binary = Some(std::path::PathBuf::from(
                args.next().context("--binary needs a path")?,
            ));
        } else {
            names.push(a);
        }
    }
    if names.is_empty() {
        names = vec!["host", "trixie", "sid"];
    }
    let root = crate::root();
    let exe = match binary {
        Some(path) => path,
        None => crate::build_release(&root)?.join("release/ferroscope"),
    };
    let (seconds, rate) = (10, 97);

    for name in names {
        let perl = perl(name)?;
        // Baseline: a sleeping target, so every run of the program is filtered out.
        let mut sleeper = Command::new("sleep").arg("1000").spawn()?;
        let base = crate::record_stderr(&exe, sleeper.id(), seconds, rate);
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let base = base?;
        let base_runs = crate::number_before(&base, " runs")
            .context("eBPF runs (bpf_stats) in the baseline")?;
        let base_us =
            crate::number_before(&base, " µs each").context("eBPF time in the baseline")?;

        let deep = start(&perl, &root.join("fixtures/perl/deep.pl"), &["50"])?;
        let out = crate::record_stderr(&exe, deep.id(), seconds, rate);
        stop(deep);
        let out = out?;
        let runs = crate::number_before(&out, " runs").context("eBPF runs")?;
        let us = crate::number_before(&out, " µs each").context("eBPF time")?;
        let samples = crate::number_before(&out, " samples from").context("samples")?;
        let total_us = runs * us;
        let filtered = (runs - samples).max(0.0);
        let per_sample = (total_us - filtered * base_us) / samples.max(1.0);
        println!(
            "{}: 50-deep Perl stack: {samples} samples unwound, {runs} eBPF runs, {total_us:.0} µs in all;\n\
             baseline (filtered runs only): {base_runs} runs, {base_us:.2} µs each\n\
             => eBPF cost per unwound sample: {per_sample:.1} µs (goal < 20 µs)",
            perl.name
        );

        let app = start(&perl, &root.join("fixtures/perl/app.pl"), &[])?;
        let out = crate::record_stderr(&exe, app.id(), 60, rate);
        stop(app);
        let out = out?;
        let line = out
            .lines()
            .find(|l| l.contains("Perl frames:"))
            .context("the Perl metrics line of `ferroscope record`")?;
        let hits = number_after(line, "PerlNameCacheHits_total ").unwrap_or(0.0);
        let misses = number_after(line, "PerlNameCacheMisses_total ").unwrap_or(0.0);
        println!(
            "{}: application-like script, 60 s at {rate} Hz: {}\n\
             => naming cache hit rate {:.2} % (goal > 99 %)",
            perl.name,
            line.trim_start_matches("ferroscope: "),
            100.0 * hits / (hits + misses).max(1.0)
        );
    }
    Ok(())
}
