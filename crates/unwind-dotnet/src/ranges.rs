//! The code ranges of a CoreCLR process, from the runtime's own tables: the ExecutionManager's
//! range sections (JIT code heaps, ReadyToRun images, and on 8+ the stub precode blocks) and
//! the range lists of the stub managers that keep theirs apart.
//!
//! 8+ keeps range sections in a five-level `RangeSectionMap` (256 pointers per level, bit 0
//! of a pointer marks a collectible level; the last level points at lists of
//! `RangeSectionFragment`s, {next, begin, end, RangeSection*}); 6 and 7 in a linked list.
//! Every walk is bounded (levels, fragments, sections), and a section seen twice is skipped,
//! so a table changing under the reader cannot loop it.

use std::collections::BTreeSet;

use ferroscope_unwind_api::ProcessMemory;

use crate::Error;
use crate::layout::Layout;
use crate::metadata::{le_u32, le_u64};

/// What a range holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CodeKind {
    /// A JIT code heap.
    Jit {
        /// `HeapList::mapBase`: what the nibble map is relative to.
        map_base: u64,
        /// Its nibble map holds pointers in covered words (version 2, .NET 10).
        v2: bool,
        /// `HeapList::pHdrMap`: the nibble map.
        hdr_map: u64,
        /// What the heap's `RUNTIME_FUNCTION` offsets are relative to.
        unwind_base: u64,
    },
    /// A ReadyToRun image's code (the range starts at the image's RVA 0).
    ReadyToRun {
        /// The image's `Module*`.
        module: u64,
    },
    /// Stubs of one kind (the runtime's `StubCodeBlockKind`).
    Stub {
        /// Their kind.
        kind: u8,
    },
}

/// One code range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CodeRange {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// What it holds.
    pub kind: CodeKind,
}

/// `RangeSection::_flags`.
const RANGE_SECTION_CODEHEAP: u32 = 0x2;
const RANGE_SECTION_RANGELIST: u32 = 0x4;

/// Most range sections, fragments and list entries one walk visits.
const MAX_SECTIONS: usize = 65536;
/// Most ranges a stub manager's list gives.
const MAX_LIST_RANGES: usize = 4096;

/// Reads the process's code ranges: the range sections reachable from the `g_dacTable` slot
/// values `slots` (already resolved to addresses), then the stub managers' lists.
pub fn code_ranges(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    code_ranges_global: u64,
    stub_managers: &[(u64, u8)],
) -> Result<Vec<CodeRange>, Error> {
    let mut sections = BTreeSet::new();
    if layout.range_map {
        walk_level(mem, code_ranges_global, 5, &mut sections)?;
    } else {
        let mut at = mem.read_u64(code_ranges_global).map_err(Error::read(
            "the range section list head",
            code_ranges_global,
        ))?;
        let next = layout.rs_next.unwrap_or(0x18);
        while at != 0 && sections.len() < MAX_SECTIONS && sections.insert(at) {
            at = mem
                .read_u64(at.wrapping_add(u64::from(next)))
                .map_err(Error::read("a range section", at))?;
        }
    }
    let mut out = Vec::new();
    for &rs in &sections {
        if let Some(r) = range_section(mem, layout, rs)? {
            out.push(r);
        }
    }
    for &(manager, kind) in stub_managers {
        if manager != 0 {
            stub_list(mem, manager, kind, &mut out);
        }
    }
    Ok(normalize(out))
}

/// One level of the RangeSectionMap (`level` 5 is the top, inline in the global; 1 holds
/// fragment lists).
fn walk_level(
    mem: &dyn ProcessMemory,
    at: u64,
    level: u32,
    sections: &mut BTreeSet<u64>,
) -> Result<(), Error> {
    let mut entries = vec![0u8; 256 * 8];
    mem.read_exact_at(at, &mut entries)
        .map_err(Error::read("a range section map level", at))?;
    for i in 0..256 {
        let p = le_u64(&entries, 8 * i).unwrap_or(0) & !1;
        if p == 0 || sections.len() >= MAX_SECTIONS {
            continue;
        }
        if level > 1 {
            walk_level(mem, p, level - 1, sections)?;
        } else {
            // A list of fragments: {next (bit 0: collectible), begin, end, RangeSection*}.
            let mut fragment = p;
            let mut steps = 0;
            while fragment != 0 && steps < 1024 {
                let mut f = [0u8; 32];
                mem.read_exact_at(fragment, &mut f)
                    .map_err(Error::read("a range section fragment", fragment))?;
                let rs = le_u64(&f, 24).unwrap_or(0);
                if rs != 0 {
                    sections.insert(rs);
                }
                fragment = le_u64(&f, 0).unwrap_or(0) & !1;
                steps += 1;
            }
        }
    }
    Ok(())
}

