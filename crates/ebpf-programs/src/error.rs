use std::io;
use std::path::PathBuf;

/// Why loading or running the eBPF programs failed. Each message says what failed, why
/// it usually happens, and what to do about it; the underlying error is the `source`, printed
/// once by whoever prints the chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel refused to create the maps or load the object's BTF.
    #[error(
        "could not load the eBPF object into the kernel. The usual causes are missing \
         privileges (run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE), or a \
         kernel older than 5.10 or without BTF (/sys/kernel/btf/vmlinux)"
    )]
    Load {
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A native program the sampler cannot work without was rejected by the verifier in
    /// every build.
    #[error(
        "the kernel rejected the eBPF program `{program}`: {reason}. ferroscope needs Linux \
         5.10 or later; on a newer kernel this is a bug: please report it with the output of \
         `ferroscope check`"
    )]
    ProgramRejected {
        /// The program.
        program: String,
        /// Why, in one line.
        reason: String,
        /// The end of the verifier's log (not part of the message: print it for a bug report).
        log_tail: String,
    },
    /// A program could not be attached.
    #[error("could not {action} the eBPF program `{program}`. {hint}")]
    Program {
        /// What was being done.
        action: String,
        /// The program's name.
        program: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::programs::ProgramError>,
        /// What to do.
        hint: &'static str,
    },
    /// A probe could not be attached to its file.
    #[error(
        "could not attach a probe to {} at offset {offset:#x}: the file must be a readable ELF \
         file on a file system that supports uprobes, and the offset an instruction's",
        path.display()
    )]
    Probe {
        /// The file.
        path: std::path::PathBuf,
        /// The offset in it.
        offset: u64,
        /// aya's error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A kernel probe could not be attached to its function.
    #[error(
        "could not attach a kernel probe to {function}: the kernel must have kprobes \
         (CONFIG_KPROBES) and the function must be in /proc/kallsyms, not inlined away, and \
         not on the kernel's kprobe blacklist"
    )]
    KernelProbe {
        /// The kernel function.
        function: String,
        /// aya's error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map or program the object should contain is missing or has another type: a build
    /// problem.
    #[error(
        "the eBPF object has no usable `{0}`; the object and the loader are out of step: rebuild ferroscope"
    )]
    MissingMap(String),
    /// A map operation failed.
    #[error("could not {action} the eBPF map `{map}`")]
    Map {
        /// The map's name.
        map: String,
        /// What was done.
        action: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// More runtime programs than the tail-call table has slots.
    #[error(
        "{given} runtime programs were given but the unwinder has {max} runtime slots; turn some runtimes off"
    )]
    TooManyRuntimes {
        /// How many were given.
        given: usize,
        /// Slots.
        max: usize,
    },
    /// A runtime slot with no loaded program.
    #[error("no runtime program is loaded in slot {slot}")]
    NoSuchRuntime {
        /// The slot.
        slot: u32,
    },
    /// The pin directory for the shared maps could not be made.
    #[error(
        "could not make {path} for the shared eBPF maps: runtime programs need a bpffs \
         (mounted at /sys/fs/bpf, or mountable, which needs CAP_SYS_ADMIN)"
    )]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The list of online CPUs could not be read.
    #[error("could not read the online CPUs from /sys/devices/system/cpu/online")]
    OnlineCpus(#[source] io::Error),
    /// BPF run-time statistics could not be turned on.
    #[error(
        "could not enable BPF run-time statistics (BPF_ENABLE_STATS); this needs root or CAP_SYS_ADMIN"
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
        "could not memory-map the eBPF map fs_delta_entries; the kernel must support BPF_F_MMAPABLE arrays (5.5 or later)"
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
}
