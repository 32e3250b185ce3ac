//! The CPython plug-in on the real files of every installed CPython: detection (libpython
//! is CPython, the small launcher of a shared build is not), the version it reads, and the
//! eBPF data built from the layout.

#![allow(clippy::print_stderr)]

mod common;

use common::Elf;
use ferroscope_unwind_api::RangeMode;
use ferroscope_unwind_python::ebpf::{NO_FIELD, PY_ENTRY_FLAG, PY_ENTRY_ONE, PY_ENTRY_SHIM};
use ferroscope_unwind_python::{FrameLayout, PartsFrom, detect_file, ebpf_proc, eval_ranges};

#[test]
fn libpython_is_detected_with_its_version_and_the_launcher_is_not() {
    for py in common::pythons_or_skip("plugin detection") {
        let bytes = std::fs::read(&py.lib).unwrap();
        let elf = Elf::new(&py.lib.to_string_lossy(), &bytes);
        let found = detect_file(&elf)
            .unwrap()
            .unwrap_or_else(|| panic!("{} not detected", py.lib.display()));
        assert_eq!(
            found.version.minor,
            py.version.minor,
            "{}",
            py.lib.display()
        );
        if py.version.minor >= 11 {
            // Py_Version gives the micro version too.
            assert_eq!(
                found.version,
                py.version,
                "Py_Version of {}",
                py.lib.display()
            );
        }
        let eval = found.eval.parts[0];
        assert!(eval.size > 1000, "the eval loop is a big function");

        let bias = 0x7f00_0000_0000;
        let p = ebpf_proc(&found, bias);
        let l = &found.layout;
        let ranges = eval_ranges(&found, bias);
        assert_eq!(ranges[0].start, eval.address + bias);
        assert_eq!(ranges[0].end, eval.address + eval.size + bias);
        assert!(
            ranges
                .iter()
                .all(|r| r.mode == RangeMode::Splice && !r.frame_pointer)
        );
        assert_eq!(
            p.interp_head,
            found.runtime + bias + u64::from(l.runtime_interpreters_head.unwrap_or(0))
        );
        assert_eq!(u32::from(p.tstate_thread_id), l.tstate_thread_id);
        // 3.11+ match a thread's state by TID too: native_thread_id follows thread_id.
        assert_eq!(
            p.native_tid,
            u8::from(py.version.minor >= 11),
            "native_tid of {}",
            py.lib.display()
        );
        assert_eq!(u32::from(p.frame_read_len), l.frame_read_len);
        match l.frame {
            FrameLayout::Object { f_back, .. } => {
                assert_eq!(p.entry_kind, PY_ENTRY_ONE);
                assert_eq!(u32::from(p.frame_previous), f_back);
                assert_eq!(p.cframe_current_frame, NO_FIELD);
            }
            FrameLayout::Interpreter { previous, .. } => {
                let want = if py.version.minor == 11 {
                    PY_ENTRY_FLAG
                } else {
                    PY_ENTRY_SHIM
                };
                assert_eq!(p.entry_kind, want);
                assert_eq!(u32::from(p.frame_previous), previous);
            }
        }

        // The launcher of a shared build links libpython and has no eval loop of its own.
        let bytes = std::fs::read(&py.exe).unwrap();
        let elf = Elf::new(&py.exe.to_string_lossy(), &bytes);
        assert!(
            detect_file(&elf).unwrap().is_none(),
            "{} is a launcher, not the runtime",
            py.exe.display()
        );
    }
}

#[test]
fn other_files_are_not_python() {
    let bytes = std::fs::read("/bin/ls").unwrap();
    let elf = Elf::new("/bin/ls", &bytes);
    assert!(detect_file(&elf).unwrap().is_none());
}

