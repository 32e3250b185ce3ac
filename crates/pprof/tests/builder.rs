//! ProfileBuilder: deduplication, merging, labels and the encode/decode round trip.

mod common;

use common::{line, loc};
use ferroscope_pprof::{
    Error, Label, LineSpec, LocationSpec, MappingSpec, ProfileBuilder, decode, encode, encode_gzip,
    proto, write_file,
};

fn mapping(filename: &str) -> MappingSpec<'_> {
    MappingSpec {
        start: 0x40_0000,
        limit: 0x50_0000,
        offset: 0x1000,
        filename,
        build_id: "abcdef01",
        has_functions: true,
    }
}

fn s(p: &proto::Profile, index: i64) -> &str {
    &p.string_table[usize::try_from(index).unwrap()]
}

/// A profile that uses every feature of the builder.
fn rich_profile() -> proto::Profile {
    let mut b = ProfileBuilder::cpu(19);
    b.set_time_nanos(1_700_000_000_123_456_789);
    b.set_duration_nanos(15_000_000_000);
    let exe = b.add_mapping(&mapping("server"));
    let vmlinux = b.add_mapping(&MappingSpec {
        start: 0xffff_ffff_8100_0000,
        limit: 0xffff_ffff_8200_0000,
        offset: 0,
        filename: "vmlinux",
        build_id: "",
        has_functions: true,
    });
    let main = b.add_location(&LocationSpec {
        mapping: Some(exe),
        address: 0x40_1234,
        lines: &[LineSpec {
            function: "main",
            system_name: "main",
            filename: "src/main.rs",
            start_line: 3,
            line: 7,
        }],
    });
    let inlined = b.add_location(&LocationSpec {
        mapping: Some(exe),
        address: 0x40_2000,
        lines: &[line("parse"), line("handle")],
    });
    let kernel = loc(
        &mut b,
        Some(vmlinux),
        0xffff_ffff_8100_1000,
        "do_syscall_64",
    );
    let unsymbolized = b.add_location(&LocationSpec {
        mapping: Some(exe),
        address: 0x40_3000,
        lines: &[],
    });
    let p = b.period();
    b.add_sample(
        &[kernel, inlined, main],
        &[2 * p],
        &[Label::Str("comm", "server"), Label::Num("pid", 4242, None)],
    );
    b.add_sample(
        &[unsymbolized, main],
        &[p],
        &[Label::Num("bytes", 512, Some("bytes"))],
    );
    b.build()
}

#[test]
fn gzip_round_trip_is_lossless() {
    let p = rich_profile();
    let bytes = encode_gzip(&p);
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "encode_gzip must produce gzip");
    assert_eq!(decode(&bytes).unwrap(), p);
}

#[test]
fn raw_round_trip_is_lossless() {
    let p = rich_profile();
    let bytes = encode(&p);
    assert_eq!(decode(&bytes).unwrap(), p);
    assert!(encode_gzip(&p).len() < bytes.len());
}

