//! The .NET 9+ contract descriptor (its header in process memory, the JSON data descriptor and
//! what it changes in the layout), from arbitrary bytes: no panics.
#![no_main]

use ferroscope_unwind_api::SnapshotMemory;
use ferroscope_unwind_dotnet::contract::{Descriptor, apply, parse_json, read};
use ferroscope_unwind_dotnet::layout::layout;
use libfuzzer_sys::fuzz_target;

/// Where the bytes are mapped in the fake process.
const BASE: u64 = 0x1000;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(json) = parse_json(&text)
        && let Ok(d) = Descriptor::from_json(&json, &[BASE, 0, u64::MAX])
    {
        let mut l = layout(10).expect("layout");
        let _ = apply(&d, &mut l);
    }
    // As the header: pointers into the data lead back into it.
    let mut mem = SnapshotMemory::new(1);
    mem.add_region(BASE, data.to_vec());
    if let Ok(d) = read(&mem, BASE) {
        let mut l = layout(9).expect("layout");
        let _ = apply(&d, &mut l);
    }
});
