//! ferroscope against llvm-symbolizer and binutils addr2line on the same 100,000 addresses of
//! a large binary with DWARF, cold (fresh process) and warm (second pass), with peak memory.
//!
//! `FERROSCOPE_BENCH_BINARY=/path/to/big/binary cargo bench -p ferroscope-symbolize --bench compare`
//! (default: this bench executable itself); `FERROSCOPE_BENCH_MEMO=N` sets the entries of the
//! per-file memo of resolved addresses (0 = off). Each tool runs as a child process so that its
//! peak RSS (`ru_maxrss`) is its own.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use ferroscope_symbolize::{DemangleMode, Symbolizer};

const N: usize = 100_000;

fn addresses(bin: &Path) -> Vec<u64> {
    let syms = ferroscope_symbolize::elf::ElfSymbols::open(bin).expect("symbols of the binary");
    let funcs: Vec<(u64, u64)> = syms
        .iter()
        .map(|(s, z, _)| (s, z))
        .filter(|&(_, z)| z > 0)
        .collect();
    assert!(!funcs.is_empty(), "the binary has no function symbols");
    // Deterministic spread: every function, several offsets, shuffled.
    (0..N as u64)
        .map(|i| {
            let (s, z) = funcs[(i.wrapping_mul(2654435761) % funcs.len() as u64) as usize];
            s + (i.wrapping_mul(40503) % z)
        })
        .collect()
}

/// Runs `cmd` with `input` on stdin; returns (seconds, peak RSS in KiB).
fn measure(cmd: &mut Command, input: &str) -> (f64, u64) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child `pid`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unwaited child; `status` and `ru` are valid for writes.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(rc, pid, "wait4 failed");
    writer.join().unwrap();
    std::mem::forget(child); // already reaped
    (start.elapsed().as_secs_f64(), ru.ru_maxrss as u64)
}

/// Runs `cmd` on `input` (the addresses twice) and times, from its output, when the first
/// pass ended and when the second did: `(first pass s, second pass s, peak RSS KiB)`.
/// `is_record_end` says whether an output line ends (or starts) one address's record.
fn measure_passes(
    cmd: &mut Command,
    input: &str,
    is_record_end: fn(&str) -> bool,
) -> (f64, f64, u64) {
    use std::io::BufRead;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut records, mut first) = (0usize, 0.0);
    for line in stdout.lines() {
        let Ok(line) = line else { break };
        if is_record_end(&line) {
            records += 1;
            if records == N {
                first = start.elapsed().as_secs_f64();
            }
        }
    }
    let total = start.elapsed().as_secs_f64();
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child `pid`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unwaited child; `status` and `ru` are valid for writes.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(rc, pid, "wait4 failed");
    writer.join().unwrap();
    std::mem::forget(child);
    (first, total - first, ru.ru_maxrss as u64)
}

fn child_mode(bin: &Path) {
    let addrs = addresses(bin);
    let t0 = Instant::now();
    let mut builder = Symbolizer::builder().demangle(DemangleMode::Full);
    // Entries of the per-file address memo (default: the symbolizer's default).
    if let Some(n) = std::env::var("FERROSCOPE_BENCH_MEMO")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.address_memo(n);
    }
    let mut s = builder.build();
    let first = s.symbolize_elf(bin, addrs[0]).expect("symbolize");
    let first_frame = t0.elapsed().as_secs_f64();
    let frames = s.symbolize_elf_batch(bin, &addrs[1..]).expect("symbolize");
    let named = usize::from(first.function.is_some())
        + frames.iter().filter(|f| f.function.is_some()).count();
    let cold = t0.elapsed().as_secs_f64();
    let hits_before = s.stats().memo_hits;
    let t1 = Instant::now();
    std::hint::black_box(s.symbolize_elf_batch(bin, &addrs).expect("symbolize"));
    let warm = t1.elapsed().as_secs_f64();
    // How many warm lookups the per-file memo of resolved addresses answered.
    let warm_hits = s.stats().memo_hits - hits_before;
    println!("{first_frame} {cold} {warm} {named} {warm_hits}");
}

