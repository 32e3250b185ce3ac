//! The host-side reference walker over stack-delta tables.

use crate::{Kind, StackDeltaTable};

/// Offsets in the kernel's x86-64 signal frame, from the stack pointer at the trampoline
/// (which points at `struct ucontext`): `uc_mcontext` starts at 40 and its `gregs` are
/// r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip.
const UC_MCONTEXT: u64 = 40;
const SIGFRAME_RBP: u64 = UC_MCONTEXT + 10 * 8;
const SIGFRAME_RSP: u64 = UC_MCONTEXT + 15 * 8;
const SIGFRAME_RIP: u64 = UC_MCONTEXT + 16 * 8;

/// The registers the walker needs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Registers {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Frame pointer register (may hold anything in code without frame pointers).
    pub rbp: u64,
}

/// One mapped ELF file of the unwound process.
#[derive(Copy, Clone, Debug)]
pub struct LoadedModule<'a> {
    /// Start of the runtime range (inclusive).
    pub start: u64,
    /// End of the runtime range (exclusive).
    pub end: u64,
    /// runtime = vaddr + bias
    pub bias: u64,
    /// The file's table.
    pub table: &'a StackDeltaTable,
}

/// Why the walk ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UnwindEnd {
    /// A Stop rule (or a zero return address): the stack is complete.
    Stop,
    /// The frame at this PC has no usable rule.
    Invalid(u64),
    /// This PC is in no module.
    NoModule(u64),
    /// Reading memory at this address failed.
    ReadFailed(u64),
    /// `max_frames` frames were produced.
    Depth,
    /// The frame at this PC computed a CFA that does not lie above its stack pointer.
    BadCfa(u64),
}

/// Walks a stack. Frames are PCs, leaf first; return addresses as found (the unwinder
/// subtracts 1 only for its own lookups, except for the leaf frame and for frames right
/// after a signal frame).
pub fn unwind(
    regs: Registers,
    read_u64: &dyn Fn(u64) -> Option<u64>,
    modules: &[LoadedModule<'_>],
    max_frames: usize,
) -> (Vec<u64>, UnwindEnd) {
    let Registers {
        rip: mut pc,
        mut rsp,
        mut rbp,
    } = regs;
    let mut frames = Vec::new();
    let mut exact_pc = true;
    let read = |addr: u64| read_u64(addr).ok_or(UnwindEnd::ReadFailed(addr));
    loop {
        if frames.len() >= max_frames {
            return (frames, UnwindEnd::Depth);
        }
        frames.push(pc);
        let lookup_pc = if exact_pc { pc } else { pc.wrapping_sub(1) };
        let Some(module) = modules
            .iter()
            .find(|m| m.start <= lookup_pc && lookup_pc < m.end)
        else {
            return (frames, UnwindEnd::NoModule(pc));
        };
        let Some(info) = module.table.lookup(lookup_pc.wrapping_sub(module.bias)) else {
            return (frames, UnwindEnd::Invalid(pc));
        };
        let step = (|| -> Result<(u64, u64, u64, bool), UnwindEnd> {
            let offset = |base: u64| base.wrapping_add_signed(i64::from(info.cfa_offset));
            let cfa = match info.kind {
                Kind::Stop => return Err(UnwindEnd::Stop),
                Kind::Invalid => return Err(UnwindEnd::Invalid(pc)),
                Kind::Signal => {
                    let rip = read(rsp.wrapping_add(SIGFRAME_RIP))?;
                    let new_rsp = read(rsp.wrapping_add(SIGFRAME_RSP))?;
                    let new_rbp = read(rsp.wrapping_add(SIGFRAME_RBP))?;
                    return Ok((rip, new_rsp, new_rbp, true));
                }
                Kind::Sp => offset(rsp),
                Kind::Fp => offset(rbp),
                Kind::SpDeref => read(offset(rsp))?,
                Kind::FpDeref => read(offset(rbp))?,
                Kind::Plt => rsp.wrapping_add(if pc & 15 >= 11 { 16 } else { 8 }),
                Kind::FramePointer => rbp.wrapping_add(16),
            };
            // The caller's stack pointer is above ours (anything else would loop or jump
            // to garbage), except across a stack switch (the frame-pointer rule of Go's
            // g0 stack users), where the frame limit bounds a loop.
            if (cfa <= rsp && info.kind != Kind::FramePointer) || cfa % 8 != 0 {
                return Err(UnwindEnd::BadCfa(pc));
            }
            let ra = read(cfa - 8)?;
            let fp_offset = if info.kind == Kind::FramePointer {
                Some(-16)
            } else {
                info.fp_offset
            };
            let new_rbp = match fp_offset {
                Some(off) => read(cfa.wrapping_add_signed(i64::from(off)))?,
                None => rbp,
            };
            Ok((ra, cfa, new_rbp, false))
        })();
        match step {
            Ok((ra, new_rsp, new_rbp, after_signal)) => {
                if ra == 0 {
                    return (frames, UnwindEnd::Stop);
                }
                pc = ra;
                rsp = new_rsp;
                rbp = new_rbp;
                exact_pc = after_signal;
            }
            Err(end) => return (frames, end),
        }
    }
}
