//! HotSpot's compressed streams (UNSIGNED5 integers, line number tables, scope records) and
//! PcDesc lookup over arbitrary bytes: no panics, bounded output.
#![no_main]

use ferroscope_unwind_hotspot::stream::{
    MAX_LINE_ENTRIES, MAX_SCOPES, Unsigned5, line_for_bci, line_table, scope_chain,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let x = first & 1;
    let (lines, len) = line_table(bytes, x);
    assert!(lines.len() <= MAX_LINE_ENTRIES.min(bytes.len()));
    assert!(len.is_none_or(|l| l <= bytes.len()));
    for bci in [0, 1, 7, 100, u32::MAX] {
        let _ = line_for_bci(&lines, bci);
    }
    let start = u32::from(first >> 1) * 3;
    let chain = scope_chain(bytes, start, x);
    assert!(chain.len() <= MAX_SCOPES);
    for w in chain.windows(2) {
        assert!(w[1].sender < w[0].sender || w[0].sender == 0 || w.len() == 2);
    }
    let mut r = Unsigned5::new(bytes, 0, x);
    let mut n = 0;
    while r.uint().is_some() {
        n += 1;
        assert!(n <= bytes.len());
    }
});
