//! The `ferroscope` command line: a thin layer over `ferroscope-agent`.
//!
//! The binary (`src/main.rs`) only links the runtime plug-ins its cargo features select and
//! calls [`main`]; test builds with other plug-ins (test-support) call it the same way.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cmd_symbolize;
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
use ferroscope_agent::profile::ProfileType;
use ferroscope_agent::record::{self, Progress, RecordConfig, StopReason};
use ferroscope_ebpf_abi::Counter;
use ferroscope_ebpf_programs::Verdict;
use ferroscope_unwind_api::Metric;

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
    /// Run as a continuous agent: profile the configured targets and ship a pprof per
    /// process every collect_interval to Pyroscope (or to a local directory).
    Run {
        /// The configuration file (TOML); see examples/.
        #[arg(short, long, value_name = "FILE.toml")]
        config: PathBuf,
        /// Only validate the configuration and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Name addresses of a process or an ELF file, like `addr2line -f -i -C`.
    Symbolize(cmd_symbolize::SymbolizeArgs),
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
    /// With --pid: also profile every process they started and start while recording
    /// (fork, exec, multiprocessing), followed in the kernel from the first fork.
    #[arg(long, visible_alias = "subprocesses", requires = "pids")]
    children: bool,
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
    /// Turn a runtime unwinder off (repeatable), by name (`python`; `ferroscope check` lists
    /// those built in). Its code then shows as the runtime's native frames.
    #[arg(long = "no-interpreter", value_name = "NAME")]
    no_interpreter: Vec<String>,
    /// Also record where threads wait off the CPU: each context switch is recorded with
    /// this probability (default 1: every one), weighed by the time until the thread runs
    /// again. Written to OUTPUT with `.offcpu` before `.pb.gz` (and to the flame graph's
    /// name likewise).
    #[arg(long, value_name = "PROBABILITY", num_args = 0..=1, default_missing_value = "1")]
    off_cpu: Option<f64>,
    /// Count the calls of a function with their stacks (repeatable): `uprobe:PATH:SYMBOL`
    /// or `uretprobe:PATH:SYMBOL` (PATH may be a library's file name, `libc.so.6`), or a
    /// kernel function, `kprobe:FUNCTION` or `kretprobe:FUNCTION` (kernels with kprobes).
    /// Written to OUTPUT with `.uprobe` (`.kprobe`) before `.pb.gz`.
    #[arg(long = "probe", value_name = "LINK")]
    probes: Vec<String>,
    /// Attach the probes also to libraries of their name loaded later (dlopen), and wait
    /// for a probe's library that is not there yet.
    #[arg(long)]
    load_probe: bool,
    /// Most probe hits recorded per second on each CPU (0: no limit).
    #[arg(long, value_name = "HITS", default_value_t = record::DEFAULT_PROBE_RATE_LIMIT)]
    probe_rate_limit: u64,
}

/// `profile.pb.gz` -> `profile.offcpu.pb.gz`; `cpu.svg` -> `cpu.offcpu.svg`; `a.b.pb.gz`
/// -> `a.b.offcpu.pb.gz`; `out` -> `out.offcpu`.
fn with_infix(path: &Path, infix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, ext) = if let Some(stem) = name.strip_suffix(".pb.gz") {
        (stem, ".pb.gz")
    } else {
        match name.rfind('.') {
            Some(i) if i > 0 => (&name[..i], &name[i..]),
            _ => (name.as_str(), ""),
        }
    };
    path.with_file_name(format!("{stem}.{infix}{ext}"))
}

/// Changes the log filter after start-up.
type SetLogLevel = Box<dyn Fn(&str) + Send + Sync>;
static LOG_RELOAD: std::sync::OnceLock<SetLogLevel> = std::sync::OnceLock::new();

