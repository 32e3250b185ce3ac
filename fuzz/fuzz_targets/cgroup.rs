//! `/proc/PID/cgroup` parsing: no panics; a container ID is 64 hex digits or
//! `<32 hex>-<digits>` found in the input; the cgroup path is a substring of the input.
#![no_main]

use ferroscope_targets::cgroup::{cgroup_path, container_id, container_id_of_line};
use libfuzzer_sys::fuzz_target;

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(id) = container_id(&text) {
        assert!(text.contains(id.as_str()));
        let ok = (id.len() == 64 && is_hex(&id))
            || (id.len() > 33
                && is_hex(&id[..32])
                && id.as_bytes()[32] == b'-'
                && id[33..].bytes().all(|b| b.is_ascii_digit()));
        assert!(ok, "not a container ID: {id:?}");
        // It comes from the first line that has one.
        let first = text
            .lines()
            .filter(|l| *l != "0::/")
            .find_map(container_id_of_line);
        assert_eq!(first.as_deref(), Some(id.as_str()));
    }
    if let Some(path) = cgroup_path(&text) {
        assert!(!path.is_empty() && text.contains(path.as_str()));
    }
});
