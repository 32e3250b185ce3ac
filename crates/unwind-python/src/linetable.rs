//! Decoders of the three line-table formats of CPython code objects.
//!
//! Each maps a byte offset in a code object's bytecode to a source line, as CPython's own
//! `PyCode_Addr2Line` does for that version. All of them do work linear in the table's length
//! and never panic, whatever the bytes.
//!
//! - [`Lnotab`](LineTableFormat::Lnotab) (≤3.9 `co_lnotab`, `Objects/lnotab_notes.txt`):
//!   pairs `(address increment: u8, line increment: i8)`; the line of an offset is
//!   `co_firstlineno` plus the line increments of every pair whose cumulated address is at or
//!   below it.
//! - [`Linetable310`](LineTableFormat::Linetable310) (3.10 `co_linetable`): pairs
//!   `(byte length: u8, line delta: i8)`, each a range following the previous one; a delta of
//!   -128 means "no line" for that range (the running line is unchanged).
//! - [`Locations311`](LineTableFormat::Locations311) (3.11+ `co_linetable`,
//!   `InternalDocs/code_objects.md`): entries starting with a byte `1cccclll` (code `cccc`,
//!   `lll + 1` code units), followed by varints; codes 0-9 (short form) and 10-12 (one line,
//!   delta `code - 10`) carry column bytes, 13 (no columns) a signed varint line delta, 14 (long
//!   form) a signed varint line delta then end line, column and end column varints, and 15 "no
//!   location". Varints are 6-bit little-endian groups with bit 6 as continuation; a signed
//!   varint keeps its sign in bit 0.

use crate::LineTableFormat;

/// One range of bytecode with its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRange {
    /// First byte offset of the range.
    pub start: u32,
    /// One past its last byte offset.
    pub end: u32,
    /// Its line, `None` for code without a line.
    pub line: Option<u32>,
}

/// The line of the instruction at `byte_offset`, `None` when the table gives it none (3.10+:
/// "no location" entries, offsets past the table's end; any format: lines below 0).
pub fn line_for_offset(
    format: LineTableFormat,
    table: &[u8],
    first_line: i64,
    byte_offset: u32,
) -> Option<u32> {
    match format {
        LineTableFormat::Lnotab => lnotab_line(table, first_line, byte_offset),
        LineTableFormat::Linetable310 | LineTableFormat::Locations311 => {
            ranges(format, table, first_line)
                .find(|r| r.start <= byte_offset && byte_offset < r.end)
                .and_then(|r| r.line)
        }
    }
}

fn to_line(line: i64) -> Option<u32> {
    u32::try_from(line).ok()
}

