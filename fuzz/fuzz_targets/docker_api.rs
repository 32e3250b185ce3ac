//! The Docker Engine API answers `discovery.docker` parses (`GET /containers/json` and
//! `GET /networks`, split at the first NUL byte; the first byte picks the options): no
//! panics; every target names a container of the input by ID and name, with valid label
//! names; no more targets than the input can describe.
#![no_main]

use ferroscope_targets::docker::{TargetOptions, targets_from_json};
use ferroscope_targets::is_valid_label_name;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (containers, networks) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b"[]"[..]),
    };
    let options = TargetOptions {
        port: u16::from(flags),
        host_networking_host: "localhost".to_owned(),
        match_first_network: flags & 1 == 0,
    };
    let Ok(targets) = targets_from_json(containers, networks, &options) else {
        return;
    };
    let text = String::from_utf8_lossy(containers);
    // At most one target per (container, network, port) triple: each needs a few bytes.
    assert!(targets.len() <= containers.len(), "{} targets from {} bytes", targets.len(), containers.len());
    for t in &targets {
        for (name, value) in t.iter() {
            assert!(is_valid_label_name(name), "label name {name:?}");
            assert!(!value.is_empty());
        }
        let name = t.get("__meta_docker_container_name").unwrap_or_else(|| panic!("no name: {t}"));
        assert!(!name.is_empty());
        if let Some(id) = t.get("__meta_docker_container_id") {
            // JSON escapes may spell it differently; a plain ID appears as such.
            if id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                assert!(text.contains(id), "ID {id} not in the input");
            }
        }
    }
});
