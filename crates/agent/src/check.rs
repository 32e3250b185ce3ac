//! Environment diagnostics: what `ferroscope check` prints, and what `ferroscope record`
//! verifies before it starts.
//!
//! Every check is a separate function returning a [`CheckResult`] that says what was found
//! and, when something is wrong, what to do about it. [`run_all`] runs them in a fixed order:
//!
//! 1. [`check_privileges`]: root, or the capabilities the profiler needs.
//! 2. [`check_perf_event_paranoid`]: `kernel.perf_event_paranoid` and what it means here.
//! 3. [`check_kernel_version`]: Linux 5.8 or newer.
//! 4. [`check_btf`]: `/sys/kernel/btf/vmlinux` for CO-RE.
//! 5. [`check_tracefs`]: tracefs mounted (optionally mounting it).
//! 6. [`check_bpffs`]: bpffs mounted (optionally mounting it).
//! 7. [`check_bpf_load`]: the kernel accepts a trivial BPF program from this process.
//! 8. [`check_perf_event`]: a cpu-clock sampling event can be opened.
//! 9. [`check_sample_rate`]: the requested sample rate is acceptable.
//!
//! The checks only inspect the process's own environment; the only side effects are the
//! optional mounts of tracefs and bpffs (as the reference profiler does at start-up), and a
//! BPF program and a perf event that are created and immediately closed.

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
}

