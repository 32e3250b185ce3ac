//! `cargo xtask bench-hotspot [JAVA] [--binary PATH]`: the eBPF cost per sample of a 50-deep Java stack
//! (interpreted, and C2-compiled with one frame per call), the naming cache's hit rate over
//! 60 s of an application-like program, and the peak RSS of `ferroscope record` with one JVM
//! running 20,000 distinct methods (figures in docs/benchmarks.md).

use anyhow::{Context, Result, bail};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{build_release, is_root, number_before, record_stderr, root, run};

/// Classes and methods per class of the generated many-methods program.
const CLASSES: usize = 200;
const METHODS: usize = 100;

/// Starts `java -cp classes <main> <args>` and waits for its `ready` line.
fn start_java(java: &str, classes: &Path, flags: &[&str], main: &[&str]) -> Result<Child> {
    let mut child = Command::new(java)
        .args(flags)
        .arg("-cp")
        .arg(classes)
        .args(main)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {java}"))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        bail!("{} did not start", main[0]);
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

/// The value `name` has on `record`'s metrics line (0 when absent: counters at 0 are left
/// out).
fn counter(line: &str, name: &str) -> f64 {
    line.split(name)
        .nth(1)
        .and_then(|rest| {
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// A program with `CLASSES` x `METHODS` distinct methods, each called over and over (every
/// one named at least once in a recording): the source of `Many.java`.
fn many_methods_source() -> String {
    let mut s = String::from("public class Many {\n    static volatile long sink;\n");
    for c in 0..CLASSES {
        s.push_str(&format!("    static class C{c} {{\n"));
        for m in 0..METHODS {
            s.push_str(&format!(
                "        static long m{m}(long x) {{ for (int i = 0; i < 2000; i++) {{ x = x * 31 + i + {m}; }} return x; }}\n"
            ));
        }
        s.push_str("        static long all(long x) {\n");
        for m in 0..METHODS {
            s.push_str(&format!("            x = m{m}(x);\n"));
        }
        s.push_str("            return x;\n        }\n    }\n");
    }
    s.push_str(
        "    public static void main(String[] args) {\n        System.out.println(\"ready\");\n        \
         System.out.flush();\n        long x = 1;\n        while (true) {\n",
    );
    for c in 0..CLASSES {
        s.push_str(&format!("            x = C{c}.all(x);\n"));
    }
    s.push_str("            sink += x;\n        }\n    }\n}\n");
    s
}

/// Runs `ferroscope record` on `pid` and samples its resident set every 100 ms: (stderr,
/// peak RSS in KiB).
fn record_rss(exe: &Path, pid: u32, seconds: u32, rate: u32) -> Result<(String, u64)> {
    let mut rec = Command::new(exe)
        .args([
            "record",
            "-p",
            &pid.to_string(),
            "-d",
            &format!("{seconds}s"),
        ])
        .args(["-r", &rate.to_string(), "-o", "/dev/null", "--top", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .context("run ferroscope record")?;
    let status_path = format!("/proc/{}/status", rec.id());
    let mut stderr = rec.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut peak = 0;
    while rec.try_wait()?.is_none() {
        // VmHWM: the peak resident set so far, kept by the kernel.
        if let Some(kib) = std::fs::read_to_string(&status_path).ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        }) {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((reader.join().unwrap_or_default(), peak))
}

pub fn bench_hotspot(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the HotSpot benchmark loads eBPF programs and must run as root");
    }
    // [JAVA] [--binary PATH]: another ferroscope binary instead of building the release one
    // (the eBPF programs are the same in every cargo profile; the RSS is not).
    let mut java = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java".to_owned();
    let mut binary = None;
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--binary" => binary = Some(rest.next().context("--binary needs a path")?.clone()),
            other => java = other.to_owned(),
        }
    }
    let javac = Path::new(&java).with_file_name("javac");
    let javac = if javac.exists() {
        javac
    } else {
        "javac".into()
    };
    let root = root();
    let (exe, classes): (PathBuf, PathBuf) = match binary {
        Some(b) => (
            b.into(),
            std::env::temp_dir().join("ferroscope-bench-hotspot"),
        ),
        None => {
            let target = build_release(&root)?;
            (
                target.join("release/ferroscope"),
                target.join("bench-hotspot"),
            )
        }
    };
    std::fs::create_dir_all(&classes)?;
    std::fs::write(classes.join("Many.java"), many_methods_source())?;
    run(Command::new(&javac)
        .args(["--release", "11", "-d"])
        .arg(&classes)
        .arg(root.join("fixtures/hotspot/Deep.java"))
        .arg(root.join("fixtures/hotspot/Workload.java"))
        .arg(classes.join("Many.java")))?;
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

    let cases: [(&str, &[&str], &str); 2] = [
        ("interpreted (-Xint)", &["-Xint"], "0"),
        (
            "C2-compiled, one frame per call",
            &[
                "-XX:CompileCommand=quiet",
                "-XX:CompileCommand=dontinline,Deep::*",
            ],
            "5000",
        ),
    ];
    for (what, flags, warmup) in cases {
        let mut deep = start_java(&java, &classes, flags, &["Deep", warmup])?;
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
            "50-deep Java stack, {what} ({java}): {samples} samples unwound, {runs} eBPF runs, \
             {total_us:.0} µs in all;\n\
             baseline (filtered runs only): {base_runs} runs, {base_us:.2} µs each\n\
             => eBPF cost per unwound sample: {per_sample:.1} µs (goal < 20 µs)"
        );
    }

    let mut app = start_java(&java, &classes, &[], &["Workload"])?;
    let out = record_stderr(&exe, app.id(), 60, rate);
    let _ = app.kill();
    let _ = app.wait();
    let out = out?;
    let line = out
        .lines()
        .find(|l| l.contains("Hotspot frames:"))
        .context("the HotSpot metrics line of `ferroscope record`")?;
    // "... (HotspotProcessesAttached_total 1, HotspotNamingCacheHits_total H, ...)": a
    // counter still at 0 is left out.
    let hits = counter(line, "HotspotNamingCacheHits_total");
    let misses = counter(line, "HotspotNamingCacheMisses_total");
    println!(
        "application-like program, 60 s at {rate} Hz: {}\n=> naming cache hit rate {:.2} % \
         (goal > 99 %)",
        line.trim_start_matches("ferroscope: "),
        100.0 * hits / (hits + misses).max(1.0)
    );

    let mut many = start_java(&java, &classes, &[], &["Many"])?;
    // Let the JIT compile most of them first (every method is called each round).
    std::thread::sleep(Duration::from_secs(10));
    let out = record_rss(&exe, many.id(), 30, rate);
    let _ = many.kill();
    let _ = many.wait();
    let (out, peak) = out?;
    let line = out
        .lines()
        .find(|l| l.contains("Hotspot frames:"))
        .unwrap_or("(no HotSpot line)");
    println!(
        "{} methods ({CLASSES} classes), 30 s at {rate} Hz: {}\n=> peak RSS of ferroscope record: \
         {:.1} MiB (goal < 64 MiB)",
        CLASSES * METHODS,
        line.trim_start_matches("ferroscope: "),
        peak as f64 / 1024.0
    );
    Ok(())
}
