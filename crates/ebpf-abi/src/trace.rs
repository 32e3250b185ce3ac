//! Sampled stacks as the `fs_traces` ring buffer carries them: a fixed header, then as many
//! user and kernel frames as the stack has.

use crate::{COMM_LEN, MAX_KERNEL_FRAMES, MAX_USER_FRAMES, Plain, UnwindError};

/// `FS_TRACE_IN_KERNEL`: the sample interrupted the kernel; the record has its stack.
pub const TRACE_IN_KERNEL: u32 = 0x1;
/// `FS_TRACE_KERNEL_THREAD`: the task has no user address space.
pub const TRACE_KERNEL_THREAD: u32 = 0x2;
/// `FS_TRACE_USER_FP`: the user frames come from the kernel's frame-pointer walk (plain
/// addresses, not [`UserFrame`]s).
pub const TRACE_USER_FP: u32 = 0x4;
/// `FS_TRACE_OFF_CPU`: an off-CPU record, the stack as the task left the CPU; its weight
/// comes in a [`crate::PidEventKind::OffCpuEnd`] report.
pub const TRACE_OFF_CPU: u32 = 0x8;
/// `FS_TRACE_PROBE`: a probe hit; the probe's index is `flags >> TRACE_PROBE_SHIFT`.
pub const TRACE_PROBE: u32 = 0x10;
/// `FS_TRACE_PROBE_SHIFT`.
pub const TRACE_PROBE_SHIFT: u32 = 16;
/// `FS_TRACE_KPROBE`: with [`TRACE_PROBE`], a kernel probe's hit (the record has the kernel
/// stack where it fired, then the user stack the task entered the kernel from).
pub const TRACE_KPROBE: u32 = 0x20;

/// `FS_FRAME_KIND_SHIFT`: a frame's kind is the top byte of its aux word.
pub const FRAME_KIND_SHIFT: u32 = 56;
/// `FS_FRAME_PAYLOAD_MASK`: the low 56 bits of aux, a runtime frame's payload.
pub const FRAME_PAYLOAD_MASK: u64 = (1 << FRAME_KIND_SHIFT) - 1;
/// `FS_FRAME_NATIVE`: the kind of a native frame.
pub const FRAME_NATIVE: u8 = 0;
/// `FS_NATIVE_EXACT`: a native frame's address is the exact instruction.
pub const NATIVE_EXACT: u64 = 0x1;

/// `struct fs_trace_header`: the fixed part of a record.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceHeader {
    /// Thread-group ID in the initial PID namespace.
    pub pid: u32,
    /// Thread ID.
    pub tid: u32,
    /// `bpf_ktime_get_ns()` at the sample.
    pub ktime_ns: u64,
    /// The process's start time (its leader's `start_boottime`, ns).
    pub start_ns: u64,
    /// The CPU sampled.
    pub cpu: u32,
    /// `TRACE_*` bits.
    pub flags: u32,
    /// Kernel frames in the record, or a negative errno.
    pub kernel_len: i32,
    /// User frames in the record, or a negative errno.
    pub user_len: i32,
    /// The thread's comm, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// An [`UnwindError`] value, 0 when the user stack is whole.
    pub user_error: u32,
    /// User frames a runtime recorded.
    pub interp_frames: u32,
}

// SAFETY: repr(C) integers and a byte array, 64 bytes without padding (tests/layout.rs).
unsafe impl Plain for TraceHeader {}

/// `struct fs_frame`: one user frame.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserFrame {
    /// The address (native) or what identifies the function (a runtime's frame).
    pub addr: u64,
    /// The kind in the top byte ([`FRAME_KIND_SHIFT`]), the payload below.
    pub aux: u64,
}

// SAFETY: repr(C): two u64 (16 bytes, no padding).
unsafe impl Plain for UserFrame {}

impl UserFrame {
    /// The frame's kind: [`FRAME_NATIVE`] or the slot of the runtime that recorded it.
    pub fn kind(&self) -> u8 {
        (self.aux >> FRAME_KIND_SHIFT) as u8
    }

    /// The low 56 bits of aux.
    pub fn payload(&self) -> u64 {
        self.aux & FRAME_PAYLOAD_MASK
    }

    /// For a native frame: whether the address is the exact instruction.
    pub fn is_exact(&self) -> bool {
        self.payload() & NATIVE_EXACT != 0
    }
}

/// One decoded ring-buffer record, borrowing its frames from the record's bytes.
#[derive(Debug, Clone, Copy)]
pub struct TraceRecord<'a> {
    /// The fixed part.
    pub header: TraceHeader,
    user: &'a [u8],
    kernel: &'a [u8],
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i * 8..i * 8 + 8]);
    u64::from_le_bytes(w)
}

