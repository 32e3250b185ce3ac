//! End-to-end tests of the eBPF stack-delta unwinder: `ferroscope record --pid` on programs
//! built without frame pointers (C, stripped C, C++, Rust, Go, deep recursion, a library
//! loaded with dlopen, syscalls), then the pprof it wrote is decoded and the hot function's
//! stacks must reach `main` in order on at least 99 % of its samples.
//!
//! They need root. With `FERROSCOPE_REQUIRE=1` (CI) running without root fails them.

#![allow(clippy::print_stderr)]

mod common;
use common::{Workload, can_run_bpf, ferroscope, fixture};
use ferroscope_test_harness as harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use ferroscope_pprof::proto::Profile;

/// Each test keeps a CPU busy: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs a build step (at most 10 minutes: a Go build with a fresh cache is the slowest).
fn run(cmd: &mut Command, what: &str) {
    let out = harness::run(cmd, Duration::from_secs(600));
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// C without frame pointers.
fn gcc(dir: &Path, source: &str, exe: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(exe);
    run(
        Command::new("gcc")
            .args(["-O2", "-g", "-fomit-frame-pointer"])
            .args(extra)
            .arg("-o")
            .arg(&out)
            .arg(fixture(source)),
        &format!("gcc {source}"),
    );
    out
}

/// A decoded sample: (function name, location address, mapping file name) leaf first,
/// and its value.
struct Sample {
    frames: Vec<(String, u64, String)>,
    value: i64,
}

impl Sample {
    fn names(&self) -> Vec<&str> {
        self.frames.iter().map(|f| f.0.as_str()).collect()
    }
}

fn samples(p: &Profile) -> Vec<Sample> {
    let s = |i: i64| p.string_table[i as usize].clone();
    let function_name = |id: u64| {
        p.function
            .iter()
            .find(|f| f.id == id)
            .map(|f| s(f.name))
            .unwrap()
    };
    let mapping_name = |id: u64| {
        p.mapping
            .iter()
            .find(|m| m.id == id)
            .map(|m| s(m.filename))
            .unwrap_or_default()
    };
    p.sample
        .iter()
        .map(|sample| {
            let mut frames = Vec::new();
            for loc_id in &sample.location_id {
                let loc = p.location.iter().find(|l| l.id == *loc_id).unwrap();
                let mapping = mapping_name(loc.mapping_id);
                if loc.line.is_empty() {
                    frames.push((String::new(), loc.address, mapping.clone()));
                }
                for line in &loc.line {
                    frames.push((
                        function_name(line.function_id),
                        loc.address,
                        mapping.clone(),
                    ));
                }
            }
            Sample {
                frames,
                value: sample.value[0],
            }
        })
        .collect()
}

/// Records `pid` for `secs` seconds and returns the decoded samples.
fn record(pid: u32, secs: u32, dir: &Path) -> Vec<Sample> {
    let out_path = dir.join(format!("u{pid}.pb.gz"));
    let out = ferroscope(&[
        "record",
        "-p",
        &pid.to_string(),
        "-d",
        &secs.to_string(),
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "ferroscope record failed");
    samples(&ferroscope_pprof::decode(&std::fs::read(&out_path).unwrap()).expect("a valid pprof"))
}

/// True when `chain` appears in `stack` as consecutive frames, each frame's name containing
/// the chain's entry (`exact`: equal to it).
fn has_chain(stack: &[&str], chain: &[&str], exact: bool) -> bool {
    let matches = |name: &str, want: &str| {
        if exact {
            name == want
        } else {
            name.contains(want)
        }
    };
    stack
        .windows(chain.len())
        .any(|w| w.iter().zip(chain).all(|(a, b)| matches(a, b)))
}

/// Of the samples whose stack contains `hot`, the share (by value) that contain `chain`
/// (which starts with `hot`), with a listing of the others for the failure message.
fn chain_share(samples: &[Sample], chain: &[&str], exact: bool) -> (f64, i64, String) {
    let hot = chain[0];
    let with_hot: Vec<&Sample> = samples
        .iter()
        .filter(|s| has_chain(&s.names(), &[hot], exact))
        .collect();
    let total: i64 = with_hot.iter().map(|s| s.value).sum();
    let good: i64 = with_hot
        .iter()
        .filter(|s| has_chain(&s.names(), chain, exact))
        .map(|s| s.value)
        .sum();
    let bad: Vec<String> = with_hot
        .iter()
        .filter(|s| !has_chain(&s.names(), chain, exact))
        .take(5)
        .map(|s| format!("{:?}", s.names()))
        .collect();
    let share = if total > 0 {
        good as f64 / total as f64
    } else {
        0.0
    };
    (share, total, bad.join("\n"))
}

fn assert_complete(samples: &[Sample], chain: &[&str], exact: bool, what: &str) {
    let (share, total, bad) = chain_share(samples, chain, exact);
    assert!(total > 0, "{what}: no sample contains {}", chain[0]);
    assert!(
        share >= 0.99,
        "{what}: only {:.1} % of the {} samples have the whole chain {chain:?}; some others:\n{bad}",
        share * 100.0,
        total
    );
}

const C_CHAIN: [&str; 6] = [
    "hot_leaf",
    "inner",
    "middle",
    "outer",
    "run_forever",
    "main",
];

#[test]
fn c_without_frame_pointers_has_complete_stacks() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(dir.path(), "c/nofp_chain.c", "nofp_chain", &[]);
    let work = Workload::start(&exe, &[]);
    let samples = record(work.pid(), 3, dir.path());
    assert_complete(&samples, &C_CHAIN, true, "C -O2 -fomit-frame-pointer");
}

#[test]
fn deep_recursion_keeps_every_frame() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(dir.path(), "c/nofp_chain.c", "nofp_recurse", &[]);
    let work = Workload::start(&exe, &["recurse"]);
    let samples = record(work.pid(), 3, dir.path());
    let mut chain = vec!["hot_leaf"];
    chain.extend(std::iter::repeat_n("recurse", 101));
    chain.extend(["run_forever", "main"]);
    assert_complete(&samples, &chain, true, "101 recursive frames");
}

