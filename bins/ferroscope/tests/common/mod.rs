//! Helpers shared by the end-to-end tests.
#![allow(dead_code, clippy::print_stderr)]

use std::path::{Path, PathBuf};

/// Whether the eBPF tests can run (root). Without root they skip with a note, unless
/// `FERROSCOPE_REQUIRE_BPF=1` (CI), which makes them fail.
pub fn can_run_bpf() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("FERROSCOPE_REQUIRE_BPF").is_some_and(|v| v == "1") {
        panic!(
            "FERROSCOPE_REQUIRE_BPF=1 but the tests do not run as root: the eBPF tests cannot run"
        );
    }
    eprintln!("SKIPPED: not root; set FERROSCOPE_REQUIRE_BPF=1 to make this a failure");
    false
}

/// A file under the repository's `fixtures/`.
pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(path)
}
