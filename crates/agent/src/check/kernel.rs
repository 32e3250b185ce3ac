//! Checks 3 and 4: the kernel's version and its BTF.

use super::*;

// ---------------------------------------------------------------------------------------------
// 3. Kernel version
// ---------------------------------------------------------------------------------------------

/// The oldest kernel ferroscope supports: the programs are verified and tested on 5.10
/// (the reference profiler's floor too); 5.8 brought the ring buffer, 5.10 tail calls from
/// programs with BPF-to-BPF calls on x86-64.
pub const MIN_KERNEL: (u32, u32) = (5, 10);
/// From this kernel on, the programs' `bpf_loop` build is loaded (one program walks the
/// whole stack); before it, the legacy build (a few frames per program run, chained by tail
/// calls).
pub const BPF_LOOP_KERNEL: (u32, u32) = (5, 17);

/// Parses the leading `major.minor[.patch]` of a kernel release such as `6.18.44-fc-v669`.
pub(super) fn parse_kernel_release(release: &str) -> Option<(u32, u32, u32)> {
    let end = release
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(release.len());
    let mut parts = release[..end].split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

pub(super) fn uname_release() -> io::Result<String> {
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

/// Check 3: the running kernel (from `uname`) is 5.10 or newer.
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
        let build = if (major, minor) >= BPF_LOOP_KERNEL {
            "the bpf_loop build of the programs"
        } else {
            "the legacy build of the programs (no bpf_loop before 5.17)"
        };
        CheckResult::ok(
            NAME_KERNEL,
            format!("{major}.{minor}.{patch} (>= {min_major}.{min_minor} needed): {build}"),
        )
    } else {
        CheckResult::fail(
            NAME_KERNEL,
            format!(
                "{major}.{minor}.{patch} is older than {min_major}.{min_minor}: ferroscope's eBPF \
                 programs are verified and tested on {min_major}.{min_minor} and later only"
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
// 10. Kernel probes
// ---------------------------------------------------------------------------------------------

/// The kprobe PMU: present when the kernel was built with CONFIG_KPROBES.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// Check 10: whether the kernel has kprobes, for `kprobe:` and `kretprobe:` probe links. Only
/// those links need them, so their absence is not a failure: the line says what it means.
pub fn check_kprobes() -> CheckResult {
    if Path::new(KPROBE_PMU).exists() {
        CheckResult::ok(
            NAME_KPROBES,
            "the kernel has kprobes: kprobe: and kretprobe: probe links can attach",
        )
    } else if Path::new("/sys/bus/event_source/devices").is_dir() {
        CheckResult::ok(
            NAME_KPROBES,
            format!(
                "the kernel has no kprobes (built without CONFIG_KPROBES: no {KPROBE_PMU}): \
                 kprobe: and kretprobe: probe links are refused; uprobes and off-CPU profiles \
                 do not need them"
            ),
        )
    } else {
        CheckResult::ok(
            NAME_KPROBES,
            "cannot tell whether the kernel has kprobes (/sys is not mounted); only kprobe: \
             and kretprobe: probe links need them",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_parsing() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v669"), Some((6, 18, 44)));
        assert_eq!(parse_kernel_release("5.8.0-63-generic"), Some((5, 8, 0)));
        assert_eq!(parse_kernel_release("5.10"), Some((5, 10, 0)));
        assert_eq!(parse_kernel_release("4.19.0+"), Some((4, 19, 0)));
        assert_eq!(parse_kernel_release("garbage"), None);
        assert!((5, 10) >= MIN_KERNEL && (5, 9) < MIN_KERNEL && (6, 0) >= MIN_KERNEL);
    }
}
