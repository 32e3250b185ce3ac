//! Code objects: which one holds a PC of JIT code, and what it says about that PC (its
//! kind, its function, the functions TurboFan or Maglev inlined into it and where).
//!
//! The eBPF walker records a JIT frame's PC, not its code object: the function's current
//! code is not always the code that runs in the frame (on-stack replacement, code being
//! deoptimized, a leaf in another function's prologue), and since 13.x reaching it from the
//! function needs the dispatch table. So userspace finds the object around the PC the way a
//! heap walker would: code objects (V8 ≤ 11.0) and instruction streams (11.1+) start with
//! their map, and their instructions start at a fixed header size; going back from the PC,
//! the first word that is that map, at an address whose instructions would be aligned, and
//! whose object covers the PC, is it. Each candidate is checked through the `Code` object's
//! own fields (its instruction start must be exactly there, its size must cover the PC).

use crate::heap::{Heap, is_heap_object, smi_value};
use crate::layout::InstructionStart;
use crate::{Error, Layout};

/// How far back from a PC the object header is looked for (the largest code objects).
pub const MAX_CODE_SCAN: u64 = 8 << 20;
/// Bytes read per step of the scan.
const SCAN_CHUNK: u64 = 16 << 10;
/// The smallest unit of mapped memory.
const PAGE: u64 = 4096;
/// Instructions start aligned to this (V8's kCodeAlignment on x64 is 32 or 64).
const CODE_ALIGNMENT: u64 = 32;

/// What kind of code a Code object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// Sparkplug.
    Baseline,
    /// Maglev.
    Maglev,
    /// TurboFan.
    Turbofan,
    /// Anything else (builtins, regular expressions, WebAssembly wrappers).
    Other(u8),
}

/// A code object found around a PC.
#[derive(Debug, Clone)]
pub struct CodeObject {
    /// The Code object (tagged).
    pub code: u64,
    /// Its first instruction.
    pub start: u64,
    /// One past its last instruction.
    pub end: u64,
    /// What it is.
    pub kind: CodeKind,
    /// The words that must read the same for a cached entry to still be this object: the
    /// header's map and code words (or the Code object's map and size).
    pub fingerprint: [u64; 2],
    /// Where the fingerprint words are.
    pub fingerprint_at: u64,
}

/// What optimized code says about its positions and inlined functions.
#[derive(Debug, Clone, Default)]
pub struct OptimizedData {
    /// The outer function's SFI (tagged).
    pub sfi: u64,
    /// The source position table.
    pub positions: Vec<u8>,
    /// SFIs of the inlined functions (tagged), by inlined function ID.
    pub inlined: Vec<u64>,
    /// `InliningPosition`s: the caller's position and the inlined function's ID, per
    /// inlining ID.
    pub inlining: Vec<(u64, i32)>,
}

/// Finds the code object holding `pc`.
pub fn find_code(heap: &mut Heap<'_>, pc: u64, known_map: &mut u64) -> Result<CodeObject, Error> {
    let l: &Layout = heap.layout();
    let (header, inline) = match l.code_instruction_start {
        InstructionStart::Inline(h) => (u64::from(h), true),
        InstructionStart::Pointer(_) => (u64::from(l.instruction_stream_header), false),
    };
    let header_type = if inline {
        l.types.code
    } else {
        l.types.instruction_stream.unwrap_or(u16::MAX)
    };
    if header == 0 || header > 1024 {
        return Err(Error::invalid("code header", pc, format!("{header} bytes")));
    }
    let lowest = pc.saturating_sub(MAX_CODE_SCAN);
    // Candidates, newest first: instructions start at an aligned address at or before the
    // PC, `header` bytes after the object's map word.
    let mut start = pc & !(CODE_ALIGNMENT - 1);
    let mut chunk: Vec<u8> = Vec::new();
    let mut chunk_at = 0u64;
    while start >= lowest + header {
        let obj = start - header;
        if chunk.is_empty() || obj < chunk_at || obj + 8 > chunk_at + chunk.len() as u64 {
            // A chunk of up to SCAN_CHUNK bytes ending at the candidate; when that fails
            // (the page below is a guard page: a code page's first objects), only the
            // candidate's own page.
            let wide = obj.saturating_sub(SCAN_CHUNK - 8).max(lowest) & !7;
            let page = (obj & !(PAGE - 1)).max(lowest) & !7;
            let Some((from, buf)) = [wide, page].into_iter().find_map(|from| {
                let mut buf = vec![0u8; (obj + 8 - from) as usize];
                heap.read("code", from, &mut buf).ok().map(|()| (from, buf))
            }) else {
                // Unmapped memory: no header before the PC.
                break;
            };
            chunk = buf;
            chunk_at = from;
        }
        let off = (obj - chunk_at) as usize;
        let word = u64::from_le_bytes(chunk[off..off + 8].try_into().unwrap_or([0; 8]));
        let is_map = if *known_map != 0 {
            word == *known_map
        } else {
            is_heap_object(word) && heap.map_instance_type(word).ok() == Some(header_type)
        };
        if is_map {
            let found = check_candidate(heap, obj, header, inline, pc)?;
            *known_map = word;
            return Ok(found);
        }
        start -= CODE_ALIGNMENT;
    }
    Err(Error::invalid(
        "code",
        pc,
        "no code object header before the PC".to_string(),
    ))
}

