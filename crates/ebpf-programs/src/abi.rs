//! Rust mirrors of `bpf/ferroscope.h`. Keep in step with the header; the tests in this module
//! compare both against the BTF of the compiled object.

/// Longest kernel stack in a [`TraceEvent`] (`FS_MAX_KERNEL_FRAMES`).
pub const MAX_KERNEL_FRAMES: usize = 64;
/// Longest user stack in a [`TraceEvent`] (`FS_MAX_USER_FRAMES`).
pub const MAX_USER_FRAMES: usize = 256;
/// Length of a task's comm including its NUL (`FS_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Most PIDs the sampler's PID filter holds (`FS_MAX_FILTER_PIDS`).
pub const MAX_FILTER_PIDS: usize = 1024;
/// Stack-delta tables are split into pages of `1 << DELTA_PAGE_BITS` bytes (`FS_DELTA_PAGE_BITS`).
pub const DELTA_PAGE_BITS: u32 = 16;
/// Most distinct unwind rules, shared by every table (`FS_MAX_UNWIND_INFOS`).
pub const MAX_UNWIND_INFOS: usize = 65536;

/// `FS_TRACE_IN_KERNEL`: the sample interrupted the kernel.
pub const TRACE_IN_KERNEL: u32 = 0x1;
/// `FS_TRACE_KERNEL_THREAD`: the task has no user address space.
pub const TRACE_KERNEL_THREAD: u32 = 0x2;
/// `FS_TRACE_USER_FP`: the user stack is the kernel's frame-pointer walk (the process's
/// unwind tables were not loaded yet), not the stack-delta unwinder's.
pub const TRACE_USER_FP: u32 = 0x4;

/// `struct fs_trace_event`: one sampled stack, frames leaf first.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TraceEvent {
    /// Thread-group ID (the process).
    pub pid: u32,
    /// Thread ID.
    pub tid: u32,
    /// `bpf_ktime_get_ns()` when sampled.
    pub ktime_ns: u64,
    /// The CPU that was sampled.
    pub cpu: u32,
    /// `TRACE_*` bits.
    pub flags: u32,
    /// Valid entries in `kernel_frames`, or a negative errno.
    pub kernel_len: i32,
    /// Valid entries in `user_frames`, or a negative errno.
    pub user_len: i32,
    /// The thread's comm, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// Why the user stack ends early: an [`UnwindError`] value, 0 when it does not.
    pub user_error: u32,
    /// Interpreter frames in `user_frames`; when 0, `user_aux` and `user_kinds` are not set.
    pub interp_frames: u32,
    /// Kernel stack, leaf first.
    pub kernel_frames: [u64; MAX_KERNEL_FRAMES],
    /// User stack, leaf first: a native frame's address, or what identifies an interpreter
    /// frame's function (see `user_kinds`).
    pub user_frames: [u64; MAX_USER_FRAMES],
    /// For an interpreter frame, where in its function (interpreter-specific).
    pub user_aux: [u64; MAX_USER_FRAMES],
    /// The [`FrameKindRaw`] of each user frame.
    pub user_kinds: [u8; MAX_USER_FRAMES],
}

/// `enum fs_frame_kind`: what a user frame of a [`TraceEvent`] is. Interpreter kinds equal
/// their [`InterpKind`].
pub type FrameKindRaw = u8;
/// `FS_FRAME_NATIVE`.
pub const FRAME_NATIVE: FrameKindRaw = 0;
/// `FS_FRAME_PYTHON`.
pub const FRAME_PYTHON: FrameKindRaw = 1;

/// `enum fs_interp_kind`: which interpreter walker a process needs.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterpKind {
    /// `FS_INTERP_PYTHON`: CPython.
    Python = 1,
}

/// `FS_INTERP_RANGES`: code ranges of one interpreter's eval loop.
pub const INTERP_RANGES: usize = 2;
/// `FS_INTERP_FRAME_READ`: longest frame prefix an interpreter walker reads at once.
pub const INTERP_FRAME_READ: usize = 128;
/// A field a [`PyProc`] does not have (`0xffff`).
pub const NO_FIELD: u16 = 0xffff;

/// `enum fs_py_frame_model`.
pub const PY_FRAMES_OBJECT: u8 = 0;
/// `FS_PY_FRAMES_INTERPRETER`.
pub const PY_FRAMES_INTERPRETER: u8 = 1;
/// `enum fs_py_entry_kind`: `FS_PY_ENTRY_ONE` (one frame per eval call, 3.6-3.10).
pub const PY_ENTRY_ONE: u8 = 0;
/// `FS_PY_ENTRY_FLAG`: 3.11's `is_entry`.
pub const PY_ENTRY_FLAG: u8 = 1;
/// `FS_PY_ENTRY_SHIM`: 3.12+'s shim frames owned by the C stack.
pub const PY_ENTRY_SHIM: u8 = 2;

