//! Checks 5 and 6: tracefs and bpffs, mounted when missing.

use super::*;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
