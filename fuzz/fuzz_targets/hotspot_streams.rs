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
    // Each record followed was its predecessor's sender, which lies strictly before it: the
    // offsets walked descend (only the last record's own sender may be anything).
    if chain.len() > 1 {
        assert!(chain[0].sender < start && chain[0].sender != 0);
    }
    for i in 1..chain.len().saturating_sub(1) {
        assert!(chain[i].sender < chain[i - 1].sender && chain[i].sender != 0);
    }
    let mut r = Unsigned5::new(bytes, 0, x);
    let mut n = 0;
    while r.uint().is_some() {
        n += 1;
        assert!(n <= bytes.len());
    }
});
