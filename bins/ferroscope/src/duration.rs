//! Parsing durations given on the command line.

use std::time::Duration;

/// Parses `10` (seconds), `10s`, `500ms`, `2m`, `1h`, `1.5s`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write a number with an optional unit, like 10, 10s, 500ms or 2m"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}`: use ms, s, m or h"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > 365.0 * 86400.0 {
        return Err(format!(
            "`{s}` is not a usable duration: it must be above zero and at most a year"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration;

    #[test]
    fn accepted_forms() {
        for (input, secs) in [
            ("10", 10.0),
            ("10s", 10.0),
            ("2m", 120.0),
            ("500ms", 0.5),
            ("1h", 3600.0),
            ("1.5s", 1.5),
        ] {
            assert_eq!(
                parse(input).unwrap(),
                Duration::from_secs_f64(secs),
                "{input}"
            );
        }
    }

    #[test]
    fn rejected_forms() {
        for input in ["", "s", "10x", "-1", "0", "1e400", "ten"] {
            assert!(parse(input).is_err(), "{input} should be rejected");
        }
    }
}
