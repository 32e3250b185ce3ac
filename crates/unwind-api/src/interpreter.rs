//! The seam every runtime unwinder plugs into.
//!
//! A runtime (CPython, HotSpot, V8...) is supported by a crate that implements
//! [`Interpreter`] and registers it with [`inventory::submit!`] as an [`InterpreterPlugin`].
//! The agent never names a runtime. For a session it takes every linked plug-in that is not
//! turned off, gives each a slot, and loads each one's eBPF program ([`Interpreter::ebpf`]),
//! reached by tail call from the native unwinder; a program the kernel rejects turns off its
//! runtime alone. It then asks every plug-in about every ELF file a process maps
//! ([`Interpreter::detect`], once per file), attaches a plug-in to each process that maps a
//! file it detected ([`Interpreter::attach`]; a process may have several runtimes), and
//! applies what the returned [`InterpreterProcess`] asks for ([`ProcessUpdate`]: writes to
//! the runtime's own eBPF maps, and the address ranges the runtime owns, file-backed like an
//! eval loop or anonymous like a JIT code heap), at attach, at every change of the process's
//! mappings and whenever the plug-in has something new ([`InterpreterProcess::refresh`]). It
//! asks the plug-in to name the frames its program recorded, one recorded frame giving one or
//! more named frames, and detaches it when the process exits.
//!
//! ```
//! use ferroscope_unwind_api::plugins;
//!
//! // Which runtimes this binary was built with (none in this crate's doctest).
//! let names: Vec<&str> = plugins().map(|p| p.name).collect();
//! assert!(names.iter().all(|n| !n.is_empty()));
//! ```

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::{MemoryError, ProcessMemory, RawFrame};

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
    /// A symbol by exact name: of `.dynsym`, `.symtab`, or the `.symtab` of the file's
    /// separate debug file when one is installed (found by build ID or `.gnu_debuglink`). A
    /// thread-local variable's (`STT_TLS`) address is its offset in the file's TLS block (see
    /// [`TlsTemplate`]).
    fn symbol(&self, name: &str) -> Option<SymbolRange>;
    /// A symbol of `.dynsym` only: cheap to ask of every file (a plug-in asks this first,
    /// and [`ElfFile::symbol`] only of files it already recognised, since a large `.symtab`
    /// is costly to index).
    fn exported_symbol(&self, name: &str) -> Option<SymbolRange>;
    /// Fills `buf` with the file's initialised bytes at virtual address `vaddr`; false when
    /// the range is not entirely file-backed (for example `.bss`).
    fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool;
    /// The file's thread-local storage template (its `PT_TLS` segment), when it has one.
    fn tls_template(&self) -> Option<TlsTemplate> {
        None
    }
    /// The function containing `vaddr` as the file's call-frame information describes it:
    /// the range of the `.eh_frame` or `.debug_frame` entry (FDE) covering the address
    /// (`size` is its length). Needs no symbols: a function that the compiler split into a
    /// hot and a cold part has one entry per part, so a stripped file still tells where each
    /// part is. `None` when no entry covers `vaddr`.
    fn cfi_function(&self, _vaddr: u64) -> Option<SymbolRange> {
        None
    }
}

/// A file's thread-local storage template: its `PT_TLS` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsTemplate {
    /// The segment's virtual address.
    pub vaddr: u64,
    /// Its size in memory.
    pub memsz: u64,
    /// Its alignment.
    pub align: u64,
}

impl TlsTemplate {
    /// Where a thread-local variable of the main executable lives, relative to the thread
    /// pointer (x86-64, where the thread pointer is the FS base and static TLS blocks lie
    /// below it; the executable's block comes first, right below). `offset` is the
    /// variable's symbol value (for `STT_TLS` symbols, its offset in the block). The eBPF
    /// side reads it at `fs_thread_pointer() + result`. Blocks of shared libraries follow in
    /// load order at offsets only the dynamic linker knows; this does not cover them.
    pub fn executable_variable(&self, offset: u64) -> i64 {
        let align = self.align.max(1);
        // glibc's _dl_determine_tlsoffset, TLS_TCB_AT_TP, for the first module: the block
        // starts where its first byte keeps the segment's address modulo its alignment.
        let firstbyte = self.vaddr.wrapping_neg() & (align - 1);
        let block = (self.memsz + firstbyte).div_ceil(align) * align - firstbyte;
        offset as i64 - block as i64
    }
}

/// Per-file facts a plug-in found in [`Interpreter::detect`] (its own type, shared by every
/// process that maps the file).
pub type FileData = Arc<dyn std::any::Any + Send + Sync>;

/// One mapping of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRange {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// The mapped file's path, as in `/proc/PID/maps` (empty for an anonymous mapping).
    pub path: String,
    /// Whether the mapping is executable.
    pub executable: bool,
}

/// The process memory plug-ins read through (live, or a snapshot in tests).
pub type SharedMemory = Arc<dyn ProcessMemory + Send + Sync>;

