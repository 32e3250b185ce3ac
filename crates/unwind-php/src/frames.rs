//! A host-side reference walker doing what the eBPF walker does, with the same reads and
//! the same rules: from `executor_globals.current_execute_data` outwards, skipping frames
//! without a function, recording each frame's function, current line, fingerprint and call
//! flags, and marking the last frame of each call of the VM loop (a user frame whose call is
//! `ZEND_CALL_TOP`).

use ferroscope_unwind_api::ProcessMemory;

use crate::Error;
use crate::ebpf::{Payload, call_flags, fingerprint};
use crate::layout::{CALL_TOP, FUNCTION_INTERNAL, Layout};

/// Most frames [`walk`] follows (the eBPF walker queues at most 192 per sample).
pub const MAX_FRAMES: usize = 4096;

/// One frame as the walker records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame {
    /// The `zend_execute_data`.
    pub execute_data: u64,
    /// Its `zend_function`.
    pub function: u64,
    /// What the eBPF walker would record besides the function.
    pub payload: Payload,
    /// The last frame of a call of the VM loop (the native frame it is spliced into).
    pub last_of_loop: bool,
}

fn u64_at(b: &[u8], off: u32) -> u64 {
    let off = off as usize;
    b.get(off..off + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}

/// The frame executing now: `EG(current_execute_data)`, read at `executor_globals` (the
/// variable's process address).
pub fn current_frame(
    mem: &dyn ProcessMemory,
    l: &Layout,
    executor_globals: u64,
) -> Result<u64, Error> {
    let at = executor_globals.wrapping_add(u64::from(l.eg_current_execute_data));
    mem.read_u64(at)
        .map_err(Error::read("executor_globals.current_execute_data", at))
}

/// Walks the frames from `execute_data` outwards, at most `max` (and [`MAX_FRAMES`]).
pub fn walk(
    mem: &dyn ProcessMemory,
    l: &Layout,
    execute_data: u64,
    max: usize,
) -> Result<Vec<RawFrame>, Error> {
    let mut out = Vec::new();
    let mut ex = execute_data;
    let mut steps = 0;
    while ex != 0 && out.len() < max.min(MAX_FRAMES) {
        steps += 1;
        if steps > MAX_FRAMES {
            return Err(Error::invalid(
                "zend_execute_data",
                ex,
                format!("the frame chain is longer than {MAX_FRAMES} (a cycle?)"),
            ));
        }
        let mut b = vec![0u8; l.ex_read_len() as usize];
        mem.read_exact_at(ex, &mut b)
            .map_err(Error::read("zend_execute_data", ex))?;
        let func = u64_at(&b, l.ex_func);
        let info = u64_at(&b, l.ex_call_info) as u32;
        let opline = u64_at(&b, l.ex_opline);
        let prev = u64_at(&b, l.ex_prev);
        if func != 0 {
            let mut f = vec![0u8; l.func_read_len() as usize];
            mem.read_exact_at(func, &mut f)
                .map_err(Error::read("zend_function", func))?;
            let user = f[l.func_type as usize] != FUNCTION_INTERNAL;
            let line = if user && opline != 0 {
                let mut w = [0u8; 4];
                mem.read_exact_at(opline + u64::from(l.zend_op_lineno), &mut w)
                    .map_or(0, |()| u32::from_le_bytes(w))
            } else {
                0
            };
            out.push(RawFrame {
                execute_data: ex,
                function: func,
                payload: Payload {
                    line,
                    fingerprint: if user {
                        fingerprint(u64_at(&f, l.op_opcodes))
                    } else {
                        0
                    },
                    flags: call_flags(info),
                },
                last_of_loop: user && info & CALL_TOP != 0,
            });
        }
        ex = prev;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PhpVersion;
    use crate::layout::{CALL_CODE, FUNCTION_USER, layout};
    use ferroscope_unwind_api::SnapshotMemory;

    #[test]
    fn walks_and_marks_the_loops_last_frames() {
        let l = layout(PhpVersion::new(7, 4, 0)).unwrap();
        let mut mem = SnapshotMemory::new(1);
        let frame = |func: u64, info: u32, opline: u64, prev: u64| {
            let mut b = vec![0u8; 56];
            b[0..8].copy_from_slice(&opline.to_le_bytes());
            b[24..32].copy_from_slice(&func.to_le_bytes());
            b[40..44].copy_from_slice(&info.to_le_bytes());
            b[48..56].copy_from_slice(&prev.to_le_bytes());
            b
        };
        let func = |kind: u8| {
            let mut f = vec![0u8; l.func_read_len() as usize];
            f[0] = kind;
            f[l.op_opcodes as usize..][..8].copy_from_slice(&0x8000u64.to_le_bytes());
            f
        };
        let mut op = vec![0u8; 32];
        op[24..28].copy_from_slice(&42u32.to_le_bytes());
        mem.add_region(0x9000, op);
        mem.add_region(0x5000, func(FUNCTION_INTERNAL));
        mem.add_region(0x6000, func(FUNCTION_USER));
        // hash() <- f() (called from C: TOP) <- no function <- <main> (TOP | CODE)
        mem.add_region(0x1000, frame(0x5000, CALL_TOP, 0, 0x1100));
        mem.add_region(0x1100, frame(0x6000, CALL_TOP, 0x9000, 0x1200));
        mem.add_region(0x1200, frame(0, 0, 0, 0x1300));
        mem.add_region(0x1300, frame(0x6000, CALL_TOP | CALL_CODE, 0x9000, 0));
        let frames = walk(&mem, l, 0x1000, 64).unwrap();
        let got: Vec<(u64, u32, bool)> = frames
            .iter()
            .map(|f| (f.function, f.payload.line, f.last_of_loop))
            .collect();
        assert_eq!(
            got,
            [(0x5000, 0, false), (0x6000, 42, true), (0x6000, 42, true)]
        );
        assert_eq!(
            frames[0].payload.fingerprint, 0,
            "internal functions have none"
        );
        assert_eq!(frames[1].payload.fingerprint, fingerprint(0x8000));
        assert_eq!(walk(&mem, l, 0x1000, 1).unwrap().len(), 1);
        assert!(walk(&mem, l, 0x7777, 8).is_err());
    }
}
