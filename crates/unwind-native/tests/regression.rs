//! Inputs that once broke extraction, named after the problem they pin.

use ferroscope_unwind_native::{ExtractOptions, extract};
use object::{Object, ObjectSection};

/// Found by the `stack_deltas` fuzz target: an `.eh_frame_hdr` search-table entry pointing
/// below `.eh_frame` made gimli's `pointer_to_offset` subtract with overflow. Rebuilt here by
/// patching libc's first search-table entry to point at address 0.
#[test]
fn eh_frame_hdr_pointer_below_section() {
    let mut data = std::fs::read(ferroscope_test_harness::files::libc()).unwrap();
    let (offset, address) = {
        let file = object::File::parse(&*data).unwrap();
        let hdr = file.section_by_name(".eh_frame_hdr").unwrap();
        (hdr.file_range().unwrap().0 as usize, hdr.address())
    };
    // version 1, eh_frame_ptr sdata4|pcrel, fde_count udata4, table datarel|sdata4.
    assert_eq!(&data[offset..offset + 4], &[1, 0x1b, 0x03, 0x3b]);
    // Header (4) + eh_frame_ptr (4) + fde_count (4) + first initial location (4).
    let fde_field = offset + 16;
    let below = (-(address as i64)) as i32;
    data[fde_field..fde_field + 4].copy_from_slice(&below.to_le_bytes());
    let table = extract(&data, None, &ExtractOptions::default()).unwrap();
    // The damaged search table is ignored; walking .eh_frame finds every function.
    let clean = std::fs::read(ferroscope_test_harness::files::libc()).unwrap();
    assert_eq!(
        table,
        extract(&clean, None, &ExtractOptions::default()).unwrap()
    );
}
