//! The reference walker: interpreters, threads, and a thread's Python frames.
//!
//! It does what the eBPF walker does, read for read: fixed-size reads at fixed offsets,
//! bounded loops, no allocation that depends on the target's data beyond the bounds given.

use std::collections::HashSet;

use ferroscope_unwind_api::ProcessMemory;

use crate::{Entry, Error, FrameLayout, Layout};

/// At most this many interpreters are followed.
pub const MAX_INTERPRETERS: usize = 8;
/// At most this many threads (over all interpreters) are returned.
pub const MAX_THREADS: usize = 256;

/// One Python thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThreadState {
    /// Address of the `PyThreadState`.
    pub addr: u64,
    /// `thread_id`: `pthread_self()` of the thread (`threading.get_ident()`).
    pub thread_id: u64,
    /// `native_thread_id` (3.11+): the kernel TID.
    pub native_thread_id: Option<u64>,
    /// The current frame (`PyFrameObject *` ≤3.10, `_PyInterpreterFrame *` 3.11+), 0 when the
    /// thread runs no Python code. Pass it to [`walk`].
    pub frame: u64,
}

/// One Python frame as the walker sees it, before symbolization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawFrame {
    /// Address of the `PyCodeObject` (tag bits cleared).
    pub code: u64,
    /// Byte offset, in the code's bytecode, of the instruction the frame is at; give it to
    /// [`CodeInfo::line_for_offset`](crate::CodeInfo::line_for_offset). Per era:
    /// - ≤3.9: `f_lasti`, the last instruction started (for a caller: its `CALL_*`);
    /// - 3.10: `f_lasti × 2` (same instruction);
    /// - 3.11/3.12: `prev_instr - code->co_code_adaptive`: the last code unit executed, which
    ///   for a caller into Python is the last `CACHE` unit after its `CALL` (the location table
    ///   gives caches their instruction's line, so the line is the call's), for a caller into
    ///   C the `CALL` itself;
    /// - 3.13+: `instr_ptr - code->co_code_adaptive`: the instruction executing (a caller's
    ///   `CALL`).
    ///
    /// `f_lasti == -1` (not started) gives 0.
    pub byte_offset: u32,
    /// This is the last (outermost) Python frame of one C-level `_PyEval_EvalFrameDefault`
    /// call: native unwinding resumes after it. ≤3.10 every frame; 3.11 `is_entry`; 3.12+ the
    /// frame just above a shim frame.
    pub entry: bool,
}

/// The head of the interpreter list. `symbol_addr` is the run-time address of `_PyRuntime`
/// (3.7+) or of the static `interp_head` (3.6, from `.symtab`).
pub fn interpreters_head(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    symbol_addr: u64,
) -> Result<u64, Error> {
    let addr = symbol_addr.wrapping_add(u64::from(layout.runtime_interpreters_head.unwrap_or(0)));
    mem.read_u64(addr)
        .map_err(Error::read("interpreter list head", addr))
}

/// Every thread of every interpreter, starting at `interp_head` (from [`interpreters_head`]).
/// Bounded by [`MAX_INTERPRETERS`] and [`MAX_THREADS`]; a cycle ends a list.
pub fn threads(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    interp_head: u64,
) -> Result<Vec<ThreadState>, Error> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut interp = interp_head;
    for _ in 0..MAX_INTERPRETERS {
        if interp == 0 || !seen.insert(interp) {
            break;
        }
        let at = interp.wrapping_add(u64::from(layout.interp_threads_head));
        let mut tstate = mem
            .read_u64(at)
            .map_err(Error::read("interpreter's thread list", at))?;
        while tstate != 0 && out.len() < MAX_THREADS && seen.insert(tstate) {
            out.push(thread_state(mem, layout, tstate)?);
            let at = tstate.wrapping_add(u64::from(layout.tstate_next));
            tstate = mem
                .read_u64(at)
                .map_err(Error::read("thread state's next", at))?;
        }
        let at = interp.wrapping_add(u64::from(layout.interp_next));
        interp = mem
            .read_u64(at)
            .map_err(Error::read("interpreter's next", at))?;
    }
    Ok(out)
}