#[test]
fn cpu_period_uses_integer_division() {
    for (hz, period) in [
        (19, 52_631_578),
        (97, 10_309_278),
        (100, 10_000_000),
        (1, 1_000_000_000),
    ] {
        let b = ProfileBuilder::cpu(hz);
        assert_eq!(b.period(), period, "{hz} Hz");
        let p = b.build();
        assert_eq!(p.period, period);
        let st = &p.sample_type[0];
        assert_eq!((s(&p, st.r#type), s(&p, st.unit)), ("cpu", "nanoseconds"));
        let pt = p.period_type.expect("cpu profiles have a period type");
        assert_eq!((s(&p, pt.r#type), s(&p, pt.unit)), ("cpu", "nanoseconds"));
    }
}

#[test]
fn new_without_period_type() {
    let p = ProfileBuilder::new(("offcpu", "nanoseconds"), None, 0).build();
    assert_eq!(p.period_type, None);
    assert_eq!(p.period, 0);
    assert_eq!(s(&p, p.sample_type[0].r#type), "offcpu");
}

#[test]
fn time_and_duration_are_kept() {
    let p = rich_profile();
    assert_eq!(p.time_nanos, 1_700_000_000_123_456_789);
    assert_eq!(p.duration_nanos, 15_000_000_000);
}

#[test]
fn string_table_starts_with_empty_string_and_has_no_duplicates() {
    let p = rich_profile();
    assert_eq!(p.string_table[0], "");
    let mut sorted = p.string_table.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        p.string_table.len(),
        "duplicates in {:?}",
        p.string_table
    );
    // "cpu" and "nanoseconds" serve both sample type and period type.
    assert_eq!(p.string_table.iter().filter(|s| *s == "cpu").count(), 1);
}

#[test]
fn empty_profile_still_has_empty_string_first() {
    let p = ProfileBuilder::new(("", ""), None, 0).build();
    assert_eq!(p.string_table, vec![String::new()]);
}

#[test]
fn same_mapping_twice_is_one_mapping() {
    let mut b = ProfileBuilder::cpu(97);
    let m1 = b.add_mapping(&mapping("libc.so.6"));
    let m2 = b.add_mapping(&mapping("libc.so.6"));
    let other = b.add_mapping(&MappingSpec {
        has_functions: false,
        ..mapping("libc.so.6")
    });
    assert_eq!(m1, m2);
    assert_ne!(m1, other);
    assert_eq!((m1.get(), other.get()), (1, 2), "mapping ids start at 1");
    let p = b.build();
    assert_eq!(p.mapping.len(), 2);
    let m = &p.mapping[0];
    assert_eq!(
        (m.id, m.memory_start, m.memory_limit, m.file_offset),
        (1, 0x40_0000, 0x50_0000, 0x1000)
    );
    assert_eq!(
        (s(&p, m.filename), s(&p, m.build_id), m.has_functions),
        ("libc.so.6", "abcdef01", true)
    );
}

#[test]
fn same_location_and_function_twice_are_one_entry() {
    let mut b = ProfileBuilder::cpu(97);
    let m = b.add_mapping(&mapping("app"));
    let l1 = loc(&mut b, Some(m), 0x1000, "f");
    let l2 = loc(&mut b, Some(m), 0x1000, "f");
    // Same function at another address: a new location, the same function.
    let l3 = loc(&mut b, Some(m), 0x2000, "f");
    // Same address without a mapping: a new location.
    let l4 = loc(&mut b, None, 0x1000, "f");
    // Same address and mapping, other lines (e.g. interpreted frames at 0): new.
    let l5 = loc(&mut b, Some(m), 0x1000, "g");
    assert_eq!(l1, l2);
    let ids = [l1.get(), l3.get(), l4.get(), l5.get()];
    assert_eq!(ids, [1, 2, 3, 4]);
    let p = b.build();
    assert_eq!(p.location.len(), 4);
    assert_eq!(p.function.len(), 2, "f and g");
    assert_eq!(p.location[0].mapping_id, m.get());
    assert_eq!(p.location[2].mapping_id, 0, "no mapping is id 0");
    assert_eq!(
        p.location[0].line[0].function_id,
        p.location[1].line[0].function_id
    );
}

#[test]
fn functions_differing_in_any_field_are_distinct() {
    let mut b = ProfileBuilder::cpu(97);
    let base = LineSpec {
        function: "f",
        system_name: "_Z1fv",
        filename: "f.cc",
        start_line: 10,
        line: 12,
    };
    let variants = [
        base,
        LineSpec { line: 13, ..base }, // other line: same function
        LineSpec {
            function: "g",
            ..base
        },
        LineSpec {
            system_name: "_Z1gv",
            ..base
        },
        LineSpec {
            filename: "g.cc",
            ..base
        },
        LineSpec {
            start_line: 11,
            ..base
        },
    ];
    for (i, v) in variants.iter().enumerate() {
        b.add_location(&LocationSpec {
            mapping: None,
            address: i as u64,
            lines: &[*v],
        });
    }
    let p = b.build();
    assert_eq!(p.function.len(), 5);
    let f = &p.function[0];
    assert_eq!(
        (
            s(&p, f.name),
            s(&p, f.system_name),
            s(&p, f.filename),
            f.start_line
        ),
        ("f", "_Z1fv", "f.cc", 10)
    );
    assert_eq!(
        (p.location[0].line[0].line, p.location[1].line[0].line),
        (12, 13)
    );
}

#[test]
fn inlined_lines_keep_their_order() {
    let mut b = ProfileBuilder::cpu(97);
    let l = b.add_location(&LocationSpec {
        mapping: None,
        address: 1,
        lines: &[line("inner"), line("middle"), line("outer")],
    });
    b.add_sample(&[l], &[1], &[]);
    let p = b.build();
    let names: Vec<&str> = p.location[0]
        .line
        .iter()
        .map(|l| s(&p, p.function[(l.function_id - 1) as usize].name))
        .collect();
    assert_eq!(names, ["inner", "middle", "outer"]);
}

#[test]
fn identical_samples_merge_by_summing() {
    let mut b = ProfileBuilder::cpu(97);
    let f = loc(&mut b, None, 1, "f");
    let g = loc(&mut b, None, 2, "g");
    b.add_sample(
        &[f, g],
        &[10],
        &[Label::Str("comm", "x"), Label::Num("pid", 1, None)],
    );
    // Same labels in another order: the same sample.
    b.add_sample(
        &[f, g],
        &[5],
        &[Label::Num("pid", 1, None), Label::Str("comm", "x")],
    );
    assert_eq!(b.sample_count(), 1);
    // Each difference makes a new sample.
    b.add_sample(
        &[g, f],
        &[1],
        &[Label::Str("comm", "x"), Label::Num("pid", 1, None)],
    );
    b.add_sample(
        &[f, g],
        &[1],
        &[Label::Str("comm", "y"), Label::Num("pid", 1, None)],
    );
    b.add_sample(
        &[f, g],
        &[1],
        &[Label::Str("comm", "x"), Label::Num("pid", 2, None)],
    );
    b.add_sample(&[f, g], &[1], &[Label::Str("comm", "x")]);
    b.add_sample(
        &[f, g],
        &[1],
        &[Label::Str("comm", "x"), Label::Num("pid", 1, Some("id"))],
    );
    b.add_sample(&[f], &[1], &[]);
    assert_eq!(b.sample_count(), 7);
    let p = b.build();
    assert_eq!(p.sample[0].value, vec![15]);
    assert_eq!(
        p.sample[0].location_id,
        vec![f.get(), g.get()],
        "leaf first, as given"
    );
    let values: i64 = p.sample.iter().map(|s| s.value[0]).sum();
    assert_eq!(values, 21);
}

#[test]
fn labels_use_str_or_num_and_num_unit() {
    let mut b = ProfileBuilder::cpu(97);
    let f = loc(&mut b, None, 1, "f");
    b.add_sample(
        &[f],
        &[1],
        &[
            Label::Str("comm", "nginx"),
            Label::Num("pid", 77, None),
            Label::Num("alloc", 4096, Some("bytes")),
        ],
    );
    let p = b.build();
    let [comm, pid, alloc] = &p.sample[0].label[..] else {
        panic!("expected 3 labels, got {:?}", p.sample[0].label)
    };
    assert_eq!(
        (s(&p, comm.key), s(&p, comm.str), comm.num, comm.num_unit),
        ("comm", "nginx", 0, 0)
    );
    assert_eq!(
        (s(&p, pid.key), pid.str, pid.num, pid.num_unit),
        ("pid", 0, 77, 0)
    );
    assert_eq!(
        (
            s(&p, alloc.key),
            alloc.str,
            alloc.num,
            s(&p, alloc.num_unit)
        ),
        ("alloc", 0, 4096, "bytes")
    );
}

#[test]
fn wrong_value_count_is_padded_or_truncated() {
    let mut b = ProfileBuilder::cpu(97);
    let f = loc(&mut b, None, 1, "f");
    let g = loc(&mut b, None, 2, "g");
    b.add_sample(&[f], &[], &[]);
    b.add_sample(&[g], &[3, 4], &[]);
    let p = b.build();
    assert_eq!(p.sample[0].value, vec![0]);
    assert_eq!(p.sample[1].value, vec![3]);
}

#[test]
fn decode_rejects_garbage_with_an_explanation() {
    let err = decode(b"not a profile at all").unwrap_err();
    assert!(matches!(err, Error::Protobuf { .. }), "{err:?}");
    assert!(err.to_string().contains("pprof"), "{err}");

    let mut truncated = encode_gzip(&rich_profile());
    truncated.truncate(truncated.len() / 2);
    let err = decode(&truncated).unwrap_err();
    assert!(matches!(err, Error::Gunzip { .. }), "{err:?}");
    assert!(err.to_string().contains("gzip"), "{err}");
}

#[test]
fn decode_of_empty_input_is_an_empty_profile() {
    // Zero bytes are a valid (empty) protobuf message.
    assert_eq!(decode(&[]).unwrap(), proto::Profile::default());
}

#[test]
fn write_file_writes_gzip_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpu.pb.gz");
    std::fs::write(&path, b"old contents").unwrap();
    let p = rich_profile();
    write_file(&p, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
    assert_eq!(decode(&bytes).unwrap(), p);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("cpu.pb.gz")],
        "no temporary files left"
    );
}

#[test]
fn write_file_into_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/cpu.pb.gz");
    let err = write_file(&rich_profile(), &path).unwrap_err();
    assert!(matches!(err, Error::File { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no/such/dir") && msg.contains("directory exists"),
        "{msg}"
    );
}
