//! The reference walker: a thread's Perl frames from its interpreter, in segments.
//!
//! It does what the eBPF walker (`bpf/perl.bpf.c`) does, read for read: the same fixed-size
//! reads at the same offsets, the same decisions, the same bound on steps. Tests run it
//! against live Perl processes, and the fuzz target against arbitrary bytes.
//!
//! A segment is the Perl frames one call of the runops loop runs (one native frame of
//! `Perl_runops_standard`), innermost first; the native unwinder puts each segment in place
//! of the next runops frame it meets. A new runops call starts where C code entered Perl
//! code: a context whose return op is NULL (`call_sv`, `eval_sv`, a sort sub, a MULTICALL
//! block, a signal handler), a sort block (a `CXt_NULL` context at the bottom of its
//! runlevel), and the main program (`perl_run`).

use ferroscope_unwind_api::ProcessMemory;

use crate::ebpf::FrameKind;
use crate::layout::cx;
use crate::{Error, Layout};

/// Most steps (contexts and runlevel bottoms) one walk takes (`PERL_MAX_STEPS`).
pub const MAX_STEPS: usize = 512;
/// Bytes of a stackinfo read at once (covers every field the walker uses).
const SI_READ: usize = 48;

/// Where a thread's walk starts: what its interpreter says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// `PL_curcop`: the statement executing.
    pub cop: u64,
    /// `PL_curstackinfo`: the innermost runlevel.
    pub stackinfo: u64,
    /// `PL_op`: the op executing in the innermost runops call; NULL between two calls of a
    /// sort or MULTICALL block, and while a string eval or `require` compiles its code.
    pub op: u64,
}

impl Start {
    /// Reads the start of a walk from a threaded Perl's interpreter at `interp`.
    pub fn of_interpreter(
        mem: &dyn ProcessMemory,
        layout: &Layout,
        interp: u64,
    ) -> Result<Start, Error> {
        Self::at(
            mem,
            interp + u64::from(layout.interp_curcop),
            interp + u64::from(layout.interp_curstackinfo),
            interp + u64::from(layout.interp_op),
        )
    }

    /// Reads the start of a walk from the addresses of `PL_curcop`, `PL_curstackinfo` and
    /// `PL_op` (an unthreaded Perl's globals).
    pub fn at(
        mem: &dyn ProcessMemory,
        curcop: u64,
        curstackinfo: u64,
        op: u64,
    ) -> Result<Start, Error> {
        let read = |what, addr| mem.read_u64(addr).map_err(Error::read(what, addr));
        Ok(Start {
            op: read("PL_op", op)?,
            stackinfo: read("PL_curstackinfo", curstackinfo)?,
            cop: read("PL_curcop", curcop)?,
        })
    }
}

/// One Perl frame as the walker records it, before naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PerlFrame {
    /// What it is.
    pub kind: FrameKind,
    /// The statement it executes (1 when the context had none).
    pub cop: u64,
    /// The CV of a sub or format, the name SV of a `require` or `do FILE`, the source SV of a
    /// string eval, 0 for the main program; for a frame being compiled, the line of
    /// `PL_compiling` when the walk read it.
    pub ptr: u64,
    /// A string eval or `require` whose code is being compiled (its statement is
    /// `PL_compiling`): the payload's [`COMPILING_BIT`](crate::ebpf::COMPILING_BIT).
    pub compiling: bool,
}

impl PerlFrame {
    /// The payload the eBPF walker records for this frame.
    pub fn payload(&self) -> u64 {
        let p = crate::ebpf::payload(self.kind, self.ptr);
        if self.compiling {
            p | crate::ebpf::COMPILING_BIT
        } else {
            p
        }
    }
}

/// A thread's Perl frames, in segments (innermost first), as the eBPF walker queues them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walk {
    /// One entry per runops call, innermost first (an empty one keeps its native frame).
    pub segments: Vec<Vec<PerlFrame>>,
    /// The innermost level was between two calls of a block: its frames were dropped.
    pub idle: bool,
    /// Runlevels crossed after the first.
    pub runlevels: u32,
    /// The walk stopped early (a failed read, an inconsistent stack, out of steps).
    pub truncated: bool,
}

impl Walk {
    /// Every frame, innermost first.
    pub fn frames(&self) -> impl Iterator<Item = &PerlFrame> {
        self.segments.iter().flatten()
    }
}

