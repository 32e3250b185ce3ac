//! Go pclntab parsing: no panics, lookups consistent with the function table.
#![no_main]

use ferroscope_symbolize::gopclntab::GoTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes choose the text start (1.18+ entries are relative to it).
    let (text, table) = match data.split_first_chunk::<8>() {
        Some((t, rest)) => (u64::from_le_bytes(*t) & 0xffff_ffff, rest),
        None => return,
    };
    let Ok(t) = GoTable::parse(table, text) else {
        return;
    };
    assert!(t.len() <= table.len());
    assert!(!t.is_empty());
    for (entry, name) in t.functions().take(1000) {
        assert!(name.len() <= table.len());
        if let Some(f) = t.lookup(entry) {
            assert!(f.entry <= entry.max(f.entry));
            assert!(f.function.len() <= table.len());
            assert!(f.file.as_ref().is_none_or(|s| s.len() <= table.len()));
        }
    }
    for chunk in table.chunks_exact(4).take(64) {
        let pc = text.wrapping_add(u64::from(u32::from_le_bytes(chunk.try_into().expect("4"))));
        let _ = t.lookup(pc);
    }
});
