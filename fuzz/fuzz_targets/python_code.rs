//! CPython code objects and frame chains read from arbitrary memory: no panics, bounded output.
#![no_main]

use ferroscope_unwind_api::SnapshotMemory;
use ferroscope_unwind_python::{
    SUPPORTED_MINORS, code_fingerprint, interpreters_head, layout, read_code, threads, walk,
};
use libfuzzer_sys::fuzz_target;

/// Where the fuzzer's bytes are mapped in the fake process. Pointers inside the data that
/// fall in [BASE, BASE + len) lead back into it.
const BASE: u64 = 0x1000;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where in the data the object starts.
    let Some((&start, memory)) = data.split_first() else {
        return;
    };
    let mut mem = SnapshotMemory::new(1);
    mem.add_region(BASE, memory.to_vec());
    let addr = BASE + u64::from(start) * 8;
    for minor in SUPPORTED_MINORS {
        let l = layout(minor).expect("layout");
        if let Ok(code) = read_code(&mem, l, addr) {
            assert!(code.name.chars().count() <= 4096);
            assert!(code.qualname.chars().count() <= 4096);
            assert!(code.filename.chars().count() <= 4096);
            assert!(code.line_table().1.len() <= memory.len());
            for off in [0u32, 2, 4, 100, u32::MAX] {
                let _ = code.line_for_offset(off);
            }
        }
        let _ = code_fingerprint(&mem, l, addr);
        if let Ok(frames) = walk(&mem, l, addr, 64) {
            assert!(frames.len() <= 64);
        }
        if let Ok(head) = interpreters_head(&mem, l, addr)
            && let Ok(ts) = threads(&mem, l, head)
        {
            assert!(ts.len() <= 256);
        }
    }
});