/// The range of one RangeSection (`None`: one this does not use).
fn range_section(mem: &dyn ProcessMemory, l: &Layout, rs: u64) -> Result<Option<CodeRange>, Error> {
    let mut b = vec![0u8; l.rs_size.max(0x38) as usize];
    mem.read_exact_at(rs, &mut b)
        .map_err(Error::read("a range section", rs))?;
    let field = |off: u32| le_u64(&b, off as usize).unwrap_or(0);
    let (start, end) = (field(l.rs_begin), field(l.rs_end));
    let flags = le_u32(&b, l.rs_flags as usize).unwrap_or(0);
    if start == 0 || end <= start {
        return Ok(None);
    }
    let kind = if flags & RANGE_SECTION_RANGELIST != 0 {
        let Some(off) = l.rs_range_list else {
            return Ok(None);
        };
        let list = field(off);
        let mut k = [0u8; 4];
        mem.read_exact_at(list.wrapping_add(u64::from(l.range_list_kind)), &mut k)
            .map_err(Error::read("a code range list", list))?;
        CodeKind::Stub {
            kind: u32::from_le_bytes(k).min(0xff) as u8,
        }
    } else if flags & RANGE_SECTION_CODEHEAP != 0 {
        let heap = field(l.rs_heap_list);
        let mut h = vec![0u8; l.hl_personality as usize + 8];
        mem.read_exact_at(heap, &mut h)
            .map_err(Error::read("a code heap", heap))?;
        let hf = |off: u32| le_u64(&h, off as usize).unwrap_or(0);
        let map_base = hf(l.hl_map_base);
        let personality = hf(l.hl_personality);
        CodeKind::Jit {
            map_base,
            v2: l.nibble_map_v2,
            hdr_map: hf(l.hl_hdr_map),
            unwind_base: if personality != 0 {
                personality
            } else {
                map_base
            },
        }
    } else {
        let module = field(l.rs_module);
        if module == 0 {
            return Ok(None);
        }
        CodeKind::ReadyToRun { module }
    };
    Ok(Some(CodeRange { start, end, kind }))
}

/// The ranges of a stub manager's `LockedRangeList` (after its StubManager base: vtable and
/// next manager): blocks of 10 {start, end, id} ranges and a next-block pointer, after the
/// list's own vtable.
fn stub_list(mem: &dyn ProcessMemory, manager: u64, kind: u8, out: &mut Vec<CodeRange>) {
    let mut block = manager.wrapping_add(0x10 + 8);
    let mut found = 0;
    let mut blocks = 0;
    while block != 0 && blocks < 64 && found < MAX_LIST_RANGES {
        let mut b = [0u8; 10 * 24 + 8];
        if mem.read_exact_at(block, &mut b).is_err() {
            return;
        }
        for i in 0..10 {
            let start = le_u64(&b, 24 * i).unwrap_or(0);
            let end = le_u64(&b, 24 * i + 8).unwrap_or(0);
            let id = le_u64(&b, 24 * i + 16).unwrap_or(0);
            // The used ranges come first; the first empty one ends the list.
            if start == 0 || end == 0 || id == 0 {
                return;
            }
            if end > start && end - start < 1 << 32 {
                out.push(CodeRange {
                    start,
                    end,
                    kind: CodeKind::Stub { kind },
                });
                found += 1;
            }
        }
        block = le_u64(&b, 240).unwrap_or(0);
        blocks += 1;
    }
}

/// Sorted by start, without overlaps (the first of two overlapping ranges wins: sections
/// come before stub lists) or duplicates.
pub fn normalize(mut ranges: Vec<CodeRange>) -> Vec<CodeRange> {
    // Stable: among ranges with the same start, the earlier (a section) is kept.
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<CodeRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last() {
            Some(last) if r.start < last.end => {}
            _ => out.push(r),
        }
    }
    out
}

