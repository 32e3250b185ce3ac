//! Checks 2, 8 and 9: perf_event_paranoid, a cpu-clock perf event, the sample rate.

use super::*;

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

pub(super) fn read_trimmed(path: &str) -> io::Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn struct_sizes_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 72);
    }
}
