//! Helpers shared by the end-to-end tests.
#![allow(dead_code, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ferroscope_test_harness::{self as harness, Guard};

mod agent;
pub mod cpu;
pub mod samples;
pub mod source;
// Not every test file runs the agent.
#[allow(unused_imports)]
pub use agent::{AgentRun, metric, run_agent};

/// The longest a workload may run: far more than any test records, so that only a hung
/// test reaches it (the guard then kills the workload and fails the test).
pub const WORKLOAD_LIMIT: Duration = Duration::from_secs(600);

/// The longest one `ferroscope` command may take.
pub const FERROSCOPE_LIMIT: Duration = Duration::from_secs(300);

/// Whether the eBPF tests can run (root). Without root they skip (logged), unless
/// `FERROSCOPE_REQUIRE=1` (CI), which makes them fail.
pub fn can_run_bpf() -> bool {
    harness::root("loading eBPF programs")
}

/// A file under the repository's `fixtures/`.
pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(path)
}

/// A process started for a test under a [`Guard`]: killed with its process group when
/// dropped, or when it outlives [`WORKLOAD_LIMIT`].
pub struct Workload(pub Guard);

impl Workload {
    /// Starts `exe` with `args` and gives it 200 ms to get going, so that its mappings exist
    /// before sampling starts.
    pub fn start(exe: &Path, args: &[&str]) -> Workload {
        let guard = Guard::spawn(Command::new(exe).args(args), WORKLOAD_LIMIT);
        std::thread::sleep(Duration::from_millis(200));
        Workload(guard)
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.pid())
    }
}

/// CPU time (user + system) process `pid` has used so far.
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    let utime: u64 = fields[11].parse().unwrap();
    let stime: u64 = fields[12].parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64((utime + stime) as f64 / hz as f64)
}

/// Runs the ferroscope binary (for at most [`FERROSCOPE_LIMIT`]) and echoes what it printed
/// (shown when a test fails).
pub fn ferroscope(args: &[&str]) -> Output {
    let out = harness::run(
        Command::new(env!("CARGO_BIN_EXE_ferroscope")).args(args),
        FERROSCOPE_LIMIT,
    );
    eprintln!(
        "--- ferroscope {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// A workload that prints `ready` and waits for SIGUSR1 before it does what the test
/// measures (the off-CPU and probe fixtures), so that it is measured from the moment
/// sampling runs.
pub fn signalled_workload(cmd: &mut Command) -> Guard {
    let mut w = Guard::spawn(cmd, WORKLOAD_LIMIT);
    w.wait_for_line("ready", Duration::from_secs(30));
    w
}

/// Runs `ferroscope record ARGS` on `workload`, sends the workload SIGUSR1 once sampling has
/// started (record's first progress line), waits for record to end (it stops when the
/// workload exits) and returns what it printed (stdout and stderr together, last lines).
pub fn record_signalled(workload: &Guard, args: &[&str]) -> String {
    let mut rec = Guard::spawn(
        Command::new("sh")
            .args([
                "-c",
                "exec \"$0\" \"$@\" 2>&1",
                env!("CARGO_BIN_EXE_ferroscope"),
            ])
            .args(args),
        FERROSCOPE_LIMIT,
    );
    rec.wait_for(Duration::from_secs(120), |l| l.contains(" samples "));
    workload.signal(libc::SIGUSR1);
    let out = rec.expect_success(FERROSCOPE_LIMIT);
    eprintln!("--- ferroscope {}\n{out}", args.join(" "));
    out
}

/// Compiles `fixtures/<src>` with gcc (`-O1 -g` and frame pointers, then `flags`) into
/// `dir/<name>`.
pub fn gcc(dir: &Path, src: &str, name: &str, flags: &[&str]) -> PathBuf {
    let out = dir.join(name);
    harness::run_ok(
        Command::new("gcc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer"])
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(fixture(src)),
        Duration::from_secs(120),
    );
    out
}
