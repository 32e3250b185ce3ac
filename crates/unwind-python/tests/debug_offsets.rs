//! 3.13+ embeds `_Py_DebugOffsets` at the start of `_PyRuntime` (cookie "xdebugpy"): the
//! offsets CPython itself publishes for debuggers must agree with `layout(minor)`.
#![allow(clippy::print_stderr)]

mod common;

use ferroscope_unwind_python::{Entry, FrameLayout, layout, version_from_hex};
use object::{Object, ObjectSection};

#[test]
fn embedded_debug_offsets_agree_with_layout() {
    let pythons = common::pythons_or_skip("embedded_debug_offsets_agree_with_layout");
    let with_offsets: Vec<_> = pythons.iter().filter(|p| p.version.minor >= 13).collect();
    if with_offsets.is_empty() && !pythons.is_empty() {
        eprintln!("no CPython 3.13+ installed: _Py_DebugOffsets not checked");
    }
    for py in with_offsets {
        let l = layout(py.version.minor).expect("layout");
        let data = std::fs::read(&py.lib).expect("read libpython");
        let file = object::File::parse(&*data).expect("parse libpython");
        let runtime = common::symbol_address(&file, "_PyRuntime").expect("_PyRuntime symbol");
        let section = file
            .sections()
            .find(|s| s.address() <= runtime && runtime < s.address() + s.size())
            .expect("section of _PyRuntime");
        let bytes = section.data().expect("section data");
        let start = usize::try_from(runtime - section.address()).unwrap();
        let blob = &bytes[start..];
        assert_eq!(&blob[..8], b"xdebugpy", "{}: cookie", py.version);

        // Where each field of the struct is: from the same DWARF, so this test does not
        // depend on a hand-copied struct definition.
        let structs = common::struct_layouts(&py.lib, &["_Py_DebugOffsets"]);
        let dbg = &structs["_Py_DebugOffsets"];
        let value = |path: &str| -> Option<u64> {
            let off = usize::try_from(dbg.offset(path)?).ok()?;
            Some(u64::from_le_bytes(blob[off..off + 8].try_into().ok()?))
        };
        let version = value("version").expect("version field");
        let v = version_from_hex(version as u32);
        assert_eq!(v, py.version, "version in _Py_DebugOffsets");

        let FrameLayout::Interpreter {
            executable,
            previous,
            instr_ptr,
            entry: Entry::Owner { offset: owner, .. },
            ..
        } = l.frame
        else {
            panic!("3.13+ uses _PyInterpreterFrame with owner")
        };
        let mut expected: Vec<(&str, Option<u32>)> = vec![
            (
                "runtime_state.interpreters_head",
                l.runtime_interpreters_head,
            ),
            ("interpreter_state.next", Some(l.interp_next)),
            (
                "interpreter_state.threads_head",
                Some(l.interp_threads_head),
            ),
            ("thread_state.next", Some(l.tstate_next)),
            ("thread_state.interp", Some(l.tstate_interp)),
            ("thread_state.current_frame", Some(l.tstate_frame)),
            ("thread_state.thread_id", Some(l.tstate_thread_id)),
            ("thread_state.native_thread_id", l.tstate_native_thread_id),
            ("interpreter_frame.previous", Some(previous)),
            ("interpreter_frame.executable", Some(executable)),
            ("interpreter_frame.instr_ptr", Some(instr_ptr)),
            ("interpreter_frame.owner", Some(owner)),
            ("code_object.filename", Some(l.co_filename)),
            ("code_object.name", Some(l.co_name)),
            ("code_object.qualname", l.co_qualname),
            ("code_object.linetable", Some(l.co_linetable)),
            ("code_object.firstlineno", Some(l.co_firstlineno)),
            ("code_object.co_code_adaptive", l.co_code_adaptive),
        ];
        // Added after 3.13.0; checked when the struct has them.
        let optional = [
            ("unicode_object.state", Some(l.unicode.state)),
            ("unicode_object.length", Some(l.unicode.length)),
            (
                "unicode_object.asciiobject_size",
                Some(l.unicode.ascii_size),
            ),
            ("bytes_object.ob_size", Some(l.bytes.ob_size)),
            ("bytes_object.ob_sval", Some(l.bytes.ob_sval)),
        ];
        for (path, want) in optional {
            if dbg.offset(path).is_some() {
                expected.push((path, want));
            }
        }
        let mut mismatches = Vec::new();
        for (path, want) in &expected {
            let got = value(path);
            if got != want.map(u64::from) {
                mismatches.push(format!("{path}: _Py_DebugOffsets {got:?}, layout {want:?}"));
            }
        }
        assert!(
            mismatches.is_empty(),
            "{}: {}",
            py.version,
            mismatches.join("; ")
        );
        eprintln!(
            "{}: {} _Py_DebugOffsets fields agree with layout({})",
            py.version,
            expected.len(),
            py.version.minor
        );
    }
}
