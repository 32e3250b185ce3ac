//! Perl context stacks and names read from arbitrary memory: the reference walker and the
//! naming of each frame it finds never panic and do bounded work.
#![no_main]

use ferroscope_unwind_api::SnapshotMemory;
use ferroscope_unwind_perl::names::{MAX_NAME, Reader};
use ferroscope_unwind_perl::{
    MAX_STEPS, SUPPORTED_VERSIONS, Start, layout, name_compiling, name_frame, walk,
};
use libfuzzer_sys::fuzz_target;

/// Where the fuzzer's bytes are mapped in the fake process. Pointers inside the data that
/// fall in [BASE, BASE + len) lead back into it.
const BASE: u64 = 0x1000;

fuzz_target!(|data: &[u8]| {
    // The first three bytes pick where the walk's stackinfo, statement and op are.
    let [si, cop, op, memory @ ..] = data else {
        return;
    };
    let mut mem = SnapshotMemory::new(1);
    mem.add_region(BASE, memory.to_vec());
    let start = Start {
        stackinfo: BASE + u64::from(*si) * 8,
        cop: BASE + u64::from(*cop) * 8,
        op: u64::from(*op),
    };
    for &version in SUPPORTED_VERSIONS {
        let l = layout(version).expect("layout");
        let Ok(w) = walk(&mem, l, start) else {
            continue;
        };
        assert!(w.frames().count() <= MAX_STEPS);
        for threaded in [true, false] {
            let reader = Reader::new(&mem, l, threaded);
            for f in w.frames().take(16) {
                let named = if f.compiling {
                    name_compiling(&reader, f.kind, f.cop, f.ptr as u32)
                } else {
                    name_frame(&reader, f.kind, f.cop, f.ptr)
                };
                if let Ok(named) = named {
                    assert!(named.function.chars().count() <= 3 * MAX_NAME + 64);
                    assert!(named.file.chars().count() <= MAX_NAME);
                }
            }
            let _ = reader.sub_name(start.cop);
            let _ = reader.stash_name(start.cop);
        }
    }
});
