//! Stack-delta unwind tables for native x86-64 code, and a host-side unwinder over them.
//!
//! A profiler that samples stacks in the kernel cannot run a DWARF interpreter there. This
//! crate runs it ahead of time: [`extract`] evaluates every CFI program of an ELF file
//! (`.eh_frame`, `.debug_frame`, also from a separate debug file) and Go's `.gopclntab`
//! SP-delta tables, and flattens the result into a [`StackDeltaTable`]: a sorted list of
//! `(address, rule)` pairs where each [`UnwindInfo`] says, in a handful of fixed forms,
//! how to find the caller's frame (CFA = RSP/RBP + offset, where RBP was saved, or a
//! command such as [`Kind::Stop`]). An eBPF program binary-searches that list; rules that
//! the fixed forms cannot express become [`Kind::Invalid`], so the walker stops instead of
//! guessing.
//!
//! [`unwind`] is the reference walker over the same tables, used by tests (and by anyone
//! checking what the eBPF side should produce for a captured stack).
//!
//! The crate is pure: no eBPF, no syscalls, no other ferroscope crate. It never panics on
//! malformed input and its work and memory are linear in the size of the input.
//!
//! ```
//! use ferroscope_unwind_native::{extract, unwind, ExtractOptions, Kind, LoadedModule, Registers, UnwindEnd};
//!
//! // Any x86-64 ELF file with CFI will do; the running test binary has .eh_frame.
//! let exe = std::env::current_exe().unwrap();
//! let bytes = std::fs::read(exe).unwrap();
//! let table = extract(&bytes, None, &ExtractOptions::default()).unwrap();
//! assert!(table.len() > 100);
//! // The table ends with an Invalid entry that closes the last function.
//! assert_eq!(table.deltas.last().unwrap().info.kind, Kind::Invalid);
//!
//! // Unwind a fake one-frame stack: RIP at a function's first byte, where CFA = RSP + 8.
//! let entry = table.deltas.iter().find(|d| d.info.kind == Kind::Sp && d.info.cfa_offset == 8).unwrap();
//! let module = LoadedModule { start: 0, end: u64::MAX, bias: 0, table: &table };
//! let regs = Registers { rip: entry.address, rsp: 0x7000, rbp: 0 };
//! // The return address on the stack is 0: a conventional end of stack.
//! let (frames, end) = unwind(regs, &|addr| (addr == 0x7000).then_some(0), &[module], 16);
//! assert_eq!(frames, vec![entry.address]);
//! assert_eq!(end, UnwindEnd::Stop);
//! ```
#![deny(missing_docs)]

mod build;
mod cfi;
mod elf;
mod encoding;
pub mod error;
mod functions;
mod golang;
mod unwind;

use std::collections::BTreeSet;

pub use encoding::TABLE_REVISION;
pub use error::Error;
pub use unwind::{LoadedModule, Registers, UnwindEnd, unwind};

/// How to find the caller's frame at an address range. x86-64: the return address is always
/// at CFA-8 (rows where it is not become [`Kind::Invalid`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnwindInfo {
    /// Which rule applies.
    pub kind: Kind,
    /// For Kind::Sp/Fp/SpDeref/FpDeref: CFA = base + cfa_offset, or *(base + cfa_offset)
    /// for the Deref kinds. Zero for the other kinds.
    pub cfa_offset: i32,
    /// Where the caller's RBP was saved: Some(off) = at CFA + off; None = RBP is unchanged
    /// in this frame. None for the command kinds (Plt, Signal, Stop, Invalid, FramePointer).
    pub fp_offset: Option<i32>,
}

/// The rule families; `repr(u8)` values are part of the ABI with the eBPF walker.
#[repr(u8)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// CFA = RSP + cfa_offset.
    Sp = 0,
    /// CFA = RBP + cfa_offset.
    Fp = 1,
    /// CFA = *(RSP + cfa_offset).
    SpDeref = 2,
    /// CFA = *(RBP + cfa_offset) (gcc's stack-realignment prologue).
    FpDeref = 3,
    /// PLT stub: CFA = RSP + 8, plus 8 when (RIP & 15) >= 11 (the standard .plt CFA expression)
    Plt = 4,
    /// A signal trampoline (__restore_rt, 'S' augmentation): registers come from the ucontext
    /// on the stack.
    Signal = 5,
    /// Unwinding ends here normally (RA undefined: _start, clone's thread entry, Go's
    /// goexit/mstart).
    Stop = 6,
    /// No usable rule (no CFI, unexpressible expression): the unwinder must stop with an error.
    Invalid = 7,
    /// Use frame pointers: CFA = RBP + 16, caller's RBP at CFA - 16 (for code known to keep
    /// them, e.g. Go).
    FramePointer = 8,
}

impl UnwindInfo {
    /// No usable rule.
    pub const INVALID: UnwindInfo = UnwindInfo::command(Kind::Invalid);
    /// End of the stack.
    pub const STOP: UnwindInfo = UnwindInfo::command(Kind::Stop);
    /// Signal trampoline.
    pub const SIGNAL: UnwindInfo = UnwindInfo::command(Kind::Signal);
    /// PLT stub.
    pub const PLT: UnwindInfo = UnwindInfo::command(Kind::Plt);
    /// Frame-pointer walk.
    pub const FRAME_POINTER: UnwindInfo = UnwindInfo::command(Kind::FramePointer);

    /// A command kind with its parameters zeroed (so equal commands compare equal).
    pub const fn command(kind: Kind) -> UnwindInfo {
        UnwindInfo {
            kind,
            cfa_offset: 0,
            fp_offset: None,
        }
    }

