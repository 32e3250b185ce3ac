//! Where, in a 3.6-3.10 eval loop, the thread state does not point at the frame its call runs.
//!
//! Up to 3.10 each Python call is one C-level call of `_PyEval_EvalFrameDefault(f)`, which
//! sets `tstate->frame = f` a few instructions after its entry and `tstate->frame = f->f_back`
//! on its way out (then calls `_Py_CheckFunctionResult` and returns). A sample taken in
//! either window has one more eval-loop call on its native stack than Python frames in the
//! thread state: spliced from the leaf, every Python frame would land one eval call too
//! close to the leaf. The eBPF walker, told these ranges, gives that first eval-loop call an
//! empty segment (it stays a native frame) when the sampled thread is in one of them.
//!
//! The ranges are found in the code: from the entry, the first 64-bit store of the frame
//! argument (`rdi` up to 3.8, `rsi` in 3.9/3.10, or a register it was copied to) at
//! `[R + tstate.frame]` ends the entry window; every later store to `[R + tstate.frame]` of a
//! value loaded from `[frame register + f_back]` starts an exit window, which runs through
//! unconditional jumps to the `ret`. Anything else found (no entry store, no exit store)
//! gives no ranges: the walker then splices as before.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::{FrameLayout, Layout};

/// Most ranges kept (the eBPF walker's `py_proc` has room for this many).
pub const MAX_UNBOUND: usize = 4;
/// Most instructions decoded from the entry looking for the entry store.
const ENTRY_SCAN: usize = 64;
/// Most instructions of one exit window.
const EXIT_SCAN: usize = 48;
/// How far back (instructions) the `f_back` load may be from an exit store.
const LOAD_WINDOW: usize = 12;

/// A range of code addresses `[start, end)`.
pub type Range = (u64, u64);

fn is_store_to(i: &Instruction, base: Option<Register>, disp: u32) -> Option<(Register, Register)> {
    if i.code() != Code::Mov_rm64_r64 || i.op0_kind() != OpKind::Memory {
        return None;
    }
    let b = i.memory_base();
    if i.memory_index() != Register::None
        || i.memory_displacement64() != u64::from(disp)
        || matches!(b, Register::RSP | Register::RIP | Register::None)
        || base.is_some_and(|want| want != b)
    {
        return None;
    }
    Some((b, i.op1_register()))
}

/// The unbound ranges of the eval loop whose entry part is `code` at file address `ip`, for
/// `layout` (3.6-3.10; empty for 3.11+, whose frames are pushed before the eval call).
pub fn unbound_ranges(code: &[u8], ip: u64, layout: &Layout) -> Vec<Range> {
    let FrameLayout::Object { f_back, .. } = layout.frame else {
        return Vec::new();
    };
    let frame_slot = layout.tstate_frame;
    let arg = if layout.minor >= 9 {
        Register::RSI
    } else {
        Register::RDI
    };
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    // Registers holding the frame argument, from the entry.
    let mut holders = vec![arg];
    let mut entry_store = None;
    for _ in 0..ENTRY_SCAN {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            break;
        }
        if let Some((base, src)) = is_store_to(&instr, None, frame_slot)
            && holders.contains(&src)
        {
            entry_store = Some((instr.next_ip(), base));
            break;
        }
        if instr.code() == Code::Mov_r64_rm64 || instr.code() == Code::Mov_rm64_r64 {
            if instr.op0_kind() == OpKind::Register {
                let dst = instr.op0_register();
                let from_holder =
                    instr.op1_kind() == OpKind::Register && holders.contains(&instr.op1_register());
                holders.retain(|&r| r != dst);
                if from_holder {
                    holders.push(dst);
                }
            }
        } else if instr.op0_kind() == OpKind::Register
            && !matches!(
                instr.mnemonic(),
                Mnemonic::Cmp | Mnemonic::Test | Mnemonic::Push
            )
        {
            // Any other write to a holder ends its holding.
            let dst = instr.op0_register();
            holders.retain(|&r| r != dst);
        }
    }
    let Some((entry_end, tstate)) = entry_store else {
        return Vec::new();
    };
    let mut ranges = vec![(ip, entry_end)];
    // The exit stores anywhere in the part.
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut recent: Vec<Instruction> = Vec::with_capacity(LOAD_WINDOW);
    let mut exits = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            recent.clear();
            continue;
        }
        if let Some((_, src)) = is_store_to(&instr, Some(tstate), frame_slot)
            && instr.next_ip() != entry_end
            && recent.iter().rev().any(|l| {
                l.code() == Code::Mov_r64_rm64
                    && l.op0_register() == src
                    && l.op1_kind() == OpKind::Memory
                    && l.memory_index() == Register::None
                    && l.memory_displacement64() == u64::from(f_back)
                    && holders.contains(&l.memory_base())
            })
        {
            exits.push(instr.next_ip());
        }
        if recent.len() == LOAD_WINDOW {
            recent.remove(0);
        }
        recent.push(instr);
    }
    let end = ip.saturating_add(code.len() as u64);
    for start in exits {
        let mut at = start;
        let mut range_start = start;
        for _ in 0..EXIT_SCAN {
            let Some(off) = at.checked_sub(ip).filter(|&o| o < code.len() as u64) else {
                break;
            };
            let mut d = Decoder::with_ip(64, &code[off as usize..], at, DecoderOptions::NONE);
            d.decode_out(&mut instr);
            if instr.is_invalid() {
                break;
            }
            match instr.mnemonic() {
                Mnemonic::Ret => {
                    ranges.push((range_start, instr.next_ip()));
                    break;
                }
                Mnemonic::Jmp if instr.op0_kind() == OpKind::NearBranch64 => {
                    ranges.push((range_start, instr.next_ip()));
                    let target = instr.near_branch_target();
                    if target < ip || target >= end {
                        break;
                    }
                    at = target;
                    range_start = target;
                }
                _ => at = instr.next_ip(),
            }
        }
    }
    if ranges.len() < 2 {
        // No exit found: half a fix would shift the frames the other way.
        return Vec::new();
    }
    ranges.sort_unstable();
    ranges.dedup();
    let mut merged: Vec<Range> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
            _ => merged.push(r),
        }
    }
    if merged.len() > MAX_UNBOUND {
        tracing::debug!(
            ranges = merged.len(),
            "more unbound eval-loop ranges than kept"
        );
        return Vec::new();
    }
    merged
}
