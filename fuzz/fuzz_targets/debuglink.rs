//! Debug-file resolution: build ID and `.gnu_debuglink` extraction, the gdb-order candidate
//! paths (always absolute and normalized, never escaping via `..`), and DWARF loading and
//! lookups of the same bytes as a debug file: no panics.
#![no_main]

use std::path::{Component, Path};
use std::sync::Arc;

use ferroscope_symbolize::debuglink::{DebugRefs, candidates};
use ferroscope_symbolize::dwarf::Dwarf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(refs) = DebugRefs::parse(data) else {
        return;
    };
    for obj in ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/a/../b/./c", "/x"] {
        let cands = candidates(Path::new(obj), &refs);
        assert!(cands.len() <= 4);
        for c in &cands {
            assert!(c.path.is_absolute(), "{:?}", c.path);
            assert!(
                c.path
                    .components()
                    .all(|x| matches!(x, Component::RootDir | Component::Normal(_))),
                "{:?}",
                c.path
            );
        }
    }
    // The same bytes as a debug file with DWARF.
    if data.is_empty() {
        return;
    }
    let Ok(mut anon) = memmap2::MmapMut::map_anon(data.len()) else {
        return;
    };
    anon.copy_from_slice(data);
    let Ok(map) = anon.make_read_only() else {
        return;
    };
    if let Ok(d) = Dwarf::load(Arc::new(map)) {
        for chunk in data.chunks_exact(8).take(32) {
            let a = u64::from_le_bytes(chunk.try_into().expect("8"));
            for f in d.frames(a) {
                let _ = (f.name, f.file, f.line);
            }
        }
        for a in (0..0x2000u64).step_by(0x100) {
            let _ = d.frames(a);
        }
    }
});
