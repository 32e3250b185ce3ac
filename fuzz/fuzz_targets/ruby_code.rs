//! The x86-64 decoding that finds a stripped libruby's thread-local context, VM loop and
//! symbol table, and the `.eh_frame_hdr` reader, on arbitrary bytes: no panics, bounded.
#![no_main]

use ferroscope_unwind_ruby::code;
use ferroscope_unwind_ruby::frames_table::FunctionStarts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let insns = code::decode(data, 0x1000, 256);
    assert!(insns.len() <= 256);
    assert!(insns.iter().map(|i| i.bytes.len()).sum::<usize>() <= data.len());
    let _ = code::tls_access(&insns);
    let _ = code::tail_calls(&insns, 0x1000, 0x2000);
    let _ = code::first_compare_immediate(&insns);
    let _ = code::symbols_global(&insns);
    let read = |vaddr: u64, buf: &mut [u8]| {
        let Ok(start) = usize::try_from(vaddr) else {
            return false;
        };
        match data.get(start..start.saturating_add(buf.len())) {
            Some(s) if s.len() == buf.len() => {
                buf.copy_from_slice(s);
                true
            }
            _ => false,
        }
    };
    if let Some(t) = FunctionStarts::read_at(&read, 0) {
        let _ = t.function_containing(0x100);
    }
    let _ = FunctionStarts::parse(&read, 0, data.len() as u64);
});
