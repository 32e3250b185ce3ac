//! Debian's own CPython builds, as distributions ship them: trixie's 3.13 and sid's 3.14 and
//! 3.15, statically linked into a stripped `/usr/bin/python3.N` by GCC, whose eval loop is
//! split in two parts (on 3.14 and 3.15 the exported `_PyEval_EvalFrameDefault` is 1 KiB of
//! set-up and the instructions run in its `.cold` part). Their debug files (Debian's
//! `python3.N-dbg` of the same version) give the truth to compare with: the `.cold` symbol
//! and the DWARF of every structure.
#![allow(clippy::print_stderr)]

mod common;

use common::Elf;
use common::debian::{DEBIAN_MINORS, debian_python};
use ferroscope_unwind_python::{PartsFrom, detect_file};

/// The stripped interpreter alone finds the eval loop's parts from its CFI, and they are the
/// ones the debug file's symbols name.
#[test]
fn split_eval_loops_are_found_without_symbols() {
    for minor in DEBIAN_MINORS {
        let Some(py) = debian_python(minor) else {
            continue;
        };
        let bytes = std::fs::read(py.exe()).unwrap();
        let debug = std::fs::read(&py.debug_file).unwrap();
        let path = format!("/usr/bin/python3.{minor}");
        let stripped = detect_file(&Elf::new(&path, &bytes))
            .unwrap_or_else(|e| panic!("{path} {}: {e}", py.package_version))
            .unwrap_or_else(|| panic!("{path} not detected"));
        let with_symbols = detect_file(&Elf::new(&path, &bytes).with_debug_file(&debug))
            .unwrap()
            .unwrap();
        assert_eq!(stripped.version.minor, minor);
        assert!(
            py.package_version
                .starts_with(&stripped.version.to_string()),
            "Py_Version {} of package {}",
            stripped.version,
            py.package_version
        );
        assert_eq!(
            with_symbols.eval.from,
            PartsFrom::Symbols,
            "{path}: .cold in the debug file"
        );
        assert_eq!(
            stripped.eval.from,
            PartsFrom::Cfi,
            "{path}: parts from the CFI"
        );
        assert_eq!(
            stripped.eval.parts, with_symbols.eval.parts,
            "{path}: the CFI's parts are the symbols' ones"
        );
        let [entry, cold] = stripped.eval.parts[..] else {
            panic!("{path}: two parts expected: {:?}", stripped.eval.parts)
        };
        eprintln!(
            "{path} ({}): entry {:#x} ({} bytes), cold part {:#x} ({} bytes)",
            py.package_version, entry.address, entry.size, cold.address, cold.size
        );
        assert_eq!(stripped.layout, with_symbols.layout);
    }
}
