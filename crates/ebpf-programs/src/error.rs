use std::io;

/// Why loading or running the eBPF programs failed. Each message says what failed, why
/// it usually happens, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel refused to load a program or create its maps.
    #[error(
        "could not load the eBPF sampler into the kernel: {source}. The usual causes are missing \
         privileges (run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE), a kernel \
         older than 5.8 or without BTF (/sys/kernel/btf/vmlinux); `ferroscope check` tells which"
    )]
    Load {
        /// aya's error, with the verifier log when there is one.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program could not be loaded or attached.
    #[error("could not {action} the eBPF program `{program}`: {source}. {hint}")]
    Program {
        /// "load" or "attach to CPU N".
        action: String,
        /// The program's name.
        program: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::programs::ProgramError>,
        /// What to do.
        hint: &'static str,
    },
    /// A map the object should contain is missing or has another type: a build problem.
    #[error(
        "the eBPF object has no usable map `{0}`; the object and the loader are out of step, rebuild ferroscope"
    )]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("eBPF map `{map}`: {action} failed: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// What was done.
        action: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// More PIDs were given than the filter map holds.
    #[error(
        "{given} PIDs were given but the sampler's PID filter holds at most {max}; profile the whole host instead (no --pid)"
    )]
    TooManyPids {
        /// How many were given.
        given: usize,
        /// The limit.
        max: usize,
    },
    /// The list of online CPUs could not be read.
    #[error("could not read the online CPUs from /sys/devices/system/cpu/online: {0}")]
    OnlineCpus(#[source] io::Error),
    /// BPF run-time statistics could not be turned on.
    #[error(
        "could not enable BPF run-time statistics (BPF_ENABLE_STATS): {0}; this needs root or CAP_SYS_ADMIN"
    )]
    Stats(#[source] aya::sys::SyscallError),
    /// A map size in [`crate::UnwinderConfig`] is out of range.
    #[error("unwinder map size {name} = {value} is out of range; use 1 to 268435456")]
    BadMapSize {
        /// The field.
        name: &'static str,
        /// The value given.
        value: u32,
    },
    /// The stack-delta entries array could not be memory-mapped.
    #[error(
        "could not memory-map the eBPF map fs_delta_entries: {0}; the kernel must support BPF_F_MMAPABLE arrays (5.5 or later)"
    )]
    MmapEntries(#[source] io::Error),
    /// A write would go past the end of the entries array.
    #[error(
        "{count} stack deltas at index {first} do not fit the {capacity} entries of fs_delta_entries; this is a bug in the range allocator"
    )]
    EntriesOutOfRange {
        /// First index written.
        first: u32,
        /// How many.
        count: usize,
        /// The array's size.
        capacity: u32,
    },
    /// More than 65536 distinct unwind rules.
    #[error(
        "more than 65536 distinct unwind rules were loaded; the eBPF entries index them with 16 bits, so the rest of this table cannot be loaded"
    )]
    TooManyUnwindInfos,
    /// An interpreter plug-in handed over data of the wrong size.
    #[error(
        "an interpreter plug-in gave {len} bytes of eBPF data where struct fs_interp_proc has {want}; the plug-in was built against another ABI: rebuild ferroscope"
    )]
    BadInterpreterData {
        /// Bytes given.
        len: usize,
        /// `size_of::<InterpProc>()`.
        want: usize,
    },
}
