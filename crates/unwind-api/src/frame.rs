//! Frames and traces.

/// What an address in a trace refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    /// An address in the kernel's text (vmlinux, a module or a BPF program).
    Kernel,
    /// An address in a user-space native mapping of the process.
    Native,
    /// A frame of an interpreted or JIT-compiled runtime, recorded by that runtime's walker.
    /// The number is the runtime's frame kind ([`crate::Interpreter::frame_kind`]); the
    /// frame's `address` and `aux` mean what that runtime says (for example a code object's
    /// address and an instruction offset, or, once named, a function ID and a line).
    Interpreted(u8),
}

/// One frame of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    /// Kernel or user native.
    pub kind: FrameKind,
    /// The address as captured: the program counter for the leaf frame, a return address
    /// for every caller.
    pub address: u64,
    /// True when `address` is the exact instruction that was executing (the leaf frame of a
    /// stack); false when it is a return address, which points after the call instruction.
    pub is_leaf: bool,
    /// A second word for interpreted frames (where in the function); 0 for other kinds.
    pub aux: u64,
}

impl Frame {
    /// A user-space native frame.
    pub fn native(address: u64, is_leaf: bool) -> Self {
        Frame {
            kind: FrameKind::Native,
            address,
            is_leaf,
            aux: 0,
        }
    }

    /// A frame of an interpreted runtime (see [`FrameKind::Interpreted`]).
    pub fn interpreted(kind: u8, address: u64, aux: u64, is_leaf: bool) -> Self {
        Frame {
            kind: FrameKind::Interpreted(kind),
            address,
            is_leaf,
            aux,
        }
    }

    /// A kernel frame.
    pub fn kernel(address: u64, is_leaf: bool) -> Self {
        Frame {
            kind: FrameKind::Kernel,
            address,
            is_leaf,
            aux: 0,
        }
    }

    /// The address to look up in symbol and line tables: a return address minus one, so
    /// that it falls inside the call instruction (and so inside the caller's function even
    /// when the call is the function's last instruction), the exact address otherwise (and
    /// always for interpreted frames, whose address is not code).
    pub fn lookup_address(&self) -> u64 {
        if self.is_leaf || matches!(self.kind, FrameKind::Interpreted(_)) {
            self.address
        } else {
            self.address.saturating_sub(1)
        }
    }
}

/// One sampled stack of one thread, leaf first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Trace {
    /// Process (thread-group) ID, as seen from the host's PID namespace.
    pub pid: u32,
    /// Thread ID.
    pub tid: u32,
    /// The thread's command name (at most 15 bytes, as the kernel keeps it).
    pub comm: String,
    /// Frames, leaf first: kernel frames (if any) come before user frames.
    pub frames: Vec<Frame>,
}