/// Runs the command line: parses the arguments, runs the command, returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_agent = matches!(cli.command, Command::Run { .. });
    let level = match (cli.verbose, is_agent) {
        (0, false) => "warn",
        (0, true) => "info",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init();
    }
    // verbose_mode in the agent's configuration turns on debug logs after the file is read.
    let _ = LOG_RELOAD.set(Box::new(move |directive: &str| {
        let _ = reload.modify(|f| *f = tracing_subscriber::EnvFilter::new(directive));
    }));

    let result = match cli.command {
        Command::Record(args) => run_record(args),
        Command::Check {
            sample_rate,
            no_mount,
        } => run_check(sample_rate, !no_mount),
        Command::Run {
            config,
            check_config,
        } => run_agent(&config, check_config),
        Command::Symbolize(args) => cmd_symbolize::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent(path: &Path, check_only: bool) -> anyhow::Result<ExitCode> {
    let (config, warnings) = ferroscope_agent::config::load(path)?;
    for w in &warnings {
        tracing::warn!("{w}");
        if check_only {
            eprintln!("warning: {w}");
        }
    }
    if check_only {
        // The probe links' files and functions, as the agent will look them up.
        ferroscope_agent::probes::Probes::check(
            &config.ebpf.all_probe_links(),
            config.ebpf.load_probe,
        )?;
    }
    let built = ferroscope_agent::interp::built_in();
    let disabled = config.ebpf.disabled_runtimes();
    tracing::info!(
        built_in = %built.join(","),
        disabled = %disabled.join(","),
        "runtime unwinders"
    );
    if check_only {
        println!("{}: configuration is valid", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    if config.ebpf.verbose_mode && std::env::var_os("RUST_LOG").is_none() {
        if let Some(set_level) = LOG_RELOAD.get() {
            set_level("debug");
        }
        tracing::debug!("verbose_mode: debug logs on");
    }
    let results = check::run_all(&CheckOptions {
        mount_missing: true,
        sample_rate_hz: config.ebpf.sample_rate,
        load_programs: false,
    });
    if let Some(failure) = check::first_failure(&results) {
        return Err(ferroscope_agent::Error::Environment(failure.to_string()).into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("cannot install the SIGINT/SIGTERM handler")?;
    }
    eprintln!(
        "ferroscope: agent running ({} Hz, every {:?}, {}); SIGTERM or Ctrl-C flushes and stops",
        config.ebpf.sample_rate,
        config.ebpf.collect_interval,
        if config.write.endpoint.is_empty() {
            format!("profiles to {}", config.output.dir.display())
        } else {
            format!("{} endpoint(s)", config.write.endpoint.len())
        }
    );
    ferroscope_agent::run::run(config, stop)?;
    Ok(ExitCode::SUCCESS)
}

fn run_check(sample_rate_hz: u32, mount_missing: bool) -> anyhow::Result<ExitCode> {
    let results = check::run_all(&CheckOptions {
        mount_missing,
        sample_rate_hz,
        load_programs: true,
    });
    for r in &results {
        println!("{r}");
    }
    let failed = results
        .iter()
        .filter(|r| matches!(r.status, Status::Fail))
        .count();
    if failed == 0 {
        println!("\nall checks passed: `ferroscope record` can run here");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n{failed} check(s) failed; fix them and run `ferroscope check` again");
        Ok(ExitCode::FAILURE)
    }
}

fn run_record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let config = RecordConfig {
        pids: args.pids.clone(),
        children: args.children,
        duration: args.duration,
        sample_rate_hz: args.sample_rate,
        disabled_interpreters: args.no_interpreter.clone(),
        off_cpu_threshold: args.off_cpu.unwrap_or(0.0),
        probes: args.probes.clone(),
        load_probe: args.load_probe,
        probe_rate_limit: args.probe_rate_limit,
    };
    let built: Vec<&str> = ferroscope_agent::interp::built_in();
    if let Some(unknown) = args
        .no_interpreter
        .iter()
        .find(|n| !built.contains(&n.as_str()))
    {
        anyhow::bail!(
            "--no-interpreter {unknown}: no such runtime unwinder in this build (built in: {})",
            if built.is_empty() {
                "none".to_owned()
            } else {
                built.join(", ")
            }
        );
    }
    // Bad input first, before anything is loaded or mounted.
    record::validate(&config)?;
    // The CPU profile under the names given; each other one with its type's infix
    // (`profile.offcpu.pb.gz`, `profile.uprobe.pb.gz`, `profile.kprobe.pb.gz`).
    let mut outputs = vec![(
        ProfileType::Cpu,
        args.output.clone(),
        args.flamegraph.clone(),
    )];
    for kind in record::other_profiles(&config) {
        let infix = kind.file_infix().unwrap_or(kind.series_name());
        outputs.push((
            kind,
            with_infix(&args.output, infix),
            args.flamegraph.as_deref().map(|f| with_infix(f, infix)),
        ));
    }
    for (_, pprof, svg) in &outputs {
        record::check_writable(pprof)?;
        if let Some(svg) = svg {
            record::check_writable(svg)?;
        }
    }
    let results = check::run_all(&CheckOptions {
        mount_missing: true,
        sample_rate_hz: args.sample_rate,
        load_programs: false,
    });
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
        format!(
            "PID {}{}",
            args.pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if args.children {
                " and the processes they start"
            } else {
                ""
            }
        )
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
        StopReason::TargetsExited => {
            eprintln!("ferroscope: every profiled process exited, stopping")
        }
        StopReason::Duration => {}
    }
    let c = &outcome.counters;
    if config.off_cpu_threshold > 0.0 {
        eprintln!(
            "ferroscope: off-CPU: {} of {} switches recorded, {} seen running again ({} lost)",
            c.get(Counter::OffCpuSampled),
            c.get(Counter::OffCpuSwitches),
            c.get(Counter::OffCpuEnds),
            c.get(Counter::OffCpuEndsLost)
        );
    }
    if !config.probes.is_empty() {
        eprintln!(
            "ferroscope: probes: {} hits, {} over the rate limit",
            c.get(Counter::ProbeHits),
            c.get(Counter::ProbeRateLimited)
        );
    }
    eprintln!(
        "ferroscope: {} samples from {} processes in {:.1}s ({} lost, {} idle, {} without a user stack)",
        outcome.samples,
        outcome.processes,
        outcome.elapsed.as_secs_f64(),
        c.get(Counter::LostRingbufFull),
        c.get(Counter::Idle),
        c.get(Counter::UserStackError)
    );
    for p in &outcome.programs {
        if let Verdict::Rejected { reason, .. } = &p.verdict {
            eprintln!(
                "ferroscope: the {} unwinder is off: the kernel rejected its eBPF program {} ({reason})",
                p.owner, p.program
            );
        }
    }
    let secs = outcome.elapsed.as_secs_f64().max(1e-9);
    let mut overhead = format!(
        "ferroscope: own CPU {:.1} ms/s ({:.2}% of one CPU)",
        outcome.agent_cpu.as_secs_f64() * 1000.0 / secs,
        outcome.agent_cpu.as_secs_f64() * 100.0 / secs
    );
    if let Some((t, n)) = outcome.bpf_run_time {
        let per = if n > 0 {
            t.as_nanos() as f64 / n as f64 / 1000.0
        } else {
            0.0
        };
        overhead += &format!(
            ", eBPF {:.2} ms/s ({n} runs, {per:.1} µs each)",
            t.as_secs_f64() * 1000.0 / secs
        );
    }
    eprintln!("{overhead}");
    for (program, t, n) in &outcome.entry_run_times {
        if *n > 0 {
            let what = if program == "fs_off_cpu" {
                "per context switch"
            } else {
                "per probe hit"
            };
            eprintln!(
                "ferroscope: {program}: {:.2} ms/s, {n} runs, {:.1} µs {what}",
                t.as_secs_f64() * 1000.0 / secs,
                t.as_nanos() as f64 / *n as f64 / 1000.0
            );
        }
    }
    print_runtime_summary(&outcome.interpreters);
    for f in &outcome.detection_failures {
        eprintln!("ferroscope: {} unwinder: {}", f.runtime, f.reason);
    }

    if outcome.samples == 0 && outcome.others.iter().all(|(_, p)| p.sample.is_empty()) {
        bail!(
            "no samples were recorded: the profiled processes did not run on a CPU while sampling \
             (they may be idle or blocked); profile a busy process or the whole host"
        );
    }
    for (kind, pprof, svg) in &outputs {
        let profile = match kind {
            ProfileType::Cpu => &outcome.profile,
            other => match outcome.others.iter().find(|(k, _)| k == other) {
                Some((_, p)) => p,
                None => continue,
            },
        };
        let what = match kind {
            ProfileType::Cpu => "CPU",
            ProfileType::OffCpu => "off-CPU time",
            ProfileType::Probe => "uprobe hits",
            ProfileType::KernelProbe => "kprobe hits",
        };
        ferroscope_pprof::write_file(profile, pprof)
            .with_context(|| format!("cannot write the profile to {}", pprof.display()))?;
        println!(
            "wrote {} ({what}, {} samples)",
            pprof.display(),
            profile.sample.len()
        );
        if let Some(svg) = svg {
            write_flamegraph(profile, svg, &format!("{what} of {target}"))?;
            println!("wrote {}", svg.display());
        }
    }
    print_top(&outcome.profile, args.top);
    Ok(ExitCode::SUCCESS)
}

/// One line per runtime that recorded or named frames (`ferroscope: Python frames: ...`).
fn print_runtime_summary(metrics: &[Metric]) {
    for line in ferroscope_agent::interp::summary_lines(metrics) {
        eprintln!("ferroscope: {line}");
    }
}

fn show_progress(p: &Progress, tty: bool) {
    let line = format!(
        "{:>5.1}s / {:.0}s  {} samples  {} processes{}",
        p.elapsed.as_secs_f64(),
        p.duration.as_secs_f64(),
        p.samples,
        p.processes,
        if p.lost > 0 {
            format!("  {} lost", p.lost)
        } else {
            String::new()
        }
    );
    if tty {
        eprint!("\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
    } else if (p.elapsed.as_millis() / 250).is_multiple_of(4) {
        // Not a terminal: one line a second is enough for logs.
        eprintln!("{line}");
    }
}

fn write_flamegraph(
    profile: &ferroscope_pprof::proto::Profile,
    path: &Path,
    target: &str,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let title = format!("ferroscope: {target}");
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
    type Key = fn(&ferroscope_pprof::report::FunctionShare) -> i64;
    let orders: [(&str, Key); 2] = [("self", |f| f.self_value), ("total", |f| f.total_value)];
    for (by, key) in orders {
        functions.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.name.cmp(&b.name)));
        println!("\ntop {n} functions by {by} time:");
        println!("{:>7}  {:>7}  function", "self", "total");
        for f in functions.iter().take(n) {
            println!(
                "{:>6.2}%  {:>6.2}%  {}",
                pct(f.self_value),
                pct(f.total_value),
                f.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_infix;
    use std::path::Path;

    #[test]
    fn the_other_profiles_are_named_after_the_output() {
        for (given, want) in [
            ("profile.pb.gz", "profile.offcpu.pb.gz"),
            ("/tmp/run.2.pb.gz", "/tmp/run.2.offcpu.pb.gz"),
            ("flame.svg", "flame.offcpu.svg"),
            ("out", "out.offcpu"),
            (".hidden", ".hidden.offcpu"),
        ] {
            assert_eq!(
                with_infix(Path::new(given), "offcpu"),
                Path::new(want),
                "{given}"
            );
        }
    }
}