fn lnotab_line(table: &[u8], first_line: i64, byte_offset: u32) -> Option<u32> {
    let mut line = first_line;
    let mut addr: u64 = 0;
    for pair in table.chunks_exact(2) {
        addr += u64::from(pair[0]);
        if addr > u64::from(byte_offset) {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    to_line(line)
}

/// The ranges a table describes, in order (for the ≤3.9 format: from each change point to the
/// next, the last one ending at `u32::MAX`). Empty ranges are left out.
pub fn ranges(
    format: LineTableFormat,
    table: &[u8],
    first_line: i64,
) -> impl Iterator<Item = LineRange> + '_ {
    let mut pos = 0usize;
    let mut addr: u64 = 0;
    let mut line = first_line;
    let mut done = false;
    std::iter::from_fn(move || {
        loop {
            if done {
                return None;
            }
            match format {
                LineTableFormat::Lnotab => {
                    // A pair moves the address by its first byte; its line increment applies
                    // from the new address on. Emit [start, next address) per move.
                    let start = addr;
                    let mut start_line = line;
                    loop {
                        let Some(pair) = table.get(pos..pos + 2) else {
                            done = true;
                            return Some(LineRange {
                                start: clamp(start),
                                end: u32::MAX,
                                line: to_line(start_line),
                            });
                        };
                        pos += 2;
                        addr += u64::from(pair[0]);
                        line += i64::from(pair[1] as i8);
                        if addr > start {
                            return Some(LineRange {
                                start: clamp(start),
                                end: clamp(addr),
                                line: to_line(start_line),
                            });
                        }
                        start_line = line;
                    }
                }
                LineTableFormat::Linetable310 => {
                    let pair = table.get(pos..pos + 2)?;
                    pos += 2;
                    let start = addr;
                    addr += u64::from(pair[0]);
                    let delta = pair[1] as i8;
                    let line_here = if delta == -128 {
                        None
                    } else {
                        line += i64::from(delta);
                        to_line(line)
                    };
                    if addr > start {
                        return Some(LineRange {
                            start: clamp(start),
                            end: clamp(addr),
                            line: line_here,
                        });
                    }
                }
                LineTableFormat::Locations311 => {
                    let &first = table.get(pos)?;
                    let code = (first >> 3) & 15;
                    let units = u64::from(first & 7) + 1;
                    let delta = match code {
                        13 | 14 => svarint(table, pos + 1),
                        10..=12 => i64::from(code) - 10,
                        _ => 0,
                    };
                    let line_here = if code == 15 {
                        None
                    } else {
                        line += delta;
                        to_line(line)
                    };
                    let start = addr;
                    addr += units * 2;
                    pos += 1;
                    while table.get(pos).is_some_and(|b| b & 0x80 == 0) {
                        pos += 1;
                    }
                    return Some(LineRange {
                        start: clamp(start),
                        end: clamp(addr),
                        line: line_here,
                    });
                }
            }
        }
    })
}

fn clamp(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn varint(table: &[u8], mut pos: usize) -> u64 {
    let mut val: u64 = 0;
    let mut shift = 0u32;
    while let Some(&b) = table.get(pos) {
        if shift < 64 {
            val |= u64::from(b & 63) << shift;
        }
        if b & 64 == 0 {
            break;
        }
        shift += 6;
        pos += 1;
    }
    val
}

fn svarint(table: &[u8], pos: usize) -> i64 {
    let u = varint(table, pos);
    let magnitude = (u >> 1) as i64;
    if u & 1 != 0 { -magnitude } else { magnitude }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(format: LineTableFormat, table: &[u8], first: i64, cases: &[(u32, Option<u32>)]) {
        for &(off, want) in cases {
            assert_eq!(
                line_for_offset(format, table, first, off),
                want,
                "{format:?} offset {off}"
            );
            // The range view agrees with the lookup.
            let from_ranges = ranges(format, table, first)
                .find(|r| r.start <= off && off < r.end)
                .and_then(|r| r.line);
            assert_eq!(from_ranges, want, "{format:?} ranges, offset {off}");
        }
    }

    #[test]
    fn lnotab_hand_made() {
        // (6, +1) (4, -1) (0, +5) (255, 0) (10, +2) from line 10.
        let t = [6, 1, 4, 0xff, 0, 5, 255, 0, 10, 2];
        check(
            LineTableFormat::Lnotab,
            &t,
            10,
            &[
                (0, Some(10)),
                (5, Some(10)),
                (6, Some(11)),
                (9, Some(11)),
                (10, Some(15)),
                (264, Some(15)),
                (274, Some(15)),
                (275, Some(17)),
                (10_000, Some(17)),
            ],
        );
        check(
            LineTableFormat::Lnotab,
            &[],
            7,
            &[(0, Some(7)), (100, Some(7))],
        );
        // An odd trailing byte is ignored, as CPython's `size / 2` does.
        check(
            LineTableFormat::Lnotab,
            &[2, 1, 9],
            1,
            &[(0, Some(1)), (2, Some(2))],
        );
    }

    #[test]
    fn linetable_310_hand_made() {
        // [0,6) +1, [6,10) no line, (0, +3) line-only, [10,18) +0, [18,20) -2.
        let t = [6, 1, 4, 0x80, 0, 3, 8, 0, 2, 0xfe];
        check(
            LineTableFormat::Linetable310,
            &t,
            10,
            &[
                (0, Some(11)),
                (5, Some(11)),
                (6, None),
                (9, None),
                (10, Some(14)),
                (17, Some(14)),
                (18, Some(12)),
                (19, Some(12)),
                (20, None),
            ],
        );
    }

    #[test]
    fn locations_311_hand_made() {
        let t = [
            0xe9, 0x06, // code 13 (no columns), 2 units, line +3
            0xf8, // code 15 (no location), 1 unit
            0xa8, 0x12, // code 5 (short form), 1 unit, same line, a column byte
            0xda, 0x01, 0x05, // code 11 (one line, +1), 3 units, two column bytes
            0xf0, 0x48, 0x03, 0x00, 0x01,
            0x02, // code 14 (long), 1 unit, +100 (2-byte varint)
            0xe8, 0x5d, 0x03, // code 13, 1 unit, -110
        ];
        check(
            LineTableFormat::Locations311,
            &t,
            10,
            &[
                (0, Some(13)),
                (3, Some(13)),
                (4, None),
                (5, None),
                (6, Some(13)),
                (8, Some(14)),
                (13, Some(14)),
                (14, Some(114)),
                (16, Some(4)),
                (17, Some(4)),
                (18, None),
            ],
        );
        // A line below 0 is no line.
        check(
            LineTableFormat::Locations311,
            &[0xe8, 0x05],
            1,
            &[(0, None)],
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_u32;
        for len in 0..200 {
            let t: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            for format in [
                LineTableFormat::Lnotab,
                LineTableFormat::Linetable310,
                LineTableFormat::Locations311,
            ] {
                for off in [0, 1, 2, 100, u32::MAX] {
                    let _ = line_for_offset(format, &t, i64::from(seed as i32), off);
                }
                assert!(ranges(format, &t, 0).count() <= t.len() + 1);
            }
        }
    }

    /// Tables of real code objects (tests/scripts/dump_linetables.py) with CPython's own
    /// line for every code unit.
    #[test]
    fn real_tables_match_cpython() {
        let fixtures = [
            include_str!("../tests/data/linetables-3.6.json"),
            include_str!("../tests/data/linetables-3.8.json"),
            include_str!("../tests/data/linetables-3.10.json"),
            include_str!("../tests/data/linetables-3.11.json"),
            include_str!("../tests/data/linetables-3.12.json"),
            include_str!("../tests/data/linetables-3.13.json"),
        ];
        for text in fixtures {
            let v: serde_json::Value = serde_json::from_str(text).expect("fixture");
            let minor = v["version"][1].as_u64().expect("minor") as u8;
            // 3.13+ (no built-in table) keep 3.11's location table.
            let format =
                crate::layout(minor).map_or(LineTableFormat::Locations311, |l| l.line_table);
            for code in v["codes"].as_array().expect("codes") {
                let hex = code["table"].as_str().expect("table");
                let table: Vec<u8> = (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
                    .collect();
                let first = code["first_line"].as_i64().expect("first line");
                let mut n = 0;
                for pair in code["lines"].as_array().expect("lines") {
                    let off = pair[0].as_u64().expect("offset") as u32;
                    let want = pair[1].as_u64().map(|l| l as u32);
                    assert_eq!(
                        line_for_offset(format, &table, first, off),
                        want,
                        "3.{minor} {} offset {off}",
                        code["function"]
                    );
                    n += 1;
                }
                assert!(n > 10, "3.{minor}: fixture too small");
            }
        }
    }
}
