//! Stack-delta extraction (and the CFI's function ranges) over arbitrary ELF bytes: no panics, a well-formed table whose size
//! is bounded by the input, lookups consistent with the entries, and the reference unwinder
//! terminating over it.
#![no_main]

use ferroscope_unwind_native::{
    ExtractOptions, Kind, LoadedModule, Registers, extract, function_ranges, unwind,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the options; the rest is the file (also used as its own debug
    // file, so the .debug_frame-from-debug-file path runs too).
    let Some((&sel, elf)) = data.split_first() else {
        return;
    };
    let opts = ExtractOptions {
        merge_push_pop: sel & 1 != 0,
        invalid_gap_threshold: u64::from(sel >> 1),
    };
    let debug = (sel & 0x80 != 0).then_some(elf);
    // The FDE ranges of the same bytes: sorted, non-empty, at most one per 8 bytes of input.
    if let Ok(ranges) = function_ranges(elf) {
        assert!(ranges.len() <= elf.len() / 8 + 1);
        assert!(ranges.iter().all(|r| r.start < r.end));
        assert!(ranges.windows(2).all(|w| w[0].start <= w[1].start));
    }
    let Ok(table) = extract(elf, debug, &opts) else {
        return;
    };
    // Every entry needs at least one byte of CFI or pclntab, plus the closing Invalid entries
    // of gaps: bounded by the input.
    assert!(
        table.len() <= 2 * elf.len() + 2,
        "{} entries from {} bytes",
        table.len(),
        elf.len()
    );
    for w in table.deltas.windows(2) {
        assert!(w[0].address < w[1].address);
        assert_ne!(w[0].info, w[1].info);
        assert_eq!(table.lookup(w[0].address), Some(&w[0].info));
        assert_eq!(table.lookup(w[1].address - 1), Some(&w[0].info));
    }
    if let Some(last) = table.deltas.last() {
        assert_eq!(last.info.kind, Kind::Invalid);
        assert_eq!(
            table.lookup(last.address.saturating_add(1)),
            Some(&last.info)
        );
    }
    if let Some(first) = table.deltas.first() {
        if first.address > 0 {
            assert!(table.lookup(first.address - 1).is_none());
        }
    }
    let infos = table.distinct_infos();
    assert!(!infos.is_empty() && infos.len() <= table.len());
    assert_eq!(
        table.size_in_bytes(),
        table.len() * std::mem::size_of::<ferroscope_unwind_native::StackDelta>()
    );

    // Unwind from a few entries over a fake stack made of the input bytes.
    let module = LoadedModule {
        start: 0,
        end: u64::MAX,
        bias: 0,
        table: &table,
    };
    let read = |addr: u64| {
        let off = usize::try_from(addr.checked_sub(0x1000)?).ok()?;
        let b = elf.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    };
    for d in table.deltas.iter().take(8) {
        let regs = Registers {
            rip: d.address,
            rsp: 0x1000,
            rbp: 0x1010,
        };
        let (frames, _) = unwind(regs, &read, &[module], 64);
        assert!(!frames.is_empty() && frames.len() <= 64);
    }
});
