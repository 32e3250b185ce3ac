//! Environment diagnostics: what `ferroscope check` prints, and what `ferroscope record`
//! verifies before it starts.
//!
//! Every check is a separate function returning a [`CheckResult`] that says what was found
//! and, when something is wrong, what to do about it. [`run_all`] runs them in a fixed order:
//!
//! 1. [`check_privileges`]: root, or the capabilities the profiler needs.
//! 2. [`check_perf_event_paranoid`]: `kernel.perf_event_paranoid` and what it means here.
//! 3. [`check_kernel_version`]: Linux 5.10 or newer, and which build of the programs it
//!    gets (5.17+: the `bpf_loop` build; 5.10-5.16: the legacy build).
//! 4. [`check_btf`]: `/sys/kernel/btf/vmlinux` for CO-RE.
//! 5. [`check_tracefs`]: tracefs mounted (optionally mounting it).
//! 6. [`check_bpffs`]: bpffs mounted (optionally mounting it).
//! 7. [`check_bpf_load`]: the kernel loads ferroscope's real programs (native and every
//!    linked runtime's), each one's verdict and verified instruction count.
//! 8. [`check_perf_event`]: a cpu-clock sampling event can be opened.
//! 9. [`check_sample_rate`]: the requested sample rate is acceptable.
//! 10. [`check_kprobes`]: whether the kernel has kprobes (for `kprobe:` probe links only).
//!
//! The checks only inspect the process's own environment; the only side effects are the
//! optional mounts of tracefs and bpffs (as the reference profiler does at start-up), and the
//! programs and a perf event that are created and immediately closed.

mod kernel;
mod mounts;
mod perf;
mod privileges;
mod programs;

#[allow(unused_imports)]
use kernel::*;
pub use kernel::{MIN_KERNEL, check_btf, check_kernel_version, check_kprobes};
#[allow(unused_imports)]
use mounts::*;
pub use mounts::{check_bpffs, check_tracefs};
#[allow(unused_imports)]
use perf::*;
pub use perf::{check_perf_event, check_perf_event_paranoid, check_sample_rate};
pub use privileges::check_privileges;
#[allow(unused_imports)]
use privileges::*;
pub use programs::check_bpf_load;

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Everything the profiler needs is there.
    Ok,
    /// Profiling works, but something is degraded or could not be verified.
    Warn,
    /// Profiling cannot work until this is fixed.
    Fail,
}

impl Status {
    /// The short label printed in front of a result line.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.label())
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Short name of the check, e.g. `"kernel version"`.
    pub name: &'static str,
    /// How it went.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (for `Warn` and `Fail`).
    pub fix: Option<String>,
    /// Details printed on their own lines under the result (one per eBPF program).
    pub lines: Vec<String>,
}

impl CheckResult {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        CheckResult {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
            lines: Vec::new(),
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        CheckResult {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
            lines: Vec::new(),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        CheckResult {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
            lines: Vec::new(),
        }
    }

    /// Whether this check failed.
    pub fn is_failure(&self) -> bool {
        self.status == Status::Fail
    }
}

impl fmt::Display for CheckResult {
    /// One line: `ok    kernel version: 6.18.44 (>= 5.8 needed)`, or
    /// `FAIL  <name>: <detail> — fix: <fix>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<6}{}: {}",
            self.status.label(),
            self.name,
            self.detail
        )?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        for line in &self.lines {
            write!(f, "\n      {line}")?;
        }
        Ok(())
    }
}

/// Options for [`run_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// Mount tracefs and bpffs when they are missing, as the reference profiler does.
    pub mount_missing: bool,
    /// The sampling frequency the session will use, in Hz.
    pub sample_rate_hz: u32,
    /// Load every eBPF program (both builds, as `ferroscope check` does). `record` and `run`
    /// leave it to the session, which loads them anyway and reports a rejected program the
    /// same way: verifying everything twice doubled their start-up.
    pub load_programs: bool,
}

/// Names of the checks, in the order [`run_all`] runs them.
pub const CHECK_NAMES: [&str; 10] = [
    NAME_PRIVILEGES,
    NAME_PARANOID,
    NAME_KERNEL,
    NAME_BTF,
    NAME_TRACEFS,
    NAME_BPFFS,
    NAME_BPF_LOAD,
    NAME_PERF_EVENT,
    NAME_SAMPLE_RATE,
    NAME_KPROBES,
];

