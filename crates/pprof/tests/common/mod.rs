//! Fixtures shared by the integration tests.

#![allow(dead_code)]

use ferroscope_pprof::{
    Label, LineSpec, LocationId, LocationSpec, MappingId, ProfileBuilder, proto,
};

/// A line in `function` with no other details.
pub fn line(function: &str) -> LineSpec<'_> {
    LineSpec {
        function,
        system_name: "",
        filename: "",
        start_line: 0,
        line: 0,
    }
}

/// Adds a location holding one line of `function`, at `address`.
pub fn loc(
    b: &mut ProfileBuilder,
    mapping: Option<MappingId>,
    address: u64,
    function: &str,
) -> LocationId {
    b.add_location(&LocationSpec {
        mapping,
        address,
        lines: &[line(function)],
    })
}

/// The recursion fixture: stacks (root first) and values
///
/// - main;a;a;b = 10
/// - main;a;a   = 5
/// - main       = 2
/// - main;a;inl = 3, where `inl` is inlined into `a` in one location
///
/// self:  b 10, a 5, inl 3, main 2
/// total: main 20, a 18, b 10, inl 3 (a counted once per sample)
pub fn recursive_profile() -> proto::Profile {
    let mut b = ProfileBuilder::new(("samples", "count"), None, 0);
    let main = loc(&mut b, None, 0x10, "main");
    let a_outer = loc(&mut b, None, 0x20, "a");
    let a_inner = loc(&mut b, None, 0x21, "a");
    let fb = loc(&mut b, None, 0x30, "b");
    let inl = b.add_location(&LocationSpec {
        mapping: None,
        address: 0x40,
        lines: &[line("inl"), line("a")],
    });
    b.add_sample(&[fb, a_inner, a_outer, main], &[10], &[]);
    b.add_sample(&[a_inner, a_outer, main], &[5], &[]);
    b.add_sample(&[main], &[2], &[Label::Str("thread", "t1")]);
    b.add_sample(&[inl, main], &[3], &[]);
    b.build()
}
