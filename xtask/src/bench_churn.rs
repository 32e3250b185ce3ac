//! `cargo xtask bench-churn [RATE] [SECS]`: the agent on a busy node.
//!
//! `fixtures/c/churn.c` forks RATE children a second for SECS seconds (each burns ~1 ms, then
//! execs `/bin/true`) while `ferroscope run` profiles the whole host (`targets_only = false`,
//! `[[discovery.process]]` every 5 s, 97 Hz, 10 s intervals, local sink). Every second it
//! reads the agent's CPU time and RSS and its `/metrics`; it prints one row per interval
//! (agent CPU, samples sent and lost, RSS, processes tracked by each per-process structure),
//! then keeps watching for 30 s after the churn stops, to see the tracked processes come back
//! to the live count.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{build_release, cpu_ticks, is_root, proc_field, root, run, user_hz};

/// After the churn, how long the agent is watched going back to the live count.
const SETTLE: Duration = Duration::from_secs(30);

pub fn bench_churn(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the churn benchmark loads eBPF programs and must run as root");
    }
    let rate: u32 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let seconds: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(60);
    let root = root();
    let target = build_release(&root)?;
    let work = std::env::temp_dir().join(format!("ferroscope-churn-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let churn = work.join("churn");
    run(Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&churn)
        .arg(root.join("fixtures/c/churn.c")))?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = format!(
        "[ebpf]\ncollect_interval = \"10s\"\nsample_rate = 97\ntargets_only = false\n\n\
         [[discovery.process]]\nrefresh_interval = \"5s\"\n\n\
         [output]\ndir = \"{}\"\nmax_age = \"0s\"\n\n[server]\nlisten_address = \"127.0.0.1:{port}\"\n",
        work.join("profiles").display()
    );
    let config_path = work.join("agent.toml");
    std::fs::write(&config_path, config)?;
    let mut agent = Command::new(target.join("release/ferroscope"))
        .args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .spawn()?;
    let pid = agent.id();
    let result = watch(pid, port, &churn, rate, seconds);
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// One reading of the agent.
struct Reading {
    at: f64,
    cpu_ticks: u64,
    rss_kib: u64,
    metrics: String,
}

fn read(pid: u32, port: u16, started: Instant) -> Result<Reading> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut metrics = String::new();
    s.read_to_string(&mut metrics)?;
    Ok(Reading {
        at: started.elapsed().as_secs_f64(),
        cpu_ticks: cpu_ticks(pid).context("the agent exited")?,
        rss_kib: proc_field(pid, "status", "VmRSS:").context("the agent exited")?,
        metrics,
    })
}

/// The value of the first metric line starting with `name` (labels included in `name`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `structure=value` of every `ferroscope_tracked_processes{structure="..."}` line.
fn tracked(text: &str) -> String {
    let mut parts = Vec::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("ferroscope_tracked_processes{"))
    {
        let name = l
            .split("structure=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        let value = l.rsplit(' ').next().unwrap_or("?");
        parts.push(format!("{name} {value}"));
    }
    if parts.is_empty() {
        "(not reported)".to_owned()
    } else {
        parts.join(", ")
    }
}

fn live_processes() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}

fn watch(pid: u32, port: u16, churn: &std::path::Path, rate: u32, seconds: u64) -> Result<()> {
    let started = Instant::now();
    // The agent is up once /metrics answers and its first round is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    while read(pid, port, started).is_err() {
        if Instant::now() > deadline {
            bail!("the agent did not serve /metrics within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let mut child = Command::new(churn)
        .args([rate.to_string(), seconds.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let hz = user_hz();
    let first = read(pid, port, started)?;
    let mut rows = vec![first];
    let mut churn_done: Option<f64> = None;
    let mut churn_report = String::new();
    println!("churn: {rate} exec/s for {seconds} s; agent: whole host, 97 Hz, 10 s intervals\n");
    println!(
        "| t (s) | phase | agent CPU (% of one CPU) | samples sent | lost | RSS (MiB) | live processes | tracked per structure |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    loop {
        std::thread::sleep(Duration::from_secs(10));
        let r = read(pid, port, started)?;
        if churn_done.is_none()
            && let Some(status) = child.try_wait()?
        {
            churn_done = Some(r.at);
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                o.read_to_string(&mut out)?;
            }
            churn_report = format!("{} (exit {status})", out.lines().last().unwrap_or(""));
        }
        let prev = rows.last().unwrap();
        let cpu = (r.cpu_ticks - prev.cpu_ticks) as f64 / hz / (r.at - prev.at) * 100.0;
        let sent = metric(&r.metrics, "ferroscope_samples_total")
            - metric(&prev.metrics, "ferroscope_samples_total");
        let lost = metric(&r.metrics, "ferroscope_samples_lost_total")
            - metric(&prev.metrics, "ferroscope_samples_lost_total");
        let phase = if churn_done.is_some() {
            "after"
        } else {
            "churn"
        };
        println!(
            "| {:.0} | {phase} | {cpu:.2} | {sent:.0} | {lost:.0} | {:.1} | {} | {} |",
            r.at,
            r.rss_kib as f64 / 1024.0,
            live_processes(),
            tracked(&r.metrics)
        );
        rows.push(r);
        if let Some(done) = churn_done
            && rows.last().unwrap().at - done >= SETTLE.as_secs_f64()
        {
            break;
        }
    }
    let first = &rows[0];
    let last = rows.last().unwrap();
    let done = churn_done.unwrap_or(last.at);
    let during: Vec<&Reading> = rows.iter().filter(|r| r.at <= done).collect();
    let end_of_churn = during.last().copied().unwrap_or(first);
    let cpu = (end_of_churn.cpu_ticks - first.cpu_ticks) as f64
        / hz
        / (end_of_churn.at - first.at).max(1e-9)
        * 100.0;
    let lost = metric(&last.metrics, "ferroscope_samples_lost_total")
        - metric(&first.metrics, "ferroscope_samples_lost_total");
    let sent = metric(&last.metrics, "ferroscope_samples_total")
        - metric(&first.metrics, "ferroscope_samples_total");
    let rss: Vec<u64> = during.iter().map(|r| r.rss_kib).collect();
    println!(
        "\n{churn_report}\nduring the churn: agent CPU {cpu:.2} % of one CPU (goal <= 1 %), \
         {lost:.0} samples lost of {:.0} (goal 0), RSS {:.1} -> {:.1} MiB (max {:.1})\n\
         {:.0} s after it: tracked {} with {} processes alive",
        sent + lost,
        rss.first().copied().unwrap_or(0) as f64 / 1024.0,
        rss.last().copied().unwrap_or(0) as f64 / 1024.0,
        rss.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
        last.at - done,
        tracked(&last.metrics),
        live_processes()
    );
    Ok(())
}
