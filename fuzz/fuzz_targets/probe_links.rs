//! Probe links and the ELF symbol lookup behind them (`probe_links`, `record --probe`): no
//! panics; a link that parses is made of the parts it was parsed into; a symbol's file
//! offset lies in a segment's file range.
#![no_main]

use ferroscope_agent::probes::{ProbeLink, symbol_offset_in};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (head, elf) = rest.split_at((n as usize).min(rest.len()));
    let text = String::from_utf8_lossy(head);
    if let Ok(link) = ProbeLink::parse(&text) {
        assert!(text.ends_with(&format!("{}:{}", link.file, link.symbol)));
        assert!(!link.file.is_empty() && !link.symbol.is_empty());
    }
    let symbol = text.rsplit(':').next().unwrap_or("");
    // A segment's file range may claim more than the file holds: the offset is only
    // computed without overflow, not checked against the length.
    let _ = symbol_offset_in(elf, symbol);
});
