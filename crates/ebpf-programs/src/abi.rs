//! Rust mirrors of `bpf/ferroscope.h`. Keep in step with the header; the tests in this module
//! compare both against the BTF of the compiled object.

/// Longest kernel stack in a [`TraceEvent`] (`FS_MAX_KERNEL_FRAMES`).
pub const MAX_KERNEL_FRAMES: usize = 64;
/// Longest user stack in a [`TraceEvent`] (`FS_MAX_USER_FRAMES`).
pub const MAX_USER_FRAMES: usize = 127;
/// Length of a task's comm including its NUL (`FS_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Most PIDs the sampler's PID filter holds (`FS_MAX_FILTER_PIDS`).
pub const MAX_FILTER_PIDS: usize = 1024;

/// `FS_TRACE_IN_KERNEL`: the sample interrupted the kernel.
pub const TRACE_IN_KERNEL: u32 = 0x1;
/// `FS_TRACE_KERNEL_THREAD`: the task has no user address space.
pub const TRACE_KERNEL_THREAD: u32 = 0x2;

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
        let n = usize::try_from(self.kernel_len).unwrap_or(0).min(MAX_KERNEL_FRAMES);
        &self.kernel_frames[..n]
    }

    /// The valid user frames (empty when the stack could not be read).
    pub fn user_frames(&self) -> &[u64] {
        let n = usize::try_from(self.user_len).unwrap_or(0).min(MAX_USER_FRAMES);
        &self.user_frames[..n]
    }
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
    /// Failed user stack reads.
    UserStackError = 5,
    /// Samples sent to userspace.
    Sent = 6,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 7] = [
        Counter::Samples,
        Counter::Idle,
        Counter::Filtered,
        Counter::LostRingbufFull,
        Counter::KernelStackError,
        Counter::UserStackError,
        Counter::Sent,
    ];
    /// `FS_CNT_MAX`.
    pub const COUNT: u32 = 7;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::Btf;
    use std::mem::offset_of;

    fn object_btf() -> Btf {
        Btf::from_elf(crate::SAMPLER_OBJECT).expect("the sampler object carries BTF (built with -g)")
    }

    #[test]
    fn trace_event_matches_c_layout() {
        let btf = object_btf();
        let s = btf.struct_layout("fs_trace_event").expect("fs_trace_event in BTF");
        assert_eq!(s.size as usize, std::mem::size_of::<TraceEvent>(), "sizeof(fs_trace_event)");
        let rust = [
            ("pid", offset_of!(TraceEvent, pid)),
            ("tid", offset_of!(TraceEvent, tid)),
            ("ktime_ns", offset_of!(TraceEvent, ktime_ns)),
            ("cpu", offset_of!(TraceEvent, cpu)),
            ("flags", offset_of!(TraceEvent, flags)),
            ("kernel_len", offset_of!(TraceEvent, kernel_len)),
            ("user_len", offset_of!(TraceEvent, user_len)),
            ("comm", offset_of!(TraceEvent, comm)),
            ("kernel_frames", offset_of!(TraceEvent, kernel_frames)),
            ("user_frames", offset_of!(TraceEvent, user_frames)),
        ];
        let c: Vec<(String, usize)> =
            s.members.iter().map(|m| (m.name.clone(), (m.bit_offset / 8) as usize)).collect();
        let rust: Vec<(String, usize)> = rust.iter().map(|(n, o)| (n.to_string(), *o)).collect();
        assert_eq!(c, rust, "member names and offsets of fs_trace_event differ between C and Rust");
    }

    #[test]
    fn counters_match_c_enum() {
        let btf = object_btf();
        let values = btf.enum_values("fs_counter").expect("enum fs_counter in BTF");
        let mut expected: Vec<(String, i64)> = Counter::ALL
            .iter()
            .map(|c| {
                let name = match c {
                    Counter::Samples => "FS_CNT_SAMPLES",
                    Counter::Idle => "FS_CNT_IDLE",
                    Counter::Filtered => "FS_CNT_FILTERED",
                    Counter::LostRingbufFull => "FS_CNT_LOST_RINGBUF_FULL",
                    Counter::KernelStackError => "FS_CNT_KERNEL_STACK_ERROR",
                    Counter::UserStackError => "FS_CNT_USER_STACK_ERROR",
                    Counter::Sent => "FS_CNT_SENT",
                };
                (name.to_string(), *c as i64)
            })
            .collect();
        expected.push(("FS_CNT_MAX".into(), i64::from(Counter::COUNT)));
        assert_eq!(values, expected);
    }

    #[test]
    fn array_lengths_match_c() {
        let btf = object_btf();
        let s = btf.struct_layout("fs_trace_event").unwrap();
        let len = |name: &str| s.members.iter().find(|m| m.name == name).and_then(|m| m.array_len);
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
        bytes[48..56].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        let e = TraceEvent::from_bytes(&bytes).unwrap();
        assert_eq!(e.pid, 42);
        assert_eq!(e.comm_str(), "abc");
        assert_eq!(e.kernel_frames(), &[0xffff_ffff_8100_0000, 0]);
        assert!(e.user_frames().is_empty(), "a negative length (an errno) means no frames");
    }
}