fn thread_state(mem: &dyn ProcessMemory, layout: &Layout, addr: u64) -> Result<ThreadState, Error> {
    let field = |off: u32| addr.wrapping_add(u64::from(off));
    let read = |off: u32| {
        mem.read_u64(field(off))
            .map_err(Error::read("thread state", field(off)))
    };
    let thread_id = read(layout.tstate_thread_id)?;
    let native_thread_id = layout.tstate_native_thread_id.map(read).transpose()?;
    let mut frame = read(layout.tstate_frame)?;
    if let Some(off) = layout.cframe_current_frame
        && frame != 0
    {
        let at = frame.wrapping_add(u64::from(off));
        frame = mem
            .read_u64(at)
            .map_err(Error::read("_PyCFrame.current_frame", at))?;
    }
    Ok(ThreadState {
        addr,
        thread_id,
        native_thread_id,
        frame,
    })
}

fn u64_at(buf: &[u8], off: u32) -> u64 {
    let off = off as usize;
    buf.get(off..off + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn i32_at(buf: &[u8], off: u32) -> i32 {
    let off = off as usize;
    buf.get(off..off + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, i32::from_le_bytes)
}

/// The Python frames of a thread, leaf first, starting at `frame` (a [`ThreadState::frame`]).
///
/// At most `max` frames are returned and at most `2 × max` frame structures read (skipped
/// frames count too); a cycle ends the walk. 3.12+ shim frames are skipped and mark the frame
/// before them [`entry`](RawFrame::entry); 3.11+ frames that have not started (the
/// instruction pointer before the first instruction) are skipped.
pub fn walk(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    frame: u64,
    max: usize,
) -> Result<Vec<RawFrame>, Error> {
    let mut out: Vec<RawFrame> = Vec::new();
    let mut buf = [0u8; 128];
    let len = (layout.frame_read_len as usize).min(buf.len());
    let buf = &mut buf[..len];
    let mut addr = frame;
    let mut seen = HashSet::new();
    for _ in 0..max.saturating_mul(2) {
        if addr == 0 || out.len() >= max {
            break;
        }
        if !seen.insert(addr) {
            tracing::debug!(frame = addr, "frame chain loops back; walk stopped");
            break;
        }
        let here = addr;
        mem.read_exact_at(addr, buf)
            .map_err(Error::read("frame", addr))?;
        match layout.frame {
            FrameLayout::Object {
                f_back,
                f_code,
                f_lasti,
                lasti_in_code_units,
            } => {
                let code = u64_at(buf, f_code);
                let lasti = i32_at(buf, f_lasti).max(0) as u32;
                let byte_offset = if lasti_in_code_units {
                    lasti.saturating_mul(2)
                } else {
                    lasti
                };
                if code != 0 {
                    out.push(RawFrame {
                        code,
                        byte_offset,
                        entry: true,
                    });
                }
                addr = u64_at(buf, f_back);
            }
            FrameLayout::Interpreter {
                executable,
                previous,
                instr_ptr,
                entry,
                executable_tag_mask,
                ..
            } => {
                addr = u64_at(buf, previous);
                let is_entry = match entry {
                    Entry::IsEntry { offset } => buf.get(offset as usize).is_some_and(|&b| b != 0),
                    Entry::Owner { offset, cstack } => {
                        let owner = buf.get(offset as usize).copied().unwrap_or(0);
                        if owner >= cstack {
                            // A shim: the frame before it is the first of its eval call.
                            if let Some(last) = out.last_mut() {
                                last.entry = true;
                            }
                            continue;
                        }
                        false
                    }
                };
                let code = u64_at(buf, executable) & !executable_tag_mask;
                let start =
                    code.wrapping_add(u64::from(layout.co_code_adaptive.unwrap_or_default()));
                let ip = u64_at(buf, instr_ptr);
                if code == 0 || ip < start {
                    // Not started yet (3.11/3.12 prev_instr is first - 1), or no code. Such a
                    // frame has called nothing, so it is the leaf: no frame above to mark.
                    tracing::trace!(
                        frame = here,
                        code,
                        ip,
                        "skipping a frame that has not started"
                    );
                    continue;
                }
                let byte_offset = u32::try_from(ip - start).map_err(|_| {
                    Error::invalid(
                        "frame",
                        here,
                        format!("instruction pointer {ip:#x} is far past code {code:#x}"),
                    )
                })?;
                out.push(RawFrame {
                    code,
                    byte_offset,
                    entry: is_entry,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;
    use ferroscope_unwind_api::SnapshotMemory;

    /// Builds frames of the layout's shape in a snapshot: (addr, code, instr/lasti, entry/owner).
    fn put(
        mem: &mut SnapshotMemory,
        l: &Layout,
        addr: u64,
        code: u64,
        ip: u64,
        flag: u8,
        prev: u64,
    ) {
        let mut b = vec![0u8; l.frame_read_len as usize];
        let mut w = |off: u32, v: &[u8]| b[off as usize..][..v.len()].copy_from_slice(v);
        match l.frame {
            FrameLayout::Object {
                f_back,
                f_code,
                f_lasti,
                ..
            } => {
                w(f_back, &prev.to_le_bytes());
                w(f_code, &code.to_le_bytes());
                w(f_lasti, &(ip as i32).to_le_bytes());
            }
            FrameLayout::Interpreter {
                executable,
                previous,
                instr_ptr,
                entry,
                ..
            } => {
                w(previous, &prev.to_le_bytes());
                w(executable, &code.to_le_bytes());
                w(instr_ptr, &ip.to_le_bytes());
                let (Entry::IsEntry { offset } | Entry::Owner { offset, .. }) = entry;
                w(offset, &[flag]);
            }
        }
        mem.add_region(addr, b);
    }

    #[test]
    fn object_frames_are_all_entries_and_lasti_scales_in_310() {
        for minor in [9u8, 10] {
            let l = layout(minor).unwrap();
            let mut mem = SnapshotMemory::new(1);
            put(&mut mem, l, 0x1000, 0xa000, 10, 0, 0x2000);
            put(&mut mem, l, 0x2000, 0xb000, u64::from(u32::MAX), 0, 0); // f_lasti = -1
            let got = walk(&mem, l, 0x1000, 16).unwrap();
            let scale = if minor == 10 { 2 } else { 1 };
            assert_eq!(
                got,
                vec![
                    RawFrame {
                        code: 0xa000,
                        byte_offset: 10 * scale,
                        entry: true
                    },
                    RawFrame {
                        code: 0xb000,
                        byte_offset: 0,
                        entry: true
                    },
                ]
            );
        }
    }

    #[test]
    fn shims_mark_the_frame_above_them_and_are_skipped_in_312() {
        let l = layout(12).unwrap();
        let adaptive = u64::from(l.co_code_adaptive.unwrap());
        let mut mem = SnapshotMemory::new(1);
        // leaf (0x1000) -> caller (0x2000) -> shim (0x3000) -> outer (0x4000) -> shim (0x5000)
        put(
            &mut mem,
            l,
            0x1000,
            0xa000,
            0xa000 + adaptive + 4,
            0,
            0x2000,
        );
        put(
            &mut mem,
            l,
            0x2000,
            0xb000,
            0xb000 + adaptive + 20,
            0,
            0x3000,
        );
        put(&mut mem, l, 0x3000, 0, 0, 3, 0x4000);
        put(
            &mut mem,
            l,
            0x4000,
            0xc000,
            0xc000 + adaptive + 8,
            0,
            0x5000,
        );
        put(&mut mem, l, 0x5000, 0, 0, 3, 0);
        let got = walk(&mem, l, 0x1000, 16).unwrap();
        let summary: Vec<_> = got
            .iter()
            .map(|f| (f.code, f.byte_offset, f.entry))
            .collect();
        assert_eq!(
            summary,
            vec![(0xa000, 4, false), (0xb000, 20, true), (0xc000, 8, true)]
        );
    }

    #[test]
    fn incomplete_frames_are_skipped_and_entry_flags_read_in_311() {
        let l = layout(11).unwrap();
        let adaptive = u64::from(l.co_code_adaptive.unwrap());
        let mut mem = SnapshotMemory::new(1);
        // A frame pushed but not started: prev_instr = first instruction - 1 code unit.
        put(
            &mut mem,
            l,
            0x1000,
            0xa000,
            0xa000 + adaptive - 2,
            0,
            0x2000,
        );
        put(&mut mem, l, 0x2000, 0xb000, 0xb000 + adaptive + 6, 1, 0);
        let got = walk(&mem, l, 0x1000, 16).unwrap();
        assert_eq!(
            got,
            vec![RawFrame {
                code: 0xb000,
                byte_offset: 6,
                entry: true
            }]
        );
    }

    #[test]
    fn tag_bits_are_cleared_in_314_and_owner_interpreter_is_a_shim() {
        let l = &crate::debug_offsets::tests::layout_314();
        let adaptive = u64::from(l.co_code_adaptive.unwrap());
        let mut mem = SnapshotMemory::new(1);
        put(&mut mem, l, 0x1000, 0xa001, 0xa000 + adaptive, 0, 0x2000);
        put(&mut mem, l, 0x2000, 0, 0, 3, 0x3000); // FRAME_OWNED_BY_INTERPRETER
        put(
            &mut mem,
            l,
            0x3000,
            0xb000,
            0xb000 + adaptive + 2,
            0,
            0x4000,
        );
        put(&mut mem, l, 0x4000, 0, 0, 4, 0); // FRAME_OWNED_BY_CSTACK
        let got = walk(&mem, l, 0x1000, 16).unwrap();
        let summary: Vec<_> = got
            .iter()
            .map(|f| (f.code, f.byte_offset, f.entry))
            .collect();
        assert_eq!(summary, vec![(0xa000, 0, true), (0xb000, 2, true)]);
    }

    #[test]
    fn cycles_and_bounds_end_the_walk() {
        let l = layout(8).unwrap();
        let mut mem = SnapshotMemory::new(1);
        put(&mut mem, l, 0x1000, 0xa000, 0, 0, 0x2000);
        put(&mut mem, l, 0x2000, 0xb000, 0, 0, 0x1000);
        assert_eq!(walk(&mem, l, 0x1000, 16).unwrap().len(), 2);
        assert_eq!(walk(&mem, l, 0x1000, 1).unwrap().len(), 1);
        assert!(walk(&mem, l, 0x9000, 16).is_err());
        assert!(walk(&mem, l, 0, 16).unwrap().is_empty());
    }

    #[test]
    fn threads_follow_interpreters_and_cframes() {
        let l = layout(11).unwrap();
        let mut mem = SnapshotMemory::new(1);
        let runtime = 0x10_000u64;
        let interp = 0x20_000u64;
        let ts = 0x30_000u64;
        let cframe = 0x40_000u64;
        let mut r = vec![0u8; 64];
        r[l.runtime_interpreters_head.unwrap() as usize..][..8]
            .copy_from_slice(&interp.to_le_bytes());
        mem.add_region(runtime, r);
        let mut i = vec![0u8; 64];
        i[l.interp_threads_head as usize..][..8].copy_from_slice(&ts.to_le_bytes());
        mem.add_region(interp, i);
        let mut t = vec![0u8; 256];
        t[l.tstate_thread_id as usize..][..8].copy_from_slice(&77u64.to_le_bytes());
        t[l.tstate_native_thread_id.unwrap() as usize..][..8].copy_from_slice(&5u64.to_le_bytes());
        t[l.tstate_frame as usize..][..8].copy_from_slice(&cframe.to_le_bytes());
        mem.add_region(ts, t);
        let mut c = vec![0u8; 16];
        c[l.cframe_current_frame.unwrap() as usize..][..8]
            .copy_from_slice(&0x1234u64.to_le_bytes());
        mem.add_region(cframe, c);
        let head = interpreters_head(&mem, l, runtime).unwrap();
        assert_eq!(head, interp);
        assert_eq!(
            threads(&mem, l, head).unwrap(),
            vec![ThreadState {
                addr: ts,
                thread_id: 77,
                native_thread_id: Some(5),
                frame: 0x1234
            }]
        );
    }
}
