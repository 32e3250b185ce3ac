//! Types that every ferroscope unwinder shares.
//!
//! An unwinder (the eBPF native walker today, interpreter unwinders later) produces
//! [`Trace`]s: a thread's identity and its frames, leaf first. Frames carry the raw address
//! the unwinder saw together with what kind of address it is, so that the symbolizer can
//! apply the right lookup rule (a return address points one past its call instruction).
//!
//! Unwinders that read another process's memory do so through [`ProcessMemory`], never
//! directly, so that the same code runs live ([`RemoteMemory`]) and in unit tests against a
//! captured snapshot ([`SnapshotMemory`]).
//!
//! Interpreter unwinders plug in through [`Interpreter`] and [`InterpreterPlugin`] (see the
//! `interpreter` module's documentation for the life of a plug-in).
//!
//! This crate knows nothing about eBPF, ELF files or profiles.
//!
//! ```
//! use ferroscope_unwind_api::{Frame, FrameKind};
//!
//! let leaf = Frame::native(0x401000, true);
//! let caller = Frame::native(0x401234, false);
//! assert_eq!(leaf.lookup_address(), 0x401000);
//! assert_eq!(caller.lookup_address(), 0x401233);
//! assert_eq!(caller.kind, FrameKind::Native);
//! ```
#![deny(missing_docs)]

mod frame;
mod interpreter;
mod memory;

pub use frame::{Frame, FrameKind, Trace};
pub use interpreter::{
    AttachTarget, ElfFile, FileData, InterpretedFrame, Interpreter, InterpreterError,
    InterpreterPlugin, InterpreterProcess, MappedRange, SymbolRange, plugins,
};
pub use inventory;
pub use memory::{MemoryError, ProcessMemory, RemoteMemory, SnapshotMemory};
