//! Finding the real files tests read (the libc this process runs with, a compiler's own
//! libraries, separate debug files) instead of hard-coding distribution paths.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::require::{Unavailable, find_tool, need};

/// The file of the first library mapped into this process whose file name starts with
/// `prefix` (e.g. `libc.so`), from `/proc/self/maps`.
pub fn mapped_library(prefix: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(PathBuf::from)
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
}

/// The C library this test process runs with. Every Rust test binary on Linux maps glibc,
/// so its absence is a broken premise, not a reason to skip.
pub fn libc() -> PathBuf {
    mapped_library("libc.so").expect("this process maps no libc.so (/proc/self/maps)")
}

/// Where `compiler` (e.g. `g++`) finds the library `name` (`-print-file-name`), e.g. the
/// libstdc++ the C++ tests link against; an error when the compiler or the file is missing.
pub fn find_compiler_library(compiler: &str, name: &str) -> Result<PathBuf, Unavailable> {
    let cc = find_tool(compiler)?;
    let out = crate::exec::exec(
        Command::new(cc).arg(format!("-print-file-name={name}")),
        Duration::from_secs(60),
    )?;
    let path = PathBuf::from(out.trim());
    // Without the file the compiler prints the bare name back.
    if path.is_absolute() && path.exists() {
        Ok(std::fs::canonicalize(&path).unwrap_or(path))
    } else {
        Err(Unavailable(format!("{compiler} knows no {name}")))
    }
}

/// [`find_compiler_library`], or `None` after a skip.
pub fn compiler_library(compiler: &str, name: &str) -> Option<PathBuf> {
    need(find_compiler_library(compiler, name))
}

/// The separate debug file of the ELF build ID `build_id` (hex) under
/// `/usr/lib/debug/.build-id`, where Debian's `-dbg` packages install them; the path whether
/// or not it exists (check it with [`crate::file`]).
pub fn build_id_debug_path(build_id: &str) -> PathBuf {
    PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &build_id[..2.min(build_id.len())],
        &build_id[2.min(build_id.len())..]
    ))
}
