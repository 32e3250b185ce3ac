//! Free disk space, reported before the build and again when a step fails: a build or a
//! runtime install that runs out of space fails with errors (a linker's bus error, a truncated
//! archive) that do not say so.

use std::path::Path;
use std::process::{Command, Stdio};

/// What a fresh `cargo xtask test` writes, measured on a fresh machine (docs/benchmarks.md,
/// "Disk"): the target directory with the kernel matrix's images, and the test cache's runtimes
/// and chroots.
pub const TEST_RUN_NEEDS_GB: f64 = 20.0;

/// The free bytes of the filesystem holding `path` (or its nearest existing parent), from
/// `df`; `None` when df cannot say.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut at = path;
    while !at.exists() {
        at = at.parent()?;
    }
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(at)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

/// Prints the free space under each of `places` (name, path), and a warning for each with less
/// than `needs_gb`.
pub fn report(places: &[(&str, &Path)], needs_gb: f64) {
    for (name, path) in places {
        match free_bytes(path) {
            Some(free) if gb(free) < needs_gb => eprintln!(
                "warning: {:.1} GB free for {name} ({}); a fresh test run writes up to \
                 {needs_gb:.0} GB there: steps may fail with `No space left on device` or a \
                 linker's bus error. Free some space, or point CARGO_TARGET_DIR and \
                 FERROSCOPE_TEST_CACHE at a larger disk.",
                gb(free),
                path.display()
            ),
            Some(free) => eprintln!(
                "disk: {:.1} GB free for {name} ({})",
                gb(free),
                path.display()
            ),
            None => eprintln!(
                "disk: cannot tell the free space for {name} ({})",
                path.display()
            ),
        }
    }
}
