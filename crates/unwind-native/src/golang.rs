//! Go's `.gopclntab`: function ranges and per-PC SP deltas (the `pcsp` table).
//!
//! Layout facts (Go's `runtime/symtab.go`, `cmd/internal/objabi`): a header with a magic
//! per format generation, then offsets (from the header) of the function-name table, the
//! compilation-unit table, the file table, the pc-value tables and the function table.
//! Supported: the Go 1.16 (0xfffffffa), 1.18 (0xfffffff0) and 1.20+ (0xfffffff1) formats.

use crate::{Kind, UnwindInfo};

/// Go runtime functions that are the outermost frame of a stack, or that switch stacks in a
/// way SP deltas cannot follow.
const STOP_FUNCTIONS: &[&[u8]] = &[
    b"runtime.goexit",
    b"runtime.goexit.abi0",
    b"runtime.mstart",
    b"runtime.mstart.abi0",
    b"runtime.rt0_go",
    b"runtime.rt0_go.abi0",
    b"_rt0_amd64",
    b"_rt0_amd64_linux",
    b"runtime.mcall",
    b"runtime.mcall.abi0",
];

/// Functions that move between the goroutine and the g0 stack but keep the frame-pointer
/// chain intact across the switch.
const FRAME_POINTER_FUNCTIONS: &[&[u8]] = &[
    b"runtime.systemstack",
    b"runtime.systemstack.abi0",
    b"runtime.asmcgocall",
    b"runtime.asmcgocall.abi0",
];

/// Assembly functions that call the vDSO on the g0 stack: once their frame is set up they
/// move RSP to g0's stack and back, which their SP deltas do not show, but RBP keeps pointing
/// at their own frame. Where the SP delta is the whole frame the frame pointer is used
/// (the two instructions that set RBP up after the frame is allocated are off by one frame).
const VDSO_CALLERS: &[&[u8]] = &[
    b"runtime.nanotime1",
    b"runtime.nanotime1.abi0",
    b"runtime.walltime",
    b"runtime.walltime.abi0",
    b"runtime.walltime1",
    b"runtime.walltime1.abi0",
    b"runtime.vdsoCall",
    b"runtime.vdsoCall.abi0",
    b"time.now",
    b"time.now.abi0",
];

/// Go's signal return trampolines (`rt_sigreturn` restorers).
const SIGNAL_FUNCTIONS: &[&[u8]] = &[
    b"runtime.sigreturn",
    b"runtime.sigreturn.abi0",
    b"runtime.sigreturn__sigaction",
    b"runtime.sigreturn__sigaction.abi0",
];

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Format {
    Go116,
    Go118,
    Go120,
}

/// A parsed `.gopclntab`.
pub(crate) struct GoPclntab<'a> {
    format: Format,
    quantum: u8,
    nfunc: usize,
    text_start: u64,
    funcname: &'a [u8],
    cutab: &'a [u8],
    filetab: &'a [u8],
    pctab: &'a [u8],
    pcln: &'a [u8],
}

