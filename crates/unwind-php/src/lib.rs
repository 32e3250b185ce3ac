//! What a profiler needs to know about PHP (the Zend Engine 7.3 to 8.5, NTS builds) to name
//! PHP frames, and the plug-in that does it.
//!
//! A sampled native stack of a PHP process shows `execute_ex`, the VM loop, where the PHP
//! code spent its time; the PHP functions are in the engine's own structures, from
//! `executor_globals.current_execute_data` along `prev_execute_data`:
//!
//! - [`layout()`]: per minor version, the byte offsets a walker follows (checked against real
//!   interpreters by the tests).
//! - [`version`]: which PHP a file holds (`php_version_id()`, the `X-Powered-By: PHP/x.y.z`
//!   string of every build, or the file name).
//! - [`elf`]: the program headers, the version string and the call frame information of
//!   `execute_ex`, read through [`ElfFile`](ferroscope_unwind_api::ElfFile).
//! - [`walk`]: a host-side reference walker doing what the eBPF walker does.
//! - [`read_function`]: a `zend_function`'s name, class, file and first line, and
//!   [`FunctionInfo::display_name`], the name as PHP users read it.
//! - [`Php`]: the plug-in the agent loads through `ferroscope-unwind-api`'s registry:
//!   detection ([`detect_file`]), the eBPF walker (`bpf/php.bpf.c`) and its per-process data
//!   ([`ebpf::PhpProc`]), the ranges it owns (the VM loop, spliced; the opcache JIT buffer,
//!   taken over), and naming of recorded frames, cached per function.
//!
//! All reads go through [`ProcessMemory`](ferroscope_unwind_api::ProcessMemory) or
//! [`ElfFile::read_vaddr`](ferroscope_unwind_api::ElfFile::read_vaddr), are bounded, and
//! never panic on garbage (fuzzed).
//!
//! ```
//! use ferroscope_unwind_api::SnapshotMemory;
//! use ferroscope_unwind_php::{PhpVersion, layout, walk};
//!
//! let l = layout(PhpVersion::new(8, 3, 8)).unwrap();
//! // One frame of a fake 8.3 process: the zend_execute_data at 0x1000 runs the internal
//! // function at 0x2000 (type 1: no line, no fingerprint) and has no caller.
//! let mut frame = vec![0u8; 56];
//! frame[l.ex_func as usize..][..8].copy_from_slice(&0x2000u64.to_le_bytes());
//! let mut function = vec![0u8; l.func_read_len() as usize];
//! function[0] = 1;
//! let mut mem = SnapshotMemory::new(1);
//! mem.add_region(0x1000, frame);
//! mem.add_region(0x2000, function);
//!
//! let frames = walk(&mem, l, 0x1000, 64).unwrap();
//! assert_eq!(frames.len(), 1);
//! assert_eq!((frames[0].function, frames[0].payload.line), (0x2000, 0));
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod ebpf;
pub mod elf;
mod frames;
mod function;
mod interpreter;
mod layout;
pub mod version;

pub use frames::{MAX_FRAMES, RawFrame, current_frame, walk};
pub use function::{
    FunctionInfo, FunctionKind, MAX_STRING_BYTES, is_closure, read_function, read_string,
    top_level_name,
};
pub use interpreter::{NAME, Php, PhpFile, detect_file, jit_ranges};
pub use layout::{
    CALL_CODE, CALL_TOP, FUNCTION_EVAL, FUNCTION_INTERNAL, FUNCTION_USER, LAYOUTS, Layout,
    SUPPORTED, VM_KIND_HYBRID, layout,
};
pub use version::PhpVersion;

use ferroscope_unwind_api::MemoryError;

/// Why detecting PHP in a file or reading PHP state from a process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A read of process memory failed.
    #[error(
        "cannot read the {what} at {addr:#x} (the process may have exited, or the pointer \
         leading here was stale: the program changed it while it was being read)"
    )]
    Read {
        /// What was being read (`"zend_function"`, ...).
        what: &'static str,
        /// Where.
        addr: u64,
        /// The memory error.
        #[source]
        source: MemoryError,
    },
    /// Memory was readable but does not hold what the layout says it should.
    #[error(
        "the {what} at {addr:#x} is not valid: {reason}; either it changed while it was read, \
         or the process is not the PHP version whose layout was used (check the version \
         detected for this process)"
    )]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// Where.
        addr: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// The PHP version has no layout in this crate.
    #[error(
        "PHP {version} in {path} is not supported: only PHP {SUPPORTED} have known layouts; \
         its PHP frames will show as the native frames of the VM loop (execute_ex)"
    )]
    UnsupportedVersion {
        /// The version found.
        version: PhpVersion,
        /// The file.
        path: String,
    },
    /// A thread-safe (ZTS) build: its globals are per thread, behind TSRM.
    #[error(
        "{path} is a thread-safe (ZTS) build of PHP, whose executor globals are thread-local \
         storage behind TSRM; only NTS builds (the default of the CLI, FPM and Apache prefork \
         packages) are supported: its PHP frames will show as the native frames of the VM \
         loop (execute_ex)"
    )]
    ThreadSafeBuild {
        /// The file.
        path: String,
    },
    /// A PHP file whose version could not be found.
    #[error(
        "{path} has PHP's VM loop but no version could be read from it (no php_version_id(), \
         no `X-Powered-By: PHP/` string in its read-only data, no version in its name); its \
         PHP frames will show as the native frames of the VM loop (execute_ex)"
    )]
    UnknownVersion {
        /// The file.
        path: String,
    },
}

impl Error {
    pub(crate) fn read(what: &'static str, addr: u64) -> impl FnOnce(MemoryError) -> Error {
        move |source| Error::Read { what, addr, source }
    }

    pub(crate) fn invalid(what: &'static str, addr: u64, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what,
            addr,
            reason: reason.into(),
        }
    }
}
