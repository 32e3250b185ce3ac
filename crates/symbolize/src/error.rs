//! The crate's single error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while reading process maps, kernel symbols or ELF files.
///
/// Every message names what failed, why, and what the operator can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process exited before its `/proc` files could be read.
    #[error(
        "cannot read {path}: process {pid} has exited (it may have been short-lived); \
         nothing to do, its frames will be shown as raw addresses"
    )]
    ProcessExited {
        /// The process.
        pid: u32,
        /// The `/proc` file that could not be read.
        path: PathBuf,
    },

    /// The kernel refused access to a file.
    #[error(
        "cannot read {path}: permission denied; run as root or grant CAP_SYS_PTRACE and \
         CAP_SYS_ADMIN (and check /proc/sys/kernel/yama/ptrace_scope)"
    )]
    PermissionDenied {
        /// The file that could not be read.
        path: PathBuf,
    },

    /// Any other I/O failure.
    #[error("cannot read {path} (check that the file exists and that /proc is mounted)")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A line of a `/proc/PID/maps` file does not have the expected format.
    #[error(
        "cannot parse line {line_number} of a /proc/PID/maps file ({reason}): {line:?}; \
         this kernel prints a format ferroscope does not understand, please report it \
         with this line"
    )]
    MalformedMaps {
        /// 1-based line number.
        line_number: usize,
        /// What is wrong with the line.
        reason: &'static str,
        /// The line, truncated to a reasonable length.
        line: String,
    },

    /// `/proc/kallsyms` shows only zero addresses.
    #[error(
        "cannot use /proc/kallsyms: every address reads as zero because kernel.kptr_restrict \
         is {kptr_restrict} or this process lacks CAP_SYSLOG; run as root, or lower it with \
         `sysctl kernel.kptr_restrict=0`; kernel frames will be shown as raw addresses"
    )]
    KallsymsRestricted {
        /// The value of `/proc/sys/kernel/kptr_restrict`, or `"unknown"`.
        kptr_restrict: String,
    },

    /// `/proc/kallsyms` exists but lists no function symbols.
    #[error(
        "cannot use /proc/kallsyms: it lists no function symbols; the kernel may have been \
         built without CONFIG_KALLSYMS, kernel frames will be shown as raw addresses"
    )]
    KallsymsEmpty,

    /// Bytes that should be an ELF object could not be parsed.
    #[error(
        "cannot parse ELF data: {reason}; the file is truncated, corrupt or not an ELF \
         object, so its frames will be shown as module+offset"
    )]
    InvalidElf {
        /// What the parser reported.
        reason: String,
    },

    /// An ELF file on disk could not be parsed.
    #[error(
        "cannot parse ELF file {path}: {reason}; the file is truncated, corrupt or not an \
         ELF object, so its frames will be shown as module+offset"
    )]
    InvalidElfFile {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        reason: String,
    },

    /// A file's path now names another file than the one the process mapped.
    #[error(
        "cannot read {path}: the file was replaced on disk since the process mapped it, and \
         /proc/PID/map_files is not readable (it needs CAP_SYS_ADMIN); run as root to \
         symbolize replaced files, its frames will be shown as module+offset"
    )]
    FileReplaced {
        /// The path as the process sees it.
        path: PathBuf,
    },

    /// A Go `.gopclntab` could not be parsed.
    #[error(
        "cannot parse the Go symbol table (.gopclntab): {reason}; the binary is corrupt or \
         from an unsupported Go release (before 1.2), its frames fall back to ELF symbols"
    )]
    InvalidGoTable {
        /// What is wrong.
        reason: String,
    },

    /// DWARF debug information could not be used.
    #[error(
        "cannot use DWARF debug information: {reason}; frames get function names but no \
         file, line or inline frames; rebuild with -g or install the package's debug file"
    )]
    InvalidDwarf {
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// Classifies an I/O error on a file that belongs to process `pid`.
    pub(crate) fn from_proc_io(pid: u32, path: PathBuf, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH) => Error::ProcessExited { pid, path },
            Some(libc::EACCES | libc::EPERM) => Error::PermissionDenied { path },
            _ => Error::Io { path, source },
        }
    }

    /// Classifies an I/O error on an ordinary file.
    pub(crate) fn from_io(path: PathBuf, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => Error::PermissionDenied { path },
            _ => Error::Io { path, source },
        }
    }
}

/// An error and each of its causes, joined by `": "`: how the crate's logs print an error,
/// since each `Display` names only its own failure and leaves the cause to `source()`.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}
