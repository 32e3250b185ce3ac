//! Extracts the stack-delta table of one ELF file and prints time, size and peak memory.
//!
//! `cargo run --release -p ferroscope-unwind-native --example extract_stats -- FILE [DEBUG_FILE]`
//! (`RUST_LOG=debug` adds the extraction summary: FDEs, rows, unsupported rules).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use ferroscope_unwind_native::{ExtractOptions, Kind, extract};

fn max_rss_kib() -> i64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc == 0 { usage.ru_maxrss } else { -1 }
}

fn map(path: &str) -> memmap2::Mmap {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: read-only private mapping; the file is not expected to change while we read it.
    unsafe { memmap2::Mmap::map(&file) }.unwrap_or_else(|e| panic!("mmap {path}: {e}"))
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: extract_stats FILE [DEBUG_FILE] [--merge]");
        std::process::exit(2);
    };
    let merge = args.iter().any(|a| a == "--merge");
    let file = map(path);
    let debug = args.get(1).filter(|a| !a.starts_with("--")).map(|p| map(p));
    let rss_before = max_rss_kib();
    let opts = ExtractOptions {
        merge_push_pop: merge,
        ..ExtractOptions::default()
    };
    let start = Instant::now();
    let cpu_start = cpu_time();
    let table = extract(&file, debug.as_deref(), &opts).unwrap_or_else(|e| panic!("{path}: {e}"));
    let elapsed = start.elapsed();
    let cpu = cpu_time() - cpu_start;
    let mut kinds = [0usize; 9];
    for d in &table.deltas {
        kinds[d.info.kind as usize] += 1;
    }
    println!("file:            {path} ({} bytes)", file.len());
    println!(
        "time:            {:.3} s wall, {cpu:.3} s CPU",
        elapsed.as_secs_f64()
    );
    println!("entries:         {}", table.len());
    println!(
        "table bytes:     {} (in memory), {} (4 bytes/entry eBPF encoding)",
        table.size_in_bytes(),
        table.len() * 4
    );
    println!("distinct infos:  {}", table.distinct_infos().len());
    let names = [
        "Sp",
        "Fp",
        "SpDeref",
        "FpDeref",
        "Plt",
        "Signal",
        "Stop",
        "Invalid",
        "FramePointer",
    ];
    let kinds: Vec<String> = names
        .iter()
        .zip(kinds)
        .map(|(n, c)| format!("{n}={c}"))
        .collect();
    println!("kinds:           {}", kinds.join(" "));
    println!(
        "max RSS:         {} KiB (before extract: {} KiB; the mapped file's touched pages count in RSS)",
        max_rss_kib(),
        rss_before
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(-1)
    };
    let (hwm, file_pages) = (field("VmHWM:"), field("RssFile:"));
    println!(
        "peak beyond the mapped file: ~{} KiB (VmHWM {hwm} KiB - RssFile {file_pages} KiB still mapped)",
        hwm - file_pages
    );
    let _ = Kind::Sp;
}

fn cpu_time() -> f64 {
    // SAFETY: as in max_rss_kib.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}