/// What [`Interpreter::attach`] is given about the process.
#[derive(Clone)]
pub struct AttachContext<'a> {
    /// The process.
    pub pid: u32,
    /// The detected file's path as the process maps it.
    pub path: &'a str,
    /// Process address of the detected file's virtual address `v` is `v + bias`.
    pub bias: u64,
    /// The process's mappings when it was attached.
    pub mappings: &'a [MappedRange],
    /// Its memory.
    pub memory: SharedMemory,
}

impl std::fmt::Debug for AttachContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachContext")
            .field("pid", &self.pid)
            .field("path", &self.path)
            .field("bias", &format_args!("{:#x}", self.bias))
            .field("mappings", &self.mappings.len())
            .finish_non_exhaustive()
    }
}

/// A frame of a runtime, named.
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
    /// The runtime's own error (its cause says what).
    #[error("{runtime}")]
    Runtime {
        /// The plug-in's name.
        runtime: &'static str,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A runtime's eBPF program: one program in its own object, built per entry and per kernel
/// kind (see `ferroscope-ebpf-abi`), reached by tail call from the native unwinder.
#[derive(Debug, Clone, Copy)]
pub struct EbpfProgram {
    /// The program's function name in the objects (`fs_rt_python`).
    pub program: &'static str,
    /// Every build of it (`ferroscope_ebpf_abi::include_objects!("python.bpf")`).
    pub objects: ferroscope_ebpf_abi::ObjectSet,
    /// Maps keyed by PID (`u32`): sized for the session's process limit, and the PID's key is
    /// deleted from each when the process is detached.
    pub pid_maps: &'static [&'static str],
    /// Names of the entries of the object's `fs_rt_counters` array, in index order (as
    /// metric names, without the runtime's prefix: `ErrNoThread` for
    /// `UnwindPythonErrNoThread_total`).
    pub counters: &'static [&'static str],
}

/// A write to one of the runtime's own eBPF maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapWrite {
    /// The map's name in the runtime's object.
    pub map: &'static str,
    /// The key's bytes.
    pub key: Vec<u8>,
    /// The value's bytes; `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// How the unwinder treats a range a runtime owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RangeMode {
    /// An interpreter's loop: the runtime's program queues the thread's frames once per
    /// sample, and each native frame in the range is replaced by the next segment of them,
    /// then unwound natively.
    Splice,
    /// Code whose frames the runtime's program unwinds itself (JIT code): the walk is handed
    /// over while the PC is in the runtime's ranges.
    Takeover,
}

/// An address range a runtime owns in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnedRange {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// How it is unwound.
    pub mode: RangeMode,
    /// Native frames in the range (those the runtime hands back, or spliced frames' native
    /// frame) are unwound with the frame pointer, not a table: for anonymous code that keeps
    /// one. Ranges inside a mapped file use the file's table otherwise.
    pub frame_pointer: bool,
}

/// What a plug-in wants the kernel side to know about a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessUpdate {
    /// Writes to the runtime's own maps, applied in order.
    pub map_writes: Vec<MapWrite>,
    /// The ranges the runtime owns in the process from now on (`None`: unchanged). An empty
    /// list releases them all.
    pub ranges: Option<Vec<OwnedRange>>,
}

impl ProcessUpdate {
    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.map_writes.is_empty() && self.ranges.is_none()
    }
}

/// What a plug-in says after a process's mappings changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingsChanged {
    /// The runtime is still there; apply the update.
    Keep(ProcessUpdate),
    /// The runtime is gone from the process: detach it.
    Detach,
}

/// Whether a metric counts up or goes up and down (Prometheus's TYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows (names end in `_total`).
    Counter,
    /// A current value.
    Gauge,
}

/// One of a plug-in's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    /// The metric's name (the reference profiler's where it has one).
    pub name: Cow<'static, str>,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// Its value now.
    pub value: u64,
}

impl Metric {
    /// A counter.
    pub fn counter(name: impl Into<Cow<'static, str>>, value: u64) -> Self {
        Metric {
            name: name.into(),
            kind: MetricKind::Counter,
            value,
        }
    }

    /// A gauge.
    pub fn gauge(name: impl Into<Cow<'static, str>>, value: u64) -> Self {
        Metric {
            name: name.into(),
            kind: MetricKind::Gauge,
            value,
        }
    }
}

/// How much detail the names of runtime frames carry: the session's `demangle` setting
/// (`none` and `simplified`, `templates`, `full`), which runtimes with generic or overloaded
/// names follow as C++ names do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum NameDetail {
    /// No generic arguments, no parameters.
    #[default]
    Simplified,
    /// Generic parameters by name, no parameters.
    Templates,
    /// Everything the runtime says: the type arguments the code runs with.
    Full,
}

