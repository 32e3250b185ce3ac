//! `cargo xtask bench-offcpu [ROUNDTRIPS] [SECS]`: what off-CPU profiling costs on a host
//! that switches a lot.
//!
//! `fixtures/offcpu/switcher.c` passes a byte between two threads ROUNDTRIPS times a second
//! (default 21000: about 50000 context switches a second here) while `ferroscope run`
//! profiles it (a PID target, 19 Hz, 15 s intervals, local sink), once with off-CPU off and
//! once with `off_cpu_threshold = 0.01`. For each run it prints the host's context switches
//! a second (`/proc/stat`), the agent's CPU (utime + stime, after a 16 s warm-up), and, with
//! the kernel's BPF run-time accounting on, the eBPF time of `fs_off_cpu` per switch and of
//! `fs_sample` per sample.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{build_release, cpu_ticks, is_root, root, run, user_hz};

/// The kernel's accounting of one program: (run time ns, runs), summed over its loaded
/// instances (`bpftool -j prog show`).
fn bpf_stats(program: &str) -> (u64, u64) {
    let Ok(out) = Command::new("bpftool")
        .args(["-j", "prog", "show", "name", program])
        .output()
    else {
        return (0, 0);
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        text.match_indices(&format!("\"{name}\":"))
            .filter_map(|(i, m)| {
                let rest = &text[i + m.len()..];
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                rest[..end].parse::<u64>().ok()
            })
            .sum()
    };
    (field("run_time_ns"), field("run_cnt"))
}

fn host_switches() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Row {
    threshold: f64,
    switches_per_s: f64,
    agent_cpu_pct: f64,
    off_cpu_ns_per_run: f64,
    off_cpu_runs: u64,
    sample_ns_per_run: f64,
}

fn one_run(
    exe: &std::path::Path,
    work: &std::path::Path,
    pid: u32,
    threshold: f64,
    seconds: u64,
) -> Result<Row> {
    let out_dir = work.join(format!("profiles-{threshold}"));
    let config = format!(
        "[ebpf]\ncollect_interval = \"15s\"\nsample_rate = 19\noff_cpu_threshold = {threshold}\n\n\
         [[targets]]\n__process_pid__ = \"{pid}\"\nservice_name = \"switcher\"\n\n\
         [output]\ndir = \"{}\"\n",
        out_dir.display()
    );
    let config_path = work.join("agent.toml");
    std::fs::write(&config_path, config)?;
    let mut agent: Child = Command::new(exe)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .spawn()?;
    let apid = agent.id();
    std::thread::sleep(Duration::from_secs(16));
    let cpu0 = cpu_ticks(apid).context("agent exited early")?;
    let (off0, offn0) = bpf_stats("fs_off_cpu");
    let (s0, sn0) = bpf_stats("fs_sample");
    let ctxt0 = host_switches();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_ticks(apid).context("agent exited early")?;
    let (off1, offn1) = bpf_stats("fs_off_cpu");
    let (s1, sn1) = bpf_stats("fs_sample");
    let ctxt1 = host_switches();
    let _ = Command::new("kill").arg(apid.to_string()).status();
    let _ = agent.wait();
    let per = |t: u64, n: u64| if n > 0 { t as f64 / n as f64 } else { 0.0 };
    Ok(Row {
        threshold,
        switches_per_s: (ctxt1 - ctxt0) as f64 / elapsed,
        agent_cpu_pct: (cpu1 - cpu0) as f64 / user_hz() / elapsed * 100.0,
        off_cpu_ns_per_run: per(off1.saturating_sub(off0), offn1.saturating_sub(offn0)),
        off_cpu_runs: offn1.saturating_sub(offn0),
        sample_ns_per_run: per(s1.saturating_sub(s0), sn1.saturating_sub(sn0)),
    })
}

pub fn bench_offcpu(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the off-CPU benchmark loads eBPF programs and must run as root");
    }
    let rate: u32 = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(21000);
    let seconds: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(45);
    let root = root();
    let target = build_release(&root)?;
    let exe = target.join("release/ferroscope");
    let work = std::env::temp_dir().join(format!("ferroscope-offcpu-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let switcher = work.join("switcher");
    run(Command::new("gcc")
        .args(["-O1", "-g", "-pthread", "-o"])
        .arg(&switcher)
        .arg(root.join("fixtures/offcpu/switcher.c")))?;
    // The kernel's per-program run time accounting, on while this runs.
    let stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("turn on kernel.bpf_stats_enabled")?;
    let mut rows = Vec::new();
    let result = (|| -> Result<()> {
        for threshold in [0.0, 0.01] {
            let mut load = Command::new(&switcher)
                .args([rate.to_string(), (seconds + 40).to_string()])
                .spawn()?;
            let row = one_run(&exe, &work, load.id(), threshold, seconds);
            let _ = load.kill();
            let _ = load.wait();
            rows.push(row?);
        }
        Ok(())
    })();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats.trim());
    let _ = std::fs::remove_dir_all(&work);
    result?;
    println!(
        "| off_cpu_threshold | host context switches/s | agent CPU | fs_off_cpu per switch | fs_off_cpu runs | fs_sample per sample |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.3} % of one CPU | {:.0} ns | {} | {:.1} µs |",
            r.threshold,
            r.switches_per_s,
            r.agent_cpu_pct,
            r.off_cpu_ns_per_run,
            r.off_cpu_runs,
            r.sample_ns_per_run / 1000.0
        );
    }
    Ok(())
}
