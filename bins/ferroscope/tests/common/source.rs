//! Reading a fixture's source for what a test expects: tagged lines, a line's number, shares.

use std::collections::HashSet;
use std::path::Path;

/// Line numbers (1-based) of the lines of `source` that contain `tag`.
pub fn tagged_lines(source: &Path, tag: &str) -> HashSet<i64> {
    std::fs::read_to_string(source)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(tag))
        .map(|(i, _)| i as i64 + 1)
        .collect()
}

/// The number (1-based) of the first line of `source` that is `text`, trimmed.
pub fn line_of(source: &Path, text: &str) -> i64 {
    std::fs::read_to_string(source)
        .unwrap()
        .lines()
        .position(|l| l.trim() == text)
        .unwrap_or_else(|| panic!("no line `{text}` in {}", source.display())) as i64
        + 1
}

/// `part` of `whole` (0 when `whole` is 0).
pub fn share(part: i64, whole: i64) -> f64 {
    part as f64 / whole.max(1) as f64
}
