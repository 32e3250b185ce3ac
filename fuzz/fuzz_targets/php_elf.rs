//! What PHP detection parses from a file: ELF and program headers, the version string, the
//! code of tiny functions, and call frame information. No panics, bounded output.
#![no_main]

use ferroscope_unwind_api::SymbolRange;
use ferroscope_unwind_php::elf::{
    eh_frame_address, frame_body_from_cfi, parse_elf_header, parse_program_headers,
};
use ferroscope_unwind_php::version::{returned_constant, version_from_path, version_in_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_elf_header(data);
    assert!(parse_program_headers(data).len() <= data.len() / 56);
    let _ = version_in_bytes(data);
    let _ = returned_constant(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = version_from_path(s);
    }
    // The first half as .eh_frame_hdr, the rest as .eh_frame, both at made-up addresses.
    let (hdr, eh) = data.split_at(data.len() / 2);
    let _ = eh_frame_address(hdr, 0x1000);
    let function = SymbolRange {
        address: 0x40_0000,
        size: 0x1_0000,
    };
    if let Some(at) = frame_body_from_cfi(hdr, 0x1000, eh, 0x8000, function) {
        assert!((function.address..function.address + function.size).contains(&at));
    }
});