#[test]
fn stripped_binary_unwinds_from_eh_frame() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let full = gcc(
        dir.path(),
        "c/nofp_chain.c",
        "nofp_full",
        &["-Wl,--build-id"],
    );
    let debug_dir = dir.path().join("debug");
    std::fs::create_dir(&debug_dir).unwrap();
    let debug = debug_dir.join("nofp_stripped.debug");
    run(
        Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&full)
            .arg(&debug),
        "objcopy --only-keep-debug",
    );
    let stripped = dir.path().join("nofp_stripped");
    run(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&stripped)
            .arg(&full),
        "strip",
    );

    // The unstripped copy names the stripped one's addresses (same layout).
    let nm = harness::run_ok(
        Command::new("nm").args(["--defined-only"]).arg(&full),
        Duration::from_secs(60),
    );
    let mut symbols: BTreeMap<u64, String> = BTreeMap::new();
    for line in nm.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() == 3
            && matches!(parts[1], "t" | "T")
            && let Ok(addr) = u64::from_str_radix(parts[0], 16)
        {
            symbols.insert(addr, parts[2].to_string());
        }
    }
    let name_of = |addr: u64| {
        symbols
            .range(..=addr)
            .next_back()
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
    };

    let work = Workload::start(&stripped, &[]);
    let samples = record(work.pid(), 3, dir.path());
    // Name each frame of the stripped executable by address through the unstripped copy.
    let renamed: Vec<Sample> = samples
        .into_iter()
        .map(|s| Sample {
            frames: s
                .frames
                .into_iter()
                .map(|(name, addr, mapping)| {
                    // Locations hold ELF addresses; a caller's is its return address, and
                    // name_of of it still falls in the caller (calls are never last here).
                    let name = if mapping == "nofp_stripped" {
                        name_of(addr)
                    } else {
                        name
                    };
                    (name, addr, mapping)
                })
                .collect(),
            value: s.value,
        })
        .collect();
    assert_complete(&renamed, &C_CHAIN, true, "stripped C");
}

