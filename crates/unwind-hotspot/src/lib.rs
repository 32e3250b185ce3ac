//! What a profiler needs to know about the HotSpot JVM (OpenJDK, Temurin, Corretto... JDK 9
//! and later; 11, 17, 21 and 25 tested) to show Java stacks: `com.example.Shop.checkout` with
//! its file and line, one frame per inlined method.
//!
//! A JVM runs Java code from its code cache, anonymous executable memory holding the
//! template interpreter, the methods C1 and C2 compiled (nmethods) and stubs. Native
//! unwinding knows nothing of it; the JVM, though, describes its own structures in tables it
//! exports for its serviceability agent (`gHotSpotVMStructs` and friends). This crate:
//!
//! - [`vmstructs`]: reads those tables from the process's memory;
//! - [`Layout`]: picks the offsets it needs from them (and the few facts they do not hold,
//!   derived per JDK version and documented where they are);
//! - [`read_code_cache`]: finds the code heaps and the interpreter's code;
//! - the eBPF walker (`bpf/hotspot.bpf.c`, data in [`ebpf`]): takes over the walk while the
//!   PC is in the code cache, unwinding interpreted frames by their layout and compiled and
//!   stub frames by their frame size, and records per frame a `Method*` and bytecode index,
//!   or an nmethod, PC offset and compile ID;
//! - [`read_method`] and [`NmethodInfo::frames_at`]: name them: class, method, source file,
//!   the line of a bytecode index ([`stream`] decodes HotSpot's compressed line tables and
//!   debug information), and the chain of inlined methods at a compiled PC;
//! - [`Hotspot`]: the plug-in the agent loads through `ferroscope-unwind-api`'s registry.
//!
//! Every read goes through [`ProcessMemory`](ferroscope_unwind_api::ProcessMemory), is
//! bounded, and never panics on garbage (fuzzed).
//!
//! ```
//! use ferroscope_unwind_hotspot::stream::{line_for_bci, line_table};
//!
//! // A method whose bytecode 0 is on line 3 and bytecode 4 on line 4 (JDK 20+ encoding).
//! let (lines, len) = line_table(&[0xff, 1, 7, (4 << 3) | 1, 0], 1);
//! assert_eq!(lines, vec![(0, 3), (4, 4)]);
//! assert_eq!(len, Some(5));
//! assert_eq!(line_for_bci(&lines, 6), Some(4));
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod codecache;
pub mod ebpf;
mod interpreter;
mod layout;
mod method;
mod nmethod;
pub mod stream;
pub mod vmstructs;

pub use codecache::{CodeCache, CodeHeap, read_code_cache};
pub use ebpf::{HS_MAX_HEAPS, HsProc, Payload, hs_proc};
pub use interpreter::{Hotspot, HotspotFile, NAME, attach_layout, detect_file};
pub use layout::{BlobKinds, Layout, NmethodData, major_version_address};
pub use method::{MethodInfo, const_method_of, java_class_name, read_method, read_symbol};
pub use nmethod::{NmethodInfo, compile_id_of, pc_desc_scope, read_nmethod};
pub use vmstructs::{IntrospectionSymbols, VmStructs};

use ferroscope_unwind_api::MemoryError;

/// Why reading a JVM's state failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A read of process memory failed.
    #[error(
        "cannot read the {what} at {addr:#x} (the process may have exited, or the JVM freed \
         or moved it after the sample: a later sample does not repeat that)"
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
    /// Memory was readable but does not hold what it should.
    #[error(
        "the {what} at {addr:#x} is not valid: {reason} (it changed while it was read, or the \
         JVM's layout is not what its tables said)"
    )]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// Where.
        addr: u64,
        /// What was wrong.
        reason: String,
    },
    /// The JVM's tables lack entries the walker needs.
    #[error(
        "this JDK {major} lacks VMStructs entries the HotSpot unwinder needs ({}); its Java \
         frames will show as native code (a newer JDK may have renamed them: report it with \
         the JDK's version)",
        missing.join(", ")
    )]
    MissingStructs {
        /// The JDK's feature release.
        major: u32,
        /// The entries not found.
        missing: Vec<String>,
    },
    /// A JDK this crate does not support.
    #[error("JDK {major} is not supported: {reason}; its Java frames will show as native code")]
    Unsupported {
        /// The JDK's feature release.
        major: u32,
        /// Why.
        reason: &'static str,
    },
    /// The JVM has not set this up yet (it is starting).
    #[error("the JVM has not set up {0} yet (it is starting); it is looked at again shortly")]
    NotReady(&'static str),
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
