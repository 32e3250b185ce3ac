//! What a profiler needs to know about CPython 3.6-3.15 (and later releases that keep
//! `_Py_DebugOffsets` readable) to name Python frames.
//!
//! A sampled native stack of a Python process shows `_PyEval_EvalFrameDefault` where the
//! program spent its time; the Python functions are in the interpreter's own data structures.
//! This crate holds that runtime knowledge, independent of how memory is read:
//!
//! - [`layout`]: per minor version, the byte offsets of the fields a walker follows, from
//!   `_PyRuntime` to the interpreters, their threads, each thread's current frame, the frame
//!   chain, code objects and strings. Tested against the DWARF of real builds.
//! - [`threads`] and [`walk`]: a host-side reference walker doing exactly what the eBPF walker
//!   does (the same reads, the same bounds), producing [`RawFrame`]s: a code object address, the
//!   byte offset of the instruction executing, and whether the frame starts a C-level eval
//!   call (where native unwinding resumes).
//! - [`read_code`]: a code object's names, file and line table, read once per code object and
//!   cached by the caller under `(address, `[`code_fingerprint`]`)`;
//!   [`CodeInfo::line_for_offset`] decodes the three line-table formats (lnotab ≤3.9, 3.10's
//!   linetable, 3.11+'s location table; see [`linetable`]).
//!
//! - [`frame_binding`]: where, in a 3.6-3.10 eval loop, the thread state does not point at
//!   the frame the call runs (its entry and exit windows), found in its code.
//! - [`threading_threads`]: the `threading.Thread` names of a process by OS thread (3.8+),
//!   from each interpreter's `threading._active` (dicts and instance attributes of every era
//!   in [`objects`]).
//!
//! - [`Python`]: the plug-in the agent loads through `ferroscope-unwind-api`'s registry:
//!   [`detect_file`] (a file named like CPython or exporting `Py_Version`/`_PyRuntime`, with
//!   `_PyEval_EvalFrameDefault`), the eBPF walker (`bpf/python.bpf.c`, built by this crate's
//!   build script against `ferroscope-ebpf-abi`'s headers) and its per-process data
//!   ([`ebpf_proc`], mirrored in [`ebpf`]), the eval loop's ranges it owns, and per-process
//!   naming of the frames the walker recorded, cached per code object.
//!
//! It knows nothing of ELF parsing or profiles; all reads go through
//! [`ProcessMemory`](ferroscope_unwind_api::ProcessMemory), are bounded, and never panic on
//! garbage (fuzzed).
//!
//! ```
//! use ferroscope_unwind_api::SnapshotMemory;
//! use ferroscope_unwind_python::{layout, version_from_path, walk, FrameLayout};
//!
//! let version = version_from_path("/usr/lib/libpython3.9.so.1.0").unwrap();
//! let l = layout(version.minor).unwrap();
//! let FrameLayout::Object { f_back, f_code, f_lasti, .. } = l.frame else { unreachable!() };
//!
//! // A one-frame stack in a fake 3.9 process: the frame at 0x1000 runs the code object at
//! // 0x2000 and last executed the instruction at byte 6.
//! let mut frame = vec![0u8; l.frame_read_len as usize];
//! frame[f_code as usize..][..8].copy_from_slice(&0x2000u64.to_le_bytes());
//! frame[f_lasti as usize..][..4].copy_from_slice(&6i32.to_le_bytes());
//! frame[f_back as usize..][..8].copy_from_slice(&0u64.to_le_bytes());
//! let mut mem = SnapshotMemory::new(1);
//! mem.add_region(0x1000, frame);
//!
//! let frames = walk(&mem, l, 0x1000, 64).unwrap();
//! assert_eq!(frames.len(), 1);
//! assert_eq!((frames[0].code, frames[0].byte_offset, frames[0].entry), (0x2000, 6, true));
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod code;
pub mod debug_offsets;
pub mod ebpf;
pub mod eval_loop;
pub mod frame_binding;
mod frames;
mod interpreter;
mod layout;
pub mod linetable;
pub mod objects;
pub mod thread_names;
mod version;

