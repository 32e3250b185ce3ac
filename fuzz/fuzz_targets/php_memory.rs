//! PHP frames and functions read from arbitrary memory: no panics, bounded output.
#![no_main]

use ferroscope_unwind_api::SnapshotMemory;
use ferroscope_unwind_php::{LAYOUTS, MAX_STRING_BYTES, current_frame, read_function, walk};
use libfuzzer_sys::fuzz_target;

/// Where the fuzzer's bytes are mapped in the fake process. Pointers inside the data that
/// fall in [BASE, BASE + len) lead back into it.
const BASE: u64 = 0x1000;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where in the data the structure starts.
    let Some((&start, memory)) = data.split_first() else {
        return;
    };
    let mut mem = SnapshotMemory::new(1);
    mem.add_region(BASE, memory.to_vec());
    let addr = BASE + u64::from(start) * 8;
    for l in LAYOUTS {
        if let Ok(f) = read_function(&mem, l, addr) {
            for s in [&f.name, &f.class, &f.file].into_iter().flatten() {
                assert!(s.len() <= 3 * MAX_STRING_BYTES, "lossy UTF-8 at most triples");
            }
            for flags in 0..4 {
                assert!(!f.display_name(flags).is_empty());
            }
        }
        if let Ok(frames) = walk(&mem, l, addr, 64) {
            assert!(frames.len() <= 64);
        }
        if let Ok(ex) = current_frame(&mem, l, addr) {
            let _ = walk(&mem, l, ex, 16);
        }
    }
});
