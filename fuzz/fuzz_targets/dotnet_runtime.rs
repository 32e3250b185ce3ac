//! CoreCLR's structures read from arbitrary process memory: range section maps and lists,
//! code heaps, nibble maps (both formats), code headers, method descs, method tables, PE
//! images: no panics, bounded results.
#![no_main]

use ferroscope_unwind_api::SnapshotMemory;
use ferroscope_unwind_dotnet::layout::layout;
use ferroscope_unwind_dotnet::method::{
    code_header, method_desc, method_table, method_type_args, module_name_address, type_args,
    type_handles,
};
use ferroscope_unwind_dotnet::pe::Image;
use ferroscope_unwind_dotnet::ranges::{code_ranges, method_start_in, normalize};
use libfuzzer_sys::fuzz_target;

/// Where the bytes are mapped in the fake process: pointers in [BASE, BASE + len) lead back
/// into them.
const BASE: u64 = 0x10_0000;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where in the data the structure starts.
    let Some((&start, memory)) = data.split_first() else {
        return;
    };
    let mut mem = SnapshotMemory::new(1);
    mem.add_region(BASE, memory.to_vec());
    let at = BASE + u64::from(start) * 8;
    for major in 6..=10 {
        let l = layout(major).expect("layout");
        if let Ok(ranges) = code_ranges(&mem, &l, at, &[(at, 4), (BASE, 5)]) {
            let _ = normalize(ranges);
        }
        if let Ok(ch) = code_header(&mem, &l, at) {
            let _ = method_desc(&mem, &l, ch.method_desc);
        }
        if let Ok(md) = method_desc(&mem, &l, at) {
            let _ = method_table(&mem, &l, md.method_table);
        }
        if let Ok(mt) = method_table(&mem, &l, at) {
            let _ = (mt.is_generic_instantiation(), mt.is_array());
            let _ = module_name_address(&mem, &l, mt.module);
            if let Ok(args) = type_args(&mem, &mt, 2, 4) {
                assert!(args.len() <= 4);
            }
        }
        let _ = method_type_args(&mem, &l, at);
    }
    let _ = type_handles(&mem, at, 8);
    for v2 in [false, true] {
        for pc in [BASE, at, BASE + 0x1234, BASE + (memory.len() as u64) * 64] {
            if let Ok(Some(found)) = method_start_in(&mem, BASE, at, pc, 64, v2) {
                let _ = found;
            }
        }
    }
    let _ = Image::detect(&mem, at);
});
