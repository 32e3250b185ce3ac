//! Debian trixie and sid in debootstrap chroots, for runtimes that need a newer glibc than
//! the host's (Ruby 3.3, Perl 5.40/5.42, PHP 8.4, OpenJDK 21, CPython 3.13-3.15, ...).
//!
//! A chroot is `debootstrap --variant=minbase SUITE` plus the suite's packages, installed
//! once into the cache (key `chroot/<suite>-<recipe>`; about a gigabyte each). Processes run
//! in it with `chroot(8)`: they share the host's PID namespace, so the profiler sees them as
//! usual, and what they write to `/tmp` lands under the chroot's root. `/proc` is mounted in
//! the chroot while at least one [`Chroot`] handle, in any process, is alive, and unmounted
//! by the last one dropped (a shared `flock` counts the users).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::cache::{FileLock, lock_path, provision};
use crate::exec::{exec, minutes};
use crate::require::{Unavailable, find_tool, is_root, need};

/// A Debian suite in a chroot, and what is installed in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suite {
    /// The suite's name for debootstrap and apt.
    pub name: &'static str,
    /// The cache key of the chroot; change it when the package list changes.
    pub key: &'static str,
    /// Packages installed in it (runtimes.md lists what each brings).
    pub packages: &'static [&'static str],
    /// Extra options of `apt-get update` in it.
    pub update_options: &'static [&'static str],
}

/// Debian 13: Ruby 3.3, Perl 5.40, CPython 3.13, PHP 8.4, OpenJDK 21, Node 20.
pub const TRIXIE: Suite = Suite {
    name: "trixie",
    key: "chroot/trixie-1",
    packages: &[
        "ruby3.3",
        "perl",
        "python3.13",
        "php8.4-cli",
        "openjdk-21-jre-headless",
        "nodejs",
    ],
    update_options: &[],
};

/// Debian unstable: CPython 3.14 and 3.15, Perl 5.42, Ruby 3.3. Its Release file is often
/// past its Valid-Until date, hence the update option.
pub const SID: Suite = Suite {
    name: "sid",
    key: "chroot/sid-1",
    packages: &["python3.14", "python3.15", "perl", "ruby"],
    update_options: &["-o", "Acquire::Check-Valid-Until=false"],
};

fn mounted_at(point: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|p| Path::new(p) == point)
    })
}

fn mount_proc(root: &Path) -> Result<(), Unavailable> {
    let point = root.join("proc");
    if mounted_at(&point) {
        return Ok(());
    }
    exec(
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(&point),
        minutes(1),
    )
    .map(drop)
}

fn unmount_proc(root: &Path) -> Result<(), Unavailable> {
    let point = root.join("proc");
    if !mounted_at(&point) {
        return Ok(());
    }
    exec(Command::new("umount").arg(&point), minutes(1)).map(drop)
}

/// A command run inside the chroot at `root` (a clean environment: PATH, HOME, LANG).
fn command_in(root: &Path, program: &str) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .arg(program)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8");
    cmd
}

fn install(suite: &Suite, root: &Path) -> Result<(), Unavailable> {
    let debootstrap = find_tool("debootstrap")?;
    let (mirror, _) = crate::debian::mirrors()?;
    exec(
        Command::new(debootstrap)
            .args(["--variant=minbase", suite.name])
            .arg(root)
            .arg(&mirror),
        minutes(30),
    )?;
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))
        .map_err(|e| Unavailable(format!("cannot copy /etc/resolv.conf into the chroot: {e}")))?;
    mount_proc(root)?;
    let result = (|| {
        exec(
            command_in(root, "apt-get")
                .args(suite.update_options)
                .args(["update", "-q"]),
            minutes(10),
        )?;
        exec(
            command_in(root, "apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(suite.packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            minutes(30),
        )?;
        exec(command_in(root, "apt-get").arg("clean"), minutes(2)).map(drop)
    })();
    let unmounted = unmount_proc(root);
    result.and(unmounted)
}

/// A provisioned chroot with `/proc` mounted while this handle lives (see the module docs).
#[derive(Debug)]
pub struct Chroot {
    suite: Suite,
    root: PathBuf,
    /// Shared lock on the users' lock file: one per live handle.
    user: Option<FileLock>,
}

impl Chroot {
    /// Installs `suite` on first use (as root), then mounts its `/proc`.
    pub fn open(suite: Suite) -> Result<Chroot, Unavailable> {
        if !is_root() {
            return Err(Unavailable(format!(
                "the Debian {} chroot needs root (debootstrap, mount, chroot)",
                suite.name
            )));
        }
        let root = provision(suite.key, |tmp| install(&suite, tmp))?;
        let mount_lock = FileLock::exclusive(&lock_path(&format!("{}.mount", suite.key)))?;
        mount_proc(&root)?;
        let user = FileLock::shared(&lock_path(&format!("{}.users", suite.key)))?;
        drop(mount_lock);
        Ok(Chroot {
            suite,
            root,
            user: Some(user),
        })
    }

    /// The suite it is.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Its root directory on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of `inside` (an absolute path in the chroot).
    pub fn host_path(&self, inside: impl AsRef<Path>) -> PathBuf {
        let inside = inside.as_ref();
        self.root.join(inside.strip_prefix("/").unwrap_or(inside))
    }

    /// Copies the host file `from` into the chroot's `/tmp` and returns its path inside.
    pub fn copy_in(&self, from: &Path) -> PathBuf {
        let name = from.file_name().expect("a file name");
        let inside = Path::new("/tmp").join(name);
        std::fs::copy(from, self.host_path(&inside))
            .unwrap_or_else(|e| panic!("cannot copy {} into the chroot: {e}", from.display()));
        inside
    }

    /// The version of a Debian package installed in the chroot (from its dpkg status), e.g.
    /// to fetch the matching debug symbols with
    /// [`deb_extract_version`](crate::debian::deb_extract_version).
    pub fn package_version(&self, package: &str) -> Option<String> {
        let status = std::fs::read_to_string(self.host_path("/var/lib/dpkg/status")).ok()?;
        status.split("\n\n").find_map(|stanza| {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            (field("Package:")? == package).then(|| field("Version:"))?
        })
    }

    /// `program` (a path inside the chroot) as a command run in it; add arguments and spawn
    /// it, e.g. with [`crate::Guard::spawn`]. Its PID is the program's own (chroot execs it).
    pub fn command(&self, program: &str) -> Command {
        command_in(&self.root, program)
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        drop(self.user.take());
        // The last user out unmounts /proc: with the mount lock held nobody can enter, and
        // with nobody holding the users' lock nobody is inside.
        let Ok(_mount) = FileLock::exclusive(&lock_path(&format!("{}.mount", self.suite.key)))
        else {
            return;
        };
        if let Ok(Some(_alone)) =
            FileLock::try_exclusive(&lock_path(&format!("{}.users", self.suite.key)))
        {
            let _ = unmount_proc(&self.root);
        }
    }
}

/// The trixie chroot, or `None` after a skip (a failure when required).
pub fn trixie() -> Option<Arc<Chroot>> {
    need(Chroot::open(TRIXIE)).map(Arc::new)
}

/// The sid chroot, or `None` after a skip (a failure when required).
pub fn sid() -> Option<Arc<Chroot>> {
    need(Chroot::open(SID)).map(Arc::new)
}
