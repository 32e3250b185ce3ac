//! Helpers shared by the integration tests: compiling programs and finding tools.
#![allow(dead_code, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferroscope_test_harness as harness;

/// Runs a command (for at most 5 minutes), panicking with its stderr on failure; returns
/// stdout.
pub fn run(cmd: &mut Command) -> String {
    harness::run_ok(cmd, Duration::from_secs(300))
}

/// The separate debug file of `path` under /usr/lib/debug/.build-id (libc6-dbg installs
/// libc's there), or `None` after a skip (a failure when tests are required).
pub fn debug_file_of(path: &Path) -> Option<PathBuf> {
    let package = "apt-get install libc6-dbg (libc and ld.so) or the file's -dbg package";
    harness::file(
        harness::files::build_id_debug_path(&build_id(path)),
        package,
    )
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
