//! `/proc/kallsyms` parsing: no panics, output bounded by the input, lookups consistent.
#![no_main]

use ferroscope_symbolize::kernel::{KernelSymbols, MAX_SYMBOL_SPAN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let syms = KernelSymbols::from_kallsyms(&text);
    assert!(syms.len() <= text.lines().count());
    let mut previous = None;
    for s in syms.iter() {
        assert!(previous < Some(s.start), "not sorted and deduplicated");
        previous = Some(s.start);
        assert!(!s.name.is_empty() && text.contains(s.name));
        let hit = syms
            .lookup(s.start)
            .expect("a symbol's own address resolves");
        assert_eq!((hit.start, hit.offset), (s.start, 0));
    }
    // Arbitrary addresses taken from the input.
    for chunk in data.chunks_exact(8).take(64) {
        let addr = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if let Some(hit) = syms.lookup(addr) {
            assert!(
                hit.start <= addr && hit.offset == addr - hit.start && hit.offset < MAX_SYMBOL_SPAN
            );
        }
    }
});
