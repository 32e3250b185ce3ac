//! What detection reads from a PHP file beyond its symbols, through
//! [`ElfFile::read_vaddr`]: its program headers (the ELF header is where the first segment
//! starts), the version string in its read-only segments, and the call frame information of
//! `execute_ex`, which says where in the VM loop's body the stack frame is complete.
//!
//! Every parser here takes untrusted bytes, does bounded work and never panics (fuzzed:
//! `fuzz/fuzz_targets/php_elf.rs`).

use ferroscope_unwind_api::{ElfFile, SymbolRange};
use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, Pointer, Register, UnwindContext,
    UnwindSection,
};

use crate::version::{POWERED_BY, PhpVersion, version_in_bytes};

/// `PT_LOAD`.
pub const PT_LOAD: u32 = 1;
/// `PT_GNU_EH_FRAME`: the `.eh_frame_hdr` section.
pub const PT_GNU_EH_FRAME: u32 = 0x6474_e550;
/// `PF_W`.
pub const PF_W: u32 = 2;

/// Most program headers read.
const MAX_PROGRAM_HEADERS: usize = 128;
/// Most bytes of read-only segments searched for the version string.
const MAX_SCAN_BYTES: u64 = 128 << 20;
/// Bytes searched per read.
const SCAN_CHUNK: u64 = 1 << 20;
/// Largest `.eh_frame` / `.eh_frame_hdr` read.
const MAX_EH_FRAME: u64 = 64 << 20;
/// Most rows of one function's call frame information looked at.
const MAX_CFI_ROWS: usize = 1 << 16;
/// Where the first segment (and so the ELF header) of an executable or library starts: 0
/// for position-independent files, 0x400000 for classic x86-64 executables.
const ELF_BASES: [u64; 2] = [0, 0x40_0000];