#[test]
fn cfi_only_in_the_separate_debug_file_is_used() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // No .eh_frame: with -g, gcc puts the CFI in .debug_frame, which goes to the debug file.
    let full = gcc(
        dir.path(),
        "c/nofp_chain.c",
        "cfi_full",
        &[
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
            "-g",
        ],
    );
    let sections = |f: &Path| {
        harness::run_ok(
            Command::new("objdump").arg("-h").arg(f),
            Duration::from_secs(60),
        )
    };
    assert!(
        sections(&full).contains(".debug_frame"),
        "{}",
        sections(&full)
    );
    let debug = dir.path().join("cfi_app.debug");
    run(
        Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&full)
            .arg(&debug),
        "objcopy --only-keep-debug",
    );
    let app = dir.path().join("cfi_app");
    run(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&app)
            .arg(&full),
        "strip",
    );
    run(
        Command::new("objcopy")
            .arg(format!("--add-gnu-debuglink={}", debug.display()))
            .arg(&app),
        "objcopy --add-gnu-debuglink",
    );
    // Only the C runtime's start-up code keeps .eh_frame; the program's functions have CFI
    // only in the debug file.
    assert!(
        !sections(&app).contains(".debug_frame"),
        "{}",
        sections(&app)
    );
    let work = Workload::start(&app, &[]);
    let samples = record(work.pid(), 3, dir.path());
    assert_complete(
        &samples,
        &C_CHAIN,
        true,
        "CFI from the debug file's .debug_frame",
    );
}

#[test]
fn cpp_namespaces_and_templates_have_complete_stacks() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("templates");
    run(
        Command::new("g++")
            .args(["-O2", "-g", "-fomit-frame-pointer", "-o"])
            .arg(&exe)
            .arg(fixture("cpp/templates.cpp")),
        "g++",
    );
    let work = Workload::start(&exe, &[]);
    let samples = record(work.pid(), 3, dir.path());
    // Mangled or demangled, each name contains its identifier.
    assert_complete(
        &samples,
        &["cpp_hot", "mix", "Pipeline", "run", "main"],
        false,
        "C++",
    );
}

#[test]
fn rust_release_without_frame_pointers_has_complete_stacks() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("rs_chain");
    run(
        Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .args([
                "-O",
                "-C",
                "panic=abort",
                "-C",
                "force-frame-pointers=no",
                "-C",
                "debuginfo=1",
                "-o",
            ])
            .arg(&exe)
            .arg(fixture("rust/chain.rs")),
        "rustc",
    );
    let work = Workload::start(&exe, &[]);
    let samples = record(work.pid(), 3, dir.path());
    assert_complete(
        &samples,
        &["rs_hot_leaf", "rs_inner", "rs_middle", "rs_outer", "main"],
        false,
        "Rust",
    );
}

#[test]
fn go_binary_has_complete_stacks() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Some(go) = harness::tool("go") else {
        return;
    };
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::copy(fixture("go/chain.go"), src.join("main.go")).unwrap();
    std::fs::write(src.join("go.mod"), "module gochain\n\ngo 1.21\n").unwrap();
    let exe = dir.path().join("gochain");
    run(
        Command::new(go)
            .args(["build", "-o"])
            .arg(&exe)
            .arg(".")
            .current_dir(&src)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOPATH", dir.path().join("gopath"))
            .env("GOCACHE", dir.path().join("gocache")),
        "go build",
    );
    let work = Workload::start(&exe, &[]);
    let samples = record(work.pid(), 3, dir.path());
    assert_complete(
        &samples,
        &[
            "main.goHotLeaf",
            "main.goInner",
            "main.goMiddle",
            "main.goOuter",
            "main.main",
        ],
        true,
        "Go",
    );
}