/// `struct fs_py_proc`: one CPython version's offsets and where a process keeps its
/// interpreters. Offsets are bytes; [`NO_FIELD`] when a field does not exist.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PyProc {
    /// Address of the pointer to the first `PyInterpreterState`.
    pub interp_head: u64,
    /// Mask applied to a frame's code pointer.
    pub code_mask: u64,
    /// `PyInterpreterState.next`.
    pub interp_next: u16,
    /// `PyInterpreterState.tstate_head` / `threads.head`.
    pub interp_threads_head: u16,
    /// `PyThreadState.next`.
    pub tstate_next: u16,
    /// `PyThreadState.thread_id`.
    pub tstate_thread_id: u16,
    /// `PyThreadState.frame` / `cframe` / `current_frame`.
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame` (3.11, 3.12), else [`NO_FIELD`].
    pub cframe_current_frame: u16,
    /// The frame's code pointer.
    pub frame_code: u16,
    /// The frame's caller.
    pub frame_previous: u16,
    /// `f_lasti` (an int) or the instruction pointer.
    pub frame_instr: u16,
    /// `is_entry` or `owner` (a byte).
    pub frame_entry: u16,
    /// Bytes read per frame.
    pub frame_read_len: u16,
    /// `co_firstlineno`: the fingerprint recorded with each code pointer.
    pub code_firstlineno: u16,
    /// `co_code_adaptive` (3.11+).
    pub code_adaptive: u16,
    /// `PY_FRAMES_*`.
    pub frame_model: u8,
    /// `PY_ENTRY_*`.
    pub entry_kind: u8,
    /// `FRAME_OWNED_BY_CSTACK`.
    pub owner_cstack: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

impl InterpProc {
    /// Size of the kernel-side value.
    pub const SIZE: usize = std::mem::size_of::<InterpProc>();

    /// The value's bytes, as an interpreter plug-in hands them to the agent.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        out.extend_from_slice(&self.kind.to_ne_bytes());
        out.extend_from_slice(&self.reserved.to_ne_bytes());
        for v in self.loop_start.iter().chain(&self.loop_end) {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        let p = &self.py;
        out.extend_from_slice(&p.interp_head.to_ne_bytes());
        out.extend_from_slice(&p.code_mask.to_ne_bytes());
        for v in [
            p.interp_next,
            p.interp_threads_head,
            p.tstate_next,
            p.tstate_thread_id,
            p.tstate_frame,
            p.cframe_current_frame,
            p.frame_code,
            p.frame_previous,
            p.frame_instr,
            p.frame_entry,
            p.frame_read_len,
            p.code_firstlineno,
            p.code_adaptive,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.extend_from_slice(&[p.frame_model, p.entry_kind, p.owner_cstack]);
        out.extend_from_slice(&p.reserved);
        debug_assert_eq!(out.len(), Self::SIZE);
        out
    }

    /// Decodes [`InterpProc::to_bytes`]; `None` when the length is not [`InterpProc::SIZE`].
    pub fn from_bytes(bytes: &[u8]) -> Option<InterpProc> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        // SAFETY: exactly SIZE bytes; InterpProc is repr(C) made only of integers and
        // integer arrays with no padding (the ABI test pins every offset), so every bit
        // pattern is a valid value; read_unaligned copes with any alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<InterpProc>()) })
    }
}

/// `struct fs_interp_proc`: value of `fs_interp_procs` for a process running an interpreter.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct InterpProc {
    /// An [`InterpKind`] value.
    pub kind: u32,
    /// Zero.
    pub reserved: u32,
    /// Starts of the eval loop's code ranges (process addresses).
    pub loop_start: [u64; INTERP_RANGES],
    /// Ends (exclusive); an unused range is 0..0.
    pub loop_end: [u64; INTERP_RANGES],
    /// CPython's data.
    pub py: PyProc,
}

impl std::fmt::Debug for TraceEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceEvent")
            .field("pid", &self.pid)
            .field("tid", &self.tid)
            .field("cpu", &self.cpu)
            .field("flags", &self.flags)
            .field("comm", &self.comm_str())
            .field("user_error", &self.user_error())
            .field("kernel_frames", &self.kernel_frames())
            .field("user_frames", &self.user_frames())
            .finish()
    }
}

impl TraceEvent {
    /// Size of the record in the ring buffer.
    pub const SIZE: usize = std::mem::size_of::<TraceEvent>();

    /// Decodes a record from the bytes of a ring-buffer entry; `None` when it is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<TraceEvent> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        // SAFETY: `bytes` holds at least SIZE bytes (checked above); TraceEvent is repr(C)
        // made only of integers and integer arrays, so every bit pattern is a valid value;
        // read_unaligned copes with any alignment of the ring-buffer memory.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TraceEvent>()) })
    }

    /// The comm as text, up to the first NUL.
    pub fn comm_str(&self) -> String {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }

    /// The valid kernel frames (empty when the stack could not be read).
    pub fn kernel_frames(&self) -> &[u64] {
        let n = usize::try_from(self.kernel_len)
            .unwrap_or(0)
            .min(MAX_KERNEL_FRAMES);
        &self.kernel_frames[..n]
    }

    /// The valid user frames (empty when the stack could not be read).
    pub fn user_frames(&self) -> &[u64] {
        &self.user_frames[..self.user_count()]
    }

    /// The kind ([`FrameKindRaw`]) and aux word of each valid user frame; `None` when the
    /// stack has no interpreter frames (every frame is native).
    pub fn user_frame_kinds(&self) -> Option<(&[u8], &[u64])> {
        if self.interp_frames == 0 {
            return None;
        }
        let n = self.user_count();
        Some((&self.user_kinds[..n], &self.user_aux[..n]))
    }

    fn user_count(&self) -> usize {
        usize::try_from(self.user_len)
            .unwrap_or(0)
            .min(MAX_USER_FRAMES)
    }

    /// Why the stack-delta unwinder stopped early, if it did.
    pub fn user_error(&self) -> Option<UnwindError> {
        UnwindError::from_raw(self.user_error)
    }
}

/// `enum fs_unwind_error`: why the stack-delta unwinder ended a user stack early.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnwindError {
    /// The PC lies in no loaded mapping (JIT code, or a library loaded since the last scan).
    NoMapping = 1,
    /// The PC's file has no table page there (no CFI covers it).
    NoPage = 2,
    /// The rule in effect at the PC is Invalid.
    InvalidRule = 3,
    /// Reading the process's stack failed.
    ReadFailed = 4,
    /// The stack is deeper than [`MAX_USER_FRAMES`].
    StackLengthExceeded = 5,
    /// The CFA did not move up the stack.
    BadCfa = 6,
    /// A return address below 0x1000.
    SmallPc = 7,
    /// The task's user registers could not be read.
    NoRegisters = 8,
    /// An index in the loaded tables points outside its map.
    BadTable = 9,
}

impl UnwindError {
    /// Every error, in value order.
    pub const ALL: [UnwindError; 9] = [
        UnwindError::NoMapping,
        UnwindError::NoPage,
        UnwindError::InvalidRule,
        UnwindError::ReadFailed,
        UnwindError::StackLengthExceeded,
        UnwindError::BadCfa,
        UnwindError::SmallPc,
        UnwindError::NoRegisters,
        UnwindError::BadTable,
    ];
    /// `FS_UNWIND_ERR_MAX`.
    pub const COUNT: u32 = 10;

    /// The error with this value; `None` for 0 (no error) and unknown values.
    pub fn from_raw(value: u32) -> Option<UnwindError> {
        Self::ALL.iter().copied().find(|e| *e as u32 == value)
    }

    /// A short description, for the frame that ends such a stack.
    pub fn describe(self) -> &'static str {
        match self {
            UnwindError::NoMapping => "no mapping",
            UnwindError::NoPage => "no unwind table",
            UnwindError::InvalidRule => "no unwind rule",
            UnwindError::ReadFailed => "stack read failed",
            UnwindError::StackLengthExceeded => "stack too deep",
            UnwindError::BadCfa => "bad CFA",
            UnwindError::SmallPc => "small PC",
            UnwindError::NoRegisters => "no user registers",
            UnwindError::BadTable => "bad table",
        }
    }
}

/// `enum fs_pid_event_kind`: what an [`PidEvent`] reports.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PidEventKind {
    /// A process whose tables are not loaded was sampled.
    New = 0,
    /// A known process ran code outside its loaded mappings.
    Rescan = 1,
    /// A known process exited.
    Exit = 2,
}

impl PidEventKind {
    /// Every kind, in value order.
    pub const ALL: [PidEventKind; 3] =
        [PidEventKind::New, PidEventKind::Rescan, PidEventKind::Exit];
}

/// `struct fs_pid_event`: one report through the `fs_pid_events` ring buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidEvent {
    /// The process.
    pub pid: u32,
    /// A [`PidEventKind`] value.
    pub kind: u32,
}

impl PidEvent {
    /// Decodes a ring-buffer record; `None` when it is too short or of an unknown kind.
    pub fn from_bytes(bytes: &[u8]) -> Option<(u32, PidEventKind)> {
        let pid = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
        let kind = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
        let kind = PidEventKind::ALL
            .iter()
            .copied()
            .find(|k| *k as u32 == kind)?;
        Some((pid, kind))
    }
}

/// `struct fs_pid_mapping_key`: key of the `fs_pid_mappings` LPM trie.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidMappingKey {
    /// Bits of `pid` and `address_be` that must match (32 + the address prefix length).
    pub prefixlen: u32,
    /// The process.
    pub pid: u32,
    /// The address prefix, big-endian.
    pub address_be: u64,
}

/// `struct fs_pid_mapping`: which file a process maps in a range, and where.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PidMapping {
    /// The file's content identity as 64 bits.
    pub file_id: u64,
    /// The file's virtual address of process address A is A - bias.
    pub bias: u64,
    /// First address of the whole mapping.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
}

/// `struct fs_delta_page_key`: one 64 KiB page of one file's virtual addresses.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeltaPageKey {
    /// The file.
    pub file_id: u64,
    /// `vaddr >> DELTA_PAGE_BITS`.
    pub page: u64,
}

/// `struct fs_delta_page`: where a page's entries are in the entries array.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeltaPage {
    /// Index of the first entry.
    pub first: u32,
    /// Number of entries (at least 1; the first has `address_low` 0).
    pub count: u32,
}

/// `struct fs_delta_entry`: a rule from a page offset to the next entry's.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DeltaEntry {
    /// Offset in the page where the rule starts.
    pub address_low: u16,
    /// Index of the rule in the infos array.
    pub info_index: u16,
}

/// `enum fs_unwind_kind`: how the unwinder finds the caller's frame.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnwindKind {
    /// CFA = RSP + cfa_offset.
    Sp = 0,
    /// CFA = RBP + cfa_offset.
    Fp = 1,
    /// CFA = *(RSP + cfa_offset).
    SpDeref = 2,
    /// CFA = *(RBP + cfa_offset).
    FpDeref = 3,
    /// A PLT stub.
    Plt = 4,
    /// The signal return trampoline: registers from the ucontext at RSP.
    Signal = 5,
    /// The outermost frame.
    Stop = 6,
    /// No rule.
    Invalid = 7,
    /// CFA = RBP + 16, caller's RBP at CFA - 16.
    FramePointer = 8,
}

impl UnwindKind {
    /// Every kind, in value order.
    pub const ALL: [UnwindKind; 9] = [
        UnwindKind::Sp,
        UnwindKind::Fp,
        UnwindKind::SpDeref,
        UnwindKind::FpDeref,
        UnwindKind::Plt,
        UnwindKind::Signal,
        UnwindKind::Stop,
        UnwindKind::Invalid,
        UnwindKind::FramePointer,
    ];
}

/// `FS_UNWIND_FLAG_FP_SAVED`: the caller's RBP is saved at CFA + `fp_offset`.
pub const UNWIND_FLAG_FP_SAVED: u8 = 0x1;

/// `struct fs_unwind_info`: one unwind rule.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UnwindInfoRaw {
    /// An [`UnwindKind`] value.
    pub kind: u8,
    /// `UNWIND_FLAG_*` bits.
    pub flags: u8,
    /// Zero.
    pub reserved: u16,
    /// Offset added to the CFA's base register.
    pub cfa_offset: i32,
    /// Where the caller's RBP is saved, relative to the CFA (with `UNWIND_FLAG_FP_SAVED`).
    pub fp_offset: i32,
    /// Zero.
    pub reserved2: u32,
}

/// `enum fs_counter`: indexes of the per-CPU counter array.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Every run of the sampling program.
    Samples = 0,
    /// Samples of the idle task, not recorded.
    Idle = 1,
    /// Samples outside the PID filter.
    Filtered = 2,
    /// Samples lost because the ring buffer was full.
    LostRingbufFull = 3,
    /// Failed kernel stack reads.
    KernelStackError = 4,
    /// Failed user stack reads (frame-pointer fallback).
    UserStackError = 5,
    /// Samples sent to userspace.
    Sent = 6,
    /// User stacks the stack-delta unwinder walked.
    UnwindAttempts = 7,
    /// User frames it produced.
    UnwindFrames = 8,
    /// Stacks that ended normally (Stop rule or zero return address).
    UnwindStop = 9,
    /// Return addresses below 0x1000.
    UnwindSmallPc = 10,
    /// Stacks ended by [`UnwindError::NoMapping`].
    UnwindErrNoMapping = 11,
    /// Stacks ended by [`UnwindError::NoPage`].
    UnwindErrNoPage = 12,
    /// Stacks ended by [`UnwindError::InvalidRule`].
    UnwindErrInvalidRule = 13,
    /// Stacks ended by [`UnwindError::ReadFailed`].
    UnwindErrReadFailed = 14,
    /// Stacks ended by [`UnwindError::StackLengthExceeded`].
    UnwindErrStackLength = 15,
    /// Stacks ended by [`UnwindError::BadCfa`].
    UnwindErrBadCfa = 16,
    /// Stacks ended by [`UnwindError::NoRegisters`].
    UnwindErrNoRegs = 17,
    /// Stacks ended by [`UnwindError::BadTable`].
    UnwindErrBadTable = 18,
    /// Samples of processes whose tables were not loaded (frame-pointer walk instead).
    PidUnknown = 19,
    /// Reports sent through `fs_pid_events`.
    PidReports = 20,
    /// Reports lost because `fs_pid_events` was full.
    PidReportsLost = 21,
    /// Signal frames unwound.
    UnwindSignalFrames = 22,
    /// Native eval-loop frames whose Python frames were looked for.
    PyAttempts = 23,
    /// Python frames recorded.
    PyFrames = 24,
    /// Samples of a Python process's thread without a Python thread state.
    PyErrNoThread = 25,
    /// Failed reads of a thread state or frame.
    PyErrRead = 26,
    /// Eval-loop frames with no Python frame left for them.
    PyErrNoFrame = 27,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 28] = [
        Counter::Samples,
        Counter::Idle,
        Counter::Filtered,
        Counter::LostRingbufFull,
        Counter::KernelStackError,
        Counter::UserStackError,
        Counter::Sent,
        Counter::UnwindAttempts,
        Counter::UnwindFrames,
        Counter::UnwindStop,
        Counter::UnwindSmallPc,
        Counter::UnwindErrNoMapping,
        Counter::UnwindErrNoPage,
        Counter::UnwindErrInvalidRule,
        Counter::UnwindErrReadFailed,
        Counter::UnwindErrStackLength,
        Counter::UnwindErrBadCfa,
        Counter::UnwindErrNoRegs,
        Counter::UnwindErrBadTable,
        Counter::PidUnknown,
        Counter::PidReports,
        Counter::PidReportsLost,
        Counter::UnwindSignalFrames,
        Counter::PyAttempts,
        Counter::PyFrames,
        Counter::PyErrNoThread,
        Counter::PyErrRead,
        Counter::PyErrNoFrame,
    ];
    /// `FS_CNT_MAX`.
    pub const COUNT: u32 = 28;

    /// The name of the C enumerator.
    pub fn c_name(self) -> &'static str {
        match self {
            Counter::Samples => "FS_CNT_SAMPLES",
            Counter::Idle => "FS_CNT_IDLE",
            Counter::Filtered => "FS_CNT_FILTERED",
            Counter::LostRingbufFull => "FS_CNT_LOST_RINGBUF_FULL",
            Counter::KernelStackError => "FS_CNT_KERNEL_STACK_ERROR",
            Counter::UserStackError => "FS_CNT_USER_STACK_ERROR",
            Counter::Sent => "FS_CNT_SENT",
            Counter::UnwindAttempts => "FS_CNT_UNWIND_ATTEMPTS",
            Counter::UnwindFrames => "FS_CNT_UNWIND_FRAMES",
            Counter::UnwindStop => "FS_CNT_UNWIND_STOP",
            Counter::UnwindSmallPc => "FS_CNT_UNWIND_SMALL_PC",
            Counter::UnwindErrNoMapping => "FS_CNT_UNWIND_ERR_NO_MAPPING",
            Counter::UnwindErrNoPage => "FS_CNT_UNWIND_ERR_NO_PAGE",
            Counter::UnwindErrInvalidRule => "FS_CNT_UNWIND_ERR_INVALID_RULE",
            Counter::UnwindErrReadFailed => "FS_CNT_UNWIND_ERR_READ_FAILED",
            Counter::UnwindErrStackLength => "FS_CNT_UNWIND_ERR_STACK_LENGTH",
            Counter::UnwindErrBadCfa => "FS_CNT_UNWIND_ERR_BAD_CFA",
            Counter::UnwindErrNoRegs => "FS_CNT_UNWIND_ERR_NO_REGS",
            Counter::UnwindErrBadTable => "FS_CNT_UNWIND_ERR_BAD_TABLE",
            Counter::PidUnknown => "FS_CNT_PID_UNKNOWN",
            Counter::PidReports => "FS_CNT_PID_REPORTS",
            Counter::PidReportsLost => "FS_CNT_PID_REPORTS_LOST",
            Counter::UnwindSignalFrames => "FS_CNT_UNWIND_SIGNAL_FRAMES",
            Counter::PyAttempts => "FS_CNT_PY_ATTEMPTS",
            Counter::PyFrames => "FS_CNT_PY_FRAMES",
            Counter::PyErrNoThread => "FS_CNT_PY_ERR_NO_THREAD",
            Counter::PyErrRead => "FS_CNT_PY_ERR_READ",
            Counter::PyErrNoFrame => "FS_CNT_PY_ERR_NO_FRAME",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::Btf;
    use std::mem::{offset_of, size_of};

    fn object_btf() -> Btf {
        Btf::from_elf(crate::SAMPLER_OBJECT)
            .expect("the sampler object carries BTF (built with -g)")
    }

    /// Compares a C struct's size, member names and offsets with the Rust mirror's.
    fn check_layout(c_name: &str, rust_size: usize, rust: &[(&str, usize)]) {
        let btf = object_btf();
        let s = btf
            .struct_layout(c_name)
            .unwrap_or_else(|| panic!("struct {c_name} in BTF"));
        assert_eq!(s.size as usize, rust_size, "sizeof(struct {c_name})");
        let c: Vec<(String, usize)> = s
            .members
            .iter()
            .map(|m| (m.name.clone(), (m.bit_offset / 8) as usize))
            .collect();
        let rust: Vec<(String, usize)> = rust.iter().map(|(n, o)| (n.to_string(), *o)).collect();
        assert_eq!(
            c, rust,
            "member names and offsets of {c_name} differ between C and Rust"
        );
    }

    /// Compares a C enum with the Rust mirror's (name, value) list.
    fn check_enum(c_name: &str, expected: &[(&str, i64)]) {
        let values = object_btf()
            .enum_values(c_name)
            .unwrap_or_else(|| panic!("enum {c_name} in BTF"));
        let expected: Vec<(String, i64)> =
            expected.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        assert_eq!(values, expected, "enum {c_name}");
    }

    #[test]
    fn trace_event_matches_c_layout() {
        check_layout(
            "fs_trace_event",
            size_of::<TraceEvent>(),
            &[
                ("pid", offset_of!(TraceEvent, pid)),
                ("tid", offset_of!(TraceEvent, tid)),
                ("ktime_ns", offset_of!(TraceEvent, ktime_ns)),
                ("cpu", offset_of!(TraceEvent, cpu)),
                ("flags", offset_of!(TraceEvent, flags)),
                ("kernel_len", offset_of!(TraceEvent, kernel_len)),
                ("user_len", offset_of!(TraceEvent, user_len)),
                ("comm", offset_of!(TraceEvent, comm)),
                ("user_error", offset_of!(TraceEvent, user_error)),
                ("interp_frames", offset_of!(TraceEvent, interp_frames)),
                ("kernel_frames", offset_of!(TraceEvent, kernel_frames)),
                ("user_frames", offset_of!(TraceEvent, user_frames)),
                ("user_aux", offset_of!(TraceEvent, user_aux)),
                ("user_kinds", offset_of!(TraceEvent, user_kinds)),
            ],
        );
    }

    #[test]
    fn interpreter_types_match_c_layout() {
        check_layout(
            "fs_py_proc",
            size_of::<PyProc>(),
            &[
                ("interp_head", offset_of!(PyProc, interp_head)),
                ("code_mask", offset_of!(PyProc, code_mask)),
                ("interp_next", offset_of!(PyProc, interp_next)),
                (
                    "interp_threads_head",
                    offset_of!(PyProc, interp_threads_head),
                ),
                ("tstate_next", offset_of!(PyProc, tstate_next)),
                ("tstate_thread_id", offset_of!(PyProc, tstate_thread_id)),
                ("tstate_frame", offset_of!(PyProc, tstate_frame)),
                (
                    "cframe_current_frame",
                    offset_of!(PyProc, cframe_current_frame),
                ),
                ("frame_code", offset_of!(PyProc, frame_code)),
                ("frame_previous", offset_of!(PyProc, frame_previous)),
                ("frame_instr", offset_of!(PyProc, frame_instr)),
                ("frame_entry", offset_of!(PyProc, frame_entry)),
                ("frame_read_len", offset_of!(PyProc, frame_read_len)),
                ("code_firstlineno", offset_of!(PyProc, code_firstlineno)),
                ("code_adaptive", offset_of!(PyProc, code_adaptive)),
                ("frame_model", offset_of!(PyProc, frame_model)),
                ("entry_kind", offset_of!(PyProc, entry_kind)),
                ("owner_cstack", offset_of!(PyProc, owner_cstack)),
                ("reserved", offset_of!(PyProc, reserved)),
            ],
        );
        check_layout(
            "fs_interp_proc",
            size_of::<InterpProc>(),
            &[
                ("kind", offset_of!(InterpProc, kind)),
                ("reserved", offset_of!(InterpProc, reserved)),
                ("loop_start", offset_of!(InterpProc, loop_start)),
                ("loop_end", offset_of!(InterpProc, loop_end)),
                ("py", offset_of!(InterpProc, py)),
            ],
        );
        check_enum(
            "fs_frame_kind",
            &[
                ("FS_FRAME_NATIVE", i64::from(FRAME_NATIVE)),
                ("FS_FRAME_PYTHON", i64::from(FRAME_PYTHON)),
            ],
        );
        check_enum(
            "fs_interp_kind",
            &[
                ("FS_INTERP_NONE", 0),
                ("FS_INTERP_PYTHON", InterpKind::Python as i64),
            ],
        );
        check_enum(
            "fs_py_frame_model",
            &[
                ("FS_PY_FRAMES_OBJECT", i64::from(PY_FRAMES_OBJECT)),
                ("FS_PY_FRAMES_INTERPRETER", i64::from(PY_FRAMES_INTERPRETER)),
            ],
        );
        check_enum(
            "fs_py_entry_kind",
            &[
                ("FS_PY_ENTRY_ONE", i64::from(PY_ENTRY_ONE)),
                ("FS_PY_ENTRY_FLAG", i64::from(PY_ENTRY_FLAG)),
                ("FS_PY_ENTRY_SHIM", i64::from(PY_ENTRY_SHIM)),
            ],
        );
    }

    #[test]
    fn unwinder_map_types_match_c_layout() {
        check_layout(
            "fs_pid_event",
            size_of::<PidEvent>(),
            &[
                ("pid", offset_of!(PidEvent, pid)),
                ("kind", offset_of!(PidEvent, kind)),
            ],
        );
        check_layout(
            "fs_pid_mapping_key",
            size_of::<PidMappingKey>(),
            &[
                ("prefixlen", offset_of!(PidMappingKey, prefixlen)),
                ("pid", offset_of!(PidMappingKey, pid)),
                ("address_be", offset_of!(PidMappingKey, address_be)),
            ],
        );
        check_layout(
            "fs_pid_mapping",
            size_of::<PidMapping>(),
            &[
                ("file_id", offset_of!(PidMapping, file_id)),
                ("bias", offset_of!(PidMapping, bias)),
                ("start", offset_of!(PidMapping, start)),
                ("end", offset_of!(PidMapping, end)),
            ],
        );
        check_layout(
            "fs_delta_page_key",
            size_of::<DeltaPageKey>(),
            &[
                ("file_id", offset_of!(DeltaPageKey, file_id)),
                ("page", offset_of!(DeltaPageKey, page)),
            ],
        );
        check_layout(
            "fs_delta_page",
            size_of::<DeltaPage>(),
            &[
                ("first", offset_of!(DeltaPage, first)),
                ("count", offset_of!(DeltaPage, count)),
            ],
        );
        check_layout(
            "fs_delta_entry",
            size_of::<DeltaEntry>(),
            &[
                ("address_low", offset_of!(DeltaEntry, address_low)),
                ("info_index", offset_of!(DeltaEntry, info_index)),
            ],
        );
        check_layout(
            "fs_unwind_info",
            size_of::<UnwindInfoRaw>(),
            &[
                ("kind", offset_of!(UnwindInfoRaw, kind)),
                ("flags", offset_of!(UnwindInfoRaw, flags)),
                ("reserved", offset_of!(UnwindInfoRaw, reserved)),
                ("cfa_offset", offset_of!(UnwindInfoRaw, cfa_offset)),
                ("fp_offset", offset_of!(UnwindInfoRaw, fp_offset)),
                ("reserved2", offset_of!(UnwindInfoRaw, reserved2)),
            ],
        );
    }

    #[test]
    fn counters_match_c_enum() {
        let mut expected: Vec<(&str, i64)> = Counter::ALL
            .iter()
            .map(|c| (c.c_name(), *c as i64))
            .collect();
        expected.push(("FS_CNT_MAX", i64::from(Counter::COUNT)));
        assert!(
            Counter::ALL
                .iter()
                .enumerate()
                .all(|(i, c)| *c as usize == i),
            "ALL is in index order"
        );
        check_enum("fs_counter", &expected);
    }

    #[test]
    fn unwind_errors_match_c_enum() {
        let name = |e: UnwindError| match e {
            UnwindError::NoMapping => "FS_UNWIND_ERR_NO_MAPPING",
            UnwindError::NoPage => "FS_UNWIND_ERR_NO_PAGE",
            UnwindError::InvalidRule => "FS_UNWIND_ERR_INVALID_RULE",
            UnwindError::ReadFailed => "FS_UNWIND_ERR_READ_FAILED",
            UnwindError::StackLengthExceeded => "FS_UNWIND_ERR_STACK_LENGTH",
            UnwindError::BadCfa => "FS_UNWIND_ERR_BAD_CFA",
            UnwindError::SmallPc => "FS_UNWIND_ERR_SMALL_PC",
            UnwindError::NoRegisters => "FS_UNWIND_ERR_NO_REGS",
            UnwindError::BadTable => "FS_UNWIND_ERR_BAD_TABLE",
        };
        let mut expected = vec![("FS_UNWIND_OK", 0)];
        expected.extend(UnwindError::ALL.iter().map(|e| (name(*e), *e as i64)));
        expected.push(("FS_UNWIND_ERR_MAX", i64::from(UnwindError::COUNT)));
        check_enum("fs_unwind_error", &expected);
        assert_eq!(UnwindError::from_raw(0), None);
        assert_eq!(UnwindError::from_raw(3), Some(UnwindError::InvalidRule));
    }

    #[test]
    fn pid_event_kinds_and_unwind_kinds_match_c_enums() {
        check_enum(
            "fs_pid_event_kind",
            &[("FS_PID_NEW", 0), ("FS_PID_RESCAN", 1), ("FS_PID_EXIT", 2)],
        );
        assert!(
            PidEventKind::ALL
                .iter()
                .enumerate()
                .all(|(i, k)| *k as usize == i)
        );
        let names = [
            "FS_UNWIND_SP",
            "FS_UNWIND_FP",
            "FS_UNWIND_SP_DEREF",
            "FS_UNWIND_FP_DEREF",
            "FS_UNWIND_PLT",
            "FS_UNWIND_SIGNAL",
            "FS_UNWIND_STOP",
            "FS_UNWIND_INVALID",
            "FS_UNWIND_FRAME_POINTER",
        ];
        let expected: Vec<(&str, i64)> = UnwindKind::ALL
            .iter()
            .zip(names)
            .map(|(k, n)| (n, *k as i64))
            .collect();
        check_enum("fs_unwind_kind", &expected);
    }

    #[test]
    fn array_lengths_match_c() {
        let btf = object_btf();
        let s = btf.struct_layout("fs_trace_event").unwrap();
        let len = |name: &str| {
            s.members
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.array_len)
        };
        assert_eq!(len("kernel_frames"), Some(MAX_KERNEL_FRAMES as u32));
        assert_eq!(len("user_frames"), Some(MAX_USER_FRAMES as u32));
        assert_eq!(len("user_aux"), Some(MAX_USER_FRAMES as u32));
        assert_eq!(len("user_kinds"), Some(MAX_USER_FRAMES as u32));
        assert_eq!(len("comm"), Some(COMM_LEN as u32));
    }

    #[test]
    fn interp_proc_bytes_round_trip() {
        let mut v = InterpProc {
            kind: InterpKind::Python as u32,
            loop_start: [0x1000, 0x3000],
            loop_end: [0x2000, 0x3100],
            ..Default::default()
        };
        v.py.interp_head = 0x7f00_0000_1234;
        v.py.code_mask = !1;
        v.py.frame_read_len = 72;
        v.py.code_adaptive = 200;
        v.py.owner_cstack = 3;
        let bytes = v.to_bytes();
        assert_eq!(bytes.len(), InterpProc::SIZE);
        assert_eq!(InterpProc::from_bytes(&bytes), Some(v));
        assert_eq!(InterpProc::from_bytes(&bytes[1..]), None);
    }

    #[test]
    fn short_records_are_refused() {
        assert!(TraceEvent::from_bytes(&[0u8; 100]).is_none());
        let mut bytes = vec![0u8; TraceEvent::SIZE];
        bytes[0] = 42;
        bytes[24..28].copy_from_slice(&2i32.to_le_bytes());
        bytes[28..32].copy_from_slice(&(-14i32).to_le_bytes());
        bytes[32..35].copy_from_slice(b"abc");
        bytes[48..52].copy_from_slice(&4u32.to_le_bytes());
        bytes[56..64].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        let e = TraceEvent::from_bytes(&bytes).unwrap();
        assert_eq!(e.pid, 42);
        assert_eq!(e.comm_str(), "abc");
        assert_eq!(e.kernel_frames(), &[0xffff_ffff_8100_0000, 0]);
        assert!(
            e.user_frames().is_empty(),
            "a negative length (an errno) means no frames"
        );
        assert_eq!(e.user_error(), Some(UnwindError::ReadFailed));
        assert_eq!(
            PidEvent::from_bytes(&[7, 0, 0, 0, 2, 0, 0, 0]),
            Some((7, PidEventKind::Exit))
        );
        assert_eq!(PidEvent::from_bytes(&[7, 0, 0, 0, 9, 0, 0, 0]), None);
        assert_eq!(PidEvent::from_bytes(&[7, 0, 0]), None);
    }
}