/// Where the JIT method holding `pc` starts, from its heap's nibble map (what the eBPF walker
/// does, on the host: the runtime's `EEJitManager::FindMethodCode`). The map has a 32-bit word
/// per 256 bytes of code above `map_base`, a nibble per 32 bytes (the first in the word's top
/// bits), holding 1 + the start's offset / 4 within its 32 bytes when a method starts there.
/// Searches at most `max_words` words back; `None` when no method starts before `pc`.
pub fn method_start(
    mem: &dyn ProcessMemory,
    map_base: u64,
    hdr_map: u64,
    pc: u64,
    max_words: u64,
) -> Result<Option<u64>, Error> {
    method_start_in(mem, map_base, hdr_map, pc, max_words, false)
}

/// [`method_start`] for either format: `v2` maps (.NET 10) also hold, in every word a method
/// covers whole, its start relative to `map_base` (the low nibble 9-12 giving bits 2-3).
pub fn method_start_in(
    mem: &dyn ProcessMemory,
    map_base: u64,
    hdr_map: u64,
    pc: u64,
    max_words: u64,
    v2: bool,
) -> Result<Option<u64>, Error> {
    let pointer = |w: u32| (w & 0xf) > 8;
    let decode =
        |w: u32| map_base.wrapping_add(u64::from(w & !0xf) + (u64::from((w & 0xf) - 9) << 2));
    let Some(delta) = pc.checked_sub(map_base) else {
        return Ok(None);
    };
    let read = |word: u64| -> Result<u32, Error> {
        let at = hdr_map.wrapping_add(4 * word);
        let mut b = [0u8; 4];
        mem.read_exact_at(at, &mut b)
            .map_err(Error::read("a nibble map word", at))?;
        Ok(u32::from_le_bytes(b))
    };
    let bucket = delta >> 5;
    let offset = ((delta & 31) >> 2) as u32 + 1;
    let mut word = bucket >> 3;
    let start = |word: u64, pos: u32, nibble: u32| {
        map_base.wrapping_add(((word * 8 + u64::from(pos)) << 5) + (u64::from(nibble - 1) << 2))
    };
    // The PC's own word: positions up to its bucket, and in its bucket a start at or before
    // it.
    let own = read(word)?;
    if v2 && pointer(own) {
        return Ok(Some(decode(own)));
    }
    let pos = (bucket & 7) as u32;
    for p in (0..=pos).rev() {
        let nibble = (own >> (28 - 4 * p)) & 0xf;
        if nibble != 0 && (p < pos || nibble <= offset) {
            return Ok(Some(start(word, p, nibble)));
        }
    }
    // Lower words: the last start in the first one that has any.
    for _ in 0..max_words {
        if word == 0 {
            return Ok(None);
        }
        word -= 1;
        let w = read(word)?;
        if v2 && pointer(w) {
            return Ok(Some(decode(w)));
        }
        if v2 && w == 0 {
            return Ok(None);
        }
        if w != 0 {
            let p = (0..8u32)
                .rev()
                .find(|&p| (w >> (28 - 4 * p)) & 0xf != 0)
                .unwrap_or(0);
            return Ok(Some(start(word, p, (w >> (28 - 4 * p)) & 0xf)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_unwind_api::SnapshotMemory;

    fn put(mem: &mut SnapshotMemory, at: u64, words: &[u64]) {
        mem.add_region(at, words.iter().flat_map(|w| w.to_le_bytes()).collect());
    }

    #[test]
    fn a_range_section_map_gives_heaps_images_and_stub_blocks() {
        let l = crate::layout::layout(8).unwrap();
        let mut mem = SnapshotMemory::new(1);
        // The address whose map path we build: levels indexed by bits 56-49, 48-41, 40-33,
        // 32-25, 24-17.
        let heap_start = 0x7f50_8a02_0000u64;
        let index = |level: u32| ((heap_start >> (17 + 8 * (level - 1))) & 0xff) as usize;
        let (top, l4, l3, l2, l1) = (0x1_0000u64, 0x2_0000, 0x3_0000, 0x4_0000, 0x5_0000);
        for (at, next, level) in [(top, l4, 5), (l4, l3, 4), (l3, l2, 3), (l2, l1, 2)] {
            let mut words = vec![0u64; 256];
            words[index(level)] = next | u64::from(level == 3); // one collectible pointer
            put(&mut mem, at, &words);
        }
        let (frag1, frag2) = (0x6_0000u64, 0x6_1000u64);
        let mut words = vec![0u64; 256];
        words[index(1)] = frag1;
        put(&mut mem, l1, &words);
        let (heap_rs, r2r_rs, stub_rs) = (0x7_0000u64, 0x7_1000u64, 0x7_2000u64);
        put(&mut mem, frag1, &[frag2 | 1, 0, 0, heap_rs]);
        put(&mut mem, frag2, &[0, 0, 0, r2r_rs]);
        let heap_list = 0x8_0000u64;
        put(
            &mut mem,
            heap_rs,
            &[heap_start, heap_start + 0x8_0000, 2, 0, 0, heap_list, 0],
        );
        put(
            &mut mem,
            heap_list,
            &[
                0,
                0,
                heap_start + 0x10,
                heap_start + 0x5000,
                heap_start,
                0x9_0000,
                0,
                0,
                0,
                heap_start,
            ],
        );
        put(
            &mut mem,
            r2r_rs,
            &[0x7f00_0000_0000, 0x7f00_0010_0000, 0, 0, 0xa_0000, 0, 0],
        );
        // Reachable only from another fragment list: not linked here, so absent.
        put(
            &mut mem,
            stub_rs,
            &[0x7f60_0000_0000, 0x7f60_0001_0000, 4, 0, 0, 0, 0xb_0000],
        );
        let got = code_ranges(&mem, &l, top, &[]).unwrap();
        assert_eq!(
            got,
            [
                CodeRange {
                    start: 0x7f00_0000_0000,
                    end: 0x7f00_0010_0000,
                    kind: CodeKind::ReadyToRun { module: 0xa_0000 }
                },
                CodeRange {
                    start: heap_start,
                    end: heap_start + 0x8_0000,
                    kind: CodeKind::Jit {
                        map_base: heap_start,
                        v2: false,
                        hdr_map: 0x9_0000,
                        unwind_base: heap_start
                    }
                },
            ]
        );
    }

    #[test]
    fn version_2_nibble_maps_point_at_the_start_from_covered_words() {
        // Method A starts at +0x48 and covers words 1-3 whole (pointers), method B starts at
        // +0x404; words 6-7 are empty.
        let base = 0x10_0000u64;
        let pointer = |rel: u32| (rel & !0xf) + ((rel & 0xf) >> 2) + 9;
        let words: [u32; 8] = [
            3 << 20, // bucket 2: 1 + 8 / 4
            pointer(0x48),
            pointer(0x48),
            pointer(0x48),
            2 << 28, // bucket 0: 1 + 4 / 4
            0,
            0,
            0,
        ];
        let mut mem = SnapshotMemory::new(1);
        mem.add_region(
            0x9_0000,
            words.iter().flat_map(|w| w.to_le_bytes()).collect(),
        );
        let find = |pc: u64, v2: bool| method_start_in(&mem, base, 0x9_0000, pc, 64, v2).unwrap();
        assert_eq!(find(base + 0x50, true), Some(base + 0x48));
        assert_eq!(find(base + 0x250, true), Some(base + 0x48));
        // B's word, before B's start: the word below points at A.
        assert_eq!(find(base + 0x402, true), Some(base + 0x48));
        assert_eq!(find(base + 0x500, true), Some(base + 0x404));
        // Two empty words: in a version 2 map nothing can cover them.
        assert_eq!(find(base + 0x720, true), None);
        // A version 1 reader searches back instead.
        assert_eq!(find(base + 0x720, false), Some(base + 0x404));
    }

    #[test]
    fn overlapping_ranges_keep_the_first() {
        let r = |start, end, kind| CodeRange {
            start,
            end,
            kind: CodeKind::Stub { kind },
        };
        assert_eq!(
            normalize(vec![
                r(0x3000, 0x4000, 1),
                r(0x1000, 0x2000, 2),
                r(0x1800, 0x2800, 3)
            ]),
            [r(0x1000, 0x2000, 2), r(0x3000, 0x4000, 1)]
        );
    }
}
