//! What the plug-in reads from a script's source text: where its lines end, and the name of
//! a class whose body starts at a given position. Pure functions over UTF-16 code units (the
//! unit V8's source positions count), so that the fuzzer can drive them.

/// Where each line of `source` ends, as V8 computes `Script::line_ends`: the position of
/// every line terminator (`\n`; `\r` not followed by `\n`; U+2028; U+2029), then the source's
/// length (one past its end, where V8 puts a script's implicit return).
pub fn line_ends(source: &[u16]) -> Vec<u32> {
    let mut ends = Vec::new();
    let n = source.len();
    let mut i = 0;
    while i < n {
        let c = source[i];
        let terminator = match c {
            0x0a | 0x2028 | 0x2029 => true,
            0x0d => source.get(i + 1) != Some(&0x0a),
            _ => false,
        };
        if terminator {
            ends.push(i as u32);
        }
        i += 1;
    }
    ends.push(n as u32);
    ends
}

/// The 1-based line and 0-based column of `position` given the line ends; `None` when the
/// position lies past the last line.
pub fn line_column(line_ends: &[u32], position: u32) -> Option<(u32, u32)> {
    let index = line_ends.partition_point(|&e| e < position);
    if index >= line_ends.len() {
        return None;
    }
    let line_start = if index == 0 {
        0
    } else {
        line_ends[index - 1] + 1
    };
    Some((index as u32 + 1, position.saturating_sub(line_start)))
}

fn is_id_start(c: u16) -> bool {
    matches!(c, 0x24 | 0x5f) || (0x41..=0x5a).contains(&c) || (0x61..=0x7a).contains(&c) || c > 0x7f
}

fn is_id_part(c: u16) -> bool {
    is_id_start(c) || (0x30..=0x39).contains(&c)
}

fn is_space(c: u16) -> bool {
    matches!(
        c,
        0x20 | 0x09 | 0x0a | 0x0d | 0x0b | 0x0c | 0xa0 | 0x2028 | 0x2029 | 0xfeff
    )
}

fn text(units: &[u16]) -> String {
    String::from_utf16_lossy(units)
}

/// Most code units looked at around a class's position.
const LOOK: usize = 512;

/// The name of the class whose scope starts at `position`: `class Name` there, else, for a
/// class expression, what it is assigned to (`const Name = class`, `Name: class`,
/// `exports.Name = class`), as V8 names anonymous classes. `None` when there is neither.
pub fn class_name_at(source: &[u16], position: usize) -> Option<String> {
    if position >= source.len() {
        return None;
    }
    // V8's class scope starts at the `class` keyword (or at a decorator before it): find
    // the keyword at or just after the position.
    let end = (position + LOOK).min(source.len());
    let window = &source[position..end];
    let kw: [u16; 5] = [0x63, 0x6c, 0x61, 0x73, 0x73]; // "class"
    let at = (0..window.len().saturating_sub(4)).find(|&i| {
        window[i..i + 5] == kw
            && (i == 0 || !is_id_part(window[i - 1]))
            && window.get(i + 5).is_none_or(|&c| !is_id_part(c))
    })?;
    let keyword = position + at;
    let mut i = keyword + 5;
    while i < source.len() && is_space(source[i]) {
        i += 1;
    }
    let name_start = i;
    while i < source.len() && is_id_part(source[i]) && i - name_start < LOOK {
        i += 1;
    }
    if i > name_start && source.get(name_start).is_some_and(|&c| is_id_start(c)) {
        let name = text(&source[name_start..i]);
        if name != "extends" {
            return Some(name);
        }
    }
    assigned_name(source, keyword)
}

/// What the expression starting at `at` is assigned to: `X =`, `X:`, `a.b.X =` before it.
fn assigned_name(source: &[u16], at: usize) -> Option<String> {
    let floor = at.saturating_sub(LOOK);
    let mut i = at;
    while i > floor && is_space(source[i - 1]) {
        i -= 1;
    }
    let op = *source.get(i.checked_sub(1)?)?;
    if op != 0x3d && op != 0x3a {
        return None; // neither `=` nor `:`
    }
    i -= 1;
    // `==`, `=>`, `<=`... are not assignments.
    if op == 0x3d && i > floor && matches!(source[i - 1], 0x3d | 0x21 | 0x3c | 0x3e) {
        return None;
    }
    while i > floor && is_space(source[i - 1]) {
        i -= 1;
    }
    let end = i;
    while i > floor && is_id_part(source[i - 1]) {
        i -= 1;
    }
    if i == end || !is_id_start(source[i]) {
        return None;
    }
    Some(text(&source[i..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn line_ends_like_v8() {
        assert_eq!(line_ends(&u("a\nbc\n")), vec![1, 4, 5]);
        assert_eq!(line_ends(&u("a\nbc")), vec![1, 4]);
        assert_eq!(line_ends(&u("a\r\nb\rc")), vec![2, 4, 6]);
        assert_eq!(line_ends(&u("")), vec![0]);
        let ends = line_ends(&u("ab\ncd\nef"));
        assert_eq!(line_column(&ends, 0), Some((1, 0)));
        assert_eq!(line_column(&ends, 2), Some((1, 2)));
        assert_eq!(line_column(&ends, 3), Some((2, 0)));
        assert_eq!(line_column(&ends, 7), Some((3, 1)));
        assert_eq!(line_column(&ends, 9), None);
    }

    #[test]
    fn class_names_from_the_source() {
        let src = u(
            "class Plain { run() {} }\nconst Expr = class { go() {} };\nmodule.exports.Thing = class extends Base {};\nx = { K: class {} };\nclass  Spaced\n{}",
        );
        assert_eq!(class_name_at(&src, 0).as_deref(), Some("Plain"));
        let at = |s: &str| {
            String::from_utf16_lossy(&src)
                .find(s)
                .expect("in the source")
        };
        assert_eq!(
            class_name_at(&src, at("class { go")).as_deref(),
            Some("Expr")
        );
        assert_eq!(
            class_name_at(&src, at("class extends")).as_deref(),
            Some("Thing")
        );
        assert_eq!(class_name_at(&src, at("class {}")).as_deref(), Some("K"));
        assert_eq!(
            class_name_at(&src, at("class  Spaced")).as_deref(),
            Some("Spaced")
        );
        assert_eq!(class_name_at(&u("f(class {})"), 2), None);
        assert_eq!(class_name_at(&src, 10_000), None);
    }
}