struct State {
    cxstack: u64,
    prev: u64,
    ix: i32,
    cxix: i32,
    si_type: i32,
}

struct Walker<'a> {
    mem: &'a dyn ProcessMemory,
    l: &'a Layout,
    out: Walk,
    current: Vec<PerlFrame>,
    cop: u64,
    skip: bool,
    pending: bool,
    compiling: bool,
    /// The line `PL_compiling` was at (when `compiling`).
    line: u32,
}

fn le_u64(b: &[u8], off: u16) -> u64 {
    b.get(off as usize..off as usize + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

fn le_u32(b: &[u8], off: u16) -> u32 {
    b.get(off as usize..off as usize + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

impl Walker<'_> {
    /// Ends the segment of one runops call (an empty one when nothing was queued since).
    fn end_segment(&mut self) {
        self.pending = false;
        if self.skip {
            self.skip = false;
        } else {
            self.out.segments.push(std::mem::take(&mut self.current));
        }
    }

    /// Queues a frame, after ending the segment of a context entered from C before it.
    fn emit(&mut self, kind: FrameKind, ptr: u64) {
        if self.pending {
            self.end_segment();
        }
        if !self.skip {
            let cop = if self.cop == 0 { 1 } else { self.cop };
            self.current.push(PerlFrame {
                kind,
                cop,
                ptr: if self.compiling {
                    u64::from(self.line)
                } else {
                    ptr & ((1 << crate::ebpf::PTR_BITS) - 1)
                },
                compiling: self.compiling,
            });
        }
        self.compiling = false;
    }

    fn stackinfo(&self, si: u64) -> Result<State, Error> {
        let l = self.l;
        let mut b = [0u8; SI_READ];
        self.mem
            .read_exact_at(si, &mut b)
            .map_err(Error::read("runlevel (stackinfo)", si))?;
        let cxix = le_u32(&b, l.si_cxix) as i32;
        let ix = match l.si_cxsubix {
            Some(off) => le_u32(&b, off) as i32,
            None => cxix,
        };
        Ok(State {
            cxstack: le_u64(&b, l.si_cxstack),
            prev: le_u64(&b, l.si_prev),
            ix: ix.min(cxix),
            cxix,
            si_type: le_u32(&b, l.si_type) as i32,
        })
    }

    fn context(&self, s: &State, ix: i32) -> Result<Vec<u8>, Error> {
        let l = self.l;
        let at = s
            .cxstack
            .wrapping_add(u64::from(ix as u32).wrapping_mul(u64::from(l.cx_size)));
        let mut b = vec![0u8; l.cx_read_len() as usize];
        self.mem
            .read_exact_at(at, &mut b)
            .map_err(Error::read("context", at))?;
        Ok(b)
    }

    /// Whether the runlevel's innermost context is a string eval or `require` that Perl code
    /// started (it has a return op): with `PL_op` NULL, its code is being compiled.
    fn compiling(&self, s: &State) -> bool {
        if s.cxix < 0 {
            return false;
        }
        let Ok(b) = self.context(s, s.cxix) else {
            return false;
        };
        let (ty, flags) = (b[0] & cx::TYPE_MASK, b[0] & !cx::TYPE_MASK);
        ty == cx::EVAL && flags & (cx::EVALBLOCK | cx::TRY) == 0 && le_u64(&b, self.l.cx_retop) != 0
    }

    /// One context; `Ok(false)` stops the walk (an inconsistent stack).
    fn context_step(&mut self, s: &mut State) -> Result<bool, Error> {
        let l = self.l;
        let b = self.context(s, s.ix)?;
        let chain = l.si_cxsubix.is_some();
        let ty = b[0] & cx::TYPE_MASK;
        let flags = b[0] & !cx::TYPE_MASK;
        let mut kind = None;
        let mut ptr = 0;
        if (ty == cx::SUB || ty == cx::FORMAT) && flags & cx::SUB_RE_FAKE == 0 {
            kind = Some(if ty == cx::SUB {
                FrameKind::Sub
            } else {
                FrameKind::Format
            });
            ptr = le_u64(&b, l.cx_cv);
        } else if ty == cx::EVAL && flags & (cx::EVALBLOCK | cx::TRY) == 0 {
            let op_type = u16::from_le_bytes([b[2], b[3]]) >> 7;
            let k = if flags & cx::REAL == 0 && op_type == l.op_require {
                FrameKind::Require
            } else if flags & cx::REAL == 0 && op_type == l.op_dofile {
                FrameKind::DoFile
            } else {
                FrameKind::Eval
            };
            ptr = le_u64(
                &b,
                if k == FrameKind::Eval {
                    l.cx_text
                } else {
                    l.cx_namesv
                },
            );
            kind = Some(k);
        } else if chain && ty != cx::EVAL {
            return Ok(false);
        }
        let next = match l.cx_subix {
            Some(off) if chain => le_u32(&b, off) as i32,
            _ => s.ix - 1,
        };
        if let Some(kind) = kind {
            self.emit(kind, ptr);
            self.cop = le_u64(&b, l.cx_oldcop);
            // Entered from C: its runops call ends below it (or at the bottom of a sort
            // block's runlevel, when it was the block's last op).
            if le_u64(&b, l.cx_retop) == 0 {
                self.pending = true;
            }
        }
        if next >= s.ix {
            return Ok(false);
        }
        s.ix = next;
        Ok(true)
    }

    /// The bottom of a runlevel; `Ok(false)` when the walk is over.
    fn bottom_step(&mut self, s: &mut State) -> Result<bool, Error> {
        let l = self.l;
        let (mut entered_from_c, mut own_runops) = (false, false);
        if s.cxix >= 0 {
            let b = self.context(s, 0)?;
            let ty = b[0] & cx::TYPE_MASK;
            let fake = ty == cx::SUB && b[0] & cx::SUB_RE_FAKE != 0;
            entered_from_c = !fake
                && le_u64(&b, l.cx_retop) == 0
                && (ty == cx::SUB || ty == cx::FORMAT || ty == cx::EVAL);
            own_runops = ty == cx::NULL || fake;
        }
        let last = s.si_type == cx::SI_MAIN || s.prev == 0;
        if last && s.si_type == cx::SI_MAIN && !entered_from_c {
            self.emit(FrameKind::Main, 0);
            self.end_segment();
        } else if self.pending || (!last && own_runops) {
            self.end_segment();
        }
        if last {
            return Ok(false);
        }
        self.out.runlevels += 1;
        *s = self.stackinfo(s.prev)?;
        Ok(true)
    }
}

/// Walks a thread's Perl frames from `start`, as the eBPF walker does (at most
/// [`MAX_STEPS`] steps). A read that fails part-way ends the walk with what it has
/// (`truncated`), as in eBPF; a failure to read the first runlevel is an error.
pub fn walk(mem: &dyn ProcessMemory, layout: &Layout, start: Start) -> Result<Walk, Error> {
    if start.stackinfo == 0 {
        return Err(Error::invalid(
            "interpreter",
            0,
            "PL_curstackinfo is NULL (the interpreter is not running)",
        ));
    }
    let mut w = Walker {
        mem,
        l: layout,
        out: Walk::default(),
        current: Vec::new(),
        cop: start.cop,
        skip: false,
        pending: false,
        compiling: false,
        line: 0,
    };
    let mut s = w.stackinfo(start.stackinfo)?;
    if start.op == 0 {
        // Compiling a string eval or require (inside the runops call that started it), or
        // between two calls of a sort or MULTICALL block (no runops call runs this level).
        w.compiling = w.compiling(&s);
        w.skip = !w.compiling;
        w.out.idle = w.skip;
        if w.compiling {
            let mut b = [0u8; 4];
            let at = start.cop.wrapping_add(u64::from(layout.cop_line));
            // A failed read leaves 0, as in eBPF.
            if mem.read_exact_at(at, &mut b).is_ok() {
                w.line = u32::from_le_bytes(b);
            }
        }
    }
    let mut finished = false;
    for _ in 0..MAX_STEPS {
        let step = if s.ix >= 0 {
            w.context_step(&mut s)
        } else {
            w.bottom_step(&mut s)
        };
        match step {
            Ok(true) => {}
            Ok(false) => {
                // The main program's bottom ends the walk normally; anything else stopped it.
                finished = s.ix < 0 && (s.si_type == cx::SI_MAIN || s.prev == 0);
                break;
            }
            Err(_) => break,
        }
    }
    w.out.truncated = !finished;
    if !w.current.is_empty() {
        let last = std::mem::take(&mut w.current);
        w.out.segments.push(last);
    }
    Ok(w.out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_unwind_api::SnapshotMemory;

    /// A fake 5.36 process: a main runlevel with `foo` (called from the main program) and
    /// `bar` (called from C inside foo, through call_sv), and a sort runlevel above it whose
    /// block called `cmp`.
    fn process() -> (SnapshotMemory, Start) {
        process_with(0x99)
    }

    /// The same, `cmp`'s context having `cmp_retop` (NULL when its call is the sort
    /// block's last op).
    fn process_with(cmp_retop: u64) -> (SnapshotMemory, Start) {
        let l = crate::layout(36).unwrap();
        let mut m = SnapshotMemory::new(1);
        let cx = |ty: u8, oldcop: u64, retop: u64, subix: i32, cv: u64| {
            let mut b = vec![0u8; l.cx_size as usize];
            b[0] = ty;
            b[l.cx_oldcop as usize..][..8].copy_from_slice(&oldcop.to_le_bytes());
            b[l.cx_retop as usize..][..8].copy_from_slice(&retop.to_le_bytes());
            b[l.cx_subix.unwrap() as usize..][..4].copy_from_slice(&subix.to_le_bytes());
            b[l.cx_cv as usize..][..8].copy_from_slice(&cv.to_le_bytes());
            b
        };
        let si = |cxstack: u64, prev: u64, cxix: i32, cxsubix: i32, ty: i32| {
            let mut b = vec![0u8; SI_READ];
            b[l.si_cxstack as usize..][..8].copy_from_slice(&cxstack.to_le_bytes());
            b[l.si_prev as usize..][..8].copy_from_slice(&prev.to_le_bytes());
            b[l.si_cxix as usize..][..4].copy_from_slice(&cxix.to_le_bytes());
            b[l.si_cxsubix.unwrap() as usize..][..4].copy_from_slice(&cxsubix.to_le_bytes());
            b[l.si_type as usize..][..4].copy_from_slice(&ty.to_le_bytes());
            b
        };
        // Main runlevel: [0] a loop, [1] foo (from perl: retop set), [2] bar (call_sv).
        let mut main = Vec::new();
        main.extend(cx(4, 0xc0, 0, -1, 0)); // CXt_LOOP_ARY: not chained
        main.extend(cx(cx::SUB, 0xc1, 0x77, -1, 0xf00));
        main.extend(cx(cx::SUB, 0xc2, 0, 1, 0xba4));
        m.add_region(0x10000, main);
        m.add_region(0x20000, si(0x10000, 0, 2, 2, cx::SI_MAIN));
        // Sort runlevel: [0] CXt_NULL (the block), [1] cmp called from the block.
        let mut sort = Vec::new();
        sort.extend(cx(cx::NULL, 0xc3, 0, -1, 0));
        sort.extend(cx(cx::SUB, 0xc4, cmp_retop, -1, 0xc39));
        m.add_region(0x30000, sort);
        m.add_region(0x40000, si(0x30000, 0x20000, 1, 1, 3));
        (
            m,
            Start {
                cop: 0xc5,
                stackinfo: 0x40000,
                op: 0x1234,
            },
        )
    }

    fn f(kind: FrameKind, cop: u64, ptr: u64) -> PerlFrame {
        PerlFrame {
            kind,
            cop,
            ptr,
            compiling: false,
        }
    }

    #[test]
    fn segments_follow_runops_calls_across_runlevels() {
        let (m, start) = process();
        let w = walk(&m, crate::layout(36).unwrap(), start).unwrap();
        assert_eq!(
            w.segments,
            vec![
                // The sort block's runops call: cmp at the current statement.
                vec![f(FrameKind::Sub, 0xc5, 0xc39)],
                // bar's (call_sv) at the statement of the sort block that called cmp.
                vec![f(FrameKind::Sub, 0xc4, 0xba4)],
                // perl_run's: foo where it called bar, the main program where it called foo.
                vec![f(FrameKind::Sub, 0xc2, 0xf00), f(FrameKind::Main, 0xc1, 0)],
            ]
        );
        assert_eq!((w.runlevels, w.idle, w.truncated), (1, false, false));
    }

    #[test]
    fn a_sub_called_by_a_sort_blocks_last_op_shares_the_blocks_runops_call() {
        // Its return op is NULL (the block ends there), yet no C code called it.
        let (m, start) = process_with(0);
        let w = walk(&m, crate::layout(36).unwrap(), start).unwrap();
        assert_eq!(
            w.segments.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 1, 2],
            "{w:?}"
        );
    }

    #[test]
    fn an_idle_innermost_level_is_dropped() {
        let (m, mut start) = process();
        start.op = 0;
        let w = walk(&m, crate::layout(36).unwrap(), start).unwrap();
        assert!(w.idle);
        assert_eq!(w.segments[0], vec![f(FrameKind::Sub, 0xc4, 0xba4)]);
        assert_eq!(w.segments.len(), 2);
    }

    /// `doeval_compile` clears `PL_op` while the parser runs: the eval being compiled is the
    /// innermost context, with a return op (its entereval ran in a runops call), and the
    /// walk keeps every frame, the eval's marked as compiling.
    #[test]
    fn a_string_eval_being_compiled_keeps_its_frames() {
        let l = crate::layout(36).unwrap();
        let (mut m, _) = process();
        // Main runlevel: [0] foo (retop set), [1] a string eval foo runs (retop set).
        let mut cxs = vec![0u8; 2 * l.cx_size as usize];
        for (i, (ty, oldcop, subix, ptr)) in [
            (cx::SUB, 0xd1u64, -1i32, 0xf00u64),
            (cx::EVAL | cx::REAL, 0xd2, 0, 0x5e7),
        ]
        .into_iter()
        .enumerate()
        {
            let b = &mut cxs[i * l.cx_size as usize..][..l.cx_size as usize];
            b[0] = ty;
            b[l.cx_oldcop as usize..][..8].copy_from_slice(&oldcop.to_le_bytes());
            b[l.cx_retop as usize..][..8].copy_from_slice(&0x77u64.to_le_bytes());
            b[l.cx_subix.unwrap() as usize..][..4].copy_from_slice(&subix.to_le_bytes());
            b[l.cx_text as usize..][..8].copy_from_slice(&ptr.to_le_bytes());
            b[l.cx_cv as usize..][..8].copy_from_slice(&ptr.to_le_bytes());
        }
        m.add_region(0x60000, cxs);
        let mut si = vec![0u8; SI_READ];
        si[l.si_cxstack as usize..][..8].copy_from_slice(&0x60000u64.to_le_bytes());
        si[l.si_cxix as usize..][..4].copy_from_slice(&1i32.to_le_bytes());
        si[l.si_cxsubix.unwrap() as usize..][..4].copy_from_slice(&1i32.to_le_bytes());
        si[l.si_type as usize..][..4].copy_from_slice(&cx::SI_MAIN.to_le_bytes());
        m.add_region(0x70000, si);
        // PL_compiling, at line 7 of the eval's source.
        let mut compiling = vec![0u8; 0x40];
        compiling[l.cop_line as usize..][..4].copy_from_slice(&7u32.to_le_bytes());
        m.add_region(0x80000, compiling);
        let start = Start {
            cop: 0x80000,
            stackinfo: 0x70000,
            op: 0,
        };
        let w = walk(&m, l, start).unwrap();
        assert!(!w.idle && !w.truncated, "{w:?}");
        // The line instead of the source SV.
        let eval = PerlFrame {
            compiling: true,
            ..f(FrameKind::Eval, 0x80000, 7)
        };
        assert_eq!(
            w.segments,
            vec![vec![
                eval,
                f(FrameKind::Sub, 0xd2, 0xf00),
                f(FrameKind::Main, 0xd1, 0)
            ]]
        );
        assert!(crate::ebpf::is_compiling(eval.payload()));
        assert!(!crate::ebpf::is_compiling(w.segments[0][1].payload()));
    }

    #[test]
    fn a_failed_read_truncates_and_a_missing_runlevel_is_an_error() {
        let (m, mut start) = process();
        let l = crate::layout(36).unwrap();
        start.stackinfo = 0x50000;
        assert!(walk(&m, l, start).is_err());
        // A runlevel whose contexts are not there.
        let mut m2 = SnapshotMemory::new(1);
        let mut si = vec![0u8; SI_READ];
        si[l.si_cxstack as usize..][..8].copy_from_slice(&0x9000u64.to_le_bytes());
        si[l.si_type as usize..][..4].copy_from_slice(&1i32.to_le_bytes());
        m2.add_region(0x20000, si);
        start.stackinfo = 0x20000;
        let w = walk(&m2, l, start).unwrap();
        assert!(w.truncated && w.segments.is_empty(), "{w:?}");
    }
}
