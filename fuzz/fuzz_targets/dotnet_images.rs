//! PE/CLI headers, ReadyToRun headers, `RUNTIME_FUNCTION` tables, NativeFormat arrays and
//! hashtables, and the runtime's debug info (bounds), from arbitrary bytes: no panics.
#![no_main]

use ferroscope_unwind_dotnet::debuginfo::{Nibbles, bounds_location, decode_bounds, il_offset};
use ferroscope_unwind_dotnet::pe::{parse_cli, parse_headers};
use ferroscope_unwind_dotnet::r2r::{
    Header, Window, function_at, instance_entry_points, method_def_entry_points, method_map,
    method_of, runtime_functions, skip_type,
};
use libfuzzer_sys::fuzz_target;

/// The RVA the fuzzer's bytes are placed at.
const RVA: u32 = 0x1000;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse_headers(data) {
        for rva in [0u32, RVA, u32::MAX] {
            let _ = h.file_offset(rva);
        }
    }
    let _ = parse_cli(data);
    if let Ok(h) = Header::parse(data) {
        for kind in 100..=120 {
            let _ = h.section(kind);
        }
    }
    let functions = runtime_functions(data);
    assert!(functions.len() <= data.len() / 12 + 1);
    for rva in [0u32, RVA, RVA + 0x40, u32::MAX] {
        let _ = function_at(&functions, rva);
    }
    let w = Window {
        bytes: data,
        rva: RVA,
    };
    for at in [RVA, RVA + 1, RVA + 4, RVA + 16] {
        let _ = (
            w.compressed(at),
            w.unsigned(at),
            w.signed(at),
            w.entry_point(at),
        );
        // At most the reader's own cap (2^21 entries).
        assert!(w.native_array(at).len() <= 1 << 21);
        let _ = w.native_hashtable(at);
        let _ = skip_type(w, at, 0);
    }
    let map = method_map(method_def_entry_points(w));
    for i in 0..4 {
        let _ = method_of(&map, i);
    }
    let _ = instance_entry_points(w);
    // Debug info: the bounds' location (both formats, OSR patchpoints or not), then the blob.
    for (flags, patchpoint) in [(false, (0, 0)), (true, (0, 0)), (true, (32, 8))] {
        if let Ok((at, len)) = bounds_location(data, flags, patchpoint)
            && let Some(blob) = data.get(at..at.saturating_add(len).min(data.len()))
            && let Ok(bounds) = decode_bounds(blob)
        {
            for native in [0u32, 1, 0x40, u32::MAX] {
                let _ = il_offset(&bounds, native, false);
                let _ = il_offset(&bounds, native, true);
            }
        }
    }
    let mut n = Nibbles::new(data);
    for _ in 0..64 {
        if n.unsigned().is_none() {
            break;
        }
    }
    n.align();
    assert!(n.position() <= data.len() * 2);
});
