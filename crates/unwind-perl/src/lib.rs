//! What a profiler needs to know about Perl 5.28-5.42 to name Perl frames.
//!
//! A sampled native stack of a Perl process shows `Perl_runops_standard` (the runops loop)
//! and the `Perl_pp_*` functions of the ops it runs; the Perl subs are on the interpreter's
//! context stack. This crate holds that runtime knowledge, independent of how memory is read:
//!
//! - [`layout`](mod@layout): per stable release, the byte offsets of the fields a walker
//!   follows, from the interpreter to its runlevels (stackinfos), their contexts, statements
//!   (COPs), subs (CVs), globs (GVs), stashes and names (HEKs). Tested against the headers of
//!   real builds.
//! - [`walk`]: a host-side reference walker doing exactly what the eBPF walker does, giving
//!   a thread's frames in segments, one per call of the runops loop (where native frames go
//!   between them).
//! - [`Reader`](names::Reader): names from memory, bounded and type-checked: a statement's
//!   file and line, a sub's package and name.
//! - [`Perl`]: the plug-in the agent loads through `ferroscope-unwind-api`'s registry:
//!   [`detect_file`] (a file exporting `Perl_runops_standard` and the version bytes), the
//!   eBPF walker (`bpf/perl.bpf.c`, built by this crate's build script against
//!   `ferroscope-ebpf-abi`'s headers) and its per-process data ([`ebpf_proc`], mirrored in
//!   [`ebpf`]), the runops ranges it owns, and per-process naming of the frames the walker
//!   recorded ([`name_frame`]), cached per (statement, sub).
//!
//! It knows nothing of ELF parsing or profiles; all reads go through
//! [`ProcessMemory`](ferroscope_unwind_api::ProcessMemory), are bounded, and never panic on
//! garbage (fuzzed).
//!
//! ```
//! use ferroscope_unwind_api::SnapshotMemory;
//! use ferroscope_unwind_perl::ebpf::FrameKind;
//! use ferroscope_unwind_perl::{layout, walk, Start};
//!
//! // A fake Perl 5.36 process running its main program, no sub called: one runlevel (the
//! // main one) with no context, and the statement at 0x3000 executing.
//! let l = layout(36).unwrap();
//! let mut stackinfo = vec![0u8; 48];
//! stackinfo[l.si_cxix as usize..][..4].copy_from_slice(&(-1i32).to_le_bytes());
//! stackinfo[l.si_cxsubix.unwrap() as usize..][..4].copy_from_slice(&(-1i32).to_le_bytes());
//! stackinfo[l.si_type as usize..][..4].copy_from_slice(&1i32.to_le_bytes()); // PERLSI_MAIN
//! let mut mem = SnapshotMemory::new(1);
//! mem.add_region(0x1000, stackinfo);
//!
//! let start = Start { cop: 0x3000, stackinfo: 0x1000, op: 0x4000 };
//! let w = walk(&mem, l, start).unwrap();
//! assert_eq!(w.segments.len(), 1); // perl_run's runops call
//! let main = w.segments[0][0];
//! assert_eq!((main.kind, main.cop), (FrameKind::Main, 0x3000));
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod ebpf;
mod interpreter;
pub mod layout;
pub mod names;
mod version;
mod walk;

pub use interpreter::{
    InterpreterAt, NAME, Perl, PerlFile, detect_file, ebpf_proc, name_compiling, name_frame,
    runops_ranges,
};
pub use layout::{HvAux, Layout, SUPPORTED_VERSIONS, layout, layout_for};
pub use version::PerlVersion;
pub use walk::{MAX_STEPS, PerlFrame, Start, Walk, walk};

use ferroscope_unwind_api::MemoryError;

/// Why reading Perl state from a process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A read of process memory failed.
    #[error(
        "cannot read the {what} at {addr:#x} (the process may have exited, or the pointer \
         leading here was stale: the program freed the value after the sample, which a later \
         sample does not repeat)"
    )]
    Read {
        /// What was being read (`"context"`, `"sub (CV)"`, ...).
        what: &'static str,
        /// Where.
        addr: u64,
        /// The memory error.
        #[source]
        source: MemoryError,
    },
    /// Memory was readable but does not hold what the layout says it should.
    #[error(
        "the {what} at {addr:#x} is not valid: {reason}; either the value was freed and the \
         memory reused after the sample (a later sample names it), or the process is not the \
         Perl version whose layout was used (check the version detected for this process)"
    )]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// Where.
        addr: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// The Perl version has no layout in this crate.
    #[error(
        "Perl {version} is not supported: only the stable releases 5.28 to 5.42 have known \
         layouts; its Perl frames will show as native runops frames (Perl_runops_standard)"
    )]
    UnsupportedVersion {
        /// The version found.
        version: PerlVersion,
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
