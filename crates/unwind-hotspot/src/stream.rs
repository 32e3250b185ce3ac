//! HotSpot's compressed streams: the UNSIGNED5 integers of its line number tables and debug
//! information (scopes), and the compressed line number table format. Pure functions over
//! bytes, bounded, never panicking on garbage (fuzzed: `fuzz/fuzz_targets/hotspot_streams.rs`).
//!
//! An UNSIGNED5 integer is 1 to 5 bytes, 6 bits more per byte after the first: a byte below
//! 192 ends it. From JDK 20 the encoding never uses the byte 0 (`x` = 1 excluded value, each
//! byte stores its digit plus one); before, `x` is 0. A signed value is zigzag-encoded.

/// A reader of UNSIGNED5 integers over a byte slice.
#[derive(Debug, Clone)]
pub struct Unsigned5<'a> {
    bytes: &'a [u8],
    pos: usize,
    x: u8,
}

/// Bytes below this end an integer (HotSpot's `X + L` in both encodings).
const END: u32 = 192;
/// Most bytes of one integer.
const MAX_LENGTH: usize = 5;

impl<'a> Unsigned5<'a> {
    /// A reader at `pos` of `bytes`, with `x` excluded byte values (0 or 1).
    pub fn new(bytes: &'a [u8], pos: usize, x: u8) -> Self {
        Unsigned5 { bytes, pos, x }
    }

    /// Where the next integer starts.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The next byte as it is; `None` at the end.
    pub fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// The next unsigned integer; `None` when the bytes end first.
    pub fn uint(&mut self) -> Option<u32> {
        let x = u32::from(self.x);
        let mut sum: u32 = 0;
        for i in 0..MAX_LENGTH {
            let b = u32::from(self.byte()?);
            let digit = b.wrapping_sub(x);
            sum = sum.wrapping_add(digit.wrapping_shl(6 * i as u32));
            if b < END || i == MAX_LENGTH - 1 {
                return Some(sum);
            }
        }
        Some(sum)
    }

    /// The next signed (zigzag-encoded) integer.
    pub fn sint(&mut self) -> Option<i32> {
        let v = self.uint()?;
        Some(((v >> 1) as i32) ^ -((v & 1) as i32))
    }
}

/// Most entries decoded from one line table.
pub const MAX_LINE_ENTRIES: usize = 1 << 16;

/// Decodes a compressed line number table (the bytes after a method's bytecodes): pairs of
/// (bytecode index where a line starts, line), in table order, up to the terminating 0 byte.
/// A pair is one byte (bci delta in the high 5 bits, line delta in the low 3) or 0xff and two
/// signed integers. Returns the pairs and how many bytes the table took (`None` when the
/// bytes end before its terminator).
pub fn line_table(bytes: &[u8], x: u8) -> (Vec<(u32, u32)>, Option<usize>) {
    let mut s = Unsigned5::new(bytes, 0, x);
    let mut out = Vec::new();
    let (mut bci, mut line) = (0i64, 0i64);
    while out.len() < MAX_LINE_ENTRIES {
        let Some(b) = s.byte() else {
            return (out, None);
        };
        match b {
            0 => return (out, Some(s.position())),
            0xff => {
                let (Some(db), Some(dl)) = (s.sint(), s.sint()) else {
                    return (out, None);
                };
                bci += i64::from(db);
                line += i64::from(dl);
            }
            b => {
                bci += i64::from(b >> 3);
                line += i64::from(b & 7);
            }
        }
        out.push((
            bci.clamp(0, i64::from(u32::MAX)) as u32,
            line.clamp(0, i64::from(u32::MAX)) as u32,
        ));
    }
    (out, Some(s.position()))
}

/// The line of the bytecode at `bci`: that of the entry with the greatest start at or
/// before it (HotSpot's `Method::line_number_from_bci`, which takes the first such entry
/// when several start at the same index). `None` when no entry starts at or before it.
pub fn line_for_bci(table: &[(u32, u32)], bci: u32) -> Option<u32> {
    let mut best: Option<(u32, u32)> = None;
    for &(start, line) in table {
        if start <= bci && best.is_none_or(|(b, _)| start > b) {
            best = Some((start, line));
        }
    }
    best.map(|(_, line)| line)
}

/// One scope of compiled code's debug information (a `ScopeDesc` header): the method
/// (an index into the nmethod's metadata, 1-based; 0 is null), the bytecode index, and where
/// the calling scope's record starts (0: this is the outermost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Offset of the sender's record in the scopes data (0: none).
    pub sender: u32,
    /// 1-based index into the metadata array.
    pub method_index: u32,
    /// The bytecode index (`InvocationEntryBci`, -1, for a method entry).
    pub bci: i32,
}

/// Most scopes followed for one PC (a method and those inlined into it).
pub const MAX_SCOPES: usize = 64;