/// Every pyenv libpython, with its symbols and as a stripped copy: with symbols, the eval
/// loop's parts are the entry and its `.cold` part when `.symtab` has one; the stripped
/// copy's CFI finds the entry and each symbol part that the entry's direct jumps land
/// inside of (the parts the interpreter reaches), and nothing else. (pyenv's 3.11 has a
/// 4-byte `.cold` part that no jump of the entry reaches: nothing to find there.)
#[test]
fn stripped_copies_find_the_eval_loop_parts_the_entry_jumps_into() {
    use ferroscope_unwind_api::ElfFile;
    let Some(strip) = ferroscope_test_harness::tool("strip") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for py in common::pythons_or_skip("stripped copies") {
        let bytes = std::fs::read(&py.lib).unwrap();
        let path = py.lib.to_string_lossy().into_owned();
        let elf = Elf::new(&path, &bytes);
        let with_symbols = detect_file(&elf).unwrap().unwrap();
        let cold = common::symbol_address(
            &object::File::parse(&*bytes).unwrap(),
            "_PyEval_EvalFrameDefault.cold",
        );
        let want_from = if cold.is_some() {
            PartsFrom::Symbols
        } else {
            PartsFrom::EntrySymbol
        };
        assert_eq!(with_symbols.eval.from, want_from, "{path}");
        assert_eq!(
            with_symbols.eval.parts.len(),
            1 + usize::from(cold.is_some()),
            "{path}"
        );

        // What the CFI must find: the entry, and the symbol parts a jump lands inside of.
        let entry = with_symbols.eval.parts[0];
        let mut code = vec![0u8; entry.size as usize];
        assert!(elf.read_vaddr(entry.address, &mut code), "{path}");
        let targets = ferroscope_unwind_python::eval_loop::branch_targets(&code, entry.address);
        let mut want = vec![entry];
        want.extend(with_symbols.eval.parts[1..].iter().copied().filter(|p| {
            targets
                .iter()
                .any(|&t| p.address < t && t < p.address + p.size)
        }));

        let copy = dir.path().join(py.lib.file_name().unwrap());
        ferroscope_test_harness::run_ok(
            std::process::Command::new(&strip)
                .arg("--strip-all")
                .arg("-o")
                .arg(&copy)
                .arg(&py.lib),
            std::time::Duration::from_secs(120),
        );
        let stripped_bytes = std::fs::read(&copy).unwrap();
        let stripped = detect_file(&Elf::new(&path, &stripped_bytes));
        if py.version.minor == 6 {
            // 3.6's interpreters are behind a static `interp_head`, in .symtab only.
            let e = stripped.expect_err("3.6 needs .symtab");
            assert!(e.to_string().contains("`interp_head`"), "{e}");
            continue;
        }
        let stripped = stripped.unwrap().unwrap();
        assert_eq!(stripped.eval.parts, want, "{path}: stripped");
        let want_from = if want.len() > 1 {
            PartsFrom::Cfi
        } else {
            PartsFrom::EntrySymbol
        };
        assert_eq!(stripped.eval.from, want_from, "{path}: stripped");
        assert_eq!(stripped.layout, with_symbols.layout, "{path}: stripped");
    }
}

/// 3.6-3.10: the eval loop's entry and exit windows (the thread state not yet or no longer at
/// the call's frame) are found: the entry window starts at the entry, and there is an exit.
#[test]
fn unbound_windows_of_the_eval_loop_are_found_up_to_3_10() {
    for py in common::pythons_or_skip("unbound windows") {
        let bytes = std::fs::read(&py.lib).unwrap();
        let found = detect_file(&Elf::new(&py.lib.to_string_lossy(), &bytes))
            .unwrap()
            .unwrap();
        let entry = found.eval.parts[0];
        eprintln!("{}: {:x?}", py.version, found.unbound);
        if py.version.minor >= 11 {
            assert!(found.unbound.is_empty(), "{}", py.version);
            continue;
        }
        let u = &found.unbound;
        assert!(u.len() >= 2, "{}: {u:x?}", py.version);
        assert_eq!(u[0].0, entry.address, "{}: the entry window", py.version);
        assert!(
            u[0].1 - u[0].0 < 256,
            "{}: a short entry window",
            py.version
        );
        let inside = |a: u64| a >= entry.address && a < entry.address + entry.size;
        assert!(
            u.iter()
                .all(|&(s, e)| s < e && inside(s) && e <= entry.address + entry.size),
            "{}: {u:x?}",
            py.version
        );
        assert!(
            u.windows(2).all(|w| w[0].1 < w[1].0),
            "{}: sorted, apart",
            py.version
        );
    }
}