pub use code::{CodeInfo, MAX_LINE_TABLE, MAX_STRING_CHARS, code_fingerprint, read_code};
pub use debug_offsets::{DebugOffsets, DebugOffsetsError};
pub use eval_loop::{EvalLoop, PartsFrom, find_eval_loop};
pub use frames::{
    MAX_INTERPRETERS, MAX_THREADS, RawFrame, ThreadState, interpreters_head, threads, walk,
};
pub use interpreter::{NAME, Python, PythonFile, byte_offset, detect_file, ebpf_proc, eval_ranges};
pub use layout::{
    BytesLayout, Entry, FrameLayout, Layout, LineTableFormat, SUPPORTED_MINORS, TABLE_MINORS,
    UnicodeLayout, layout,
};
pub use thread_names::{PyThread, threading_threads};
pub use version::{PyVersion, version_from_hex, version_from_path};

use ferroscope_unwind_api::MemoryError;

/// Why reading Python state from a process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A read of process memory failed.
    #[error(
        "cannot read the {what} at {addr:#x} (the process may have exited, or the pointer \
         leading here was stale: the program changed it while it was being read, which a \
         later sample does not repeat)"
    )]
    Read {
        /// What was being read (`"thread state"`, `"frame"`, ...).
        what: &'static str,
        /// Where.
        addr: u64,
        /// The memory error.
        #[source]
        source: MemoryError,
    },
    /// Memory was readable but does not hold what the layout says it should.
    #[error(
        "the {what} at {addr:#x} is not valid: {reason}; either the object changed while it \
         was read (retry), or the process is not the CPython version whose layout was used \
         (check the version detected for this process)"
    )]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// Where.
        addr: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// The CPython version has no layout in this crate.
    #[error(
        "CPython {version} is not supported: 3.6 to 3.12 have built-in layouts and 3.13 on \
         publish theirs in _Py_DebugOffsets; its Python frames will show as native \
         interpreter frames"
    )]
    UnsupportedVersion {
        /// The version found.
        version: PyVersion,
    },
    /// A file is CPython but its Python frames cannot be read.
    #[error("{path} is CPython but its Python frames cannot be unwound: {reason}")]
    Detection {
        /// The file.
        path: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A CPython 3.13+ whose `_Py_DebugOffsets` does not read.
    #[error(
        "{path} is CPython {version} but its offsets table (_Py_DebugOffsets, at the start of \
         _PyRuntime) does not read as the table of 3.{schema} ({problem}), so its Python \
         frames cannot be unwound{hint}"
    )]
    DebugOffsets {
        /// The file.
        path: String,
        /// Its version.
        version: PyVersion,
        /// The minor version whose table layout was tried.
        schema: u8,
        /// What did not read.
        problem: debug_offsets::DebugOffsetsError,
        /// What to do, for a version newer than every known table.
        hint: String,
    },
}

impl Error {
    pub(crate) fn read(what: &'static str, addr: u64) -> impl FnOnce(MemoryError) -> Error {
        move |source| Error::Read { what, addr, source }
    }

    /// A `_Py_DebugOffsets` of `version` in `path` that did not read.
    pub(crate) fn debug_offsets(
        path: &str,
        version: PyVersion,
        problem: debug_offsets::DebugOffsetsError,
    ) -> Error {
        let newest = debug_offsets::SCHEMAS.last().map_or(0, |s| s.0);
        let hint = if version.minor > newest {
            format!(
                "; this ferroscope knows the tables of 3.13 to 3.{newest} (a newer ferroscope \
                 may read it)"
            )
        } else {
            String::new()
        };
        Error::DebugOffsets {
            path: path.to_owned(),
            version,
            schema: version.minor.min(newest),
            problem,
            hint,
        }
    }

    pub(crate) fn invalid(what: &'static str, addr: u64, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what,
            addr,
            reason: reason.into(),
        }
    }
}

/// The built-in layout for `version` (3.6-3.12), or [`Error::UnsupportedVersion`] (3.13+ are
/// read from the interpreter's file: [`Layout::from_debug_offsets`]).
pub fn layout_for(version: PyVersion) -> Result<&'static Layout, Error> {
    if version.major != 3 {
        return Err(Error::UnsupportedVersion { version });
    }
    layout(version.minor).ok_or(Error::UnsupportedVersion { version })
}