/// The scope record at `offset` of `data`.
pub fn scope_at(data: &[u8], offset: u32, x: u8) -> Option<Scope> {
    let mut s = Unsigned5::new(data, offset as usize, x);
    let sender = s.uint()?;
    let method_index = s.uint()?;
    // Stored +1: InvocationEntryBci (-1) is 0.
    let bci = (s.uint()? as i32).wrapping_sub(1);
    Some(Scope {
        sender,
        method_index,
        bci,
    })
}

/// The chain of scopes starting at `offset`, innermost first: each record's sender comes
/// before it in the data, so offsets must strictly decrease (a loop in garbage ends it).
pub fn scope_chain(data: &[u8], offset: u32, x: u8) -> Vec<Scope> {
    let mut out = Vec::new();
    let mut at = offset;
    while at != 0 && out.len() < MAX_SCOPES {
        let Some(scope) = scope_at(data, at, x) else {
            break;
        };
        out.push(scope);
        if scope.sender >= at {
            break;
        }
        at = scope.sender;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HotSpot's encoder (UNSIGNED5::write_uint), for round trips.
    fn encode(mut v: u32, x: u8, out: &mut Vec<u8>) {
        let x = u32::from(x);
        let l = END - x;
        for _ in 0..MAX_LENGTH - 1 {
            if v < l {
                out.push((v + x) as u8);
                return;
            }
            v -= l;
            out.push((l + x + (v & 63)) as u8);
            v >>= 6;
        }
        out.push((v + x) as u8);
    }

    #[test]
    fn unsigned5_round_trips_in_both_encodings() {
        for x in [0u8, 1] {
            for v in [
                0u32,
                1,
                63,
                190,
                191,
                192,
                1000,
                65535,
                1 << 20,
                u32::MAX >> 2,
            ] {
                let mut b = Vec::new();
                encode(v, x, &mut b);
                if x == 1 {
                    assert!(!b.contains(&0), "{v}: no zero byte with x = 1: {b:?}");
                }
                let mut r = Unsigned5::new(&b, 0, x);
                // The decoder sums digits as HotSpot's does: values of 192 and more come back
                // through the L-offset digits.
                let got = r.uint().unwrap();
                let mut again = Vec::new();
                encode(got, x, &mut again);
                assert_eq!(again, b, "{v} (x = {x})");
                assert_eq!(r.position(), b.len());
            }
        }
    }

    #[test]
    fn small_values_are_one_byte() {
        assert_eq!(Unsigned5::new(&[5], 0, 0).uint(), Some(5));
        assert_eq!(Unsigned5::new(&[6], 0, 1).uint(), Some(5));
        assert_eq!(Unsigned5::new(&[3], 0, 0).sint(), Some(-2));
        assert_eq!(Unsigned5::new(&[4], 0, 0).sint(), Some(2));
        assert_eq!(Unsigned5::new(&[200], 0, 0).uint(), None, "cut short");
    }

    #[test]
    fn line_tables_decode_short_and_escaped_pairs() {
        // bci 0 line 3 (escaped: +0, +3), then +4 bci +1 line (one byte), then end.
        let t = [0xff, 0, 6, (4 << 3) | 1, 0];
        let (pairs, len) = line_table(&t, 0);
        assert_eq!(pairs, vec![(0, 3), (4, 4)]);
        assert_eq!(len, Some(5));
        assert_eq!(line_for_bci(&pairs, 0), Some(3));
        assert_eq!(line_for_bci(&pairs, 3), Some(3));
        assert_eq!(line_for_bci(&pairs, 9), Some(4));
        // The same table in the zero-free encoding.
        let t = [0xff, 1, 7, (4 << 3) | 1, 0];
        assert_eq!(line_table(&t, 1).0, vec![(0, 3), (4, 4)]);
        // Unterminated.
        assert_eq!(line_table(&[0x09], 0).1, None);
    }

    #[test]
    fn scope_chains_stop_at_the_outermost_and_at_loops() {
        // Record at 1: sender 0, method 2, bci 5 (stored 6). Record at 4: sender 1, method 1,
        // bci 10.
        let data = [0u8, 0, 2, 6, 1, 1, 11];
        let chain = scope_chain(&data, 4, 0);
        assert_eq!(
            chain,
            vec![
                Scope {
                    sender: 1,
                    method_index: 1,
                    bci: 10
                },
                Scope {
                    sender: 0,
                    method_index: 2,
                    bci: 5
                }
            ]
        );
        // A record naming itself as its sender ends the chain.
        let data = [0u8, 1, 1, 1];
        assert_eq!(scope_chain(&data, 1, 0).len(), 1);
        assert!(scope_chain(&data, 0, 0).is_empty());
        assert!(scope_chain(&[], 7, 0).is_empty());
    }
}