/// The candidate object at `obj` (untagged), if it is a code object covering `pc`.
fn check_candidate(
    heap: &mut Heap<'_>,
    obj: u64,
    header: u64,
    inline: bool,
    pc: u64,
) -> Result<CodeObject, Error> {
    let l = heap.layout();
    let (size_off, flags_off, kinds) = (
        l.code_instruction_size,
        l.code_flags,
        (
            l.code_kind_baseline,
            l.code_kind_maglev(),
            l.code_kind_turbofan(),
        ),
    );
    let code_type = l.types.code;
    let start = obj + header;
    let code = if inline {
        obj + 1
    } else {
        let code = heap.word(
            "instruction stream",
            obj + u64::from(l.instruction_stream_code),
        )?;
        heap.expect_type("code", code, code_type)?;
        if let InstructionStart::Pointer(off) = l.code_instruction_start {
            let s = heap.field("code instruction start", code, off)?;
            if s != start {
                return Err(Error::invalid(
                    "code",
                    code,
                    format!("its instructions start at {s:#x}, not {start:#x}"),
                ));
            }
        }
        code
    };
    let size = u64::from(heap.u32_at("code size", code - 1 + u64::from(size_off))?);
    let flags = heap.u32_at("code flags", code - 1 + u64::from(flags_off))?;
    let end = start + size;
    if pc < start || pc > end {
        return Err(Error::invalid(
            "code",
            code,
            format!("[{start:#x}, {end:#x}) does not hold the PC {pc:#x}"),
        ));
    }
    let k = (flags & 0xf) as u8;
    let kind = match k {
        k if k == kinds.0 => CodeKind::Baseline,
        k if k == kinds.1 => CodeKind::Maglev,
        k if k == kinds.2 => CodeKind::Turbofan,
        k => CodeKind::Other(k),
    };
    let fingerprint = [
        heap.word("code header", obj)?,
        heap.word("code header", obj + 8)?,
    ];
    Ok(CodeObject {
        code,
        start,
        end,
        kind,
        fingerprint,
        fingerprint_at: obj,
    })
}

/// Whether a found code object is still there (its header words unchanged).
pub fn still_there(heap: &Heap<'_>, c: &CodeObject) -> bool {
    let mut b = [0u8; 16];
    heap.read("code header", c.fingerprint_at, &mut b).is_ok()
        && u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])) == c.fingerprint[0]
        && u64::from_le_bytes(b[8..].try_into().unwrap_or([0; 8])) == c.fingerprint[1]
}

/// The positions and inlining of optimized (Maglev, TurboFan) code.
pub fn optimized_data(heap: &mut Heap<'_>, code: u64) -> Result<OptimizedData, Error> {
    let l: &Layout = heap.layout();
    let (deopt_off, pos_off, d, wrapper_shared) = (
        l.code_deoptimization_data,
        l.code_position_table,
        l.deopt,
        l.sfi_wrapper_shared,
    );
    let sfi_type = l.types.shared_function_info;
    let positions_obj = heap.field("code positions", code, pos_off)?;
    let positions = if is_heap_object(positions_obj)
        && heap
            .instance_type(positions_obj)
            .is_ok_and(|t| heap.layout().types.is_byte_array(t))
    {
        heap.byte_array("code positions", positions_obj)?
    } else {
        Vec::new()
    };
    let deopt = heap.field("deoptimization data", code, deopt_off)?;
    let t = heap.instance_type(deopt)?;
    if !heap.layout().types.is_fixed_array(t) {
        return Err(Error::invalid(
            "deoptimization data",
            deopt,
            format!("instance type {t}"),
        ));
    }
    let slots = usize::from(
        d.inlining_positions
            .max(d.shared_function_info)
            .max(d.literal_array),
    ) + 1;
    let words = heap.fixed_array("deoptimization data", deopt, slots)?;
    if words.len() < slots {
        return Err(Error::invalid(
            "deoptimization data",
            deopt,
            format!("{} slots", words.len()),
        ));
    }
    let mut sfi = words[usize::from(d.shared_function_info)];
    if d.sfi_wrapped {
        sfi = heap.field("SFI wrapper", sfi, wrapper_shared)?;
    }
    heap.expect_type("SharedFunctionInfo", sfi, sfi_type)?;
    let count = smi_value(words[usize::from(d.inlined_function_count)]).max(0) as usize;
    let mut inlined = Vec::new();
    let mut inlining = Vec::new();
    if count > 0 {
        let literals = words[usize::from(d.literal_array)];
        for mut s in heap.fixed_array("deoptimization literals", literals, count)? {
            // Weak references have bit 1 set.
            s &= !2;
            if is_heap_object(s)
                && heap.instance_type(s).ok() == heap.layout().types.shared_function_info_wrapper
            {
                s = heap.field("SFI wrapper", s, wrapper_shared)?;
            }
            inlined.push(s);
        }
        let bytes = heap.byte_array(
            "inlining positions",
            words[usize::from(d.inlining_positions)],
        )?;
        for c in bytes.chunks_exact(16) {
            let position = u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8]));
            let id = i32::from_le_bytes(c[8..12].try_into().unwrap_or([0; 4]));
            inlining.push((position, id));
        }
    }
    Ok(OptimizedData {
        sfi,
        positions,
        inlined,
        inlining,
    })
}

/// The bytecode offset table of baseline code and the BytecodeArray (tagged) it maps to.
pub fn baseline_data(heap: &mut Heap<'_>, code: u64) -> Result<(Vec<u8>, u64), Error> {
    let l = heap.layout();
    let (pos_off, data_off) = (l.code_position_table, l.code_deoptimization_data);
    let table = heap.field("baseline offsets", code, pos_off)?;
    let table = heap.byte_array("baseline offsets", table)?;
    let data = heap.field("baseline bytecode", code, data_off)?;
    let bytecode = crate::sfi::bytecode_array_of(heap, data).ok_or_else(|| {
        Error::invalid(
            "baseline code",
            code,
            "no bytecode array behind it".to_string(),
        )
    })?;
    Ok((table, bytecode))
}
