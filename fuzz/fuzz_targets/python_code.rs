//! CPython code objects and frame chains read from arbitrary memory: no panics, bounded output.
#![no_main]

use ferroscope_unwind_api::SnapshotMemory;
use ferroscope_unwind_python::{
    DebugOffsets, Layout, PyVersion, TABLE_MINORS, code_fingerprint, interpreters_head, layout,
    read_code, threads, walk,
};
use libfuzzer_sys::fuzz_target;

/// The layouts of 3.13+ as their `_Py_DebugOffsets` give them (Debian's 3.13.5, 3.14.10 and
/// 3.15.2), after the built-in ones.
fn layouts() -> Vec<Layout> {
    let mut out: Vec<Layout> = TABLE_MINORS.filter_map(layout).cloned().collect();
    // (minor, tstate thread_id, native_thread_id, owner, co_code_adaptive, interp
    // next/head/modules)
    for (minor, thread_id, native, owner, adaptive, next, head, modules) in [
        (13u8, 152u64, 160u64, 70u64, 200u64, 7264u64, 7344u64, 7656u64),
        (14, 152, 160, 74, 208, 7272, 7344, 7688),
        (15, 176, 184, 74, 208, 7264, 7336, 7592),
    ] {
        out.push(Layout::from_debug_offsets(&DebugOffsets {
            version: PyVersion { major: 3, minor, micro: 0 },
            schema_minor: minor,
            runtime_size: 1 << 18,
            runtime_interpreters_head: 800,
            interp_size: 1 << 17,
            interp_next: next,
            interp_threads_head: head,
            interp_imports_modules: modules,
            tstate_size: 1000,
            tstate_next: 8,
            tstate_interp: 16,
            tstate_current_frame: 72,
            tstate_thread_id: thread_id,
            tstate_native_thread_id: native,
            frame_size: 88,
            frame_previous: 8,
            frame_executable: 0,
            frame_instr_ptr: 56,
            frame_owner: owner,
            code_size: 216,
            code_filename: 112,
            code_name: 120,
            code_qualname: 128,
            code_linetable: 136,
            code_firstlineno: 68,
            code_adaptive: adaptive,
        }));
    }
    out
}

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
    for l in &layouts() {
        if let Ok(code) = read_code(&mem, l, addr) {
            assert!(code.name.chars().count() <= 4096);
            assert!(code.qualname.chars().count() <= 4096);
            assert!(code.filename.chars().count() <= 4096);
            assert!(code.line_table().1.len() <= memory.len());
            for off in [0u32, 2, 4, 100, u32::MAX] {
                let _ = code.line_for_offset(off);
            }
        }
        let _ = code_fingerprint(&mem, l, addr);
        if let Ok(frames) = walk(&mem, l, addr, 64) {
            assert!(frames.len() <= 64);
        }
        if let Ok(head) = interpreters_head(&mem, l, addr)
            && let Ok(ts) = threads(&mem, l, head)
        {
            assert!(ts.len() <= 256);
        }
    }
});
