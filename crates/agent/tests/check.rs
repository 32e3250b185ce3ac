//! Integration tests for `ferroscope_agent::check`, run as root on a real kernel.
//!
//! The failure paths are produced for real: tests that need a changed environment re-execute
//! this test binary (`--exact <test> --nocapture`) with [`ROLE_ENV`] set; the child run of the
//! same test sees the variable, changes its own environment (a private mount namespace, or
//! uid/gid 65534), runs the checks and prints each result as a tab-separated line prefixed
//! with [`RESULT_PREFIX`], which the parent run parses and asserts on. Without the variable a
//! test plays the parent role.

use std::io::Write;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use ferroscope_agent::check::{self, CheckOptions, CheckResult, Status};

const ROLE_ENV: &str = "FERROSCOPE_CHECK_TEST_ROLE";
const RESULT_PREFIX: &str = "FERROSCOPE-CHECK-RESULT\t";

/// Serializes the tests that mount or count mounts in the host's namespace.
static HOST_MOUNTS: Mutex<()> = Mutex::new(());

fn lock_host_mounts() -> MutexGuard<'static, ()> {
    HOST_MOUNTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Tests here need root: elsewhere they skip (logged), or fail when tests are required
/// (`FERROSCOPE_REQUIRE=1`, `CI`). `_test` names the test, for the call sites' clarity.
fn skip_unless_root(_test: &str) -> bool {
    !ferroscope_test_harness::root("the system checks (mounts, setuid, perf events, BPF)")
}

/// (file system type, mount point) of every mount listed in `path` (a mountinfo file).
fn mounts_in(path: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?.to_string();
            let fs_type = right.split(' ').next()?.to_string();
            Some((fs_type, mount_point))
        })
        .collect()
}

fn count_mounts(path: &str, fs_type: &str, mount_point: &str) -> usize {
    mounts_in(path)
        .iter()
        .filter(|(t, m)| t == fs_type && m == mount_point)
        .count()
}

fn kernel_max_sample_rate() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .expect("read perf_event_max_sample_rate")
        .trim()
        .parse()
        .expect("parse perf_event_max_sample_rate")
}

// ---- re-exec plumbing ---------------------------------------------------------------------

/// A result as the child reports it.
#[derive(Debug)]
struct Reported {
    name: String,
    status: String,
    detail: String,
    fix: String,
}

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {}: {} — fix: {}",
            self.status, self.name, self.detail, self.fix
        )
    }
}

/// Child side: one line per result on stdout.
fn report(result: &CheckResult) {
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    let line = format!(
        "{RESULT_PREFIX}{}\t{:?}\t{}\t{}\n",
        result.name,
        result.status,
        clean(&result.detail),
        clean(result.fix.as_deref().unwrap_or(""))
    );
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes()).expect("write result");
    out.flush().expect("flush");
}

/// Parent side: runs this binary's `test` alone with `role` in [`ROLE_ENV`] and returns
/// the results the child reported.
fn run_child(test: &str, role: &str) -> Vec<Reported> {
    let exe = std::env::current_exe().expect("current_exe");
    let output = ferroscope_test_harness::run(
        Command::new(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role),
        std::time::Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child run of {test} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the child did not run {test}:\n{stdout}"
    );
    stdout
        .lines()
        // libtest prints "test <name> ... " without a newline before the test body runs, so
        // the first result shares its line.
        .filter_map(|l| {
            l.find(RESULT_PREFIX)
                .map(|at| &l[at + RESULT_PREFIX.len()..])
        })
        .map(|l| {
            let mut f = l.splitn(4, '\t');
            let mut next = || f.next().unwrap_or("").to_string();
            Reported {
                name: next(),
                status: next(),
                detail: next(),
                fix: next(),
            }
        })
        .collect()
}

fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

// ---- tests --------------------------------------------------------------------------------

