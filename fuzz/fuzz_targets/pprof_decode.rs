//! pprof decoding of untrusted bytes (gzip or raw): no panics, decoded profiles
//! re-encode losslessly, and the summaries cope with inconsistent profiles.
#![no_main]

use ferroscope_pprof::{decode, encode, encode_gzip, flamegraph, report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let profile = match decode(data) {
        Ok(p) => p,
        Err(e) => {
            assert!(e.to_string().len() < 2048, "error message not bounded");
            return;
        }
    };
    // Whatever decodes re-encodes to something that decodes to the same profile,
    // raw and gzipped.
    assert_eq!(
        decode(&encode(&profile)).expect("re-encoded profile decodes"),
        profile
    );
    assert_eq!(
        decode(&encode_gzip(&profile)).expect("gzipped profile decodes"),
        profile
    );

    // Dangling ids and out-of-range string indices must not panic the reports.
    let (functions, _total) = report::top_functions(&profile, 0);
    let stacks = report::stacks(&profile, 0);
    assert!(stacks.len() <= profile.sample.len());
    let frames: usize = profile
        .location
        .iter()
        .map(|l| l.line.len().max(1))
        .sum::<usize>()
        + profile
            .sample
            .iter()
            .map(|s| s.location_id.len())
            .sum::<usize>();
    assert!(functions.len() <= frames, "more functions than frames");
    let _ = flamegraph::write_svg(&profile, 0, "fuzz", std::io::sink());
});
