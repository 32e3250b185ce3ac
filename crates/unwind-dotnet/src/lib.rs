//! What a profiler needs to know about CoreCLR (.NET 6 to 10, x64 Linux) to unwind and name
//! managed frames.
//!
//! - [`ranges`]: the runtime's code ranges from its own tables (`g_dacTable` →
//!   the ExecutionManager's range sections: JIT code heaps, ReadyToRun images, stub blocks).
//! - The eBPF walker (`bpf/dotnet.bpf.c`, mirrored in [`ebpf`]): a takeover runtime that
//!   unwinds managed frames with the methods' own x64 unwind codes (CoreCLR omits frames in
//!   small methods and OSR methods inherit their tier-0 frame, so RBP alone skips frames),
//!   finding JIT methods through the code heaps' nibble maps and ReadyToRun functions through
//!   their images' `RUNTIME_FUNCTION` tables.
//! - Naming: [`method`] (code header → `MethodDesc` → `MethodDef` token and `Module`),
//!   [`metadata`] (ECMA-335 tables), [`names`] (`Namespace.Type.Method`, generics),
//!   [`r2r`] (ReadyToRun functions to methods), [`debuginfo`] (native to IL offsets),
//!   [`pdb`] (portable PDB lines).
//! - [`Dotnet`]: the plug-in the agent loads through `ferroscope-unwind-api`'s registry.
//!
//! Every parser reads bytes it does not trust (process memory, files): bounded, never
//! panicking (fuzzed).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod contract;
pub mod debuginfo;
pub mod ebpf;
mod interpreter;
pub mod layout;
pub mod metadata;
pub mod method;
mod modules;
pub mod names;
pub mod pdb;
pub mod pe;
mod process;
pub mod r2r;
pub mod ranges;
mod version;

pub use interpreter::{Dotnet, DotnetFile, NAME, detect_file};
pub use modules::parse_maps;
pub use names::NameStyle;
pub use process::stub_name;
pub use version::{DotnetVersion, version_from_path};

use ferroscope_unwind_api::MemoryError;

/// Why reading .NET state failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A read of process memory failed.
    #[error(
        "cannot read {what} at {addr:#x} (the process may have exited, or the runtime changed \
         it while it was read; a later refresh reads it again)"
    )]
    Read {
        /// What was being read.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The memory error.
        #[source]
        source: MemoryError,
    },
    /// Bytes that do not hold what their format says.
    #[error("the {what} is not valid: {reason}")]
    Format {
        /// What was being parsed.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A runtime version without known offsets.
    #[error(
        ".NET {version} is not supported: only CoreCLR 6 to 10 have known layouts; its managed \
         frames will show as anonymous code under libcoreclr.so"
    )]
    UnsupportedVersion {
        /// The version found.
        version: DotnetVersion,
    },
}

impl Error {
    pub(crate) fn read(what: &'static str, addr: u64) -> impl FnOnce(MemoryError) -> Error {
        move |source| Error::Read { what, addr, source }
    }

    pub(crate) fn format(what: &'static str, reason: impl Into<String>) -> Error {
        Error::Format {
            what,
            reason: reason.into(),
        }
    }
}
