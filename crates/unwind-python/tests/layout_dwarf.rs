//! Every offset of each CPython's layout against the DWARF of the build: the pyenv
//! libpythons (3.6-3.13), and Debian's 3.13-3.15 through their debug files.
//! And the object facts the thread-name reader uses, on the same files.
#![allow(clippy::print_stderr)]

mod common;

use ferroscope_unwind_python::objects::ObjectLayout;
use ferroscope_unwind_python::{Entry, FrameLayout, Layout, LineTableFormat, layout};

const STRUCTS: &[&str] = &[
    "_PyRuntimeState",
    "_is",
    "_ts",
    "_PyCFrame",
    "_frame",
    "_PyInterpreterFrame",
    "PyCodeObject",
    "PyASCIIObject",
    "PyCompactUnicodeObject",
    "PyBytesObject",
];

/// (struct, member path, the layout's value); `None` = the member must not exist.
fn expectations(l: &Layout) -> Vec<(&'static str, &'static str, Option<u32>)> {
    let m = l.minor;
    let mut v = vec![
        ("_is", "next", Some(l.interp_next)),
        (
            "_is",
            if m <= 10 {
                "tstate_head"
            } else {
                "threads.head"
            },
            Some(l.interp_threads_head),
        ),
        (
            "_is",
            if m <= 11 {
                "modules"
            } else {
                "imports.modules"
            },
            Some(l.interp_modules),
        ),
        ("_ts", "next", Some(l.tstate_next)),
        ("_ts", "interp", Some(l.tstate_interp)),
        ("_ts", "thread_id", Some(l.tstate_thread_id)),
        ("_ts", "native_thread_id", l.tstate_native_thread_id),
        (
            "_ts",
            match m {
                ..=10 => "frame",
                11 | 12 => "cframe",
                _ => "current_frame",
            },
            Some(l.tstate_frame),
        ),
        ("PyCodeObject", "co_filename", Some(l.co_filename)),
        ("PyCodeObject", "co_name", Some(l.co_name)),
        ("PyCodeObject", "co_qualname", l.co_qualname),
        ("PyCodeObject", "co_firstlineno", Some(l.co_firstlineno)),
        (
            "PyCodeObject",
            if m <= 9 { "co_lnotab" } else { "co_linetable" },
            Some(l.co_linetable),
        ),
        ("PyCodeObject", "co_code_adaptive", l.co_code_adaptive),
        ("PyASCIIObject", "length", Some(l.unicode.length)),
        ("PyASCIIObject", "state", Some(l.unicode.state)),
        ("PyBytesObject", "ob_base.ob_size", Some(l.bytes.ob_size)),
        ("PyBytesObject", "ob_sval", Some(l.bytes.ob_sval)),
    ];
    if m >= 7 {
        v.push((
            "_PyRuntimeState",
            "interpreters.head",
            l.runtime_interpreters_head,
        ));
    }
    if matches!(m, 11 | 12) {
        v.push(("_PyCFrame", "current_frame", l.cframe_current_frame));
    }
    match l.frame {
        FrameLayout::Object {
            f_back,
            f_code,
            f_lasti,
            ..
        } => {
            v.push(("_frame", "f_back", Some(f_back)));
            v.push(("_frame", "f_code", Some(f_code)));
            v.push(("_frame", "f_lasti", Some(f_lasti)));
        }
        FrameLayout::Interpreter {
            executable,
            previous,
            instr_ptr,
            entry,
            ..
        } => {
            let f = "_PyInterpreterFrame";
            v.push((
                f,
                if m <= 12 { "f_code" } else { "f_executable" },
                Some(executable),
            ));
            v.push((f, "previous", Some(previous)));
            v.push((
                f,
                if m <= 12 { "prev_instr" } else { "instr_ptr" },
                Some(instr_ptr),
            ));
            match entry {
                Entry::IsEntry { offset } => v.push((f, "is_entry", Some(offset))),
                Entry::Owner { offset, .. } => {
                    v.push((f, "owner", Some(offset)));
                    v.push((f, "is_entry", None));
                }
            }
        }
    }
    v
}