/// One function.
#[derive(Copy, Clone, Debug)]
pub(crate) struct GoFunc {
    pub start: u64,
    pub end: u64,
    name_off: u32,
    pcsp: u32,
    pcfile: u32,
    cu_offset: u32,
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(data: &[u8], off: usize) -> Option<u64> {
    let b = data.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

fn tail(data: &[u8], off: u64) -> Option<&[u8]> {
    data.get(usize::try_from(off).ok()?..)
}

fn read_varint(data: &[u8], pos: &mut usize) -> Option<u32> {
    let mut value: u32 = 0;
    let mut shift = 0;
    loop {
        let byte = *data.get(*pos)?;
        *pos += 1;
        value |= u32::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift >= 35 {
            return None;
        }
    }
}

impl<'a> GoPclntab<'a> {
    /// Parses the header. `text_fallback` (the `.text` address) is used when the header's
    /// text start is 0, as in files where the linker leaves it to a relocation.
    pub fn parse(data: &'a [u8], text_fallback: u64) -> Result<Self, &'static str> {
        let magic = u32_at(data, 0).ok_or("header truncated")?;
        let format = match magic {
            0xffff_fffa => Format::Go116,
            0xffff_fff0 => Format::Go118,
            0xffff_fff1 => Format::Go120,
            0xffff_fffb => return Err("Go 1.2-1.15 pclntab format is not supported"),
            _ => return Err("unknown pclntab magic"),
        };
        let hdr = data.get(4..8).ok_or("header truncated")?;
        let (quantum, ptr_size) = (hdr[2], hdr[3]);
        if hdr[0] != 0 || hdr[1] != 0 || quantum != 1 || ptr_size != 8 {
            return Err("not an x86-64 pclntab (quantum 1, 8-byte pointers)");
        }
        let word = |i: usize| u64_at(data, 8 + 8 * i).ok_or("header truncated");
        let nfunc = word(0)?;
        let (text_start, rest) = match format {
            Format::Go116 => (0, 2),
            Format::Go118 | Format::Go120 => (word(2)?, 3),
        };
        let funcname = tail(data, word(rest)?).ok_or("funcname table out of bounds")?;
        let cutab = tail(data, word(rest + 1)?).ok_or("cu table out of bounds")?;
        let filetab = tail(data, word(rest + 2)?).ok_or("file table out of bounds")?;
        let pctab = tail(data, word(rest + 3)?).ok_or("pc table out of bounds")?;
        let pcln = tail(data, word(rest + 4)?).ok_or("function table out of bounds")?;
        let entry_size: u64 = if format == Format::Go116 { 16 } else { 8 };
        // nfunc + 1 entries must fit (the last one is the end of the text).
        if nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(entry_size))
            .is_none_or(|n| n > pcln.len() as u64)
        {
            return Err("function count exceeds the function table");
        }
        let text_start = if text_start == 0 {
            text_fallback
        } else {
            text_start
        };
        Ok(GoPclntab {
            format,
            quantum,
            nfunc: nfunc as usize,
            text_start,
            funcname,
            cutab,
            filetab,
            pctab,
            pcln,
        })
    }

    pub fn len(&self) -> usize {
        self.nfunc
    }

    /// Entry address and `_func` offset of function-table slot `i` (`i <= len()`).
    fn slot(&self, i: usize) -> Option<(u64, usize)> {
        match self.format {
            Format::Go116 => {
                let entry = u64_at(self.pcln, i.checked_mul(16)?)?;
                let off = u64_at(self.pcln, i * 16 + 8)?;
                Some((entry, usize::try_from(off).ok()?))
            }
            _ => {
                let entry = u32_at(self.pcln, i.checked_mul(8)?)?;
                let off = u32_at(self.pcln, i * 8 + 4)?;
                Some((self.text_start.checked_add(u64::from(entry))?, off as usize))
            }
        }
    }

    /// Function `i` (`i < len()`).
    pub fn func(&self, i: usize) -> Option<GoFunc> {
        let (start, off) = self.slot(i)?;
        let (end, _) = self.slot(i + 1)?;
        // Field offsets inside `_func` after the entry field.
        let base = off.checked_add(if self.format == Format::Go116 { 8 } else { 4 })?;
        let f = |k: usize| u32_at(self.pcln, base.checked_add(4 * k)?);
        Some(GoFunc {
            start,
            end,
            name_off: f(0)?,
            pcsp: f(3)?,
            pcfile: f(4)?,
            cu_offset: f(7)?,
        })
    }

    fn c_string(table: &'a [u8], off: usize) -> Option<&'a [u8]> {
        let s = table.get(off..)?;
        let len = s.iter().take(4096).position(|&b| b == 0)?;
        Some(&s[..len])
    }

    /// The function's name.
    pub fn name(&self, func: &GoFunc) -> Option<&'a [u8]> {
        Self::c_string(self.funcname, func.name_off as usize)
    }

    /// The source file of the function's first instruction.
    fn file(&self, func: &GoFunc) -> Option<&'a [u8]> {
        if func.pcfile == 0 {
            return None;
        }
        let (_, file_index) = self.pcvalues(func.pcfile, func.start).next()?;
        let idx = u32::try_from(file_index).ok()?;
        let cu_entry = (func.cu_offset as usize)
            .checked_add(idx as usize)?
            .checked_mul(4)?;
        let file_off = u32_at(self.cutab, cu_entry)?;
        Self::c_string(self.filetab, file_off as usize)
    }

    /// Iterates `(pc, value)` steps of a pc-value table: each value holds from its pc up to
    /// the next step's pc.
    fn pcvalues(&self, off: u32, start: u64) -> PcValues<'a> {
        PcValues {
            data: self.pctab,
            pos: off as usize,
            pc: start,
            value: -1,
            first: true,
            quantum: u64::from(self.quantum),
            done: off == 0,
            damaged: false,
        }
    }

