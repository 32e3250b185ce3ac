//! The `ferroscope` command line: a thin layer over `ferroscope-agent`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod duration;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ferroscope_agent::check::{self, CheckOptions, Status};
use ferroscope_agent::record::{self, Progress, RecordConfig, StopReason};

/// A whole-system profiler for Linux: samples every CPU with eBPF and writes pprof
/// profiles and flame graphs.
#[derive(Debug, Parser)]
#[command(name = "ferroscope", version, about)]
struct Cli {
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sample the whole host (or some processes) for a while and write a profile.
    Record(RecordArgs),
    /// Check that this machine can run the profiler, with a fix for each problem.
    Check {
        /// Sample rate to test the perf event with.
        #[arg(long, default_value_t = 97)]
        sample_rate: u32,
        /// Do not mount tracefs or bpffs when they are missing; only report it.
        #[arg(long)]
        no_mount: bool,
    },
}

#[derive(Debug, clap::Args)]
struct RecordArgs {
    /// Profile only this process (repeatable). Without it, the whole host.
    #[arg(short, long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// How long to sample: `10`, `10s`, `2m`, `500ms`.
    #[arg(short, long, default_value = "10s", value_parser = duration::parse)]
    duration: Duration,
    /// Samples per second per CPU (1 to 1000).
    #[arg(short = 'r', long, default_value_t = 97)]
    sample_rate: u32,
    /// Where to write the pprof profile (gzipped protobuf).
    #[arg(short, long, default_value = "profile.pb.gz")]
    output: PathBuf,
    /// Also write a flame graph (SVG) here.
    #[arg(short, long, value_name = "FILE.svg")]
    flamegraph: Option<PathBuf>,
    /// How many functions to list at the end.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let result = match cli.command {
        Command::Record(args) => run_record(args),
        Command::Check { sample_rate, no_mount } => run_check(sample_rate, !no_mount),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_check(sample_rate_hz: u32, mount_missing: bool) -> anyhow::Result<ExitCode> {
    let results = check::run_all(&CheckOptions { mount_missing, sample_rate_hz });
    for r in &results {
        println!("{r}");
    }
    let failed = results.iter().filter(|r| matches!(r.status, Status::Fail)).count();
    if failed == 0 {
        println!("\nall checks passed: `ferroscope record` can run here");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n{failed} check(s) failed; fix them and run `ferroscope check` again");
        Ok(ExitCode::FAILURE)
    }
}

fn run_record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let config = RecordConfig { pids: args.pids.clone(), duration: args.duration, sample_rate_hz: args.sample_rate };
    // Bad input first, before anything is loaded or mounted.
    record::validate(&config)?;
    record::check_writable(&args.output)?;
    if let Some(svg) = &args.flamegraph {
        record::check_writable(svg)?;
    }
    let results = check::run_all(&CheckOptions { mount_missing: true, sample_rate_hz: args.sample_rate });
    if let Some(failure) = check::first_failure(&results) {
        return Err(ferroscope_agent::Error::Environment(failure.to_string()).into());
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("cannot install the Ctrl-C handler")?;
    }
    let target = if args.pids.is_empty() {
        "the whole host".to_string()
    } else {
        format!("PID {}", args.pids.iter().map(u32::to_string).collect::<Vec<_>>().join(", "))
    };
    eprintln!(
        "ferroscope: sampling {target} at {} Hz for {:?} (Ctrl-C stops early)",
        args.sample_rate, args.duration
    );
    let tty = std::io::stderr().is_terminal();
    let outcome = record::record(&config, &stop, |p| show_progress(p, tty))?;
    if tty {
        eprint!("\r\x1b[2K");
    }
    match outcome.stop_reason {
        StopReason::Interrupted => eprintln!("ferroscope: interrupted, writing what was recorded"),
        StopReason::TargetsExited => eprintln!("ferroscope: every profiled process exited, stopping"),
        StopReason::Duration => {}
    }
    let c = &outcome.counters;
    eprintln!(
        "ferroscope: {} samples from {} processes in {:.1}s ({} lost, {} idle, {} without a user stack)",
        outcome.samples,
        outcome.processes,
        outcome.elapsed.as_secs_f64(),
        c.lost_ringbuf_full,
        c.idle,
        c.user_stack_errors
    );
    let secs = outcome.elapsed.as_secs_f64().max(1e-9);
    let mut overhead = format!(
        "ferroscope: own CPU {:.1} ms/s ({:.2}% of one CPU)",
        outcome.agent_cpu.as_secs_f64() * 1000.0 / secs,
        outcome.agent_cpu.as_secs_f64() * 100.0 / secs
    );
    if let Some((t, n)) = outcome.bpf_run_time {
        let per = if n > 0 { t.as_nanos() as f64 / n as f64 / 1000.0 } else { 0.0 };
        overhead += &format!(", eBPF {:.2} ms/s ({n} runs, {per:.1} µs each)", t.as_secs_f64() * 1000.0 / secs);
    }
    eprintln!("{overhead}");

