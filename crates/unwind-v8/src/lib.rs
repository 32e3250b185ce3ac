//! What a profiler needs to know about V8 (Node.js) to name JavaScript frames.
//!
//! A sampled native stack of a Node process shows `node+0x…` for the interpreter and bare
//! addresses for JIT code; the JavaScript functions are in V8's heap. This crate is the V8
//! runtime plug-in ([`V8`]), and the runtime knowledge it is built from, independent of how
//! memory is read:
//!
//! - [`version_of`] and [`Layout`]: the V8 version of a binary and, from its `v8dbg_*`
//!   post-mortem constants ([`Constants`]) with per-version fallbacks where the metadata has
//!   gaps, where every field the plug-in reads is (Node 18 to 26: V8 10.2 to 14.6).
//! - [`Builtins`]: the embedded builtins (the Ignition interpreter's bytecode handlers, the
//!   Torque/CSA/assembly builtins), their range in the binary and their names.
//! - The heap readers: [`Heap`] (tagged values, arrays, strings), [`read_scope_info`],
//!   [`read_function`] (a `SharedFunctionInfo` as a named function, `Class.method` from the
//!   class's source), the script readers, [`find_code`] (the code object around a JIT PC)
//!   and the position tables ([`positions`]: bytecode and optimized source positions with
//!   inlining, Sparkplug's bytecode offsets).
//! - The eBPF walker (`bpf/v8.bpf.c`, a takeover program: it follows frame pointers through
//!   V8's frames and records each JavaScript frame's function and position) and its
//!   per-process data ([`ebpf`]).
//!
//! Every read goes through [`ProcessMemory`](ferroscope_unwind_api::ProcessMemory), is
//! bounded, and never panics on garbage (fuzzed).
//!
//! ```
//! use ferroscope_unwind_v8::positions::{SourcePosition, TableFormat, position_at};
//! use ferroscope_unwind_v8::source::{line_column, line_ends};
//!
//! // A bytecode position table with one entry, at the function's entry: script offset 13
//! // (packed as (13 + 1) << 1, zig-zag encoded).
//! let table = [0x00, 0x38];
//! let at = position_at(TableFormat::Signed, &table, 5).and_then(SourcePosition::script_offset);
//! assert_eq!(at, Some(13));
//! let source: Vec<u16> = "function f\n() {}\n".encode_utf16().collect();
//! assert_eq!(line_column(&line_ends(&source), 13), Some((2, 2)));
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod builtins;
pub mod classes;
mod code;
mod constants;
pub mod ebpf;
mod heap;
mod interpreter;
mod layout;
mod naming;
pub mod positions;
mod process;
mod scope_info;
mod script;
mod sfi;
pub mod source;
mod version;

pub use builtins::Builtins;
pub use code::{
    CodeKind, CodeObject, MAX_CODE_SCAN, OptimizedData, baseline_data, find_code, optimized_data,
};
pub use constants::Constants;
pub use heap::{Heap, V8String, is_heap_object, is_smi, smi_value};
pub use interpreter::{NAME, V8, V8File, detect_file, is_node_path};
pub use layout::{
    DeoptIndexes, FRAME_TYPE_NAMES, InstructionStart, Layout, RECORDED_FRAME_TYPES,
    ScopeInfoLayout, Types,
};
pub use naming::{Binary, CODE_RECHECK, Namer, NamingStats};
pub use scope_info::{ScopeFacts, ScopeType, function_kind, read_scope_info};
pub use script::{ScriptInfo, read_script, script_key};
pub use sfi::{FunctionInfo, Scripts, display_name, read_function};
pub use version::{V8Version, version_of};

use ferroscope_unwind_api::MemoryError;

/// Why reading V8 state from a binary or a process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A read of process memory failed.
    #[error(
        "cannot read the {what} at {addr:#x} (the process may have exited, or the object moved \
         or died since the sample: the garbage collector moves and frees objects, and a later \
         sample reads it again)"
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
    /// Memory was readable but does not hold what the layout says it should.
    #[error(
        "the {what} at {addr:#x} is not valid: {reason}; either the object changed while it \
         was read (a later sample reads it again), or the process's V8 is laid out unlike the \
         version detected for it"
    )]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// Where.
        addr: u64,
        /// What was wrong.
        reason: String,
    },
    /// The binary lacks a constant the plug-in cannot do without.
    #[error(
        "the binary has no `v8dbg_*` constant for {what} and V8's version gives no fallback; \
         its JavaScript frames cannot be named (its V8 is newer than this plug-in knows)"
    )]
    MissingConstant {
        /// Which constant.
        what: &'static str,
    },
    /// A V8 build the plug-in does not support.
    #[error("V8 {version} is not supported: {reason}")]
    Unsupported {
        /// The version found.
        version: V8Version,
        /// Why.
        reason: String,
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
