//! The seam every interpreter unwinder plugs into.
//!
//! A runtime (CPython, HotSpot, V8...) is supported by a crate that implements
//! [`Interpreter`] and registers it with [`inventory::submit!`] as an [`InterpreterPlugin`].
//! The agent never names a runtime: it asks every registered plug-in about every ELF file a
//! process maps ([`Interpreter::detect`], once per file), attaches the plug-in to the
//! processes that map a detected file ([`Interpreter::attach`]), hands the returned
//! [`InterpreterProcess`]'s eBPF data to the kernel-side walker, keeps it in step with the
//! process's mappings, asks it to name the frames the walker recorded, and detaches it when
//! the process exits. Linking a plug-in's crate into the binary is all it takes to add a
//! runtime.
//!
//! ```
//! use ferroscope_unwind_api::plugins;
//!
//! // Which runtimes this binary was built with (none in this crate's doctest).
//! let names: Vec<&str> = plugins().map(|p| p.name).collect();
//! assert!(names.iter().all(|n| !n.is_empty()));
//! ```

use std::sync::Arc;

use crate::{Frame, MemoryError};

/// A symbol's virtual address and size in its ELF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolRange {
    /// Virtual address (not yet relocated by the process's load bias).
    pub address: u64,
    /// Size in bytes (0 when the symbol table does not say).
    pub size: u64,
}

/// What a plug-in may ask about one ELF file (implemented by the agent over the mapped file).
pub trait ElfFile {
    /// The file's path as the process maps it (the path in `/proc/PID/maps`).
    fn path(&self) -> &str;
    /// A symbol of `.dynsym` or `.symtab` by exact name.
    fn symbol(&self, name: &str) -> Option<SymbolRange>;
    /// A symbol of `.dynsym` only: cheap to ask of every file (a plug-in asks this first,
    /// and [`ElfFile::symbol`] only of files it already recognised, since a large `.symtab`
    /// is costly to index).
    fn exported_symbol(&self, name: &str) -> Option<SymbolRange>;
    /// Fills `buf` with the file's initialised bytes at virtual address `vaddr`; false when
    /// the range is not entirely file-backed (for example `.bss`).
    fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool;
}

/// Per-file facts a plug-in found in [`Interpreter::detect`] (its own type, shared by every
/// process that maps the file).
pub type FileData = Arc<dyn std::any::Any + Send + Sync>;

/// A process an interpreter is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachTarget {
    /// The process.
    pub pid: u32,
    /// Process address of the detected file's virtual address `v` is `v + bias`.
    pub bias: u64,
}

/// One mapping of a process, as [`InterpreterProcess::sync_mappings`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRange {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// The mapped file's path, as in `/proc/PID/maps`.
    pub path: String,
}

/// A frame of an interpreted runtime, named.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InterpretedFrame {
    /// The function's name as its users write it (CPython 3.11+: the qualified name).
    pub function: Arc<str>,
    /// The source file.
    pub file: Arc<str>,
    /// Line being executed (0 when unknown).
    pub line: u32,
    /// The function's first line (0 when unknown).
    pub start_line: u32,
}

/// Why a plug-in could not detect, attach or name a frame.
#[derive(Debug, thiserror::Error)]
pub enum InterpreterError {
    /// Reading the process's memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The runtime's own error.
    #[error("{runtime}: {source}")]
    Runtime {
        /// The plug-in's name.
        runtime: &'static str,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A runtime's unwinder, registered with [`inventory::submit!`] as an [`InterpreterPlugin`].
pub trait Interpreter: Send + Sync {
    /// The runtime's name (`python`): the key of `<name>_enabled` in the configuration and
    /// of the binary's cargo feature.
    fn name(&self) -> &'static str;
    /// The frame kind the eBPF walker gives this runtime's frames ([`crate::FrameKind::Interpreted`]).
    fn frame_kind(&self) -> u8;
    /// Whether `file` is (part of) this runtime, from its name and symbols; called once per
    /// distinct file, so it may read symbol tables but must not read process memory.
    fn detect(&self, file: &dyn ElfFile) -> Result<Option<FileData>, InterpreterError>;
    /// Starts following a process that maps a detected file.
    fn attach(
        &self,
        data: &FileData,
        target: AttachTarget,
    ) -> Result<Box<dyn InterpreterProcess>, InterpreterError>;
    /// The plug-in's counters, by metric name (summed over every process).
    fn metrics(&self) -> Vec<(&'static str, u64)>;
}

/// A plug-in's state for one process.
pub trait InterpreterProcess: Send {
    /// The value the runtime's eBPF walker reads for this process: the bytes of the
    /// kernel-side structure, built by the runtime's crate from the ABI mirror.
    fn ebpf_data(&self) -> Vec<u8>;
    /// The process's mappings changed; false when the runtime is gone from it (then the
    /// process is detached).
    fn sync_mappings(&mut self, mappings: &[MappedRange]) -> bool;
    /// Names one frame the walker recorded (a frame of this runtime's kind).
    fn symbolize(&mut self, frame: &Frame) -> Result<InterpretedFrame, InterpreterError>;
    /// Called once when the process exits or the runtime is turned off.
    fn detach(self: Box<Self>) {}
}

/// A registered runtime: the crate of each runtime submits one with [`inventory::submit!`].
#[derive(Debug)]
pub struct InterpreterPlugin {
    /// The runtime's name, as [`Interpreter::name`].
    pub name: &'static str,
    /// Makes the plug-in (once per session).
    pub create: fn() -> Box<dyn Interpreter>,
}

inventory::collect!(InterpreterPlugin);

/// Every runtime linked into this binary, in no particular order.
pub fn plugins() -> impl Iterator<Item = &'static InterpreterPlugin> {
    inventory::iter::<InterpreterPlugin>.into_iter()
}
