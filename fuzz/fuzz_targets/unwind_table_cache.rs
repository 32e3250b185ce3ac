//! The on-disk unwind table cache's decoder: any bytes (a file in the cache directory may be
//! cut short, corrupted or planted) give a table or an error, never a panic; a table that
//! decodes re-encodes to bytes that decode to the same table.
#![no_main]

use ferroscope_unwind_native::StackDeltaTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As given (the checksum almost always refuses it), and with a valid checksum appended,
    // so that the decoder past the checksum sees the input too.
    let _ = StackDeltaTable::from_bytes(data);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    let Ok(table) = StackDeltaTable::from_bytes(&sealed) else {
        return;
    };
    assert!(table.len() <= data.len());
    let again = StackDeltaTable::from_bytes(&table.to_bytes()).expect("its own encoding decodes");
    assert_eq!(again.len(), table.len());
    for chunk in data.chunks_exact(8).take(64) {
        let vaddr = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        assert_eq!(table.lookup(vaddr), again.lookup(vaddr));
    }
});
