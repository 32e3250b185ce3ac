//! Check 7: the kernel loads ferroscope's real eBPF programs: the native sampler and
//! unwinder, and every linked runtime's program, each verified on its own. One line per
//! program with its verdict, its build and the verifier's instruction count; a rejection
//! names the kernel feature that is missing when the verifier says.

use std::error::Error as _;

use ferroscope_ebpf_programs::{
    Build, Error as EbpfError, ProgramReport, SamplerConfig, UnwinderConfig, Verdict, probe,
};

use super::*;

fn lockdown_state() -> Option<String> {
    let text = read_trimmed("/sys/kernel/security/lockdown").ok()?;
    // "none integrity [confidentiality]"
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_string())
}

/// Check 7: loads every program (nothing is attached; everything is closed again) and says
/// what the kernel made of each.
pub fn check_bpf_load() -> CheckResult {
    let interps = crate::interp::Interpreters::linked(&[]);
    let config = SamplerConfig {
        unwinder: Some(UnwinderConfig {
            max_pids: 64,
            max_mapping_prefixes: 1024,
            max_delta_pages: 64,
            max_delta_entries: 4096,
        }),
        runtimes: interps.programs(),
        // So that the fork program is verified as `--children` runs it (else it is dead
        // code after its first test).
        follow_children: true,
        // And every program of the off-CPU and probe entries.
        off_cpu: Some(ferroscope_ebpf_programs::OffCpuConfig { threshold: 0.01 }),
        probes: Some(ferroscope_ebpf_programs::ProbeConfig {
            rate_limit_per_cpu: 1000,
        }),
        ..SamplerConfig::frame_pointers(19, Some(Vec::new()))
    };
    match probe(&config) {
        Ok(reports) => verdict_of(&reports),
        Err(EbpfError::ProgramRejected {
            program, reason, ..
        }) => CheckResult::fail(
            NAME_BPF_LOAD,
            format!("the kernel rejected `{program}` in every build: {reason}"),
            "ferroscope needs Linux 5.10 or later with BTF; on such a kernel this is a bug: report it with this output",
        ),
        Err(e) => load_failure(&e),
    }
}

/// `, off-cpu entry` for a program of the off-CPU or probe entries (the CPU sampler's have
/// no note).
fn entry_note(r: &ProgramReport) -> String {
    match r.entry {
        ferroscope_ebpf_abi::Entry::Cpu => String::new(),
        e => format!(", {} entry", e.describe()),
    }
}

/// The check's line and one sub-line per program.
fn verdict_of(reports: &[ProgramReport]) -> CheckResult {
    let mut lines = Vec::new();
    let mut rejected_runtimes = Vec::new();
    let mut native_failed = false;
    for r in reports {
        let owner = if r.owner == "native" {
            "native".to_owned()
        } else {
            format!("{} runtime", r.owner)
        };
        match &r.verdict {
            Verdict::Loaded {
                verified_instructions,
            } => lines.push(format!(
                "ok    {} ({owner}, {} build{}): loaded, {}",
                r.program,
                r.build.describe(),
                entry_note(r),
                match verified_instructions {
                    Some(n) => format!("{n} instructions verified"),
                    None => "instruction count not reported before Linux 5.16".to_owned(),
                }
            )),
            Verdict::Rejected { reason, .. } => {
                if r.owner == "native" {
                    native_failed = true;
                } else if !rejected_runtimes.contains(&r.owner) {
                    rejected_runtimes.push(r.owner.clone());
                }
                lines.push(format!(
                    "FAIL  {} ({owner}, {} build{}): rejected: {reason}",
                    r.program,
                    r.build.describe(),
                    entry_note(r)
                ));
            }
        }
    }
    let build = reports.first().map_or(Build::Legacy, |r| r.build);
    let loaded = reports.iter().filter(|r| r.loaded()).count();
    let summary = format!(
        "{loaded} of {} programs loaded ({} build)",
        reports.len(),
        build.describe()
    );
    let mut result = if native_failed {
        CheckResult::fail(
            NAME_BPF_LOAD,
            summary,
            "the native unwinder could not load: ferroscope falls back to frame pointers;              report this with the output of `ferroscope check`",
        )
    } else if rejected_runtimes.is_empty() {
        CheckResult::ok(NAME_BPF_LOAD, summary)
    } else {
        CheckResult::warn(
            NAME_BPF_LOAD,
            summary,
            format!(
                "the {} runtime unwinder{} off on this kernel (their frames show as the runtime's native frames); native unwinding and the other runtimes work",
                rejected_runtimes.join(", "),
                if rejected_runtimes.len() == 1 {
                    " is"
                } else {
                    "s are"
                }
            ),
        )
    };
    result.lines = lines;
    result
}

/// The kernel refused to create the maps or load BTF: usually privileges.
fn load_failure(e: &EbpfError) -> CheckResult {
    let mut errno = None;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(n) = s
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            errno = Some(n);
            break;
        }
        source = s.source();
    }
    let what = match errno {
        Some(errno) => format!(
            "the kernel refused the eBPF programs' maps: {}",
            errno_text(errno)
        ),
        None => format!(
            "the eBPF programs could not be loaded: {}",
            crate::error::Chain(e)
        ),
    };
    if errno == Some(libc::EPERM) {
        let mut reasons = Vec::new();
        match read_creds().ok() {
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
                    reasons.push(format!(
                        "kernel.unprivileged_bpf_disabled={v} denies bpf() to unprivileged users"
                    ));
                }
            }
            Some(_) => reasons.push(
                "the process has CAP_BPF and CAP_PERFMON, so a seccomp filter (a container runtime's default profile) or an LSM (SELinux, AppArmor, BPF LSM) denied bpf()"
                    .to_string(),
            ),
            None => reasons.push("the process's capabilities could not be read".to_string()),
        }
        if let Some(mode) = lockdown_state()
            && mode != "none"
        {
            reasons.push(format!("kernel lockdown is in {mode} mode"));
        }
        return CheckResult::fail(
            NAME_BPF_LOAD,
            format!("{what}; {}", reasons.join("; ")),
            format!(
                "{}; a container's seccomp profile must also allow the bpf syscall",
                grant_fix()
            ),
        );
    }
    let fix = match errno {
        Some(libc::ENOSYS) => {
            "use a kernel built with CONFIG_BPF_SYSCALL=y (or allow bpf() in the seccomp profile)"
        }
        Some(libc::ENOMEM) | Some(libc::EPERM) => {
            "raise the locked-memory limit (`ulimit -l unlimited`, or grant CAP_SYS_RESOURCE): kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK"
        }
        _ => "run ferroscope as root on Linux 5.10 or later with BTF; see the kernel log (dmesg)",
    };
    CheckResult::fail(NAME_BPF_LOAD, what, fix)
}
