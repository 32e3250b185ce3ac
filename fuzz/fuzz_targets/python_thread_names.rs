//! CPython `threading` names, dicts, instance attributes and ints read from arbitrary memory:
//! no panics, bounded output, on the object layouts of every era (3.6-3.10 `tp_dictoffset`,
//! 3.11 managed values, 3.12 tagged dict-or-values, 3.13+ inline values).
#![no_main]

use ferroscope_unwind_api::SnapshotMemory;
use ferroscope_unwind_python::objects::{
    MAX_DICT_ENTRIES, ObjectLayout, dict_items, instance_attributes, read_int, str_is,
};
use ferroscope_unwind_python::thread_names::{MAX_PY_THREADS, MAX_THREAD_NAME};
use ferroscope_unwind_python::{Layout, MAX_INTERPRETERS, layout, threading_threads};
use libfuzzer_sys::fuzz_target;

/// Where the fuzzer's bytes are mapped in the fake process: pointers in the data that fall in
/// [BASE, BASE + len) lead back into it. 3.11+ read before an object, so not at 0.
const BASE: u64 = 0x1000;

fn layout_of(sel: u8) -> Layout {
    let minor = 6 + sel % 10; // 3.6 .. 3.15
    match layout(minor) {
        Some(l) => l.clone(),
        // 3.13+ have the 3.12 structures this reader uses, but their own object eras.
        None => Layout {
            minor,
            ..layout(12).unwrap().clone()
        },
    }
}

fuzz_target!(|data: &[u8]| {
    // Byte 0 picks the version, byte 1 where in the data the object starts.
    let [sel, start, memory @ ..] = data else {
        return;
    };
    let mut mem = SnapshotMemory::new(1);
    mem.add_region(BASE, memory.to_vec());
    let addr = BASE + u64::from(*start) * 8;
    let l = layout_of(*sel);
    let objects = ObjectLayout::of(l.minor);
    if let Ok(threads) = threading_threads(&mem, &l, addr) {
        assert!(threads.len() <= MAX_INTERPRETERS * MAX_PY_THREADS);
        for t in &threads {
            assert!(t.name.chars().count() <= MAX_THREAD_NAME);
        }
    }
    if let Ok(items) = dict_items(&mem, &objects, l.minor, addr) {
        assert!(items.len() <= MAX_DICT_ENTRIES);
    }
    if let Ok(attrs) = instance_attributes(&mem, &l, &objects, addr) {
        assert!(attrs.len() <= MAX_DICT_ENTRIES);
    }
    let _ = read_int(&mem, &objects, addr);
    let _ = str_is(&mem, &l, addr, "_name");
});
