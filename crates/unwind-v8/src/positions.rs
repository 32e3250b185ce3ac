//! V8's position tables: the source position table of bytecode and optimized code (code
//! offset → source position, with the inlining ID of optimized code), and Sparkplug's
//! bytecode offset table (machine code offset → bytecode offset). Pure functions over the
//! tables' bytes, fuzzed.

/// A `SourcePosition` as V8 packs it in 64 bits: bit 0 says "external" (a line in another
/// file, only for builtins), bits 1-30 the script offset + 1 (0: unknown), bits 31-46 the
/// inlining ID + 1 (0: not inlined).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourcePosition(pub u64);

impl SourcePosition {
    /// The script offset (UTF-16 units), when known.
    pub fn script_offset(self) -> Option<u32> {
        if self.0 & 1 != 0 {
            return None;
        }
        let v = ((self.0 >> 1) & ((1 << 30) - 1)) as u32;
        v.checked_sub(1)
    }

    /// The index of the inlined function this position is in (into the code's inlining
    /// positions), `None` for the code's own function.
    pub fn inlining_id(self) -> Option<u16> {
        let v = ((self.0 >> 31) & 0xffff) as u16;
        v.checked_sub(1)
    }
}

/// Reads one unsigned base-128 number (V8's `VLQDecodeUnsigned`) at `*at`.
pub fn uvlq(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = *bytes.get(*at)?;
        *at += 1;
        if shift >= 64 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
    }
}

/// Reads one zig-zag signed base-128 number (V8's `VLQDecode`).
pub fn vlq(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let v = uvlq(bytes, at)?;
    Some(((v >> 1) as i64) ^ -((v & 1) as i64))
}

/// One entry of a source position table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionEntry {
    /// Bytecode offset or machine code offset (-1: the function's entry).
    pub code_offset: i64,
    /// The source position.
    pub position: SourcePosition,
    /// Whether it starts a statement.
    pub is_statement: bool,
}

/// How a version encodes the code offset of each source position table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TableFormat {
    /// V8 up to 13.x: the code offset delta, negative for expression positions
    /// (`-(delta + 1)`).
    #[default]
    Signed,
    /// V8 14.x: the code offset delta shifted left by one with a flag in bit 0 (set for
    /// breakable positions; V8 prints the others as `s>`), negative for *statement*
    /// positions (`-(value + 1)`). Found in Node 26's tables (V8 14.6) by comparing them
    /// with `--print-bytecode`.
    Flagged,
}

impl TableFormat {
    /// The format of a V8 version's tables.
    pub fn of(major: u32) -> TableFormat {
        if major >= 14 {
            TableFormat::Flagged
        } else {
            TableFormat::Signed
        }
    }

    /// (is statement, code offset delta) from a decoded code field, `None` when malformed.
    fn code_delta(self, field: i64) -> Option<(bool, i64)> {
        match self {
            TableFormat::Signed if field >= 0 => Some((true, field)),
            TableFormat::Signed => Some((false, field.checked_add(1)?.checked_neg()?)),
            TableFormat::Flagged if field >= 0 => Some((false, field >> 1)),
            TableFormat::Flagged => Some((true, field.checked_add(1)?.checked_neg()? >> 1)),
        }
    }
}

/// Iterates a source position table (V8's `SourcePositionTableIterator`): each entry is a
/// code offset field ([`TableFormat`]) and a position delta, both zig-zag VLQs, from code
/// offset -1 and position 0. Stops at the first malformed entry.
pub fn position_entries(
    format: TableFormat,
    table: &[u8],
) -> impl Iterator<Item = PositionEntry> + '_ {
    let mut at = 0usize;
    let mut code = -1i64;
    let mut position = 0i64;
    std::iter::from_fn(move || {
        if at >= table.len() {
            return None;
        }
        let (is_statement, delta) = format.code_delta(vlq(table, &mut at)?)?;
        let pos_delta = vlq(table, &mut at)?;
        code = code.checked_add(delta)?;
        position = position.checked_add(pos_delta)?;
        Some(PositionEntry {
            code_offset: code,
            position: SourcePosition(position as u64),
            is_statement,
        })
    })
}