/// Go calls the vDSO from assembly that moves RSP to the g0 stack (`time.now`,
/// `runtime.nanotime1`): below the vDSO's frames (unwound from its CFI, read from our own
/// copy) the caller's frame is found through its frame pointer, and the chain goes on to
/// `main.main`.
#[test]
fn go_time_now_is_unwound_through_the_vdso() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Some(go) = harness::tool("go") else {
        return;
    };
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::copy(fixture("go/now.go"), src.join("main.go")).unwrap();
    std::fs::write(src.join("go.mod"), "module gonow\n\ngo 1.19\n").unwrap();
    let exe = dir.path().join("gonow");
    run(
        Command::new(go)
            .args(["build", "-o"])
            .arg(&exe)
            .arg(".")
            .current_dir(&src)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOPATH", dir.path().join("gopath"))
            .env("GOCACHE", dir.path().join("gocache")),
        "go build",
    );
    let work = Workload::start(&exe, &[]);
    let samples = record(work.pid(), 3, dir.path());
    let in_vdso: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.names().iter().any(|n| n.contains("clock_gettime")))
        .collect();
    let total: i64 = samples.iter().map(|s| s.value).sum();
    let vdso: i64 = in_vdso.iter().map(|s| s.value).sum();
    assert!(
        vdso * 2 > total,
        "most samples of a time.Now() loop are in the vDSO: {vdso} of {total}"
    );
    let whole = |s: &Sample| {
        let names = s.names();
        let mut want = ["main.nowLoop", "main.nowOuter", "main.main"].into_iter();
        let mut next = want.next();
        for n in &names {
            if next.is_some_and(|w| *n == w) {
                next = want.next();
            }
        }
        next.is_none() && !names.iter().any(|n| n.starts_with('['))
    };
    let good: i64 = in_vdso.iter().filter(|s| whole(s)).map(|s| s.value).sum();
    let bad: Vec<String> = in_vdso
        .iter()
        .filter(|s| !whole(s))
        .take(5)
        .map(|s| format!("{:?}", s.names()))
        .collect();
    assert!(
        good as f64 >= 0.99 * vdso as f64,
        "only {good} of {vdso} vDSO samples reach main.main:\n{}",
        bad.join("\n")
    );
}

#[test]
fn library_loaded_with_dlopen_is_unwound() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libdlhot.so");
    run(
        Command::new("gcc")
            .args([
                "-O2",
                "-g",
                "-fomit-frame-pointer",
                "-shared",
                "-fPIC",
                "-o",
            ])
            .arg(&lib)
            .arg(fixture("c/dlopen_lib.c")),
        "gcc -shared",
    );
    let exe = gcc(dir.path(), "c/dlopen_main.c", "dlopen_main", &["-ldl"]);
    // Started just before recording; it loads the library two seconds later, while
    // sampling runs: the unwinder reports the unknown code and the process is rescanned
    // (at most every 100 ms). Samples in the library before the rescan lands cannot be
    // unwound (about 50-150 ms of them); over 12 s that is about 1 %.
    let work = Workload::start(&exe, &[lib.to_str().unwrap()]);
    let samples = record(work.pid(), 14, dir.path());
    assert_complete(
        &samples,
        &["dl_hot", "dl_outer", "run_loaded", "main"],
        true,
        "dlopen",
    );
}

#[test]
fn syscalls_join_kernel_and_complete_user_stacks() {
    if !can_run_bpf() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(dir.path(), "c/syscalls.c", "syscalls_nofp", &[]);
    let work = Workload::start(&exe, &[]);
    let samples = record(work.pid(), 3, dir.path());
    let is_libc_io = |n: &str| {
        ["read", "write", "__read", "__write"].contains(&n)
            || n.ends_with("libc_read")
            || n.ends_with("libc_write")
    };
    let mut joined = 0;
    let mut in_libc = 0;
    for s in &samples {
        let names = s.names();
        // Kernel frames first, then libc's read or write.
        let Some(first_user) = names.iter().position(|n| is_libc_io(n)) else {
            continue;
        };
        if first_user == 0 {
            continue;
        }
        in_libc += s.value;
        if has_chain(
            &names[first_user + 1..],
            &["copy_once", "io_loop", "main"],
            true,
        ) {
            joined += s.value;
        }
    }
    assert!(in_libc > 0, "no kernel sample under libc's read or write");
    assert!(
        joined as f64 >= 0.99 * in_libc as f64,
        "only {joined} of {in_libc} kernel+libc samples keep copy_once -> io_loop -> main"
    );
}
