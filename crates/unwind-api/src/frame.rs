//! Frames and traces, as recorded and as named.
//!
//! A trace comes out of the kernel as a [`Trace<RecordedFrame>`]: kernel and native frames
//! are addresses, and a runtime's frame is a [`RawFrame`] that only its plug-in can read. The
//! agent names every raw frame while the process still lives and turns the trace into a
//! [`Trace<Frame>`], whose runtime frames are IDs of names the session interned. The two
//! phases are two types, so a raw frame can never reach a profile unnamed.

/// A frame a runtime's eBPF program recorded: what identifies the function (a code object,
/// a method) and where in it, as that runtime's plug-in defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawFrame {
    /// The runtime's slot in this session (the frame kind its program wrote).
    pub runtime: u8,
    /// First word (for CPython: the code object's address).
    pub address: u64,
    /// Second word, 56 bits (for CPython: the instruction offset and a fingerprint).
    pub aux: u64,
}

/// Why a user stack ended before its outermost frame (the frame kept at its end), as the
/// unwinder's error code.
pub type UnwindErrorCode = u8;

/// A frame as the kernel recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordedFrame {
    /// An address in the kernel's text (vmlinux, a module or a BPF program).
    Kernel {
        /// The address.
        address: u64,
        /// The exact instruction (the leaf), not a return address.
        exact: bool,
    },
    /// An address in a user-space native mapping of the process.
    Native {
        /// The address.
        address: u64,
        /// The exact instruction (the leaf, or a frame a signal interrupted), not a return
        /// address.
        exact: bool,
    },
    /// A frame of a runtime, not named yet.
    Runtime(RawFrame),
    /// The user stack could not be unwound further.
    UnwindError(UnwindErrorCode),
}

/// A frame ready for a profile: runtime frames are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frame {
    /// An address in the kernel's text.
    Kernel {
        /// The address.
        address: u64,
        /// The exact instruction, not a return address.
        exact: bool,
    },
    /// An address in a user-space native mapping of the process.
    Native {
        /// The address.
        address: u64,
        /// The exact instruction, not a return address.
        exact: bool,
    },
    /// A runtime frame, named: the ID of its names (one or more frames, innermost first,
    /// when the runtime inlined calls) in the session's name table.
    Named(u64),
    /// The user stack could not be unwound further.
    UnwindError(UnwindErrorCode),
}

/// The address to look up in symbol and line tables: a return address minus one, so that
/// it falls inside the call instruction (and so inside the caller's function even when the
/// call is the function's last instruction), the exact address otherwise.
pub fn lookup_address(address: u64, exact: bool) -> u64 {
    if exact {
        address
    } else {
        address.saturating_sub(1)
    }
}

impl Frame {
    /// A user-space native frame.
    pub fn native(address: u64, exact: bool) -> Self {
        Frame::Native { address, exact }
    }

    /// A kernel frame.
    pub fn kernel(address: u64, exact: bool) -> Self {
        Frame::Kernel { address, exact }
    }

    /// Whether this is a kernel frame.
    pub fn is_kernel(&self) -> bool {
        matches!(self, Frame::Kernel { .. })
    }
}

impl RecordedFrame {
    /// A user-space native frame.
    pub fn native(address: u64, exact: bool) -> Self {
        RecordedFrame::Native { address, exact }
    }

    /// A kernel frame.
    pub fn kernel(address: u64, exact: bool) -> Self {
        RecordedFrame::Kernel { address, exact }
    }
}

/// One sampled stack of one thread, leaf first: kernel frames (if any) before user frames.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Trace<F = Frame> {
    /// Process (thread-group) ID, as seen from the host's PID namespace.
    pub pid: u32,
    /// Thread ID.
    pub tid: u32,
    /// The thread's command name (at most 15 bytes, as the kernel keeps it).
    pub comm: String,
    /// The runtime's own name for the thread (Python's `threading` name), when a plug-in
    /// knows one.
    pub thread_name: Option<std::sync::Arc<str>>,
    /// Frames, leaf first.
    pub frames: Vec<F>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_addresses_are_looked_up_inside_the_call() {
        assert_eq!(lookup_address(0x401000, true), 0x401000);
        assert_eq!(lookup_address(0x401234, false), 0x401233);
        assert_eq!(lookup_address(0, false), 0);
    }
}