/// One program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// `p_type`.
    pub kind: u32,
    /// `p_flags`.
    pub flags: u32,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_filesz`: how many of its bytes the file holds.
    pub filesz: u64,
    /// `p_memsz`.
    pub memsz: u64,
}

/// Where the program headers are and how many, from a 64-bit little-endian ELF header.
pub fn parse_elf_header(h: &[u8]) -> Option<(u64, usize)> {
    if h.len() < 64 || &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let phoff = u64::from_le_bytes(h[32..40].try_into().ok()?);
    let phentsize = u16::from_le_bytes([h[54], h[55]]);
    let phnum = usize::from(u16::from_le_bytes([h[56], h[57]]));
    (phentsize == 56 && phnum > 0 && phnum <= MAX_PROGRAM_HEADERS).then_some((phoff, phnum))
}

/// The program headers in `bytes` (56 bytes each; a trailing partial one is ignored).
pub fn parse_program_headers(bytes: &[u8]) -> Vec<Segment> {
    bytes
        .chunks_exact(56)
        .take(MAX_PROGRAM_HEADERS)
        .map(|p| {
            let u32_at = |o: usize| u32::from_le_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]);
            let u64_at = |o: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&p[o..o + 8]);
                u64::from_le_bytes(b)
            };
            Segment {
                kind: u32_at(0),
                flags: u32_at(4),
                vaddr: u64_at(16),
                filesz: u64_at(32),
                memsz: u64_at(40),
            }
        })
        .collect()
}

/// The file's program headers, read where its first segment starts (the ELF header and the
/// program headers are at its beginning).
pub fn program_headers(file: &dyn ElfFile) -> Option<Vec<Segment>> {
    ELF_BASES.iter().find_map(|&base| {
        let mut h = [0u8; 64];
        if !file.read_vaddr(base, &mut h) {
            return None;
        }
        let (phoff, phnum) = parse_elf_header(&h)?;
        let mut table = vec![0u8; phnum * 56];
        file.read_vaddr(base.checked_add(phoff)?, &mut table)
            .then(|| parse_program_headers(&table))
    })
}

/// The version in the `X-Powered-By: PHP/x.y.z` string of the file's read-only segments.
pub fn powered_by_version(file: &dyn ElfFile, segments: &[Segment]) -> Option<PhpVersion> {
    let overlap = POWERED_BY.len() as u64 + 16;
    let mut budget = MAX_SCAN_BYTES;
    for s in segments
        .iter()
        .filter(|s| s.kind == PT_LOAD && s.flags & PF_W == 0)
    {
        let end = s.vaddr.saturating_add(s.filesz.min(s.memsz));
        let mut at = s.vaddr;
        while at < end && budget > 0 {
            let len = (end - at).min(SCAN_CHUNK + overlap).min(budget);
            let mut buf = vec![0u8; len as usize];
            if !file.read_vaddr(at, &mut buf) {
                break;
            }
            if let Some(v) = version_in_bytes(&buf) {
                return Some(v);
            }
            budget = budget.saturating_sub(len);
            if len <= overlap {
                break;
            }
            at += len - overlap;
        }
    }
    None
}

/// Reads `[vaddr, vaddr + len)` of the file, capped at [`MAX_EH_FRAME`] and at the end of the
/// file-backed part of the segment holding `vaddr`.
fn read_in_segment(
    file: &dyn ElfFile,
    segments: &[Segment],
    vaddr: u64,
    len: u64,
) -> Option<Vec<u8>> {
    let s = segments.iter().find(|s| {
        s.kind == PT_LOAD && s.vaddr <= vaddr && vaddr < s.vaddr.saturating_add(s.filesz)
    })?;
    let len = len
        .min(s.vaddr.saturating_add(s.filesz) - vaddr)
        .min(MAX_EH_FRAME);
    let mut buf = vec![0u8; len as usize];
    file.read_vaddr(vaddr, &mut buf).then_some(buf)
}

/// An address in `function`'s body where its stack frame is complete: the middle of the
/// longest stretch of its call frame information with one CFA rule (relative to RSP, or to
/// RBP in builds that keep a frame pointer). The VM
/// loop's handlers (and, in the hybrid VM, the JIT code they jump to) run with this frame;
/// unwinding from there as if the PC were inside it finds the loop's caller.
pub fn frame_body_address(
    file: &dyn ElfFile,
    segments: &[Segment],
    function: SymbolRange,
) -> Option<u64> {
    let hdr = segments.iter().find(|s| s.kind == PT_GNU_EH_FRAME)?;
    let hdr_bytes = read_in_segment(file, segments, hdr.vaddr, hdr.memsz)?;
    let eh_vaddr = eh_frame_address(&hdr_bytes, hdr.vaddr)?;
    let eh_bytes = read_in_segment(file, segments, eh_vaddr, u64::MAX)?;
    frame_body_from_cfi(&hdr_bytes, hdr.vaddr, &eh_bytes, eh_vaddr, function)
}

/// Where `.eh_frame` starts, from `.eh_frame_hdr` at `hdr_vaddr`.
pub fn eh_frame_address(hdr: &[u8], hdr_vaddr: u64) -> Option<u64> {
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_vaddr);
    let parsed = EhFrameHdr::new(hdr, LittleEndian).parse(&bases, 8).ok()?;
    match parsed.eh_frame_ptr() {
        Pointer::Direct(a) => Some(a),
        Pointer::Indirect(_) => None,
    }
}

/// [`frame_body_address`] over the bytes of `.eh_frame_hdr` and `.eh_frame`.
pub fn frame_body_from_cfi(
    hdr: &[u8],
    hdr_vaddr: u64,
    eh_frame: &[u8],
    eh_vaddr: u64,
    function: SymbolRange,
) -> Option<u64> {
    const RSP: Register = gimli::X86_64::RSP;
    const RBP: Register = gimli::X86_64::RBP;
    let bases = BaseAddresses::default()
        .set_eh_frame_hdr(hdr_vaddr)
        .set_eh_frame(eh_vaddr);
    let parsed = EhFrameHdr::new(hdr, LittleEndian).parse(&bases, 8).ok()?;
    let eh = EhFrame::new(eh_frame, LittleEndian);
    let fde = parsed
        .table()?
        .fde_for_address(&eh, &bases, function.address, EhFrame::cie_from_offset)
        .ok()?;
    let end = function.address.saturating_add(function.size.max(1));
    let mut ctx = Box::new(UnwindContext::new());
    let mut rows = fde.rows(&eh, &bases, &mut ctx).ok()?;
    let mut best: Option<(u64, u64)> = None;
    for _ in 0..MAX_CFI_ROWS {
        let Ok(Some(row)) = rows.next_row() else {
            break;
        };
        let (start, stop) = (
            row.start_address().max(function.address),
            row.end_address().min(end),
        );
        if stop <= start {
            continue;
        }
        if let CfaRule::RegisterAndOffset { register, .. } = row.cfa()
            && (*register == RSP || *register == RBP)
            && best.is_none_or(|(s, e)| e - s < stop - start)
        {
            best = Some((start, stop));
        }
    }
    best.map(|(s, e)| s + (e - s) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_headers() {
        let mut h = [0u8; 64];
        h[..6].copy_from_slice(b"\x7fELF\x02\x01");
        h[32..40].copy_from_slice(&64u64.to_le_bytes());
        h[54] = 56;
        h[56] = 11;
        assert_eq!(parse_elf_header(&h), Some((64, 11)));
        h[4] = 1; // 32-bit
        assert_eq!(parse_elf_header(&h), None);
        assert_eq!(parse_elf_header(&h[..10]), None);
    }

    #[test]
    fn program_header_fields() {
        let mut p = vec![0u8; 56 + 13];
        p[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        p[4..8].copy_from_slice(&5u32.to_le_bytes());
        p[16..24].copy_from_slice(&0x20_0000u64.to_le_bytes());
        p[32..40].copy_from_slice(&0x1000u64.to_le_bytes());
        p[40..48].copy_from_slice(&0x2000u64.to_le_bytes());
        assert_eq!(
            parse_program_headers(&p),
            vec![Segment {
                kind: PT_LOAD,
                flags: 5,
                vaddr: 0x20_0000,
                filesz: 0x1000,
                memsz: 0x2000
            }]
        );
    }

    #[test]
    fn garbage_cfi_finds_nothing() {
        let f = SymbolRange {
            address: 0x1000,
            size: 0x100,
        };
        assert_eq!(frame_body_from_cfi(&[1, 2, 3], 0, &[0; 64], 0, f), None);
        assert_eq!(eh_frame_address(&[], 0), None);
    }
}
