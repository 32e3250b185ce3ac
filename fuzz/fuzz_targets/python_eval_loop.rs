//! The eval loop's parts from arbitrary code bytes and CFI functions: the x86 decoding of the
//! entry part and the choice of the parts it jumps into. No panics, at most `MAX_PARTS` parts,
//! the entry first, no two parts overlapping. And its unbound windows (3.6-3.10): at most
//! `MAX_UNBOUND` sorted, disjoint ranges inside the code, the first at its start.
#![no_main]

use ferroscope_unwind_api::{ElfFile, SymbolRange};
use ferroscope_unwind_python::eval_loop::{ENTRY_SYMBOL, MAX_PARTS, branch_targets, find_eval_loop};
use ferroscope_unwind_python::frame_binding::{MAX_UNBOUND, unbound_ranges};
use ferroscope_unwind_python::layout;
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x40_0000;

/// A file whose code is the input at `BASE`, with the entry symbol over its first half and
/// CFI functions cut from the input's bytes.
struct Fuzzed<'a> {
    code: &'a [u8],
    functions: Vec<SymbolRange>,
}

impl ElfFile for Fuzzed<'_> {
    fn path(&self) -> &str {
        "/usr/bin/python3.14"
    }
    fn symbol(&self, name: &str) -> Option<SymbolRange> {
        (name == ENTRY_SYMBOL).then_some(SymbolRange {
            address: BASE,
            size: self.code.len() as u64 / 2,
        })
    }
    fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
        self.symbol(name)
    }
    fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool {
        let Some(off) = vaddr.checked_sub(BASE) else {
            return false;
        };
        let Ok(off) = usize::try_from(off) else {
            return false;
        };
        match self.code.get(off..off.saturating_add(buf.len())) {
            Some(src) if src.len() == buf.len() => {
                buf.copy_from_slice(src);
                true
            }
            _ => false,
        }
    }
    fn cfi_function(&self, vaddr: u64) -> Option<SymbolRange> {
        self.functions
            .iter()
            .copied()
            .find(|f| f.address <= vaddr && vaddr < f.address.saturating_add(f.size))
    }
}

fuzz_target!(|data: &[u8]| {
    let targets = branch_targets(data, BASE);
    assert!(targets.len() <= data.len());
    let end = BASE + data.len() as u64;
    assert!(targets.iter().all(|&t| t < BASE || t >= end));
    // CFI functions: 16-byte records (address offset, size) from the input's tail.
    let functions = data
        .rchunks_exact(16)
        .take(32)
        .map(|c| SymbolRange {
            address: BASE.wrapping_add(u64::from_le_bytes(c[..8].try_into().unwrap()) % (1 << 24)),
            size: u64::from_le_bytes(c[8..].try_into().unwrap()) % (1 << 20),
        })
        .collect();
    for minor in 6..=10 {
        let ranges = unbound_ranges(data, BASE, layout(minor).unwrap());
        assert!(ranges.len() <= MAX_UNBOUND);
        assert!(ranges.first().is_none_or(|r| r.0 == BASE));
        assert!(ranges.iter().all(|&(s, e)| BASE <= s && s < e && e <= end));
        assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0));
    }
    let file = Fuzzed { code: data, functions };
    let Some(found) = find_eval_loop(&file) else {
        return;
    };
    assert!(!found.parts.is_empty() && found.parts.len() <= MAX_PARTS);
    assert_eq!(found.parts[0].address, BASE);
    for (i, a) in found.parts.iter().enumerate().skip(1) {
        for b in &found.parts[..i] {
            let a_end = a.address.saturating_add(a.size);
            let b_end = b.address.saturating_add(b.size);
            assert!(a_end <= b.address || b_end <= a.address, "{a:?} overlaps {b:?}");
        }
    }
});