/// Every offset of `l` against the DWARF in `dwarf_file`; the mismatches.
fn check_layout(label: &str, l: &Layout, dwarf_file: &std::path::Path) -> Vec<String> {
    let minor = l.minor;
    let failures = std::cell::RefCell::new(Vec::new());
    let (structs, enums) = common::dwarf_info(
        dwarf_file,
        STRUCTS,
        &["FRAME_OWNED_BY_CSTACK", "FRAME_OWNED_BY_INTERPRETER"],
    );
    let mut checked = 0;
    let mut check = |what: String, got: Option<u64>, want: Option<u64>| {
        checked += 1;
        if got != want {
            failures.borrow_mut().push(format!(
                "{label}: {what}: DWARF says {got:?}, the layout of 3.{minor} says {want:?}"
            ));
        }
    };
    for (s, path, want) in expectations(l) {
        let Some(info) = structs.get(s) else {
            failures
                .borrow_mut()
                .push(format!("{label}: struct {s} not found in DWARF"));
            continue;
        };
        check(
            format!("{s}.{path}"),
            info.offset(path),
            want.map(u64::from),
        );
    }
    let ascii = &structs["PyASCIIObject"];
    check(
        "sizeof(PyASCIIObject)".into(),
        ascii.size,
        Some(l.unicode.ascii_size.into()),
    );
    check(
        "sizeof(PyCompactUnicodeObject)".into(),
        structs["PyCompactUnicodeObject"].size,
        Some(l.unicode.compact_size.into()),
    );
    let bit = |name: &str| {
        ascii
            .member(&format!("state.{name}"))
            .and_then(|(_, m)| m.bit_offset)
    };
    check(
        "state.kind bit".into(),
        bit("kind"),
        Some(l.unicode.kind_shift.into()),
    );
    check(
        "state.compact bit".into(),
        bit("compact"),
        Some(l.unicode.compact_bit.into()),
    );
    check(
        "state.ascii bit".into(),
        bit("ascii"),
        Some(l.unicode.ascii_bit.into()),
    );
    check(
        "state.ready bit".into(),
        bit("ready"),
        l.unicode.ready_bit.map(u64::from),
    );
    let kind_bits = ascii.member("state.kind").and_then(|(_, m)| m.bit_size);
    check("state.kind width".into(), kind_bits, Some(3));
    // The frame read covers the fields and stays inside the structure.
    let frame_struct = if minor <= 10 {
        "_frame"
    } else {
        "_PyInterpreterFrame"
    };
    let size = structs[frame_struct].size.unwrap_or(0);
    if u64::from(l.frame_read_len) > size {
        failures.borrow_mut().push(format!(
            "{label}: frame_read_len {} > sizeof({frame_struct}) {size}",
            l.frame_read_len
        ));
    }
    if let FrameLayout::Interpreter {
        entry: Entry::Owner { cstack, .. },
        ..
    } = l.frame
    {
        // The first owner value of a shim: 3.12/3.13 FRAME_OWNED_BY_CSTACK, 3.14+
        // FRAME_OWNED_BY_INTERPRETER (3.14's FRAME_OWNED_BY_CSTACK, 4, is above it).
        let name = if minor <= 13 {
            "FRAME_OWNED_BY_CSTACK"
        } else {
            "FRAME_OWNED_BY_INTERPRETER"
        };
        match enums.get(name) {
            Some(&v) => check(name.into(), Some(v as u64), Some(cstack.into())),
            None => eprintln!("{label}: enum _frameowner not in the DWARF seen; {name} unchecked"),
        }
    }
    let want_format = match minor {
        ..=9 => LineTableFormat::Lnotab,
        10 => LineTableFormat::Linetable310,
        _ => LineTableFormat::Locations311,
    };
    assert_eq!(l.line_table, want_format);
    eprintln!("{label}: {checked} offsets checked against DWARF");
    failures.into_inner()
}

/// The layout of an installed CPython: its built-in table, or (3.13+) the one read from its
/// own `_Py_DebugOffsets` by detection.
fn layout_of(file: &std::path::Path, minor: u8) -> Layout {
    if let Some(l) = layout(minor) {
        return l.clone();
    }
    let bytes = std::fs::read(file).unwrap();
    let elf = common::Elf::new(&file.to_string_lossy(), &bytes);
    ferroscope_unwind_python::detect_file(&elf)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .unwrap_or_else(|| panic!("{} is not detected as CPython", file.display()))
        .layout
}

