//! The ABI between ferroscope's eBPF programs and userspace: the C headers every program
//! includes and their Rust mirrors.
//!
//! This crate is what a runtime unwinder crate builds on: it has no aya, no build script and
//! no I/O. Its headers (`include/ferroscope/abi.h` for the types that cross the boundary,
//! `state.h` for what the programs of one sample share, `runtime.h` for what a runtime
//! program builds on, and the committed `vmlinux.h`) are found with [`include_dir`], and
//! [`build::compile_program`] compiles a program against them from a build script,
//! once for kernels with `bpf_loop` and once for older ones. The mirrors are checked against
//! the BTF clang emits for the headers (`tests/layout.rs`), so a change on one side that is
//! not made on the other fails a test instead of corrupting data.
//!
//! ```
//! use ferroscope_ebpf_abi::{Counter, TraceRecord, UnwindError};
//!
//! // Every native counter has one declaration: its C name, its metric name.
//! assert_eq!(Counter::UnwindAttempts.c_name(), "FS_CNT_UNWIND_ATTEMPTS");
//! assert_eq!(Counter::UnwindAttempts.metric_name(), "UnwindNativeAttempts_total");
//! // A ring-buffer record too short for its header is refused.
//! assert!(TraceRecord::parse(&[0u8; 8]).is_none());
//! assert_eq!(UnwindError::from_raw(1), Some(UnwindError::NoMapping));
//! ```
#![deny(missing_docs)]

pub mod btf;
pub mod build;
mod counters;
mod events;
mod plain;
mod tables;
mod trace;

pub use counters::{Counter, UnwindError, runtime_counter_key};
pub use events::{PidEvent, PidEventKind};
pub use plain::{Aligned, Plain};
pub use tables::{
    DeltaEntry, DeltaPage, DeltaPageKey, MAPPING_FRAME_POINTER, MAPPING_SPLICE, PidMapping,
    PidMappingKey, UNWIND_FLAG_FP_SAVED, UnwindInfoRaw, UnwindKind,
};
pub use trace::{
    FRAME_KIND_SHIFT, FRAME_NATIVE, FRAME_PAYLOAD_MASK, NATIVE_EXACT, TRACE_IN_KERNEL,
    TRACE_KERNEL_THREAD, TRACE_KPROBE, TRACE_OFF_CPU, TRACE_PROBE, TRACE_PROBE_SHIFT,
    TRACE_USER_FP, TraceHeader, TraceRecord, UserFrame,
};

/// `FS_MAX_KERNEL_FRAMES`: longest kernel stack recorded per sample.
pub const MAX_KERNEL_FRAMES: usize = 64;
/// `FS_MAX_USER_FRAMES`: longest user stack recorded per sample.
pub const MAX_USER_FRAMES: usize = 256;
/// `FS_COMM_LEN`: length of a task's comm, including the NUL.
pub const COMM_LEN: usize = 16;
/// `FS_DELTA_PAGE_BITS`: tables are split into pages of `1 << DELTA_PAGE_BITS` bytes.
pub const DELTA_PAGE_BITS: u32 = 16;
/// `FS_MAX_UNWIND_INFOS`: most distinct unwind rules.
pub const MAX_UNWIND_INFOS: usize = 65536;
/// `FS_MAX_RUNTIMES`: slots of the tail-call table (slot 0 is the native unwinder).
pub const MAX_RUNTIMES: usize = 8;
/// `FS_PROG_NATIVE`: the native unwinder's slot.
pub const PROG_NATIVE: u32 = 0;
/// `FS_RT_COMMON_COUNTERS`: counters every runtime has in `fs_runtime_counters`.
pub const RT_COMMON_COUNTERS: u32 = 3;
/// `FS_RT_CNT_ATTEMPTS`: times a runtime's frames were looked for.
pub const RT_CNT_ATTEMPTS: u32 = 0;
/// `FS_RT_CNT_FRAMES`: frames of a runtime recorded.
pub const RT_CNT_FRAMES: u32 = 1;
/// `FS_RT_CNT_NO_FRAMES`: native frames of a runtime's splice range with no frames queued.
pub const RT_CNT_NO_FRAMES: u32 = 2;

/// The directory holding `vmlinux.h` and `ferroscope/*.h`, for `clang -I`.
pub fn include_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

/// Embeds a compiled eBPF object from the including crate's `OUT_DIR`, aligned as an ELF
/// parser needs (`include_object!("python.bpf.o")`).
#[macro_export]
macro_rules! include_object {
    ($name:expr) => {{
        static OBJECT: &$crate::Aligned<[u8]> =
            &$crate::Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/", $name)));
        &OBJECT.0
    }};
}

/// What starts a sample (`FS_ENTRY`): each program of the set is built once per entry,
/// because a program reached by tail call must be of its caller's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry {
    /// The CPU sampler's perf event (`perf_event` programs, the `fs_progs` table).
    Cpu,
    /// The `sched_switch` raw tracepoint, for off-CPU profiles (`fs_progs_switch`).
    Switch,
    /// A uprobe or uretprobe of a probe link (`kprobe`-type programs, `fs_progs_probe`).
    Probe,
}

impl Entry {
    /// Every entry, the CPU sampler's first.
    pub const ALL: [Entry; 3] = [Entry::Cpu, Entry::Switch, Entry::Probe];

    /// The entry's tail-call table.
    pub fn table(self) -> &'static str {
        match self {
            Entry::Cpu => "fs_progs",
            Entry::Switch => "fs_progs_switch",
            Entry::Probe => "fs_progs_probe",
        }
    }

    /// How logs and `check` name it.
    pub fn describe(self) -> &'static str {
        match self {
            Entry::Cpu => "cpu",
            Entry::Switch => "off-cpu",
            Entry::Probe => "probe",
        }
    }
}

/// One entry's two builds of a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Builds {
    /// For kernels with `bpf_loop` (5.17+).
    pub modern: &'static [u8],
    /// For older kernels (5.10 to 5.16).
    pub legacy: &'static [u8],
}

/// Every build of one program: per entry, per kernel kind ([`include_objects!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectSet {
    /// The CPU sampler's entry.
    pub cpu: Builds,
    /// The off-CPU entry.
    pub switch: Builds,
    /// The probe entry.
    pub probe: Builds,
}

impl ObjectSet {
    /// The builds for `entry`.
    pub fn get(&self, entry: Entry) -> Builds {
        match entry {
            Entry::Cpu => self.cpu,
            Entry::Switch => self.switch,
            Entry::Probe => self.probe,
        }
    }
}

/// Embeds every build [`build::compile_program`] made of one source
/// (`include_objects!("python.bpf")`), as an [`ObjectSet`].
#[macro_export]
macro_rules! include_objects {
    ($stem:literal) => {
        $crate::ObjectSet {
            cpu: $crate::Builds {
                modern: $crate::include_object!(concat!($stem, ".o")),
                legacy: $crate::include_object!(concat!($stem, ".legacy.o")),
            },
            switch: $crate::Builds {
                modern: $crate::include_object!(concat!($stem, ".switch.o")),
                legacy: $crate::include_object!(concat!($stem, ".switch.legacy.o")),
            },
            probe: $crate::Builds {
                modern: $crate::include_object!(concat!($stem, ".probe.o")),
                legacy: $crate::include_object!(concat!($stem, ".probe.legacy.o")),
            },
        }
    };
}
