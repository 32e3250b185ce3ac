//! Probe links and the symbol lookups behind them (`probe_links`, `record --probe`): no
//! panics; a link that parses is made of the parts it was parsed into; a symbol's file
//! offset is computed without overflow; a kallsyms text is searched without panics.
#![no_main]

use ferroscope_agent::probes::{ProbeLink, kallsyms_has_function, symbol_offset_in};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (head, elf) = rest.split_at((n as usize).min(rest.len()));
    let text = String::from_utf8_lossy(head);
    if let Ok(link) = ProbeLink::parse(&text) {
        assert!(!link.symbol.is_empty());
        match &link.file {
            Some(file) => {
                assert!(text.ends_with(&format!("{file}:{}", link.symbol)));
                assert!(!file.is_empty());
            }
            None => {
                assert!(text.ends_with(&format!("probe:{}", link.symbol)));
                assert!(!link.symbol.contains(':'));
            }
        }
    }
    // The bytes as a kallsyms listing, the link's symbol looked up in it.
    let listing = String::from_utf8_lossy(elf);
    let _ = kallsyms_has_function(&listing, symbol_of(&text));
    let symbol = symbol_of(&text);
    // A segment's file range may claim more than the file holds: the offset is only
    // computed without overflow, not checked against the length.
    let _ = symbol_offset_in(elf, symbol);
});

fn symbol_of(text: &str) -> &str {
    text.rsplit(':').next().unwrap_or("")
}
