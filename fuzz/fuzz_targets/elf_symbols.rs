//! ELF symbol parsing: no panics, output bounded by the input, lookups consistent.
#![no_main]

use ferroscope_symbolize::elf::ElfSymbols;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(syms) = ElfSymbols::parse(data) else {
        return;
    };
    // Every symbol needs a table entry of at least 16 bytes in the input, and there are at
    // most two tables (.symtab and .dynsym), which a crafted file may overlap.
    assert!(syms.len() <= data.len() / 8);
    assert!(syms.build_id().is_none_or(|id| id.len() <= data.len()));
    assert_eq!(syms.is_empty(), syms.len() == 0);
    let mut previous = None;
    for (start, size, name) in syms.iter().take(10_000) {
        assert!(previous < Some(start), "not sorted and deduplicated");
        previous = Some(start);
        assert!(size > 0 && !name.is_empty());
        assert_eq!(syms.lookup(start).map(|(_, off)| off), Some(0));
        let _ = syms.lookup(start.saturating_add(size - 1));
    }
    for chunk in data.chunks_exact(8).take(64) {
        let v = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if let Some((_, off)) = syms.lookup(v) {
            assert!(off <= v);
        }
        let _ = syms.file_offset_to_vaddr(v);
        let _ = syms.mapping_offset_to_vaddr(v, true);
    }
});