#[test]
fn layouts_match_libpython_dwarf() {
    let pythons = common::pythons_or_skip("layouts_match_libpython_dwarf");
    let mut failures = Vec::new();
    for py in &pythons {
        let l = layout_of(&py.lib, py.version.minor);
        failures.extend(check_layout(&py.version.to_string(), &l, &py.lib));
    }
    assert!(
        failures.is_empty(),
        "layout mismatches:\n{}",
        failures.join("\n")
    );
}

/// Debian's 3.13, 3.14 and 3.15: the layouts read from their `_Py_DebugOffsets` against the
/// DWARF of their debug files.
#[test]
fn debian_layouts_match_their_debug_files_dwarf() {
    let mut failures = Vec::new();
    for minor in common::debian::DEBIAN_MINORS {
        let Some(py) = common::debian::debian_python(minor) else {
            continue;
        };
        let l = layout_of(py.exe(), minor);
        let label = format!("Debian python3.{minor} {}", py.package_version);
        failures.extend(check_layout(&label, &l, &py.debug_file));
    }
    assert!(
        failures.is_empty(),
        "layout mismatches:\n{}",
        failures.join("\n")
    );
}

/// The object facts the `threading` name reader uses (`objects.rs`: types, dicts, modules,
/// ints) against the DWARF in `dwarf_file`; the mismatches.
fn check_objects(label: &str, minor: u8, dwarf_file: &std::path::Path) -> Vec<String> {
    let mut names = vec![
        "PyTypeObject",
        "PyHeapTypeObject",
        "PyDictObject",
        "PyDictKeysObject",
        "PyModuleObject",
        "PyLongObject",
    ];
    if minor >= 13 {
        names.push("PyDictValues");
    }
    let structs = common::struct_layouts(dwarf_file, &names);
    let objects = ObjectLayout::of(minor);
    let mut want: Vec<(&str, &str, Option<u32>)> = vec![
        ("PyTypeObject", "tp_basicsize", Some(32)),
        ("PyTypeObject", "tp_flags", Some(168)),
        ("PyTypeObject", "tp_dictoffset", Some(288)),
        ("PyDictObject", "ma_used", Some(16)),
        ("PyDictObject", "ma_keys", Some(32)),
        ("PyDictObject", "ma_values", Some(40)),
        ("PyModuleObject", "md_dict", Some(16)),
        (
            "PyLongObject",
            if minor >= 12 {
                "long_value.ob_digit"
            } else {
                "ob_digit"
            },
            Some(24),
        ),
    ];
    if minor >= 11 {
        want.extend([
            ("PyHeapTypeObject", "ht_cached_keys", objects.cached_keys),
            ("PyDictKeysObject", "dk_log2_index_bytes", Some(9)),
            ("PyDictKeysObject", "dk_kind", Some(10)),
            ("PyDictKeysObject", "dk_nentries", Some(24)),
            ("PyDictKeysObject", "dk_indices", Some(32)),
        ]);
    } else {
        want.extend([
            ("PyDictKeysObject", "dk_size", Some(8)),
            ("PyDictKeysObject", "dk_nentries", Some(32)),
            ("PyDictKeysObject", "dk_indices", Some(40)),
        ]);
    }
    if minor >= 13 {
        want.extend([
            ("PyDictValues", "capacity", Some(0)),
            ("PyDictValues", "valid", Some(3)),
            ("PyDictValues", "values", Some(8)),
        ]);
    }
    let mut failures = Vec::new();
    for (s, path, want) in &want {
        let got = structs.get(*s).and_then(|i| i.offset(path));
        if got != want.map(u64::from) {
            failures.push(format!(
                "{label}: {s}.{path}: DWARF says {got:?}, objects.rs says {want:?}"
            ));
        }
    }
    eprintln!(
        "{label}: {} object offsets checked against DWARF",
        want.len()
    );
    failures
}

#[test]
fn object_offsets_match_dwarf() {
    let mut failures = Vec::new();
    for py in &common::pythons_or_skip("object_offsets_match_dwarf") {
        failures.extend(check_objects(
            &py.version.to_string(),
            py.version.minor,
            &py.lib,
        ));
    }
    for minor in common::debian::DEBIAN_MINORS {
        let Some(py) = common::debian::debian_python(minor) else {
            continue;
        };
        let label = format!("Debian python3.{minor} {}", py.package_version);
        failures.extend(check_objects(&label, minor, &py.debug_file));
    }
    assert!(
        failures.is_empty(),
        "object offset mismatches:\n{}",
        failures.join("\n")
    );
}
