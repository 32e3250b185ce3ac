//! Types that every ferroscope unwinder shares, and the seam runtime unwinders plug into.
//!
//! Unwinders produce [`Trace`]s: a thread's identity and its frames, leaf first. A trace
//! comes out of the kernel with [`RecordedFrame`]s (kernel and native addresses, and
//! [`RawFrame`]s that a runtime's program recorded) and is turned into one with named
//! [`Frame`]s before it is counted; the two phases are two types.
//!
//! Unwinders that read another process's memory do so through [`ProcessMemory`], never
//! directly, so that the same code runs live ([`RemoteMemory`]) and in unit tests against a
//! captured snapshot ([`SnapshotMemory`]); plug-ins get theirs handed to them
//! ([`AttachContext::memory`]).
//!
//! Runtime unwinders plug in through [`Interpreter`] and [`InterpreterPlugin`] (see the
//! `interpreter` module's documentation for the life of a plug-in). Their eBPF programs are
//! opaque bytes here ([`EbpfProgram`]): this crate knows nothing about eBPF, ELF files or
//! profiles.
//!
//! ```
//! use ferroscope_unwind_api::{Frame, lookup_address};
//!
//! let leaf = Frame::native(0x401000, true);
//! assert!(!leaf.is_kernel());
//! assert_eq!(lookup_address(0x401000, true), 0x401000);
//! assert_eq!(lookup_address(0x401234, false), 0x401233);
//! ```
#![deny(missing_docs)]

mod frame;
mod interpreter;
mod memory;

pub use frame::{Frame, RawFrame, RecordedFrame, Trace, UnwindErrorCode, lookup_address};
pub use interpreter::{
    AttachContext, EbpfProgram, ElfFile, FileData, InterpretedFrame, Interpreter, InterpreterError,
    InterpreterPlugin, InterpreterProcess, MapWrite, MappedRange, MappingsChanged, Metric,
    MetricKind, NameDetail, OwnedRange, ProcessUpdate, RangeMode, RegistryError, SharedMemory,
    SymbolRange, TlsTemplate, check_names, plugins,
};
pub use inventory;
pub use memory::{MemoryError, ProcessMemory, RemoteMemory, SnapshotMemory};
