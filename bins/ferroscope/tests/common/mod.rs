//! Helpers shared by the end-to-end tests.
#![allow(dead_code, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

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

/// A process started for a test, killed and reaped when dropped.
pub struct Workload(Child);

impl Workload {
    /// Starts `exe` with `args` and gives it 200 ms to get going, so that its mappings exist
    /// before sampling starts.
    pub fn start(exe: &Path, args: &[&str]) -> Workload {
        let child = Command::new(exe)
            .args(args)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        std::thread::sleep(Duration::from_millis(200));
        Workload(child)
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_comm.split(' ').collect();
        let utime: u64 = fields[11].parse().unwrap();
        let stime: u64 = fields[12].parse().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_secs_f64((utime + stime) as f64 / hz as f64)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the ferroscope binary and echoes what it printed (shown when a test fails).
pub fn ferroscope(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroscope"))
        .args(args)
        .output()
        .expect("run ferroscope");
    eprintln!(
        "--- ferroscope {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}
