//! `ferroscope run` configuration parsing: arbitrary TOML text never panics, and every
//! error message names the file and stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ferroscope_agent::config::parse(text, "fuzz.toml") {
        Ok((config, warnings)) => {
            assert!(config.ebpf.sample_rate > 0);
            assert!(warnings.len() <= 64);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("fuzz.toml"), "{message}");
            assert!(message.len() < 4 * text.len() + 4096);
        }
    }
});