impl CheckResult {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        CheckResult {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        CheckResult {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        CheckResult {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
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
}

/// Names of the checks, in the order [`run_all`] runs them.
pub const CHECK_NAMES: [&str; 9] = [
    NAME_PRIVILEGES,
    NAME_PARANOID,
    NAME_KERNEL,
    NAME_BTF,
    NAME_TRACEFS,
    NAME_BPFFS,
    NAME_BPF_LOAD,
    NAME_PERF_EVENT,
    NAME_SAMPLE_RATE,
];

const NAME_PRIVILEGES: &str = "privileges";
const NAME_PARANOID: &str = "perf_event_paranoid";
const NAME_KERNEL: &str = "kernel version";
const NAME_BTF: &str = "BTF";
const NAME_TRACEFS: &str = "tracefs";
const NAME_BPFFS: &str = "bpffs";
const NAME_BPF_LOAD: &str = "BPF program load";
const NAME_PERF_EVENT: &str = "cpu-clock perf event";
const NAME_SAMPLE_RATE: &str = "sample rate";

/// The highest sample rate ferroscope accepts, in Hz.
pub const MAX_SAMPLE_RATE_HZ: u32 = 1000;

/// Runs every check, in order, and returns all results (it does not stop at a failure).
pub fn run_all(opts: &CheckOptions) -> Vec<CheckResult> {
    let checks: [&dyn Fn() -> CheckResult; 9] = [
        &check_privileges,
        &check_perf_event_paranoid,
        &check_kernel_version,
        &check_btf,
        &|| check_tracefs(opts.mount_missing),
        &|| check_bpffs(opts.mount_missing),
        &check_bpf_load,
        &|| check_perf_event(opts.sample_rate_hz),
        &|| check_sample_rate(opts.sample_rate_hz),
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
// 1. Privileges
// ---------------------------------------------------------------------------------------------

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_SYSLOG: u32 = 34;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const CAP_CHECKPOINT_RESTORE: u32 = 40;

#[derive(Debug, Clone, Copy)]
struct Capability {
    bit: u32,
    /// Name as `setcap` spells it.
    name: &'static str,
    /// Name as a Kubernetes securityContext spells it.
    k8s: &'static str,
    purpose: &'static str,
    /// Without it nothing can be profiled at all (otherwise profiles are degraded).
    essential: bool,
    /// CAP_SYS_ADMIN also grants what this capability grants.
    implied_by_sys_admin: bool,
    /// Only kernels older than this need it.
    needed_before: Option<(u32, u32)>,
}

/// The capabilities the profiler needs when it does not run as root (the list the reference
/// profiler documents).
const REQUIRED_CAPS: [Capability; 7] = [
    Capability {
        bit: CAP_BPF,
        name: "cap_bpf",
        k8s: "BPF",
        purpose: "load BPF programs and maps",
        essential: true,
        implied_by_sys_admin: true,
        needed_before: None,
    },
    Capability {
        bit: CAP_PERFMON,
        name: "cap_perfmon",
        k8s: "PERFMON",
        purpose: "open system-wide perf events",
        essential: true,
        implied_by_sys_admin: true,
        needed_before: None,
    },
    Capability {
        bit: CAP_SYS_PTRACE,
        name: "cap_sys_ptrace",
        k8s: "SYS_PTRACE",
        purpose: "read other processes' /proc/<pid>/ entries",
        essential: false,
        implied_by_sys_admin: false,
        needed_before: None,
    },
    Capability {
        bit: CAP_SYS_RESOURCE,
        name: "cap_sys_resource",
        k8s: "SYS_RESOURCE",
        purpose: "raise RLIMIT_MEMLOCK for BPF maps",
        essential: false,
        implied_by_sys_admin: false,
        // Since 5.11 BPF memory is charged to the memory cgroup instead of RLIMIT_MEMLOCK.
        needed_before: Some((5, 11)),
    },
    Capability {
        bit: CAP_CHECKPOINT_RESTORE,
        name: "cap_checkpoint_restore",
        k8s: "CHECKPOINT_RESTORE",
        purpose: "open /proc/<pid>/map_files/* to read ELF symbols",
        essential: false,
        implied_by_sys_admin: true,
        needed_before: None,
    },
    Capability {
        bit: CAP_DAC_READ_SEARCH,
        name: "cap_dac_read_search",
        k8s: "DAC_READ_SEARCH",
        purpose: "read binaries and /proc entries regardless of file permissions",
        essential: false,
        implied_by_sys_admin: false,
        needed_before: None,
    },
    Capability {
        bit: CAP_SYSLOG,
        name: "cap_syslog",
        k8s: "SYSLOG",
        purpose: "read the kernel log for verifier diagnostics",
        essential: false,
        implied_by_sys_admin: false,
        needed_before: None,
    },
];

/// Credentials of this process as `/proc/self/status` reports them.
#[derive(Debug, Clone, Copy)]
struct Creds {
    euid: u32,
    cap_eff: u64,
}

impl Creds {
    fn has(&self, cap: &Capability) -> bool {
        self.has_bit(cap.bit) || (cap.implied_by_sys_admin && self.has_bit(CAP_SYS_ADMIN))
    }

    fn has_bit(&self, bit: u32) -> bool {
        bit < 64 && self.cap_eff & (1u64 << bit) != 0
    }

    fn has_perfmon(&self) -> bool {
        self.has_bit(CAP_PERFMON) || self.has_bit(CAP_SYS_ADMIN)
    }

    fn has_bpf(&self) -> bool {
        self.has_bit(CAP_BPF) || self.has_bit(CAP_SYS_ADMIN)
    }
}

fn parse_status(status: &str) -> Option<Creds> {
    let mut euid = None;
    let mut cap_eff = None;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            // real, effective, saved, filesystem
            euid = rest.split_whitespace().nth(1).and_then(|v| v.parse().ok());
        } else if let Some(rest) = line.strip_prefix("CapEff:") {
            cap_eff = u64::from_str_radix(rest.trim(), 16).ok();
        }
    }
    Some(Creds {
        euid: euid?,
        cap_eff: cap_eff?,
    })
}

fn read_creds() -> Result<Creds, String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {}", describe_io_error(&e)))?;
    parse_status(&status)
        .ok_or_else(|| "cannot find the Uid and CapEff lines in /proc/self/status".to_string())
}

fn grant_fix() -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/path/to/ferroscope".to_string());
    let setcap: Vec<&str> = REQUIRED_CAPS.iter().map(|c| c.name).collect();
    let k8s: Vec<&str> = REQUIRED_CAPS.iter().map(|c| c.k8s).collect();
    format!(
        "run ferroscope as root (sudo), or grant the capabilities to the binary with \
         `sudo setcap {}+ep {exe}`, or in a container add them to the securityContext: \
         `capabilities: {{ add: [{}] }}` (or set `privileged: true`)",
        setcap.join(","),
        k8s.join(", ")
    )
}

/// Check 1: effective uid 0 with a full capability set, or the capabilities the profiler
/// needs (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_SYS_RESOURCE, CAP_CHECKPOINT_RESTORE,
/// CAP_DAC_READ_SEARCH, CAP_SYSLOG), read from `CapEff` in `/proc/self/status`.
///
/// Missing CAP_BPF or CAP_PERFMON is a failure (nothing can be profiled); missing only the
/// others is a warning (symbolization of other users' processes and diagnostics degrade).
pub fn check_privileges() -> CheckResult {
    let creds = match read_creds() {
        Ok(c) => c,
        Err(e) => {
            return CheckResult::fail(
                NAME_PRIVILEGES,
                e,
                "mount /proc (`mount -t proc proc /proc`) and run ferroscope in the host's PID namespace",
            );
        }
    };
    let kernel = uname_release().ok().and_then(|r| parse_kernel_release(&r));
    let needed = |c: &Capability| match (c.needed_before, kernel) {
        (Some(before), Some((major, minor, _))) => (major, minor) < before,
        _ => true,
    };
    let missing: Vec<&Capability> = REQUIRED_CAPS
        .iter()
        .filter(|c| needed(c) && !creds.has(c))
        .collect();
    if missing.is_empty() {
        let mut detail = if creds.euid == 0 {
            "running as root (uid 0) with all needed capabilities".to_string()
        } else {
            format!(
                "uid {} with all needed capabilities ({})",
                creds.euid,
                REQUIRED_CAPS
                    .iter()
                    .filter(|c| needed(c))
                    .map(|c| c.name.to_uppercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        for c in REQUIRED_CAPS.iter().filter(|c| !needed(c) && !creds.has(c)) {
            let (major, minor) = c.needed_before.unwrap_or_default();
            detail.push_str(&format!(
                "; {} is absent but not needed on kernels since {major}.{minor} (to {})",
                c.name.to_uppercase(),
                c.purpose
            ));
        }
        return CheckResult::ok(NAME_PRIVILEGES, detail);
    }
    let who = if creds.euid == 0 {
        "uid 0, but with a reduced capability set (a container or user namespace?)".to_string()
    } else {
        format!("not root (uid {})", creds.euid)
    };
    let list = missing
        .iter()
        .map(|c| format!("{} ({})", c.name.to_uppercase(), c.purpose))
        .collect::<Vec<_>>()
        .join(", ");
    let detail = format!("{who}; missing {list}");
    if missing.iter().any(|c| c.essential) {
        CheckResult::fail(NAME_PRIVILEGES, detail, grant_fix())
    } else {
        CheckResult::warn(
            NAME_PRIVILEGES,
            format!("{detail}; profiles will be degraded"),
            grant_fix(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// 2. perf_event_paranoid
// ---------------------------------------------------------------------------------------------

const PARANOID_PATH: &str = "/proc/sys/kernel/perf_event_paranoid";
const MAX_SAMPLE_RATE_PATH: &str = "/proc/sys/kernel/perf_event_max_sample_rate";

fn paranoid_meaning(level: i32) -> &'static str {
    match level {
        i32::MIN..=-1 => "no restrictions for any user",
        0 => "unprivileged users may open per-CPU events, but not raw tracepoint data",
        1 => "unprivileged users may profile their own processes (user and kernel), not whole CPUs",
        2 => "unprivileged users may profile only their own processes, in user space only",
        _ => {
            "perf_event_open is denied to unprivileged users entirely (Debian/Ubuntu/Android's extra level)"
        }
    }
}

fn read_trimmed(path: &str) -> io::Result<String> {
    fs::read_to_string(path).map(|s| s.trim().to_string())
}

fn read_paranoid() -> Option<i32> {
    read_trimmed(PARANOID_PATH).ok()?.parse().ok()
}

fn read_max_sample_rate() -> Option<u64> {
    read_trimmed(MAX_SAMPLE_RATE_PATH).ok()?.parse().ok()
}

/// Check 2: `/proc/sys/kernel/perf_event_paranoid` exists; it restricts ferroscope only when
/// the process has neither CAP_PERFMON nor CAP_SYS_ADMIN.
pub fn check_perf_event_paranoid() -> CheckResult {
    let raw = match read_trimmed(PARANOID_PATH) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound && Path::new("/proc/sys/kernel").is_dir() => {
            return CheckResult::fail(
                NAME_PARANOID,
                format!("{PARANOID_PATH} does not exist: this kernel has no perf events"),
                "use a kernel built with CONFIG_PERF_EVENTS=y",
            );
        }
        Err(e) => {
            return CheckResult::fail(
                NAME_PARANOID,
                format!("cannot read {PARANOID_PATH}: {}", describe_io_error(&e)),
                "mount /proc (`mount -t proc proc /proc`)",
            );
        }
    };
    let Ok(level) = raw.parse::<i32>() else {
        return CheckResult::warn(
            NAME_PARANOID,
            format!("{PARANOID_PATH} holds {raw:?}, which is not a number"),
            "check the kernel's sysctl kernel.perf_event_paranoid",
        );
    };
    let meaning = paranoid_meaning(level);
    let privileged = read_creds().map(|c| c.has_perfmon()).unwrap_or(false);
    if privileged {
        return CheckResult::ok(
            NAME_PARANOID,
            format!("{level}: {meaning}; no limit for ferroscope, which has CAP_PERFMON"),
        );
    }
    let sysctl = "`sysctl -w kernel.perf_event_paranoid=0` (persist it in /etc/sysctl.d/)";
    if level >= 3 {
        CheckResult::fail(
            NAME_PARANOID,
            format!("{level}: {meaning}, and this process has no CAP_PERFMON"),
            format!(
                "run ferroscope as root or grant it CAP_PERFMON (then any level works), or lower the level with {sysctl}"
            ),
        )
    } else if level >= 1 {
        CheckResult::warn(
            NAME_PARANOID,
            format!(
                "{level}: {meaning}; whole-system profiling needs CAP_PERFMON, which this process lacks"
            ),
            format!(
                "run ferroscope as root or grant it CAP_PERFMON, or lower the level with {sysctl}"
            ),
        )
    } else {
        CheckResult::ok(NAME_PARANOID, format!("{level}: {meaning}"))
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Kernel version
// ---------------------------------------------------------------------------------------------

/// The oldest kernel ferroscope supports: 5.8 brought the BPF ring buffer and CAP_BPF /
/// CAP_PERFMON.
pub const MIN_KERNEL: (u32, u32) = (5, 8);

/// Parses the leading `major.minor[.patch]` of a kernel release such as `6.18.44-fc-v669`.
fn parse_kernel_release(release: &str) -> Option<(u32, u32, u32)> {
    let end = release
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(release.len());
    let mut parts = release[..end].split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

fn uname_release() -> io::Result<String> {
    // SAFETY: utsname is a plain struct of byte arrays, for which all zeroes is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname that outlives the call.
    let rc = unsafe { libc::uname(&mut uts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Check 3: the running kernel (from `uname`) is 5.8 or newer.
pub fn check_kernel_version() -> CheckResult {
    let (min_major, min_minor) = MIN_KERNEL;
    let release = match uname_release() {
        Ok(r) => r,
        Err(e) => {
            return CheckResult::warn(
                NAME_KERNEL,
                format!("uname failed: {}", describe_io_error(&e)),
                format!("make sure the kernel is {min_major}.{min_minor} or newer"),
            );
        }
    };
    let Some((major, minor, patch)) = parse_kernel_release(&release) else {
        return CheckResult::warn(
            NAME_KERNEL,
            format!("cannot parse the kernel release {release:?}"),
            format!("make sure the kernel is {min_major}.{min_minor} or newer"),
        );
    };
    if (major, minor) >= MIN_KERNEL {
        CheckResult::ok(
            NAME_KERNEL,
            format!("{major}.{minor}.{patch} (>= {min_major}.{min_minor} needed)"),
        )
    } else {
        CheckResult::fail(
            NAME_KERNEL,
            format!(
                "{major}.{minor}.{patch} is older than {min_major}.{min_minor}: ferroscope needs the BPF \
                 ring buffer and the CAP_BPF/CAP_PERFMON capabilities, both added in {min_major}.{min_minor}"
            ),
            format!("run on Linux {min_major}.{min_minor} or newer"),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// 4. BTF
// ---------------------------------------------------------------------------------------------

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const BTF_MAGIC: u16 = 0xeb9f;

/// Check 4: `/sys/kernel/btf/vmlinux` exists, is readable and starts with the BTF magic; the
/// CO-RE programs are relocated against it.
pub fn check_btf() -> CheckResult {
    let btf_fix = "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 2020 are)";
    let mut file = match fs::File::open(BTF_PATH) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return if Path::new("/sys/kernel").is_dir() {
                CheckResult::fail(
                    NAME_BTF,
                    format!(
                        "{BTF_PATH} does not exist: the kernel carries no BTF type information, which CO-RE needs"
                    ),
                    btf_fix,
                )
            } else {
                CheckResult::fail(
                    NAME_BTF,
                    format!("{BTF_PATH} does not exist because /sys is not mounted"),
                    "mount sysfs (`mount -t sysfs sysfs /sys`); in a container, mount the host's /sys",
                )
            };
        }
        Err(e) => {
            return CheckResult::fail(
                NAME_BTF,
                format!("cannot open {BTF_PATH}: {}", describe_io_error(&e)),
                "run ferroscope as root, or make /sys/kernel/btf/vmlinux readable to it",
            );
        }
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut magic = [0u8; 2];
    if let Err(e) = file.read_exact(&mut magic) {
        return CheckResult::fail(
            NAME_BTF,
            format!("cannot read {BTF_PATH}: {}", describe_io_error(&e)),
            btf_fix,
        );
    }
    if u16::from_le_bytes(magic) != BTF_MAGIC && u16::from_be_bytes(magic) != BTF_MAGIC {
        return CheckResult::fail(
            NAME_BTF,
            format!(
                "{BTF_PATH} does not start with the BTF magic (found {:02x}{:02x})",
                magic[0], magic[1]
            ),
            btf_fix,
        );
    }
    CheckResult::ok(
        NAME_BTF,
        format!(
            "{BTF_PATH} is readable ({:.1} MiB of kernel type information)",
            size as f64 / (1024.0 * 1024.0)
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// 5. and 6. tracefs and bpffs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    mount_point: String,
    fs_type: String,
}

/// Undoes the octal escapes (`\040` for a space) of /proc/*/mountinfo.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            // "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <type> <source> <super options>"
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fs_type = right.split(' ').next()?;
            Some(MountEntry {
                mount_point: unescape_mount_field(mount_point),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

/// The mounts of the calling thread's mount namespace. `/proc/thread-self` rather than
/// `/proc/self`, which is the thread-group leader's view: a thread that called
/// `unshare(CLONE_NEWNS)` mounts into its own namespace and must look there.
fn read_mounts() -> io::Result<Vec<MountEntry>> {
    let text = fs::read_to_string("/proc/thread-self/mountinfo")
        .or_else(|_| fs::read_to_string("/proc/self/mountinfo"))?;
    Ok(parse_mountinfo(&text))
}

/// A pseudo filesystem the profiler wants mounted.
struct PseudoFs {
    check_name: &'static str,
    fs_type: &'static str,
    /// Where ferroscope mounts it; the first place looked at.
    mount_point: &'static str,
    /// Other places where a mount counts too.
    alternatives: &'static [&'static str],
    /// Why the profiler needs it.
    purpose: &'static str,
}

const TRACEFS: PseudoFs = PseudoFs {
    check_name: NAME_TRACEFS,
    fs_type: "tracefs",
    mount_point: "/sys/kernel/tracing",
    alternatives: &["/sys/kernel/debug/tracing"],
    purpose: "attaching to tracepoints",
};

const BPFFS: PseudoFs = PseudoFs {
    check_name: NAME_BPFFS,
    fs_type: "bpf",
    mount_point: "/sys/fs/bpf",
    alternatives: &[],
    purpose: "pinning BPF maps and programs",
};

impl PseudoFs {
    fn manual_command(&self) -> String {
        format!("mount -t {0} {0} {1}", self.fs_type, self.mount_point)
    }

    fn find(&self, mounts: &[MountEntry]) -> Option<String> {
        std::iter::once(self.mount_point)
            .chain(self.alternatives.iter().copied())
            .find(|mp| {
                mounts
                    .iter()
                    .any(|m| m.fs_type == self.fs_type && m.mount_point == *mp)
            })
            .map(str::to_string)
    }

    fn where_looked(&self) -> String {
        let mut s = self.mount_point.to_string();
        for alt in self.alternatives {
            s.push_str(" (nor at ");
            s.push_str(alt);
            s.push(')');
        }
        s
    }

    fn mount(&self) -> Result<(), i32> {
        let source = std::ffi::CString::new(self.fs_type).map_err(|_| libc::EINVAL)?;
        let target = std::ffi::CString::new(self.mount_point).map_err(|_| libc::EINVAL)?;
        // SAFETY: all three strings are NUL-terminated and live across the call; a null `data`
        // pointer is allowed (no mount options).
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                source.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc == 0 { Ok(()) } else { Err(last_errno()) }
    }

    fn explain_mount_errno(&self, errno: i32) -> String {
        let why = match errno {
            libc::EPERM => "mounting needs CAP_SYS_ADMIN in the host's mount namespace".to_string(),
            libc::ENODEV => format!(
                "the kernel does not know the filesystem type {:?}",
                self.fs_type
            ),
            libc::ENOENT | libc::ENOTDIR => {
                format!(
                    "the mount point {} does not exist (is /sys mounted?)",
                    self.mount_point
                )
            }
            libc::EACCES => {
                "access to the mount point was denied (a read-only /sys, or an LSM?)".to_string()
            }
            libc::EROFS => "the file system holding the mount point is read-only".to_string(),
            libc::EBUSY => "the mount point is busy".to_string(),
            _ => "the kernel refused".to_string(),
        };
        format!("{} — {why}", errno_text(errno))
    }

    fn check(&self, mount_missing: bool) -> CheckResult {
        let name = self.check_name;
        let mounts = match read_mounts() {
            Ok(m) => m,
            Err(e) => {
                return CheckResult::fail(
                    name,
                    format!(
                        "cannot read /proc/self/mountinfo: {}",
                        describe_io_error(&e)
                    ),
                    "mount /proc (`mount -t proc proc /proc`)",
                );
            }
        };
        if let Some(mp) = self.find(&mounts) {
            return CheckResult::ok(name, format!("{} mounted at {mp}", self.fs_type));
        }
        let manual = self.manual_command();
        let container = format!(
            "in a container, mount the host's {} into it",
            self.mount_point
        );
        if !mount_missing {
            return CheckResult::fail(
                name,
                format!(
                    "{} is not mounted at {}; needed for {}",
                    self.fs_type,
                    self.where_looked(),
                    self.purpose
                ),
                format!(
                    "mount it as root with `{manual}` (or let ferroscope mount it at start-up); {container}"
                ),
            );
        }
        match self.mount() {
            Ok(()) => {
                tracing::info!(
                    fs_type = self.fs_type,
                    mount_point = self.mount_point,
                    "mounted a missing file system"
                );
                let verified = read_mounts()
                    .map(|m| self.find(&m).is_some())
                    .unwrap_or(false);
                if verified {
                    CheckResult::ok(
                        name,
                        format!("was not mounted; mounted it at {}", self.mount_point),
                    )
                } else {
                    CheckResult::warn(
                        name,
                        format!(
                            "was not mounted; mount({}) succeeded but the mount does not show in /proc/self/mountinfo",
                            self.mount_point
                        ),
                        format!("check the mount table; mount it by hand with `{manual}`"),
                    )
                }
            }
            Err(errno) => CheckResult::fail(
                name,
                format!(
                    "{} is not mounted at {} and mounting it failed: {}",
                    self.fs_type,
                    self.where_looked(),
                    self.explain_mount_errno(errno)
                ),
                format!("mount it as root with `{manual}`; {container}"),
            ),
        }
    }
}

/// Check 5: tracefs is mounted at `/sys/kernel/tracing` (or `/sys/kernel/debug/tracing`),
/// according to the mount table. When it is not and `mount_missing` is set, mounts it at
/// `/sys/kernel/tracing`.
pub fn check_tracefs(mount_missing: bool) -> CheckResult {
    TRACEFS.check(mount_missing)
}

/// Check 6: bpffs is mounted at `/sys/fs/bpf`, according to the mount table. When it is not
/// and `mount_missing` is set, mounts it.
pub fn check_bpffs(mount_missing: bool) -> CheckResult {
    BPFFS.check(mount_missing)
}

// ---------------------------------------------------------------------------------------------
// 7. Test BPF load
// ---------------------------------------------------------------------------------------------

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TYPE_PERF_EVENT: u32 = 7;

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct BpfInsn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    regs: u8,
    off: i16,
    imm: i32,
}

/// The BPF_PROG_LOAD part of `union bpf_attr`, up to `expected_attach_type`. The kernel
/// accepts a shorter attr than its own and treats the rest as zero.
#[repr(C)]
#[derive(Debug, Default)]
struct BpfProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `r0 = 0; exit`.
const TRIVIAL_PROGRAM: [BpfInsn; 2] = [
    // BPF_ALU64 | BPF_MOV | BPF_K
    BpfInsn {
        code: 0xb7,
        regs: 0,
        off: 0,
        imm: 0,
    },
    // BPF_JMP | BPF_EXIT
    BpfInsn {
        code: 0x95,
        regs: 0,
        off: 0,
        imm: 0,
    },
];

/// Loads [`TRIVIAL_PROGRAM`] as a perf_event program; with `log`, asks for the verifier log.
fn load_trivial_program(log: Option<&mut [u8]>) -> Result<OwnedFd, i32> {
    let license = c"GPL";
    let mut attr = BpfProgLoadAttr {
        prog_type: BPF_PROG_TYPE_PERF_EVENT,
        insn_cnt: TRIVIAL_PROGRAM.len() as u32,
        insns: TRIVIAL_PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    let name = b"ferroscope_chk";
    attr.prog_name[..name.len()].copy_from_slice(name);
    if let Some(log) = log {
        attr.log_level = 1;
        attr.log_size = log.len().min(u32::MAX as usize) as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    // SAFETY: `attr` is a correctly laid-out BPF_PROG_LOAD attr whose pointers (instructions,
    // license, optional log buffer of `log_size` bytes) stay valid for the whole call; the size
    // passed is the size of `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const BpfProgLoadAttr,
            std::mem::size_of::<BpfProgLoadAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(last_errno());
    }
    // SAFETY: on success bpf(BPF_PROG_LOAD) returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) })
}

fn verifier_log_excerpt(log: &[u8]) -> Option<String> {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let tail = &lines[lines.len().saturating_sub(3)..];
    Some(tail.join(" | "))
}

fn lockdown_state() -> Option<String> {
    let text = read_trimmed("/sys/kernel/security/lockdown").ok()?;
    // "none integrity [confidentiality]"
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_string())
}

/// Check 7: the kernel accepts a 2-instruction perf_event program (`r0 = 0; exit`, license
/// GPL) from this process through the raw bpf(2) syscall; the program is closed at once.
pub fn check_bpf_load() -> CheckResult {
    let errno = match load_trivial_program(None) {
        Ok(fd) => {
            drop(fd);
            return CheckResult::ok(
                NAME_BPF_LOAD,
                "loaded and unloaded a 2-instruction perf_event program",
            );
        }
        Err(errno) => errno,
    };
    let what = format!(
        "the kernel refused a 2-instruction perf_event program: {}",
        errno_text(errno)
    );
    match errno {
        libc::EPERM => {
            let creds = read_creds().ok();
            let mut reasons = Vec::new();
            match creds {
                Some(c) if !c.has_bpf() || !c.has_perfmon() => {
                    let mut lacking = Vec::new();
                    if !c.has_bpf() {
                        lacking.push("CAP_BPF");
                    }
                    if !c.has_perfmon() {
                        lacking.push("CAP_PERFMON");
                    }
                    reasons.push(format!(
                        "this process (uid {}) lacks {} (perf_event programs need both)",
                        c.euid,
                        lacking.join(" and ")
                    ));
                    if let Ok(v) = read_trimmed("/proc/sys/kernel/unprivileged_bpf_disabled")
                        && v != "0"
                    {
                        reasons.push(format!("kernel.unprivileged_bpf_disabled={v} denies bpf() to unprivileged users"));
                    }
                }
                Some(_) => reasons.push(
                    "the process has CAP_BPF and CAP_PERFMON, so a seccomp filter (a container runtime's \
                     default profile) or an LSM (SELinux, AppArmor, BPF LSM) denied bpf()"
                        .to_string(),
                ),
                None => reasons.push("the process's capabilities could not be read".to_string()),
            }
            if let Some(mode) = lockdown_state()
                && mode != "none"
            {
                reasons.push(format!("kernel lockdown is in {mode} mode"));
            }
            CheckResult::fail(
                NAME_BPF_LOAD,
                format!("{what}; {}", reasons.join("; ")),
                format!(
                    "{}; a container's seccomp profile must also allow the bpf syscall",
                    grant_fix()
                ),
            )
        }
        libc::ENOSYS => CheckResult::fail(
            NAME_BPF_LOAD,
            format!("{what}; the kernel has no bpf() system call"),
            "use a kernel built with CONFIG_BPF_SYSCALL=y (or allow bpf() in the seccomp profile)",
        ),
        libc::EINVAL | libc::EACCES => {
            let mut log = vec![0u8; 64 * 1024];
            let excerpt = match load_trivial_program(Some(&mut log)) {
                Ok(_) => None,
                Err(_) => verifier_log_excerpt(&log),
            };
            let why = if errno == libc::EINVAL {
                "the kernel does not support perf_event BPF programs (CONFIG_BPF_EVENTS off?) or rejected the attributes"
            } else {
                "the verifier rejected the program"
            };
            let detail = match excerpt {
                Some(log) => format!("{what}; {why}; verifier says: {log}"),
                None => format!("{what}; {why}"),
            };
            CheckResult::fail(
                NAME_BPF_LOAD,
                detail,
                "use a kernel with CONFIG_BPF_SYSCALL=y, CONFIG_BPF_EVENTS=y and CONFIG_PERF_EVENTS=y",
            )
        }
        libc::ENOMEM => CheckResult::fail(
            NAME_BPF_LOAD,
            format!("{what}; on kernels before 5.11 this is RLIMIT_MEMLOCK being too low"),
            "raise the locked-memory limit (`ulimit -l unlimited`, or grant CAP_SYS_RESOURCE)",
        ),
        _ => CheckResult::fail(
            NAME_BPF_LOAD,
            what,
            "run ferroscope as root on a kernel with CONFIG_BPF_SYSCALL=y; see the kernel log (dmesg)",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Test cpu-clock perf event
// ---------------------------------------------------------------------------------------------

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
const PERF_SAMPLE_IP: u64 = 1;
const PERF_ATTR_FLAG_DISABLED: u64 = 1 << 0;
const PERF_ATTR_FLAG_FREQ: u64 = 1 << 10;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// `struct perf_event_attr` up to `config2` (PERF_ATTR_SIZE_VER1, 72 bytes).
#[repr(C)]
#[derive(Debug, Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period_or_freq: u64,
    sample_type: u64,
    read_format: u64,
    /// The bit fields (disabled, inherit, ..., freq, ...).
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
}

fn open_cpu_clock(rate_hz: u64, cpu: libc::c_int) -> Result<OwnedFd, i32> {
    let attr = PerfEventAttr {
        type_: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: PERF_COUNT_SW_CPU_CLOCK,
        sample_period_or_freq: rate_hz,
        sample_type: PERF_SAMPLE_IP,
        flags: PERF_ATTR_FLAG_DISABLED | PERF_ATTR_FLAG_FREQ,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid perf_event_attr of the size it declares, alive for the call;
    // pid -1 with a cpu and group_fd -1 are valid arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1 as libc::pid_t,
            cpu,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if rc < 0 {
        return Err(last_errno());
    }
    // SAFETY: on success perf_event_open returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) })
}

/// Check 8: `perf_event_open` of a cpu-clock software event in frequency mode at
/// `sample_rate_hz`, for all processes (pid -1) on CPU 0; the event is closed at once.
pub fn check_perf_event(sample_rate_hz: u32) -> CheckResult {
    // A rate of 0 is the sample-rate check's business; test the event itself at 1 Hz then.
    let rate = u64::from(sample_rate_hz.max(1));
    let errno = match open_cpu_clock(rate, 0) {
        Ok(fd) => {
            drop(fd);
            return CheckResult::ok(
                NAME_PERF_EVENT,
                format!(
                    "opened and closed a system-wide cpu-clock sampling event at {rate} Hz on CPU 0"
                ),
            );
        }
        Err(errno) => errno,
    };
    let what = format!(
        "perf_event_open(cpu-clock, {rate} Hz, all processes, CPU 0) failed: {}",
        errno_text(errno)
    );
    match errno {
        libc::EACCES | libc::EPERM => {
            let mut reasons = Vec::new();
            match read_creds() {
                Ok(c) if !c.has_perfmon() => {
                    let level = read_paranoid()
                        .map(|l| format!("kernel.perf_event_paranoid={l} ({})", paranoid_meaning(l)))
                        .unwrap_or_else(|| "kernel.perf_event_paranoid".to_string());
                    reasons.push(format!(
                        "this process (uid {}) has no CAP_PERFMON, and {level} keeps unprivileged users from \
                         sampling whole CPUs",
                        c.euid
                    ));
                }
                Ok(_) => reasons.push(
                    "the process has CAP_PERFMON, so a seccomp filter (a container runtime's default profile) \
                     or an LSM denied perf_event_open"
                        .to_string(),
                ),
                Err(e) => reasons.push(e),
            }
            CheckResult::fail(
                NAME_PERF_EVENT,
                format!("{what}; {}", reasons.join("; ")),
                format!(
                    "{}; without CAP_PERFMON, lower the level with `sysctl -w kernel.perf_event_paranoid=0`; \
                     a container's seccomp profile must also allow perf_event_open",
                    grant_fix()
                ),
            )
        }
        libc::ENOENT | libc::EOPNOTSUPP => CheckResult::fail(
            NAME_PERF_EVENT,
            format!("{what}; the kernel has no cpu-clock software event"),
            "use a kernel with CONFIG_PERF_EVENTS=y (software events are always built in with it)",
        ),
        libc::ENODEV => CheckResult::fail(
            NAME_PERF_EVENT,
            format!("{what}; CPU 0 is offline or the event is not supported"),
            "bring CPU 0 online (`echo 1 > /sys/devices/system/cpu/cpu0/online`) or check the kernel's perf support",
        ),
        libc::ENOSYS => CheckResult::fail(
            NAME_PERF_EVENT,
            format!("{what}; the kernel has no perf_event_open system call"),
            "use a kernel built with CONFIG_PERF_EVENTS=y (or allow perf_event_open in the seccomp profile)",
        ),
        libc::EINVAL => match read_max_sample_rate() {
            Some(max) if rate > max => CheckResult::fail(
                NAME_PERF_EVENT,
                format!(
                    "{what}; {rate} Hz is above the kernel's limit of {max} Hz (kernel.perf_event_max_sample_rate)"
                ),
                format!(
                    "sample at {max} Hz or less, or raise the limit with `sysctl -w kernel.perf_event_max_sample_rate={rate}`"
                ),
            ),
            _ => CheckResult::fail(
                NAME_PERF_EVENT,
                format!("{what}; the kernel rejected the event's attributes"),
                "check the kernel's perf support (dmesg), and try a lower sample rate",
            ),
        },
        libc::EMFILE | libc::ENFILE => CheckResult::fail(
            NAME_PERF_EVENT,
            format!("{what}; out of file descriptors"),
            "raise the open-files limit (`ulimit -n`); ferroscope needs one descriptor per CPU",
        ),
        _ => CheckResult::fail(
            NAME_PERF_EVENT,
            what,
            "check the kernel's perf support (dmesg)",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Sample rate
// ---------------------------------------------------------------------------------------------

fn sample_rate_verdict(rate: u32, kernel_max: Option<u64>) -> CheckResult {
    let kernel = match kernel_max {
        Some(max) => {
            format!("the kernel allows up to {max} Hz (kernel.perf_event_max_sample_rate)")
        }
        None => format!("the kernel's limit is unknown ({MAX_SAMPLE_RATE_PATH} is unreadable)"),
    };
    let upper = kernel_max.map_or(u64::from(MAX_SAMPLE_RATE_HZ), |m| {
        m.min(u64::from(MAX_SAMPLE_RATE_HZ))
    });
    let pick = format!(
        "choose a rate between 1 and {upper} Hz (a prime such as 97 or 99 Hz avoids lock-step with timers)"
    );
    if rate == 0 {
        return CheckResult::fail(
            NAME_SAMPLE_RATE,
            format!("0 Hz: the rate must be at least 1 Hz; {kernel}"),
            pick,
        );
    }
    if rate > MAX_SAMPLE_RATE_HZ {
        return CheckResult::fail(
            NAME_SAMPLE_RATE,
            format!("{rate} Hz is above ferroscope's maximum of {MAX_SAMPLE_RATE_HZ} Hz; {kernel}"),
            pick,
        );
    }
    match kernel_max {
        Some(max) if u64::from(rate) > max => CheckResult::fail(
            NAME_SAMPLE_RATE,
            format!(
                "{rate} Hz is above the kernel's limit of {max} Hz (kernel.perf_event_max_sample_rate; the kernel \
                 lowers it by itself when sampling interrupts take too long)"
            ),
            format!(
                "{pick}, or raise the limit with `sysctl -w kernel.perf_event_max_sample_rate={rate}`"
            ),
        ),
        Some(max) => CheckResult::ok(
            NAME_SAMPLE_RATE,
            format!(
                "{rate} Hz (ferroscope allows 1..={MAX_SAMPLE_RATE_HZ} Hz, the kernel up to {max} Hz)"
            ),
        ),
        None => CheckResult::warn(
            NAME_SAMPLE_RATE,
            format!("{rate} Hz is within ferroscope's 1..={MAX_SAMPLE_RATE_HZ} Hz, but {kernel}"),
            "mount /proc so the kernel's limit can be checked",
        ),
    }
}

/// Check 9: `sample_rate_hz` is within 1..=1000 and not above the kernel's
/// `perf_event_max_sample_rate`; the kernel's limit is always reported.
pub fn check_sample_rate(sample_rate_hz: u32) -> CheckResult {
    sample_rate_verdict(sample_rate_hz, read_max_sample_rate())
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
        let ok = CheckResult::ok("kernel version", "6.18.44 (>= 5.8 needed)");
        assert_eq!(
            ok.to_string(),
            "ok    kernel version: 6.18.44 (>= 5.8 needed)"
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
    fn kernel_release_parsing() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v669"), Some((6, 18, 44)));
        assert_eq!(parse_kernel_release("5.8.0-63-generic"), Some((5, 8, 0)));
        assert_eq!(parse_kernel_release("5.10"), Some((5, 10, 0)));
        assert_eq!(parse_kernel_release("4.19.0+"), Some((4, 19, 0)));
        assert_eq!(parse_kernel_release("garbage"), None);
        assert!((5, 10) >= MIN_KERNEL && (5, 7) < MIN_KERNEL && (6, 0) >= MIN_KERNEL);
    }

    #[test]
    fn status_parsing() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n";
        let creds = parse_status(status).unwrap();
        assert_eq!(creds.euid, 0);
        assert!(REQUIRED_CAPS.iter().all(|c| creds.has(c)));
        let only_admin = Creds {
            euid: 1,
            cap_eff: 1 << CAP_SYS_ADMIN,
        };
        assert!(only_admin.has_bpf() && only_admin.has_perfmon());
        assert!(!only_admin.has(&REQUIRED_CAPS[2]));
        assert!(parse_status("Uid:\t0\t0\t0\t0\n").is_none());
    }

    #[test]
    fn mountinfo_parsing() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    50 23 0:12 / /sys/kernel/tracing rw,nosuid - tracefs tracefs rw\n\
                    51 23 0:40 / /sys/fs/bpf rw shared:7 - bpf bpf rw,mode=700\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts[0].mount_point, "/mnt/with space");
        assert_eq!(
            TRACEFS.find(&mounts).as_deref(),
            Some("/sys/kernel/tracing")
        );
        assert_eq!(BPFFS.find(&mounts).as_deref(), Some("/sys/fs/bpf"));
        let debug_only =
            parse_mountinfo("1 2 0:1 / /sys/kernel/debug/tracing rw - tracefs tracefs rw\n");
        assert_eq!(
            TRACEFS.find(&debug_only).as_deref(),
            Some("/sys/kernel/debug/tracing")
        );
        assert_eq!(BPFFS.find(&debug_only), None);
        assert_eq!(unescape_mount_field("a\\134b\\"), "a\\b\\");
    }

    #[test]
    fn sample_rate_limits() {
        assert_eq!(sample_rate_verdict(97, Some(100_000)).status, Status::Ok);
        assert_eq!(sample_rate_verdict(0, Some(100_000)).status, Status::Fail);
        assert_eq!(sample_rate_verdict(1000, Some(100_000)).status, Status::Ok);
        let lowered = sample_rate_verdict(999, Some(250));
        assert_eq!(lowered.status, Status::Fail);
        assert!(lowered.detail.contains("250 Hz"), "{lowered}");
        assert_eq!(sample_rate_verdict(97, None).status, Status::Warn);
    }

    #[test]
    fn errno_texts() {
        assert_eq!(errno_text(libc::EPERM), "EPERM (Operation not permitted)");
        assert!(errno_text(4095).starts_with("errno 4095"));
    }

    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<BpfInsn>(), 8);
        assert_eq!(std::mem::size_of::<BpfProgLoadAttr>(), 72);
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 72);
    }
}