#[test]
fn all_checks_pass_as_root_and_mount_what_is_missing() {
    if role().is_some() || skip_unless_root("all_checks_pass_as_root_and_mount_what_is_missing") {
        return;
    }
    let _guard = lock_host_mounts();
    let results = check::run_all(&CheckOptions {
        mount_missing: true,
        sample_rate_hz: 97,
        load_programs: true,
    });
    let report: Vec<String> = results.iter().map(ToString::to_string).collect();
    let report = report.join("\n");
    assert_eq!(results.len(), 10, "{report}");
    assert_eq!(
        results.iter().map(|r| r.name).collect::<Vec<_>>(),
        check::CHECK_NAMES,
        "{report}"
    );
    for r in &results {
        assert_eq!(r.status, Status::Ok, "{r}\nall results:\n{report}");
        assert!(r.fix.is_none(), "{r}");
        assert!(
            r.to_string().starts_with(&format!("ok    {}: ", r.name)),
            "{r}"
        );
    }
    assert!(check::first_failure(&results).is_none());

    let tracefs = count_mounts("/proc/self/mountinfo", "tracefs", "/sys/kernel/tracing")
        + count_mounts(
            "/proc/self/mountinfo",
            "tracefs",
            "/sys/kernel/debug/tracing",
        );
    assert!(tracefs > 0, "tracefs is not mounted after the checks");
    assert!(
        count_mounts("/proc/self/mountinfo", "bpf", "/sys/fs/bpf") > 0,
        "bpffs is not mounted after the checks"
    );
    // The tracefs mount is usable.
    assert!(
        std::path::Path::new("/sys/kernel/tracing/events").is_dir()
            || std::path::Path::new("/sys/kernel/debug/tracing/events").is_dir()
    );

    // A second run finds them mounted and mounts nothing more.
    let again = check::run_all(&CheckOptions {
        mount_missing: true,
        sample_rate_hz: 97,
        load_programs: true,
    });
    assert!(again.iter().all(|r| r.status == Status::Ok));
    let tracefs_again = count_mounts("/proc/self/mountinfo", "tracefs", "/sys/kernel/tracing")
        + count_mounts(
            "/proc/self/mountinfo",
            "tracefs",
            "/sys/kernel/debug/tracing",
        );
    assert_eq!(tracefs, tracefs_again);
}

const TRACEFS_TEST: &str =
    "tracefs_check_fails_when_unmounted_and_mounts_it_in_a_private_namespace";

#[test]
fn tracefs_check_fails_when_unmounted_and_mounts_it_in_a_private_namespace() {
    match role().as_deref() {
        Some("tracefs") => tracefs_child(),
        Some(_) => {}
        None => {
            if skip_unless_root(TRACEFS_TEST) {
                return;
            }
            tracefs_parent();
        }
    }
}

fn tracefs_parent() {
    let _guard = lock_host_mounts();
    // Give the child something to unmount, and the host a state to compare against.
    let host = check::check_tracefs(true);
    assert_eq!(host.status, Status::Ok, "{host}");
    let before = mounts_in("/proc/self/mountinfo");
    let before_tracefs = count_mounts("/proc/self/mountinfo", "tracefs", "/sys/kernel/tracing");

    let results = run_child(TRACEFS_TEST, "tracefs");
    let all: String = results.iter().map(|r| format!("{r}\n")).collect();
    assert_eq!(results.len(), 2, "{all}");

    let without_mounting = &results[0];
    assert_eq!(without_mounting.name, "tracefs");
    assert_eq!(without_mounting.status, "Fail", "{all}");
    assert!(
        without_mounting.detail.contains("/sys/kernel/tracing"),
        "{all}"
    );
    assert!(without_mounting.fix.contains("mount -t tracefs"), "{all}");

    let with_mounting = &results[1];
    assert_eq!(with_mounting.status, "Ok", "{all}");
    assert!(with_mounting.detail.contains("mounted it"), "{all}");

    // The child's unmounts and mounts stayed in its namespace.
    assert_eq!(
        count_mounts("/proc/self/mountinfo", "tracefs", "/sys/kernel/tracing"),
        before_tracefs
    );
    assert_eq!(
        mounts_in("/proc/self/mountinfo"),
        before,
        "the host's mount table changed"
    );
}

/// This thread's view of the mount table; /proc/self is the thread-group leader's, which
/// keeps the host's namespace when only the test thread unshares.
const OWN_MOUNTINFO: &str = "/proc/thread-self/mountinfo";

