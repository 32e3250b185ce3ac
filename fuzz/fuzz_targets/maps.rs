//! `/proc/PID/maps` parsing: no panics, output bounded by the input, strict and lossy agree.
#![no_main]

use ferroscope_symbolize::maps::{parse_maps, parse_maps_lossy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count();
    let (entries, skipped) = parse_maps_lossy(&text);
    assert!(entries.len() + skipped <= lines);
    for e in &entries {
        assert!(e.start <= e.end);
        assert_eq!(e.contains(e.start), !e.is_empty());
        assert!(!e.contains(e.end));
    }
    match parse_maps(&text) {
        Ok(strict) => {
            assert_eq!(skipped, 0);
            assert_eq!(strict, entries);
        }
        Err(e) => {
            assert!(skipped > 0);
            assert!(e.to_string().len() < 2048, "error message not bounded");
        }
    }
});
