//! 3.13+ embeds `_Py_DebugOffsets` at the start of `_PyRuntime` (cookie "xdebugpy"): each
//! schema of it in `debug_offsets` must put every field where the DWARF of a real build says
//! the struct has it, and the parser must read what is there. Real builds: the pyenv
//! libpython 3.13 (its own DWARF) and Debian's 3.13, 3.14 and 3.15 (their debug files).
#![allow(clippy::print_stderr)]

mod common;

use std::path::Path;

use ferroscope_unwind_python::debug_offsets::{DebugOffsets, field_offset, schema_for};
use ferroscope_unwind_python::detect_file;
use object::{Object, ObjectSection};

/// Checks the schema of `minor` against the DWARF in `dwarf_file`, and the parser against the
/// bytes of `file`'s `_PyRuntime`.
fn check(label: &str, minor: u8, file: &Path, dwarf_file: &Path) {
    let (schema_minor, schema) = schema_for(minor).unwrap();
    assert_eq!(schema_minor, minor, "{label}: a schema of its own");
    let structs = common::struct_layouts(dwarf_file, &["_Py_DebugOffsets"]);
    let dwarf = structs
        .get("_Py_DebugOffsets")
        .unwrap_or_else(|| panic!("{label}: no _Py_DebugOffsets in {}", dwarf_file.display()));
    let mut checked = 0;
    for (section, fields) in schema {
        for field in *fields {
            let path = if section.is_empty() {
                (*field).to_owned()
            } else {
                format!("{section}.{field}")
            };
            let ours = field_offset(schema, section, field).map(|o| o as u64);
            assert_eq!(
                dwarf.offset(&path),
                ours,
                "{label}: _Py_DebugOffsets.{path}: DWARF vs schema"
            );
            checked += 1;
        }
    }
    let bytes = std::fs::read(file).unwrap();
    let elf = object::File::parse(&*bytes).unwrap();
    let runtime = common::symbol_address(&elf, "_PyRuntime").expect("_PyRuntime symbol");
    let section = elf
        .sections()
        .find(|s| s.address() <= runtime && runtime < s.address() + s.size())
        .expect("section of _PyRuntime");
    let data = section.data().expect("section data");
    let blob = &data[(runtime - section.address()) as usize..];
    assert_eq!(&blob[..8], b"xdebugpy", "{label}: cookie");
    let at = |path: &str| {
        let o = dwarf.offset(path).unwrap() as usize;
        u64::from_le_bytes(blob[o..o + 8].try_into().unwrap())
    };
    let found = detect_file(&common::Elf::new(&file.to_string_lossy(), &bytes))
        .unwrap_or_else(|e| panic!("{label}: {e}"))
        .unwrap_or_else(|| panic!("{label}: not detected"));
    let d = DebugOffsets::parse(blob, found.version, 0).unwrap();
    let pairs = [
        (d.runtime_size, "runtime_state.size"),
        (
            d.runtime_interpreters_head,
            "runtime_state.interpreters_head",
        ),
        (d.interp_next, "interpreter_state.next"),
        (d.interp_threads_head, "interpreter_state.threads_head"),
        (
            d.interp_imports_modules,
            "interpreter_state.imports_modules",
        ),
        (d.tstate_next, "thread_state.next"),
        (d.tstate_interp, "thread_state.interp"),
        (d.tstate_current_frame, "thread_state.current_frame"),
        (d.tstate_thread_id, "thread_state.thread_id"),
        (d.tstate_native_thread_id, "thread_state.native_thread_id"),
        (d.frame_previous, "interpreter_frame.previous"),
        (d.frame_executable, "interpreter_frame.executable"),
        (d.frame_instr_ptr, "interpreter_frame.instr_ptr"),
        (d.frame_owner, "interpreter_frame.owner"),
        (d.code_filename, "code_object.filename"),
        (d.code_name, "code_object.name"),
        (d.code_qualname, "code_object.qualname"),
        (d.code_linetable, "code_object.linetable"),
        (d.code_firstlineno, "code_object.firstlineno"),
        (d.code_adaptive, "code_object.co_code_adaptive"),
    ];
    for (ours, path) in pairs {
        assert_eq!(
            ours,
            at(path),
            "{label}: {path} as parsed vs at its DWARF place"
        );
    }
    assert_eq!(d.version, found.version);
    eprintln!(
        "{label}: {checked} schema fields agree with the DWARF; {} values read where it says",
        pairs.len()
    );
}

#[test]
fn pyenv_debug_offsets_match_their_dwarf() {
    for py in common::pythons_or_skip("pyenv_debug_offsets_match_their_dwarf")
        .iter()
        .filter(|p| p.version.minor >= 13)
    {
        check(&py.version.to_string(), py.version.minor, &py.lib, &py.lib);
    }
}

#[test]
fn debian_debug_offsets_match_their_debug_files() {
    for minor in common::debian::DEBIAN_MINORS {
        let Some(py) = common::debian::debian_python(minor) else {
            continue;
        };
        let label = format!("Debian python3.{minor} {}", py.package_version);
        check(&label, minor, py.exe(), &py.debug_file);
    }
}
