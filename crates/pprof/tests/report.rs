//! report::top_functions and report::stacks on hand-built profiles with known numbers.

mod common;

use ferroscope_pprof::report::{FunctionShare, stacks, top_functions};
use ferroscope_pprof::{LocationSpec, MappingSpec, ProfileBuilder, proto};

fn share(name: &str, self_value: i64, total_value: i64) -> FunctionShare {
    FunctionShare {
        name: name.to_owned(),
        self_value,
        total_value,
    }
}

#[test]
fn top_functions_counts_recursion_once_and_includes_inlined() {
    let p = common::recursive_profile();
    let (functions, total) = top_functions(&p, 0);
    assert_eq!(total, 20);
    assert_eq!(
        functions,
        vec![
            share("b", 10, 10),
            share("a", 5, 18),
            share("inl", 3, 3),
            share("main", 2, 20)
        ]
    );
}

#[test]
fn top_functions_survives_a_round_trip() {
    let p = common::recursive_profile();
    let back = ferroscope_pprof::decode(&ferroscope_pprof::encode_gzip(&p)).unwrap();
    assert_eq!(top_functions(&back, 0), top_functions(&p, 0));
}

#[test]
fn stacks_are_root_first_with_inlined_innermost_last() {
    let p = common::recursive_profile();
    let got = stacks(&p, 0);
    let want: Vec<(Vec<String>, i64)> = [
        (&["main"][..], 2),
        (&["main", "a", "a"][..], 5),
        (&["main", "a", "a", "b"][..], 10),
        (&["main", "a", "inl"][..], 3),
    ]
    .into_iter()
    .map(|(s, v)| (s.iter().map(|f| f.to_string()).collect(), v))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn stacks_differing_only_in_labels_are_summed() {
    let mut b = ProfileBuilder::cpu(100);
    let f = common::loc(&mut b, None, 1, "f");
    b.add_sample(&[f], &[10], &[ferroscope_pprof::Label::Num("pid", 1, None)]);
    b.add_sample(&[f], &[20], &[ferroscope_pprof::Label::Num("pid", 2, None)]);
    let p = b.build();
    assert_eq!(p.sample.len(), 2);
    assert_eq!(stacks(&p, 0), vec![(vec!["f".to_owned()], 30)]);
}

#[test]
fn unsymbolized_locations_are_named_by_mapping_and_address() {
    let mut b = ProfileBuilder::cpu(100);
    let m = b.add_mapping(&MappingSpec {
        start: 0,
        limit: 0x1000,
        offset: 0,
        filename: "libfoo.so",
        build_id: "",
        has_functions: false,
    });
    let with_mapping = b.add_location(&LocationSpec {
        mapping: Some(m),
        address: 0xabc,
        lines: &[],
    });
    let bare = b.add_location(&LocationSpec {
        mapping: None,
        address: 0xdef,
        lines: &[],
    });
    b.add_sample(&[with_mapping, bare], &[1], &[]);
    let p = b.build();
    assert_eq!(
        stacks(&p, 0),
        vec![(vec!["0xdef".to_owned(), "libfoo.so+0xabc".to_owned()], 1)]
    );
}

#[test]
fn missing_value_index_counts_as_zero() {
    let p = common::recursive_profile();
    let (functions, total) = top_functions(&p, 3);
    assert_eq!(total, 0);
    assert!(
        functions
            .iter()
            .all(|f| f.self_value == 0 && f.total_value == 0)
    );
}

#[test]
fn inconsistent_profiles_do_not_panic() {
    // Dangling ids and string indices, as a hostile or broken input may have.
    let p = proto::Profile {
        sample_type: vec![proto::ValueType {
            r#type: 99,
            unit: -1,
        }],
        sample: vec![
            proto::Sample {
                location_id: vec![1, 7],
                value: vec![i64::MAX],
                label: vec![],
            },
            proto::Sample {
                location_id: vec![1],
                value: vec![i64::MAX],
                label: vec![],
            },
        ],
        location: vec![proto::Location {
            id: 1,
            mapping_id: 5,
            address: 0x10,
            line: vec![proto::Line {
                function_id: 3,
                line: 1,
                column: 0,
            }],
            is_folded: false,
        }],
        function: vec![proto::Function {
            id: 2,
            name: 1000,
            system_name: -5,
            filename: 0,
            start_line: 0,
        }],
        string_table: vec![],
        ..Default::default()
    };
    let (functions, total) = top_functions(&p, 0);
    assert_eq!(total, i64::MAX, "saturates instead of overflowing");
    let names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["<unknown function 3>", "<unknown location 7>"]);
    assert_eq!(stacks(&p, 0).len(), 2);
    let mut svg = Vec::new();
    ferroscope_pprof::flamegraph::write_svg(&p, 0, "broken", &mut svg).unwrap();
}
