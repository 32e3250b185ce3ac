//! Opening files inside a process's root directory (its container) without letting symlinks
//! escape it.
//!
//! `/proc/PID/root` is a magic link to the process's root directory. Opening it gives a
//! directory descriptor that stays valid after the process exits; paths are then resolved
//! under it with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so an absolute symlink
//! such as `/usr/lib/libfoo.so -> /etc/shadow` inside the container resolves to the
//! container's `/etc/shadow`, never the host's. On kernels without `openat2` (before 5.6) the
//! path is walked one component at a time with `O_NOFOLLOW`, refusing symlinks.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Where paths of a process are resolved.
#[derive(Debug, Clone)]
pub enum FsRoot {
    /// The host's (this process's) root.
    Host,
    /// A process's root directory, opened through `/proc/PID/root`.
    Dir {
        /// The directory.
        fd: Arc<OwnedFd>,
        /// Whether it is the same directory as the host's root.
        same_as_host: bool,
    },
}

impl FsRoot {
    /// Opens `/proc/PID/root`. Falls back to [`FsRoot::Host`] when it cannot be opened.
    pub fn of_process(pid: u32) -> FsRoot {
        let path = format!("/proc/{pid}/root");
        match open_dir(Path::new(&path)) {
            Ok(fd) => {
                let same_as_host = same_file(&fd, Path::new("/"));
                FsRoot::Dir {
                    fd: Arc::new(fd),
                    same_as_host,
                }
            }
            Err(e) => {
                tracing::debug!(pid, error = %crate::error::Chain(&e), "cannot open the process's root; using the host's");
                FsRoot::Host
            }
        }
    }

    /// A root directory given by path (for chroots and tests).
    pub fn at(dir: &Path) -> io::Result<FsRoot> {
        let fd = open_dir(dir)?;
        let same_as_host = same_file(&fd, Path::new("/"));
        Ok(FsRoot::Dir {
            fd: Arc::new(fd),
            same_as_host,
        })
    }

    /// Whether paths resolve as on the host.
    pub fn is_host(&self) -> bool {
        match self {
            FsRoot::Host => true,
            FsRoot::Dir { same_as_host, .. } => *same_as_host,
        }
    }

    /// Opens `path` (absolute, as the process sees it) for reading, resolved inside the root.
    pub fn open(&self, path: &Path) -> io::Result<File> {
        self.open_flags(path, 0)
    }

    /// Opens `path` like [`FsRoot::open`], but only a regular file: the open does not wait
    /// (`O_NONBLOCK`, so a FIFO planted where a library is expected cannot block the
    /// caller), and a FIFO, device, socket or directory is refused with `InvalidInput`.
    /// Use it for every file a process names (its mappings, its debug links).
    pub fn open_regular(&self, path: &Path) -> io::Result<File> {
        regular(self.open_flags(path, libc::O_NONBLOCK)?)
    }

    fn open_flags(&self, path: &Path, flags: i32) -> io::Result<File> {
        match self {
            FsRoot::Host => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(flags)
                    .open(path)
            }
            FsRoot::Dir { fd, .. } => open_in_root(fd, path, flags),
        }
    }
}

/// `file` when it is a regular file.
pub fn regular(file: File) -> io::Result<File> {
    if file.metadata()?.file_type().is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device, socket or directory)",
        ))
    }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string; the returned descriptor is checked and
    // owned exactly once.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn same_file(fd: &OwnedFd, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(other) = std::fs::metadata(path) else {
        return false;
    };
    // SAFETY: an all-zero `stat` is a valid value; `fstat` fills it from a valid descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is a valid open descriptor and `st` a valid, writable `stat`.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    rc == 0 && st.st_dev == other.dev() && st.st_ino == other.ino()
}

/// Opens `path` under `root` without leaving it.
fn open_in_root(root: &OwnedFd, path: &Path, extra_flags: i32) -> io::Result<File> {
    let rel: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    let c = CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `open_how` is a plain C struct for which all-zero bytes are a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | extra_flags) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `root` is a valid directory descriptor, `c` a valid NUL-terminated string and
    // `how` a properly initialized `open_how` whose size is passed; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a fresh descriptor from openat2 that nothing else owns.
        return Ok(unsafe { File::from_raw_fd(fd as i32) });
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    open_walk_nofollow(root, &rel, extra_flags)
}

/// `openat2`-less fallback: walks `rel` one component at a time with `O_NOFOLLOW`, refusing
/// symlinks and `..`.
fn open_walk_nofollow(root: &OwnedFd, rel: &Path, extra_flags: i32) -> io::Result<File> {
    let comps: Vec<&std::ffi::OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path leaves the root",
            )),
        })
        .collect::<Result<_, _>>()?;
    let mut dir: Option<OwnedFd> = None;
    for (i, name) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let c = CString::new(name.as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let flags = libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | if last {
                libc::O_RDONLY | extra_flags
            } else {
                libc::O_PATH | libc::O_DIRECTORY
            };
        let at = dir.as_ref().unwrap_or(root).as_raw_fd();
        // SAFETY: `at` is a valid directory descriptor and `c` a NUL-terminated string.
        let fd = unsafe { libc::openat(at, c.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if last {
            return Ok(File::from(owned));
        }
        dir = Some(owned);
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("link")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", root.join("dotdot")).unwrap();
        let r = FsRoot::at(root).unwrap();
        assert!(!r.is_host());
        for p in ["/etc/hostname", "/link", "/dotdot", "/../../etc/hostname"] {
            let text = std::io::read_to_string(r.open(Path::new(p)).unwrap()).unwrap();
            assert_eq!(text, "inside", "{p}");
        }
        let fd = match &r {
            FsRoot::Dir { fd, .. } => fd.clone(),
            FsRoot::Host => unreachable!(),
        };
        assert!(open_walk_nofollow(&fd, Path::new("link"), 0).is_err());
        assert!(open_walk_nofollow(&fd, Path::new("etc/hostname"), 0).is_ok());
        assert!(FsRoot::at(Path::new("/")).unwrap().is_host());
    }

    #[test]
    fn only_regular_files_open_and_a_fifo_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("lib.so"), "elf").unwrap();
        let fifo = std::ffi::CString::new(root.join("fifo.so").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; the result is checked.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::fs::create_dir(root.join("dir.so")).unwrap();
        for r in [FsRoot::at(root).unwrap(), FsRoot::Host] {
            let base = if r.is_host() {
                root.to_owned()
            } else {
                PathBuf::from("/")
            };
            assert!(r.open_regular(&base.join("lib.so")).is_ok());
            // Without O_NONBLOCK this open would wait forever for a writer.
            let err = r.open_regular(&base.join("fifo.so")).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            assert!(r.open_regular(&base.join("dir.so")).is_err());
        }
    }
}
