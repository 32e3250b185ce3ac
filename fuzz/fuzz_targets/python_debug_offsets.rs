//! `_Py_DebugOffsets` tables read from arbitrary bytes (a file's `_PyRuntime`): no panics, and
//! a table that is accepted gives a layout whose every offset the walker uses stays inside
//! its structure and its 128-byte frame read.
#![no_main]

use ferroscope_unwind_python::{DebugOffsets, FrameLayout, Layout, PyVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the version and the `_PyRuntime` size the table must agree with.
    let Some((&sel, table)) = data.split_first() else {
        return;
    };
    let version = PyVersion {
        major: 3,
        minor: 13 + (sel & 7),
        micro: 0,
    };
    let size = if sel & 0x80 != 0 {
        table.len() as u64
    } else {
        0
    };
    let Ok(d) = DebugOffsets::parse(table, version, size) else {
        return;
    };
    assert_eq!(d.version.minor, version.minor);
    let l = Layout::from_debug_offsets(&d);
    assert!(l.frame_read_len <= 128);
    if let FrameLayout::Interpreter { executable, previous, instr_ptr, .. } = l.frame {
        assert!(executable + 8 <= 128 && previous + 8 <= 128 && instr_ptr + 8 <= 128);
    }
    assert!(u64::from(l.tstate_thread_id) + 8 <= d.tstate_size);
    assert!(u64::from(l.co_firstlineno) + 4 <= d.code_size);
});