    if outcome.samples == 0 {
        bail!(
            "no samples were recorded: the profiled processes did not run on a CPU while sampling \
             (they may be idle or blocked); profile a busy process or the whole host"
        );
    }
    ferroscope_pprof::write_file(&outcome.profile, &args.output)
        .with_context(|| format!("cannot write the profile to {}", args.output.display()))?;
    println!("wrote {}", args.output.display());
    if let Some(svg) = &args.flamegraph {
        write_flamegraph(&outcome.profile, svg, &target)?;
        println!("wrote {}", svg.display());
    }
    print_top(&outcome.profile, args.top);
    Ok(ExitCode::SUCCESS)
}

fn show_progress(p: &Progress, tty: bool) {
    let line = format!(
        "{:>5.1}s / {:.0}s  {} samples  {} processes{}",
        p.elapsed.as_secs_f64(),
        p.duration.as_secs_f64(),
        p.samples,
        p.processes,
        if p.lost > 0 { format!("  {} lost", p.lost) } else { String::new() }
    );
    if tty {
        eprint!("\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
    } else if (p.elapsed.as_millis() / 250).is_multiple_of(4) {
        // Not a terminal: one line a second is enough for logs.
        eprintln!("{line}");
    }
}

fn write_flamegraph(profile: &ferroscope_pprof::proto::Profile, path: &Path, target: &str) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let title = format!("ferroscope: CPU of {target}");
    ferroscope_pprof::flamegraph::write_svg(profile, 0, &title, std::io::BufWriter::new(file))
        .with_context(|| format!("cannot write the flame graph to {}", path.display()))?;
    Ok(())
}

fn print_top(profile: &ferroscope_pprof::proto::Profile, n: usize) {
    let (mut functions, total) = ferroscope_pprof::report::top_functions(profile, 0);
    if total == 0 || n == 0 {
        return;
    }
    let pct = |v: i64| v as f64 * 100.0 / total as f64;
    functions.sort_by(|a, b| b.self_value.cmp(&a.self_value).then_with(|| a.name.cmp(&b.name)));
    println!("\ntop {n} functions by self time:");
    println!("{:>7}  {:>7}  function", "self", "total");
    for f in functions.iter().take(n) {
        println!("{:>6.2}%  {:>6.2}%  {}", pct(f.self_value), pct(f.total_value), f.name);
    }
    functions.sort_by(|a, b| b.total_value.cmp(&a.total_value).then_with(|| a.name.cmp(&b.name)));
    println!("\ntop {n} functions by total time:");
    println!("{:>7}  {:>7}  function", "self", "total");
    for f in functions.iter().take(n) {
        println!("{:>6.2}%  {:>6.2}%  {}", pct(f.self_value), pct(f.total_value), f.name);
    }
}