/// A runtime's unwinder, registered with [`inventory::submit!`] as an [`InterpreterPlugin`].
pub trait Interpreter: Send + Sync {
    /// The runtime's name (`python`): the key of `<name>_enabled` in the configuration, of
    /// `--no-interpreter NAME` and of the binary's cargo feature. Lowercase letters, digits
    /// and `_`.
    fn name(&self) -> &'static str;
    /// The runtime's name as metric names spell it (`Python` in
    /// `UnwindPythonAttempts_total`).
    fn metric_name(&self) -> &'static str;
    /// The runtime's eBPF program; `None` for a plug-in that records no frames of its own.
    fn ebpf(&self) -> Option<EbpfProgram>;
    /// Whether `file` is (part of) this runtime, from its name and symbols; called once per
    /// distinct file, so it may read symbol tables but must not read process memory.
    fn detect(&self, file: &dyn ElfFile) -> Result<Option<FileData>, InterpreterError>;
    /// Starts following a process that maps a detected file.
    fn attach(
        &self,
        data: &FileData,
        context: &AttachContext<'_>,
    ) -> Result<Box<dyn InterpreterProcess>, InterpreterError>;
    /// How detailed names should be; called once, before any process is attached. The
    /// default ignores it (a runtime whose names have no generic or overloaded parts).
    fn set_name_detail(&mut self, _detail: NameDetail) {}
    /// The plug-in's own metrics (summed over every process). The agent adds the runtime's
    /// eBPF counters and its naming counters.
    fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }
    /// Names of the naming counters: successes and failures
    /// (`<metric_name>SymbolizationSuccesses_total` and `...Failures_total` unless the
    /// reference profiler spells them otherwise).
    fn symbolization_metric_names(&self) -> (String, String) {
        let m = self.metric_name();
        (
            format!("{m}SymbolizationSuccesses_total"),
            format!("{m}SymbolizationFailures_total"),
        )
    }
}

/// A plug-in's state for one process.
pub trait InterpreterProcess: Send {
    /// What the kernel side needs to start unwinding the process (its per-process map
    /// entries and the ranges the runtime owns).
    fn start(&mut self) -> Result<ProcessUpdate, InterpreterError>;
    /// The process's mappings changed (a library was loaded, a code heap grew).
    fn mappings_changed(&mut self, mappings: &[MappedRange]) -> MappingsChanged;
    /// How often [`InterpreterProcess::refresh`] should be called (`None`: never).
    fn refresh_interval(&self) -> Option<Duration> {
        None
    }
    /// Whatever changed since the last update (JIT code ranges registered or freed).
    fn refresh(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        Ok(ProcessUpdate::default())
    }
    /// Names one frame the runtime's program recorded: appends one or more frames to `out`,
    /// innermost first (a method and the methods inlined into it).
    fn symbolize(
        &mut self,
        frame: &RawFrame,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<(), InterpreterError>;
    /// The runtime's name for a thread (`MainThread`), when it has one.
    fn thread_name(&mut self, _tid: u32) -> Option<String> {
        None
    }
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

/// Every runtime linked into this binary, sorted by name (inventory's order is not
/// guaranteed).
pub fn plugins() -> impl Iterator<Item = &'static InterpreterPlugin> {
    let mut all: Vec<&'static InterpreterPlugin> =
        inventory::iter::<InterpreterPlugin>.into_iter().collect();
    all.sort_by_key(|p| p.name);
    all.into_iter()
}

/// Why a set of plug-ins cannot be used together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two plug-ins have the same name.
    #[error("two runtime plug-ins are named `{0}`; each runtime must be linked once")]
    DuplicateName(String),
    /// A name that cannot be a configuration key.
    #[error(
        "the runtime plug-in name `{0}` is not a lowercase word (letters, digits, `_`), so \
         `{0}_enabled` cannot be a configuration key"
    )]
    BadName(String),
    /// More runtimes than the kernel side has slots for.
    #[error("{given} runtime plug-ins are enabled but the unwinder has {max} runtime slots")]
    TooMany {
        /// Enabled plug-ins.
        given: usize,
        /// Slots.
        max: usize,
    },
}

/// Checks that names are unique and usable as configuration keys.
pub fn check_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), RegistryError> {
    let mut seen = std::collections::HashSet::new();
    for n in names {
        let ok = !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && n.starts_with(|c: char| c.is_ascii_lowercase());
        if !ok {
            return Err(RegistryError::BadName(n.to_string()));
        }
        if !seen.insert(n) {
            return Err(RegistryError::DuplicateName(n.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_unique_lowercase_words() {
        assert_eq!(check_names(["python", "hotspot", "v8"]), Ok(()));
        assert_eq!(
            check_names(["python", "python"]),
            Err(RegistryError::DuplicateName("python".into()))
        );
        for bad in ["", "Python", "my-rt", "8bit", "py thon"] {
            assert_eq!(
                check_names([bad]),
                Err(RegistryError::BadName(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn updates_know_when_they_change_nothing() {
        assert!(ProcessUpdate::default().is_empty());
        let u = ProcessUpdate {
            map_writes: Vec::new(),
            ranges: Some(Vec::new()),
        };
        assert!(!u.is_empty(), "an empty range list releases every range");
    }
}