    /// CFA = RSP + `cfa_offset`; caller's RBP at CFA + `fp_offset` when saved.
    pub const fn sp(cfa_offset: i32, fp_offset: Option<i32>) -> UnwindInfo {
        UnwindInfo {
            kind: Kind::Sp,
            cfa_offset,
            fp_offset,
        }
    }

    /// CFA = RBP + `cfa_offset`; caller's RBP at CFA + `fp_offset` when saved.
    pub const fn fp(cfa_offset: i32, fp_offset: Option<i32>) -> UnwindInfo {
        UnwindInfo {
            kind: Kind::Fp,
            cfa_offset,
            fp_offset,
        }
    }
}

/// One table entry: `info` applies from `address` up to the next entry's address.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StackDelta {
    /// ELF virtual address (not a runtime address: add the load bias).
    pub address: u64,
    /// The rule from `address` on.
    pub info: UnwindInfo,
}

/// Sorted by address, unique addresses, no two adjacent entries with equal info; each entry
/// covers [address, next.address); the last entry is normally Invalid (end of text).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackDeltaTable {
    /// The entries, sorted by address.
    pub deltas: Vec<StackDelta>,
}

impl StackDeltaTable {
    /// The rule for an ELF virtual address: the entry with the greatest address `<= vaddr`.
    /// `None` below the first entry.
    pub fn lookup(&self, vaddr: u64) -> Option<&UnwindInfo> {
        let idx = self.deltas.partition_point(|d| d.address <= vaddr);
        idx.checked_sub(1).map(|i| &self.deltas[i].info)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.deltas.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }

    /// Heap bytes held by the entries (`len() * size_of::<StackDelta>()`, 24 bytes each).
    /// An eBPF encoding with 16-bit address low bits and a 16-bit index into a global info
    /// array needs `4 * len()` plus a page index.
    pub fn size_in_bytes(&self) -> usize {
        self.deltas.len() * std::mem::size_of::<StackDelta>()
    }

    /// Distinct infos, sorted (for global deduplication by the loader).
    pub fn distinct_infos(&self) -> Vec<UnwindInfo> {
        let set: BTreeSet<UnwindInfo> = self.deltas.iter().map(|d| d.info).collect();
        set.into_iter().collect()
    }
}

/// Tuning of [`extract`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractOptions {
    /// Merge a 1-2 byte `push`/`pop` row into the row that follows it (see
    /// [`ExtractOptions::default`] for why this is off by default). What is merged: an entry
    /// at address A that is immediately followed, 1 or 2 bytes later, by an entry whose
    /// rule is the same [`Kind::Sp`] rule with `cfa_offset` 8 larger (push) or 8 smaller
    /// (pop) and whose code at A is exactly one `push reg`/`pop reg` instruction of that
    /// length: the entry at A is dropped, so the following rule starts at A. Lookups of
    /// return addresses (`ra - 1`, always inside a call instruction) never land on a push or
    /// pop, so caller frames are unaffected; a *leaf* frame sampled exactly on that push/pop
    /// gets a CFA 8 bytes off.
    pub merge_push_pop: bool,
    /// Gaps between functions longer than this many bytes get an Invalid entry; shorter
    /// gaps (alignment padding) extend the previous entry.
    pub invalid_gap_threshold: u64,
}

impl Default for ExtractOptions {
    /// `merge_push_pop: false`, `invalid_gap_threshold: 15`.
    ///
    /// The reference profiler merges push/pop rows losslessly by storing a "merge opcode"
    /// in each unwind info (the walker adds ±8 when the PC is past the push). [`UnwindInfo`]
    /// has no such field, so every merge here changes the rule at one leaf PC; exact
    /// tables are the default.
    fn default() -> Self {
        ExtractOptions {
            merge_push_pop: false,
            invalid_gap_threshold: 15,
        }
    }
}

/// Builds the stack-delta table of an x86-64 ELF file.
///
/// `elf`: the mapped file; `debug_elf`: its separate debug file when the caller found one
/// (its `.debug_frame` is used when the file itself has fewer than 8 functions with CFI).
///
/// Sources, first match wins where they overlap: `.gopclntab` (Go), `.eh_frame` (through
/// the `.eh_frame_hdr` search table when present), the file's `.debug_frame`, the debug
/// file's `.debug_frame`.
pub fn extract(
    elf: &[u8],
    debug_elf: Option<&[u8]>,
    opts: &ExtractOptions,
) -> Result<StackDeltaTable, Error> {
    build::extract(elf, debug_elf, opts)
}

/// The address ranges of the file's functions as its CFI describes them: one `start..end`
/// per FDE of `.eh_frame` (through `.eh_frame_hdr` when present) and `.debug_frame`, sorted,
/// deduplicated. A function the compiler split (a `.cold` part elsewhere) has one range per
/// part, so this finds the parts of functions whose symbols were stripped.
pub fn function_ranges(elf: &[u8]) -> Result<Vec<std::ops::Range<u64>>, Error> {
    functions::function_ranges(elf)
}

/// [`function_ranges`] of an open file, read with `pread` (see [`extract_file`]).
pub fn function_ranges_file(elf: &std::fs::File) -> Result<Vec<std::ops::Range<u64>>, Error> {
    functions::function_ranges(&object::ReadCache::new(elf))
}

/// [`extract`] from open files, read with `pread`: only the headers and the sections the
/// table is built from are read (and held while it is built), nothing is mapped, and a
/// file that another process truncates meanwhile gives an error rather than a `SIGBUS`.
/// This is how to read files that other processes own (a container's libraries).
pub fn extract_file(
    elf: &std::fs::File,
    debug_elf: Option<&std::fs::File>,
    opts: &ExtractOptions,
) -> Result<StackDeltaTable, Error> {
    let elf = object::ReadCache::new(elf);
    let debug = debug_elf.map(object::ReadCache::new);
    build::extract(&elf, debug.as_ref(), opts)
}