/// Gives the calling thread its own mount namespace in which nothing propagates to or from
/// the host.
fn enter_private_mount_namespace() {
    // SAFETY: unshare takes plain flags; CLONE_NEWNS gives this thread its own copy of the
    // mount table (and its own fs_struct), which is what the callers then change.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNS): {}",
        std::io::Error::last_os_error()
    );
    // In the new namespace, stop propagation in both directions so that nothing done here
    // reaches the host's mounts.
    // SAFETY: a null source, fstype and data are allowed for a propagation change; the target
    // is a NUL-terminated literal.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(
        rc,
        0,
        "make / rprivate: {}",
        std::io::Error::last_os_error()
    );
}

/// Unmounts every tracefs mount the checks look at, in the calling thread's namespace.
fn unmount_all_tracefs() {
    for mount_point in ["/sys/kernel/debug/tracing", "/sys/kernel/tracing"] {
        let target = std::ffi::CString::new(mount_point).expect("path");
        while count_mounts(OWN_MOUNTINFO, "tracefs", mount_point) > 0 {
            // SAFETY: `target` is a NUL-terminated path alive for the call.
            let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            assert_eq!(
                rc,
                0,
                "umount {mount_point}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    assert!(
        !mounts_in(OWN_MOUNTINFO).iter().any(|(t, _)| t == "tracefs"),
        "tracefs still mounted here"
    );
}

/// Runs in the child process: a private mount namespace for this thread, tracefs unmounted
/// there, then the check without and with mounting.
fn tracefs_child() {
    enter_private_mount_namespace();
    unmount_all_tracefs();
    let own = OWN_MOUNTINFO;

    let without_mounting = check::check_tracefs(false);
    report(&without_mounting);
    assert_eq!(
        count_mounts(own, "tracefs", "/sys/kernel/tracing"),
        0,
        "mount_missing=false mounted something"
    );

    let with_mounting = check::check_tracefs(true);
    report(&with_mounting);
    assert_eq!(
        count_mounts(own, "tracefs", "/sys/kernel/tracing"),
        1,
        "mount_missing=true did not mount tracefs"
    );
}

const NON_ROOT_TEST: &str = "checks_fail_with_root_or_capability_advice_as_uid_65534";

#[test]
fn checks_fail_with_root_or_capability_advice_as_uid_65534() {
    match role().as_deref() {
        Some("non-root") => non_root_child(),
        Some(_) => {}
        None => {
            if skip_unless_root(NON_ROOT_TEST) {
                return;
            }
            non_root_parent();
        }
    }
}

fn non_root_parent() {
    let results = run_child(NON_ROOT_TEST, "non-root");
    let all: String = results.iter().map(|r| format!("{r}\n")).collect();
    let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "privileges",
            "eBPF programs",
            "cpu-clock perf event",
            "perf_event_paranoid",
            "tracefs"
        ],
        "{all}"
    );
    for r in &results[..3] {
        assert_eq!(r.status, "Fail", "{all}");
        let fix = r.fix.to_lowercase();
        assert!(fix.contains("root"), "fix does not mention root: {r}");
        assert!(
            fix.contains("cap_"),
            "fix does not mention capabilities: {r}"
        );
        assert!(
            r.detail.contains("65534"),
            "detail does not say who we are: {r}"
        );
    }
    assert!(
        results[0].detail.contains("CAP_BPF") && results[0].detail.contains("CAP_PERFMON"),
        "{all}"
    );
    assert!(
        results[0].fix.contains("setcap") && results[0].fix.contains("securityContext"),
        "{all}"
    );
    assert!(results[1].detail.contains("EPERM"), "{all}");
    assert!(
        results[2].detail.contains("EACCES") || results[2].detail.contains("EPERM"),
        "{all}"
    );
    assert!(results[2].detail.contains("perf_event_paranoid"), "{all}");

    // Without CAP_PERFMON the paranoid level matters.
    let level: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .expect("read perf_event_paranoid")
        .trim()
        .parse()
        .expect("parse perf_event_paranoid");
    let expected = match level {
        i32::MIN..=0 => "Ok",
        1 | 2 => "Warn",
        _ => "Fail",
    };
    assert_eq!(results[3].status, expected, "{all}");
    assert!(
        results[3].detail.starts_with(&format!("{level}: ")),
        "{all}"
    );

    // Mounting tracefs needs CAP_SYS_ADMIN: the check explains the errno and gives the command.
    assert_eq!(results[4].status, "Fail", "{all}");
    assert!(results[4].detail.contains("EPERM"), "{all}");
    assert!(results[4].detail.contains("CAP_SYS_ADMIN"), "{all}");
    assert!(
        results[4]
            .fix
            .contains("mount -t tracefs tracefs /sys/kernel/tracing"),
        "{all}"
    );
}