impl<'a> TraceRecord<'a> {
    /// Decodes a record; `None` when it is shorter than its header says.
    pub fn parse(bytes: &'a [u8]) -> Option<TraceRecord<'a>> {
        let header = TraceHeader::read_prefix(bytes)?;
        let rest = &bytes[size_of::<TraceHeader>()..];
        let user_count = usize::try_from(header.user_len)
            .unwrap_or(0)
            .min(MAX_USER_FRAMES);
        let kernel_count = usize::try_from(header.kernel_len)
            .unwrap_or(0)
            .min(MAX_KERNEL_FRAMES);
        let frame_size = if header.flags & TRACE_USER_FP != 0 {
            8
        } else {
            size_of::<UserFrame>()
        };
        let user_bytes = user_count * frame_size;
        let user = rest.get(..user_bytes)?;
        let kernel = rest.get(user_bytes..user_bytes + kernel_count * 8)?;
        Some(TraceRecord {
            header,
            user,
            kernel,
        })
    }

    /// The comm as text, up to the first NUL.
    pub fn comm(&self) -> String {
        let c = &self.header.comm;
        let end = c.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        String::from_utf8_lossy(&c[..end]).into_owned()
    }

    /// Whether the user frames come from the frame-pointer walk.
    pub fn is_frame_pointer_walk(&self) -> bool {
        self.header.flags & TRACE_USER_FP != 0
    }

    /// The kernel frames, leaf first.
    pub fn kernel_frames(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        let k = self.kernel;
        (0..k.len() / 8).map(move |i| u64_at(k, i))
    }

    /// The user frames, leaf first. Frames of the frame-pointer walk come out as native
    /// frames, the first exact.
    pub fn user_frames(&self) -> impl ExactSizeIterator<Item = UserFrame> + 'a {
        let u = self.user;
        let fp = self.is_frame_pointer_walk();
        let n = if fp { u.len() / 8 } else { u.len() / 16 };
        (0..n).map(move |i| {
            if fp {
                UserFrame {
                    addr: u64_at(u, i),
                    aux: if i == 0 { NATIVE_EXACT } else { 0 },
                }
            } else {
                UserFrame {
                    addr: u64_at(u, 2 * i),
                    aux: u64_at(u, 2 * i + 1),
                }
            }
        })
    }

    /// Why the unwinder stopped early, if it did.
    pub fn user_error(&self) -> Option<UnwindError> {
        UnwindError::from_raw(self.header.user_error)
    }

    /// The bytes of a record with these parts (what the eBPF program sends), for tests and
    /// replay.
    pub fn encode(header: &TraceHeader, user: &[UserFrame], kernel: &[u64]) -> Vec<u8> {
        let mut h = *header;
        h.user_len = user.len() as i32;
        h.kernel_len = kernel.len() as i32;
        h.flags &= !TRACE_USER_FP;
        let mut out = h.as_bytes().to_vec();
        for f in user {
            out.extend_from_slice(f.as_bytes());
        }
        for k in kernel {
            out.extend_from_slice(&k.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> TraceHeader {
        TraceHeader {
            pid: 1,
            tid: 2,
            ktime_ns: 3,
            start_ns: 4,
            cpu: 5,
            flags: TRACE_IN_KERNEL,
            kernel_len: 0,
            user_len: 0,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
            user_error: UnwindError::NoMapping as u32,
            interp_frames: 1,
        }
    }

    #[test]
    fn records_carry_as_many_frames_as_the_stack_has() {
        let user = [
            UserFrame {
                addr: 0x401000,
                aux: NATIVE_EXACT,
            },
            UserFrame {
                addr: 0x7f00_1234,
                aux: (3 << FRAME_KIND_SHIFT) | 0xabcdef,
            },
        ];
        let bytes = TraceRecord::encode(&header(), &user, &[0xffff_ffff_8100_0000]);
        assert_eq!(bytes.len(), 64 + 2 * 16 + 8);
        let r = TraceRecord::parse(&bytes).unwrap();
        assert_eq!(r.comm(), "python3");
        let got: Vec<UserFrame> = r.user_frames().collect();
        assert_eq!(got, user);
        assert!(got[0].is_exact() && got[0].kind() == FRAME_NATIVE);
        assert_eq!((got[1].kind(), got[1].payload()), (3, 0xabcdef));
        assert_eq!(
            r.kernel_frames().collect::<Vec<_>>(),
            [0xffff_ffff_8100_0000]
        );
        assert_eq!(r.user_error(), Some(UnwindError::NoMapping));
        // Cut short: refused rather than read past the end.
        assert!(TraceRecord::parse(&bytes[..bytes.len() - 1]).is_none());
    }

    #[test]
    fn frame_pointer_walks_are_plain_addresses() {
        let mut h = header();
        h.flags = TRACE_USER_FP;
        h.user_len = 3;
        h.kernel_len = -14; // an errno: no kernel frames
        let mut bytes = h.as_bytes().to_vec();
        for a in [0x10u64, 0x20, 0x30] {
            bytes.extend_from_slice(&a.to_le_bytes());
        }
        let r = TraceRecord::parse(&bytes).unwrap();
        let got: Vec<(u64, bool)> = r.user_frames().map(|f| (f.addr, f.is_exact())).collect();
        assert_eq!(got, [(0x10, true), (0x20, false), (0x30, false)]);
        assert_eq!(r.kernel_frames().len(), 0);
    }
}