fn main() {
    let bin = std::env::var_os("FERROSCOPE_BENCH_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().unwrap());
    if std::env::var_os("FERROSCOPE_BENCH_CHILD").is_some() {
        child_mode(&bin);
        return;
    }
    let size_mb = std::fs::metadata(&bin).unwrap().len() as f64 / 1e6;
    let addrs = addresses(&bin);
    let once: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    let twice = once.repeat(2);
    drop(once);
    println!("binary: {} ({size_mb:.1} MB), {N} addresses", bin.display());
    println!("| tool | cold (addr/s) | warm (addr/s) | first address | peak RSS |");
    println!("|---|---|---|---|---|");

    // ferroscope: one child does the cold pass then the warm pass.
    let exe = std::env::current_exe().unwrap();
    // Best of three runs (the machine may be shared).
    let mut v: Vec<f64> = Vec::new();
    let mut text = String::new();
    for _ in 0..3 {
        let out = Command::new(&exe)
            .env("FERROSCOPE_BENCH_CHILD", "1")
            .env("FERROSCOPE_BENCH_BINARY", &bin)
            .output()
            .unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        let run: Vec<f64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if run.len() == 5 {
            if v.is_empty() {
                v = run;
            } else {
                for i in 0..3 {
                    v[i] = v[i].min(run[i]);
                }
            }
        }
    }
    let (_, rss) = measure(
        Command::new(&exe)
            .env("FERROSCOPE_BENCH_CHILD", "1")
            .env("FERROSCOPE_BENCH_BINARY", &bin),
        "",
    );
    if let [first, cold, warm, named, warm_hits] = v[..] {
        let distinct = addrs.iter().collect::<std::collections::HashSet<_>>().len();
        println!(
            "| ferroscope | {:.0} | {:.0} | {:.1} ms | {:.0} MiB |  (named {named}; \
             {distinct} distinct addresses; warm memo hits {warm_hits})",
            N as f64 / cold,
            N as f64 / warm,
            first * 1e3,
            rss as f64 / 1024.0
        );
    } else {
        eprintln!("ferroscope child failed: {text}");
    }

    // External tools: cold = one process, N addresses; warm = the extra time for a second
    // pass over the same addresses in one process.
    let tools: [(&str, Vec<String>); 2] = [
        (
            "llvm-symbolizer",
            vec![
                format!("--obj={}", bin.display()),
                "--inlining".into(),
                "--demangle".into(),
                "--functions=linkage".into(),
            ],
        ),
        (
            "addr2line",
            vec![
                "-f".into(),
                "-i".into(),
                "-C".into(),
                "-e".into(),
                bin.display().to_string(),
            ],
        ),
    ];
    for (tool, args) in tools {
        if Command::new(tool).arg("--version").output().is_err() {
            println!("| {tool} | not installed | | | |");
            continue;
        }
        // llvm-symbolizer ends each record with an empty line; addr2line -a starts each with
        // the address (so its count is one record late, negligible over 100,000).
        let record_end: fn(&str) -> bool = if tool == "addr2line" {
            |l| l.starts_with("0x")
        } else {
            str::is_empty
        };
        let mut args = args;
        if tool == "addr2line" {
            args.insert(0, "-a".into());
        }
        let (mut t1, mut warm, mut rss) = (f64::MAX, f64::MAX, 0);
        for _ in 0..3 {
            let (a, b, r) = measure_passes(Command::new(tool).args(&args), &twice, record_end);
            (t1, warm, rss) = (t1.min(a), warm.min(b), rss.max(r));
        }
        let first = (0..3)
            .map(|_| {
                measure(
                    Command::new(tool).args(&args),
                    &format!("{:#x}\n", addrs[0]),
                )
                .0
            })
            .fold(f64::MAX, f64::min);
        let (rss1, rss2) = (rss, rss);
        println!(
            "| {tool} | {:.0} | {:.0} | {:.1} ms | {:.0} MiB |",
            N as f64 / t1,
            N as f64 / warm,
            first * 1e3,
            rss1.max(rss2) as f64 / 1024.0
        );
    }
}
