//! The CPython plug-in on the real files of every installed CPython: detection (libpython
//! is CPython, the small launcher of a shared build is not), the version it reads, and the
//! eBPF data built from the layout.

mod common;

use common::Elf;
use ferroscope_unwind_api::RangeMode;
use ferroscope_unwind_python::ebpf::{NO_FIELD, PY_ENTRY_FLAG, PY_ENTRY_ONE, PY_ENTRY_SHIM};
use ferroscope_unwind_python::{FrameLayout, detect_file, ebpf_proc, eval_ranges};

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
