//! Flame graphs (SVG) of a profile, drawn by inferno from its folded stacks.

use std::io::Write;

use crate::{Error, proto, report};

/// Draws a flame graph of `p`'s values at `value_index` as SVG into `out`.
///
/// The counts are shown in the unit of the chosen sample type (`ns` for
/// nanoseconds, `samples` for counts). Stacks whose summed value is not
/// positive are left out; a sample without locations is drawn as the single
/// frame `[unknown]`. In frame names, `;` (the folded-stack separator) is shown
/// as `:` and line breaks as spaces.
pub fn write_svg(
    p: &proto::Profile,
    value_index: usize,
    title: &str,
    out: impl Write,
) -> Result<(), Error> {
    if value_index >= p.sample_type.len() {
        return Err(Error::ValueIndex {
            index: value_index,
            count: p.sample_type.len(),
        });
    }
    let lines: Vec<String> = report::stacks(p, value_index)
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(stack, v)| folded_line(&stack, v))
        .collect();
    if lines.is_empty() {
        return Err(Error::NoSamples { index: value_index });
    }

    let unit = usize::try_from(p.sample_type[value_index].unit)
        .ok()
        .and_then(|i| p.string_table.get(i))
        .map_or("", String::as_str);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_owned();
    opts.count_name = match unit {
        "nanoseconds" => "ns".to_owned(),
        "" | "count" | "samples" => "samples".to_owned(),
        other => other.to_owned(),
    };
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
        .map_err(|source| Error::Flamegraph { source })
}

fn folded_line(stack: &[String], value: i64) -> String {
    let mut line = String::new();
    if stack.is_empty() {
        line.push_str("[unknown]");
    }
    for (i, frame) in stack.iter().enumerate() {
        if i > 0 {
            line.push(';');
        }
        if frame.is_empty() {
            line.push_str("[unknown]");
            continue;
        }
        line.extend(frame.chars().map(|c| match c {
            ';' => ':',
            '\n' | '\r' => ' ',
            c => c,
        }));
    }
    line.push(' ');
    line.push_str(&value.to_string());
    line
}

#[cfg(test)]
mod tests {
    use super::folded_line;

    #[test]
    fn folded_line_escapes_separators() {
        let stack = vec![
            "main".to_owned(),
            "f<[u8; 8]>".to_owned(),
            String::new(),
            "a\nb".to_owned(),
        ];
        assert_eq!(folded_line(&stack, 7), "main;f<[u8: 8]>;[unknown];a b 7");
        assert_eq!(folded_line(&[], 3), "[unknown] 3");
    }
}