fn non_root_child() {
    // While still root: a private mount namespace without tracefs, so that the tracefs check
    // below has to mount it, and cannot as uid 65534.
    enter_private_mount_namespace();
    unmount_all_tracefs();
    // SAFETY: plain syscalls with valid arguments (an empty group list needs no pointer);
    // glibc applies the id changes to every thread of the process.
    unsafe {
        assert_eq!(
            libc::setgroups(0, std::ptr::null()),
            0,
            "setgroups: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::setgid(65534),
            0,
            "setgid: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::setuid(65534),
            0,
            "setuid: {}",
            std::io::Error::last_os_error()
        );
    }
    assert_eq!(euid(), 65534);
    let status = std::fs::read_to_string("/proc/self/status").expect("read status");
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff")
        .trim();
    assert_eq!(
        u64::from_str_radix(cap_eff, 16),
        Ok(0),
        "capabilities did not drop with setuid"
    );

    report(&check::check_privileges());
    report(&check::check_bpf_load());
    report(&check::check_perf_event(97));
    report(&check::check_perf_event_paranoid());
    report(&check::check_tracefs(true));
}

#[test]
fn sample_rate_of_5000_hz_fails_and_names_the_kernel_limit() {
    if role().is_some() {
        return;
    }
    let max = kernel_max_sample_rate();
    let r = check::check_sample_rate(5000);
    assert_eq!(r.status, Status::Fail, "{r}");
    assert!(r.detail.contains("5000 Hz"), "{r}");
    assert!(
        r.detail.contains(&format!("{max} Hz")),
        "the kernel's limit {max} is not named: {r}"
    );
    assert!(r.fix.is_some(), "{r}");
    assert!(r.to_string().starts_with("FAIL  sample rate: "), "{r}");

    let zero = check::check_sample_rate(0);
    assert_eq!(zero.status, Status::Fail, "{zero}");
    let fine = check::check_sample_rate(97);
    assert_eq!(fine.status, Status::Ok, "{fine}");
    assert!(fine.detail.contains(&format!("{max} Hz")), "{fine}");

    let results = vec![fine.clone(), r.clone(), zero.clone()];
    assert_eq!(check::first_failure(&results), Some(&r));
}

#[test]
fn perf_event_above_the_kernel_limit_is_rejected_and_the_limit_named() {
    if role().is_some()
        || skip_unless_root("perf_event_above_the_kernel_limit_is_rejected_and_the_limit_named")
    {
        return;
    }
    let max = kernel_max_sample_rate();
    let over = u32::try_from(max + 1).expect("limit fits u32");
    let r = check::check_perf_event(over);
    assert_eq!(r.status, Status::Fail, "{r}");
    assert!(r.detail.contains("EINVAL"), "{r}");
    assert!(r.detail.contains(&format!("limit of {max} Hz")), "{r}");
    assert!(
        r.fix
            .as_deref()
            .unwrap_or("")
            .contains("perf_event_max_sample_rate"),
        "{r}"
    );

    let ok = check::check_perf_event(97);
    assert_eq!(ok.status, Status::Ok, "{ok}");
}

#[test]
fn kernel_and_btf_checks_report_what_they_found() {
    if role().is_some() {
        return;
    }
    let kernel = check::check_kernel_version();
    assert_eq!(kernel.status, Status::Ok, "{kernel}");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let numeric: String = release
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    assert!(
        kernel
            .to_string()
            .starts_with(&format!("ok    kernel version: {numeric}")),
        "{kernel} vs {release}"
    );
    assert!(
        kernel.detail.contains("(>= 5.10 needed)"),
        "the floor the programs are tested on: {kernel}"
    );

    let btf = check::check_btf();
    assert_eq!(btf.status, Status::Ok, "{btf}");
    assert!(btf.detail.contains("/sys/kernel/btf/vmlinux"), "{btf}");
}