const NAME_PRIVILEGES: &str = "privileges";
const NAME_PARANOID: &str = "perf_event_paranoid";
const NAME_KERNEL: &str = "kernel version";
const NAME_BTF: &str = "BTF";
const NAME_TRACEFS: &str = "tracefs";
const NAME_BPFFS: &str = "bpffs";
const NAME_BPF_LOAD: &str = "eBPF programs";
const NAME_PERF_EVENT: &str = "cpu-clock perf event";
const NAME_SAMPLE_RATE: &str = "sample rate";
const NAME_KPROBES: &str = "kernel probes";

/// The highest sample rate ferroscope accepts, in Hz.
pub const MAX_SAMPLE_RATE_HZ: u32 = 1000;

/// Runs every check, in order, and returns all results (it does not stop at a failure).
pub fn run_all(opts: &CheckOptions) -> Vec<CheckResult> {
    let checks: [&dyn Fn() -> CheckResult; 10] = [
        &check_privileges,
        &check_perf_event_paranoid,
        &check_kernel_version,
        &check_btf,
        &|| check_tracefs(opts.mount_missing),
        &|| check_bpffs(opts.mount_missing),
        &|| {
            if opts.load_programs {
                check_bpf_load()
            } else {
                CheckResult::ok(NAME_BPF_LOAD, "left to the session, which loads them")
            }
        },
        &|| check_perf_event(opts.sample_rate_hz),
        &|| check_sample_rate(opts.sample_rate_hz),
        &check_kprobes,
    ];
    checks
        .iter()
        .map(|check| {
            let result = check();
            match result.status {
                Status::Ok => {
                    tracing::debug!(check = result.name, detail = %result.detail, "check passed")
                }
                Status::Warn | Status::Fail => tracing::warn!(
                    check = result.name,
                    status = result.status.label(),
                    detail = %result.detail,
                    fix = result.fix.as_deref().unwrap_or(""),
                    "check did not pass"
                ),
            }
            result
        })
        .collect()
}

/// The first failed check, if any.
pub fn first_failure(results: &[CheckResult]) -> Option<&CheckResult> {
    results.iter().find(|r| r.status == Status::Fail)
}

// ---------------------------------------------------------------------------------------------
// errno helpers
// ---------------------------------------------------------------------------------------------

fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::E2BIG => "E2BIG",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESRCH => "ESRCH",
        _ => return None,
    })
}

/// `EPERM (Operation not permitted)`.
fn errno_text(errno: i32) -> String {
    let message = io::Error::from_raw_os_error(errno).to_string();
    let message = message
        .split(" (os error")
        .next()
        .unwrap_or(&message)
        .to_string();
    match errno_name(errno) {
        Some(name) => format!("{name} ({message})"),
        None => format!("errno {errno} ({message})"),
    }
}

fn describe_io_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => errno_text(errno),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_formats() {
        let ok = CheckResult::ok("kernel version", "6.18.44 (>= 5.10 needed)");
        assert_eq!(
            ok.to_string(),
            "ok    kernel version: 6.18.44 (>= 5.10 needed)"
        );
        let mut with_lines = CheckResult::ok("eBPF programs", "2 of 2 loaded");
        with_lines.lines = vec!["ok    a".into(), "ok    b".into()];
        assert_eq!(
            with_lines.to_string(),
            "ok    eBPF programs: 2 of 2 loaded\n      ok    a\n      ok    b"
        );
        let fail = CheckResult::fail("tracefs", "not mounted", "mount it");
        assert_eq!(
            fail.to_string(),
            "FAIL  tracefs: not mounted — fix: mount it"
        );
        let warn = CheckResult::warn("x", "y", "z");
        assert_eq!(warn.to_string(), "warn  x: y — fix: z");
    }

    #[test]
    fn errno_texts() {
        assert_eq!(errno_text(libc::EPERM), "EPERM (Operation not permitted)");
        assert!(errno_text(4095).starts_with("errno 4095"));
    }
}
