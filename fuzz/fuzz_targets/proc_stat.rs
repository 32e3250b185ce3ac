//! `/proc/PID/stat` parent parsing (`record --children`): no panics; a parent PID is a
//! number that stands in the input after its last `)`.
#![no_main]

use ferroscope_agent::session::parent_in_stat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(parent) = parent_in_stat(&text) {
        let after = &text[text.rfind(')').expect("a name's end") + 1..];
        assert!(
            after.split_ascii_whitespace().nth(1) == Some(parent.to_string().as_str())
                || after
                    .split_ascii_whitespace()
                    .nth(1)
                    .is_some_and(|f| f.parse::<u32>() == Ok(parent)),
            "{parent} is the field after the state in {after:?}"
        );
    }
});
