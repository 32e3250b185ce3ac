//! Ruby iseqs, method entries, strings, arrays, symbol tables and class paths read from
//! arbitrary memory, and succinct line indexes decoded from arbitrary bytes: no panics,
//! bounded output.
#![no_main]

use ferroscope_unwind_api::SnapshotMemory;
use ferroscope_unwind_ruby::{iseq, layout, names, objects};
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
    for &(major, minor) in layout::SUPPORTED {
        let l = layout::layout(major, minor).expect("layout");
        if let Ok(info) = iseq::read_iseq(&mem, &l, addr) {
            assert!(info.label.len() <= 4 * objects::MAX_STRING);
            assert!(info.lines.len() <= iseq::MAX_LINE_ENTRIES as usize);
            for off in [0u32, 1, 7, 1000, u32::MAX] {
                let _ = info.line_at(off);
                let _ = info.offset_of(off);
            }
            let _ = names::full_label(&info, None);
        }
        if let Ok(me) = names::method_entry(&mem, &l, addr) {
            let symbols = objects::Symbols {
                global: BASE,
                last_op_id: 0xa9,
            };
            let _ = names::owner(&mem, &l, Some(&symbols), &me);
            let _ = symbols.name(&mem, &l, me.original_id);
        }
        let _ = names::frame_method(&mem, &l, addr, BASE);
        let _ = objects::string(&mem, &l, addr);
        let _ = objects::array_entry(&mem, &l, addr, 3);
        let _ = objects::st_entries(&mem, addr);
        let _ = objects::class_path(&mem, &l, None, addr);
    }
    let size = u32::from_le_bytes([
        memory.first().copied().unwrap_or(0),
        memory.get(1).copied().unwrap_or(0),
        0,
        0,
    ]);
    let positions = iseq::decode_succinct(memory, size, 1 << 12);
    assert!(positions.len() <= 1 << 12);
});
