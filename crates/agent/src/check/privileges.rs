//! Check 1: root, or the capabilities the profiler needs.

use super::*;

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
pub(super) struct Creds {
    pub(super) euid: u32,
    pub(super) cap_eff: u64,
}

impl Creds {
    fn has(&self, cap: &Capability) -> bool {
        self.has_bit(cap.bit) || (cap.implied_by_sys_admin && self.has_bit(CAP_SYS_ADMIN))
    }

    pub(super) fn has_bit(&self, bit: u32) -> bool {
        bit < 64 && self.cap_eff & (1u64 << bit) != 0
    }

    pub(super) fn has_perfmon(&self) -> bool {
        self.has_bit(CAP_PERFMON) || self.has_bit(CAP_SYS_ADMIN)
    }

    pub(super) fn has_bpf(&self) -> bool {
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

pub(super) fn read_creds() -> Result<Creds, String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {}", describe_io_error(&e)))?;
    parse_status(&status)
        .ok_or_else(|| "cannot find the Uid and CapEff lines in /proc/self/status".to_string())
}

pub(super) fn grant_fix() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