/// The source position in effect at `offset`: the last entry whose code offset is at most
/// `offset`.
pub fn position_at(format: TableFormat, table: &[u8], offset: i64) -> Option<SourcePosition> {
    let mut found = None;
    for e in position_entries(format, table) {
        if e.code_offset > offset {
            break;
        }
        found = Some(e.position);
    }
    found
}

/// `Bytecodes::kBytecodeSizes`: the size of each bytecode at operand scales 1, 2 and 4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BytecodeSizes {
    sizes: Vec<u8>,
    count: usize,
}

/// The prefix bytecodes that scale the next one's operands (the first four of every
/// version's list): Wide, ExtraWide, DebugBreakWide, DebugBreakExtraWide.
const WIDE: u8 = 0;
const EXTRA_WIDE: u8 = 1;
const DEBUG_BREAK_WIDE: u8 = 2;
const DEBUG_BREAK_EXTRA_WIDE: u8 = 3;

impl BytecodeSizes {
    /// The table from its bytes (3 rows of one byte per bytecode); `None` when it does not
    /// look like one.
    pub fn new(sizes: Vec<u8>) -> Option<Self> {
        if sizes.is_empty() || !sizes.len().is_multiple_of(3) || sizes.len() > 3 * 256 {
            return None;
        }
        if sizes.iter().any(|&s| s == 0 || s > 64) {
            return None;
        }
        let count = sizes.len() / 3;
        Some(BytecodeSizes { sizes, count })
    }

    /// The length of the bytecode at `bytecode[at..]`, with its prefix; `None` when invalid.
    pub fn length_at(&self, bytecode: &[u8], at: usize) -> Option<usize> {
        let op = *bytecode.get(at)?;
        let (scale, prefix, op) = match op {
            WIDE | DEBUG_BREAK_WIDE => (1, 1, *bytecode.get(at + 1)?),
            EXTRA_WIDE | DEBUG_BREAK_EXTRA_WIDE => (2, 1, *bytecode.get(at + 1)?),
            _ => (0, 0, op),
        };
        let op = usize::from(op);
        if op >= self.count {
            return None;
        }
        Some(prefix + usize::from(self.sizes[scale * self.count + op]))
    }
}

