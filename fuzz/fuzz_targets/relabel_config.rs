//! Relabel rules from arbitrary fields: validation and application never panic, and a kept
//! label set has only non-empty values.
#![no_main]

use ferroscope_targets::relabel::{self, Action, RelabelConfig};
use ferroscope_targets::{Labels, RelabelRule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\u{1f}');
    let mut next = || fields.next().unwrap_or("").to_owned();
    let action = Action::ALL[next().len() % Action::ALL.len()];
    let regex = next();
    if regex.len() > 256 {
        return; // keep regex compilation cheap
    }
    let config = RelabelConfig {
        action,
        regex,
        source_labels: next()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        separator: next(),
        target_label: next(),
        replacement: next(),
        modulus: next().len() as u64,
    };
    let Ok(rule) = RelabelRule::new(config) else {
        return;
    };
    let input: Labels = [
        ("__meta_process_exe", "/usr/bin/app"),
        ("__process_pid__", "1234"),
        ("a", "x;y"),
        ("b", "$1"),
    ]
    .into_iter()
    .chain(
        text.split('\u{1e}')
            .skip(1)
            .take(8)
            .filter_map(|kv| kv.split_once('=')),
    )
    .collect();
    if let Some(out) = relabel::relabel(&[rule], input) {
        assert!(!out.is_empty());
        assert!(out.iter().all(|(k, v)| !k.is_empty() && !v.is_empty()));
    }
});