    /// Emits the rules of function `func`.
    /// Each pc-value step costs one unit of `budget`; when it runs out, the rest of the
    /// function is Invalid.
    pub fn rows(&self, func: &GoFunc, budget: &mut u64, emit: &mut dyn FnMut(u64, UnwindInfo)) {
        let name = self.name(func).unwrap_or_default();
        let special = if STOP_FUNCTIONS.contains(&name) {
            Some(UnwindInfo::STOP)
        } else if SIGNAL_FUNCTIONS.contains(&name) {
            Some(UnwindInfo::SIGNAL)
        } else if FRAME_POINTER_FUNCTIONS.contains(&name) {
            Some(UnwindInfo::FRAME_POINTER)
        } else {
            None
        };
        if let Some(info) = special {
            emit(func.start, info);
            return;
        }
        if func.pcsp == 0 {
            emit(func.start, UnwindInfo::INVALID);
            return;
        }
        // Go code saves the caller's RBP right below the return address as soon as the
        // frame is non-empty; hand-written assembly (.s) does not follow that rule.
        let keeps_fp = !self.file(func).is_some_and(|f| f.ends_with(b".s"));
        // The whole frame of a vDSO caller, where its frame pointer is the rule.
        let fp_at = VDSO_CALLERS
            .contains(&name)
            .then(|| {
                self.pcvalues(func.pcsp, func.start)
                    .take(64)
                    .map(|(_, v)| v)
                    .max()
            })
            .flatten()
            .filter(|&v| v >= 8);
        let mut pc = func.start;
        let mut values = self.pcvalues(func.pcsp, func.start);
        for (step_pc, value) in values.by_ref() {
            if *budget == 0 || step_pc <= pc {
                // Out of budget, or a step that does not advance (never in real tables).
                break;
            }
            *budget -= 1;
            let info = if fp_at == Some(value) {
                UnwindInfo::FRAME_POINTER
            } else {
                i32::try_from(value)
                    .ok()
                    .and_then(|v| v.checked_add(8))
                    .filter(|&cfa| cfa >= 8)
                    .map_or(UnwindInfo::INVALID, |cfa| UnwindInfo {
                        kind: Kind::Sp,
                        cfa_offset: cfa,
                        fp_offset: (keeps_fp && cfa >= 16).then_some(-16),
                    })
            };
            emit(pc, info);
            pc = step_pc;
            if pc >= func.end {
                return;
            }
        }
        // A table that ends normally before the next function leaves alignment padding,
        // which keeps the last rule; a damaged or cut-off one does not.
        if pc < func.end && (values.damaged || pc == func.start) {
            emit(pc, UnwindInfo::INVALID);
        }
    }
}

/// Decoder of Go's pc-value encoding: pairs of (zig-zag value delta, pc delta / quantum)
/// varints; a zero value delta after the first pair ends the table.
struct PcValues<'a> {
    data: &'a [u8],
    pos: usize,
    pc: u64,
    value: i64,
    first: bool,
    quantum: u64,
    done: bool,
    /// Decoding stopped on damaged data rather than at the terminator.
    damaged: bool,
}

impl Iterator for PcValues<'_> {
    /// (end pc of this value, value).
    type Item = (u64, i64);

    fn next(&mut self) -> Option<(u64, i64)> {
        if self.done {
            return None;
        }
        let mut terminated = false;
        let step = (|| {
            let uv = read_varint(self.data, &mut self.pos)?;
            if uv == 0 && !self.first {
                terminated = true;
                return None;
            }
            let delta = if uv & 1 != 0 {
                !(i64::from(uv >> 1))
            } else {
                i64::from(uv >> 1)
            };
            let pcdelta = u64::from(read_varint(self.data, &mut self.pos)?) * self.quantum;
            self.value = self.value.checked_add(delta)?;
            self.pc = self.pc.checked_add(pcdelta)?;
            self.first = false;
            Some((self.pc, self.value))
        })();
        if step.is_none() {
            self.done = true;
            self.damaged = !terminated;
        }
        step
    }
}
