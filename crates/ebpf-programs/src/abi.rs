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
    /// Zero.
    pub reserved: u32,
    /// Kernel stack, leaf first.
    pub kernel_frames: [u64; MAX_KERNEL_FRAMES],
    /// User stack, leaf first.
    pub user_frames: [u64; MAX_USER_FRAMES],
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
        let n = usize::try_from(self.user_len)
            .unwrap_or(0)
            .min(MAX_USER_FRAMES);
        &self.user_frames[..n]
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
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 23] = [
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
    ];
    /// `FS_CNT_MAX`.
    pub const COUNT: u32 = 23;

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
                ("reserved", offset_of!(TraceEvent, reserved)),
                ("kernel_frames", offset_of!(TraceEvent, kernel_frames)),
                ("user_frames", offset_of!(TraceEvent, user_frames)),
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
        assert_eq!(len("comm"), Some(COMM_LEN as u32));
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
