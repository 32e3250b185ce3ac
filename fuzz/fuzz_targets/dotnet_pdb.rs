//! Portable PDBs (metadata with a `#Pdb` stream, documents and sequence points) from
//! arbitrary bytes: no panics.
#![no_main]

use ferroscope_unwind_dotnet::pdb::Pdb;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pdb) = Pdb::parse(data.to_vec()) else {
        return;
    };
    let methods = pdb.methods().min(256);
    for m in 0..=methods + 1 {
        for il in [0u32, 1, 7, 0x40, u32::MAX] {
            if let Some(line) = pdb.line(m, il) {
                assert!(line.file.len() <= 1 << 20);
            }
        }
    }
});
