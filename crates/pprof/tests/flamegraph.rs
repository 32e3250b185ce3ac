//! flamegraph::write_svg renders the folded stacks with inferno.

mod common;

use ferroscope_pprof::flamegraph::write_svg;
use ferroscope_pprof::{Error, ProfileBuilder};

#[test]
fn svg_contains_every_function_and_the_title() {
    let p = common::recursive_profile();
    let mut out = Vec::new();
    write_svg(&p, 0, "ferroscope test graph", &mut out).unwrap();
    let svg = String::from_utf8(out).unwrap();
    assert!(
        svg.starts_with("<?xml") && svg.contains("<svg"),
        "not an SVG: {}",
        &svg[..200.min(svg.len())]
    );
    assert!(svg.contains("ferroscope test graph"));
    for name in ["main", "a", "b", "inl"] {
        assert!(
            svg.contains(&format!("<title>{name} (")),
            "{name} missing from the SVG"
        );
    }
    // The root frame covers all 20 samples.
    assert!(svg.contains("all (20 samples, 100%)"), "total missing");
}

#[test]
fn cpu_profiles_are_counted_in_nanoseconds() {
    let mut b = ProfileBuilder::cpu(100);
    let f = common::loc(&mut b, None, 1, "hot_loop");
    let period = b.period();
    b.add_sample(&[f], &[3 * period], &[]);
    let mut out = Vec::new();
    write_svg(&b.build(), 0, "cpu", &mut out).unwrap();
    let svg = String::from_utf8(out).unwrap();
    assert!(
        svg.contains("<title>hot_loop (30,000,000 ns,"),
        "count or unit missing from the SVG"
    );
}

#[test]
fn empty_profile_is_an_error_not_an_empty_svg() {
    let p = ProfileBuilder::cpu(100).build();
    let err = write_svg(&p, 0, "empty", Vec::new()).unwrap_err();
    assert!(matches!(err, Error::NoSamples { index: 0 }), "{err:?}");
}

#[test]
fn bad_value_index_is_an_error() {
    let p = common::recursive_profile();
    let err = write_svg(&p, 1, "x", Vec::new()).unwrap_err();
    assert!(
        matches!(err, Error::ValueIndex { index: 1, count: 1 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("below 1"), "{err}");
}