/// The bytecode offset a Sparkplug (baseline) PC offset runs, from the code's bytecode
/// offset table (one unsigned VLQ of machine code per bytecode, after one for the
/// prologue) and the bytecode. V8's `BytecodeOffsetIterator::AdvanceToPCOffset`: the bytecode
/// whose machine code range ends at or after `pc_offset`; -1 in the prologue.
pub fn baseline_bytecode_offset(
    table: &[u8],
    bytecode: &[u8],
    sizes: &BytecodeSizes,
    pc_offset: u64,
) -> Option<i64> {
    let mut at = 0usize;
    let mut end = uvlq(table, &mut at)?;
    let mut current = -1i64;
    let mut next = 0usize;
    while end < pc_offset {
        let delta = uvlq(table, &mut at)?;
        end = end.checked_add(delta)?;
        current = next as i64;
        next = next.checked_add(sizes.length_at(bytecode, next)?)?;
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlq_round_numbers() {
        let mut at = 0;
        assert_eq!(uvlq(&[0x96, 0x01], &mut at), Some(150));
        at = 0;
        assert_eq!(vlq(&[0x03], &mut at), Some(-2));
        at = 0;
        assert_eq!(vlq(&[0x38], &mut at), Some(28));
        at = 0;
        assert_eq!(uvlq(&[0x80], &mut at), None);
    }

    /// A real table: the bytecode of `function leaf(n) { let s = 0; for (...) ...}` in
    /// Node 22 (V8 12.4), read from a live process.
    #[test]
    fn bytecode_positions_of_node_22() {
        let table = [
            0x01, 0x38, 0x02, 0x38, 0x04, 0x40, 0x04, 0x14, 0x05, 0x00, 0x0a, 0x28, 0x05, 0x1c,
            0x14, 0x2b, 0x0b, 0x5f, 0x08, 0xa0, 0x01, 0x04, 0x24,
        ];
        let entries: Vec<PositionEntry> = position_entries(TableFormat::Signed, &table).collect();
        assert_eq!(entries[0].code_offset, -1);
        // The function's entry is at its `(`: "function leaf" is 13 units long.
        assert_eq!(entries[0].position.script_offset(), Some(13));
        assert!(
            entries
                .windows(2)
                .all(|w| w[0].code_offset <= w[1].code_offset)
        );
        assert_eq!(entries.len(), 11);
        assert!(entries.iter().all(|e| e.position.inlining_id().is_none()));
        assert_eq!(
            position_at(TableFormat::Signed, &table, -1),
            Some(entries[0].position)
        );
        assert_eq!(
            position_at(TableFormat::Signed, &table, 1000),
            Some(entries[10].position)
        );
    }

    /// A real table of Node 26 (V8 14.6), read from a live process: `function round()` of
    /// fixtures/node/chains.js-like code, with what `--print-bytecode` printed for it.
    #[test]
    fn bytecode_positions_of_node_26() {
        let table = [
            0x02, 0xcc, 0x02, 0x07, 0x48, 0x0b, 0x48, 0x0b, 0x14, 0x0a, 0x00, 0x1b, 0x40, 0x16,
            0x34, 0x0e, 0x13, 0x2f, 0x47, 0x16, 0x5f, 0x13, 0xa8, 0x02, 0x16, 0x34, 0x0e, 0x13,
            0x2f, 0xa0, 0x01,
        ];
        let printed = [
            (0, 100, true),
            (2, 118, true),
            (4, 123, true),
            (6, 123, false),
            (12, 139, true),
            (17, 152, false),
            (20, 147, false),
            (31, 129, true),
            (36, 105, false),
            (40, 179, true),
            (45, 192, false),
            (48, 187, false),
            (59, 227, true),
        ];
        let entries: Vec<(i64, u32, bool)> = position_entries(TableFormat::Flagged, &table)
            .map(|e| {
                (
                    e.code_offset,
                    e.position.script_offset().unwrap(),
                    e.is_statement,
                )
            })
            .collect();
        assert_eq!(entries[0], (-1, 82, false), "the function's entry");
        assert_eq!(entries[1..], printed);
        let at = |o| {
            position_at(TableFormat::Flagged, &table, o).and_then(SourcePosition::script_offset)
        };
        assert_eq!(at(20), Some(147));
        assert_eq!(at(23), Some(147));
        assert_eq!(at(48), Some(187));
    }

    #[test]
    fn source_position_bits() {
        let p = SourcePosition((42 + 1) << 1 | ((3 + 1) << 31));
        assert_eq!(p.script_offset(), Some(42));
        assert_eq!(p.inlining_id(), Some(3));
        assert_eq!(SourcePosition(0).script_offset(), None);
        assert_eq!(SourcePosition(1).script_offset(), None);
        assert_eq!(SourcePosition(0).inlining_id(), None);
    }

    #[test]
    fn baseline_offsets_walk_the_bytecode() {
        // Bytecodes 4 (size 2) and 5 (size 3), Wide prefix 0 doubling operands.
        let mut sizes = vec![1u8; 3 * 8];
        sizes[4] = 2;
        sizes[5] = 3;
        sizes[8 + 5] = 5;
        let sizes = BytecodeSizes::new(sizes).expect("a table");
        let bytecode = [4, 0, 5, 0, 0, 0, 5, 0, 0, 0, 0];
        assert_eq!(sizes.length_at(&bytecode, 0), Some(2));
        assert_eq!(sizes.length_at(&bytecode, 5), Some(6), "wide prefix");
        // Prologue 10 bytes, then 4, 8 and 6 bytes of machine code.
        let table = [10, 4, 8, 6];
        let at = |pc| baseline_bytecode_offset(&table, &bytecode, &sizes, pc);
        assert_eq!(at(5), Some(-1));
        assert_eq!(at(10), Some(-1));
        assert_eq!(at(11), Some(0));
        assert_eq!(at(14), Some(0));
        assert_eq!(at(15), Some(2));
        assert_eq!(at(23), Some(5));
        assert_eq!(at(100), None);
    }
}
