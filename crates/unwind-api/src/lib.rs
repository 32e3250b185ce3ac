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
mod memory;

pub use frame::{Frame, FrameKind, Trace};
pub use memory::{MemoryError, ProcessMemory, RemoteMemory, SnapshotMemory};
