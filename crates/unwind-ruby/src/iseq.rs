//! Instruction sequences: their names, file, and the line of an instruction.
//!
//! The line table is `insns_info`: entries (`line_no` first) for the instruction positions
//! where the line or the events change, and a map from position to entry, kept either as a
//! plain array of positions or (once the iseq is finished, always since 2.6) as a succinct
//! bit vector (`succ_index_table`): 54 positions in 6 words of 9 seven-bit ranks, then blocks
//! of 512 positions, each a rank, 7 nine-bit ranks of its 64-bit words, and the 8 words.
//! [`decode_succinct`] turns it back into the sorted positions.

use ferroscope_unwind_api::ProcessMemory;

use crate::layout::Layout;
use crate::objects::{self, IMEMO_ISEQ, T_ARRAY, T_IMEMO, bytes, le32, le64, word};
use crate::{Error, Result};

/// Most line-table entries read per iseq.
pub const MAX_LINE_ENTRIES: u32 = 1 << 16;
/// Longest iseq (in VALUEs) whose line table is read.
pub const MAX_ISEQ_SIZE: u32 = 1 << 22;
const IMMEDIATE: u32 = 54;

/// `ISEQ_TYPE_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IseqType {
    /// A file's top level.
    Top,
    /// A method.
    Method,
    /// A block.
    Block,
    /// A class body.
    Class,
    /// A rescue clause.
    Rescue,
    /// An ensure clause.
    Ensure,
    /// An eval.
    Eval,
    /// The main script.
    Main,
    /// Other.
    Plain,
}

impl IseqType {
    fn from_raw(v: u32) -> IseqType {
        match v {
            0 => IseqType::Top,
            1 => IseqType::Method,
            2 => IseqType::Block,
            3 => IseqType::Class,
            4 => IseqType::Rescue,
            5 => IseqType::Ensure,
            6 => IseqType::Eval,
            7 => IseqType::Main,
            _ => IseqType::Plain,
        }
    }
}

/// What naming needs of one iseq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IseqInfo {
    /// The iseq's address.
    pub addr: u64,
    /// Its kind.
    pub kind: IseqType,
    /// `location.label` (`"block in checkout"`).
    pub label: String,
    /// `location.base_label` (`"checkout"`).
    pub base_label: String,
    /// The file (the real path when the iseq has one).
    pub path: String,
    /// `location.first_lineno`.
    pub first_line: u32,
    /// `iseq_encoded`.
    pub encoded: u64,
    /// `iseq_size`, in VALUEs.
    pub size: u32,
    /// `local_iseq` (the method's iseq for a block; itself for a method).
    pub local_iseq: u64,
    /// The local iseq's kind and base label (the method name when it is a method).
    pub method_name: Option<String>,
    /// Line table: (instruction position, line), sorted by position.
    pub lines: Vec<(u32, u32)>,
}

impl IseqInfo {
    /// The line of the instruction that `word_offset` (pc - iseq_encoded, in VALUEs) points
    /// past, like `rb_vm_get_sourceline`.
    pub fn line_at(&self, word_offset: u32) -> u32 {
        let pos = word_offset.saturating_sub(1);
        match self.lines.partition_point(|&(p, _)| p <= pos) {
            0 => self.lines.first().map_or(self.first_line, |&(_, l)| l),
            i => self.lines[i - 1].1,
        }
    }

    /// The instruction offset of a recorded pc (its low 22 bits, shifted by 3), or `None`
    /// when it is not inside this iseq (the address was reused since the sample).
    pub fn offset_of(&self, pc22: u32) -> Option<u32> {
        let base = ((self.encoded >> 3) & 0x3f_ffff) as u32;
        let off = pc22.wrapping_sub(base) & 0x3f_ffff;
        (off <= self.size).then_some(off)
    }
}

/// Whether `addr` holds an iseq (an `imemo_iseq`).
pub fn is_iseq(mem: &dyn ProcessMemory, addr: u64) -> Result<bool> {
    let flags = word(mem, addr, "iseq")?;
    Ok(objects::value_type(flags) == T_IMEMO && objects::imemo_type(flags) == IMEMO_ISEQ)
}

fn body_of(mem: &dyn ProcessMemory, l: &Layout, iseq: u64) -> Result<Vec<u8>> {
    if !is_iseq(mem, iseq)? {
        return Err(Error::invalid("iseq", iseq, "not an imemo_iseq"));
    }
    let body = word(mem, iseq + u64::from(l.iseq_body), "iseq body pointer")?;
    let len = (l.body_local_iseq + 8) as usize;
    bytes(mem, body, len, "iseq body")
}

/// Reads an iseq's names, file and line table.
pub fn read_iseq(mem: &dyn ProcessMemory, l: &Layout, iseq: u64) -> Result<IseqInfo> {
    let b = body_of(mem, l, iseq)?;
    let loc = l.body_location;
    let kind = IseqType::from_raw(le32(&b, l.body_type));
    let label = objects::string(mem, l, le64(&b, loc + 16))?;
    let base_label = objects::string(mem, l, le64(&b, loc + 8))?;
    let path = path_of(mem, l, le64(&b, loc))?;
    let first_line = le64(&b, loc + 24) as u32;
    let size = le32(&b, l.body_iseq_size);
    let local_iseq = le64(&b, l.body_local_iseq);
    let method_name = if local_iseq == iseq {
        (kind == IseqType::Method).then(|| base_label.clone())
    } else if objects::is_object(local_iseq) {
        let lb = body_of(mem, l, local_iseq)?;
        if IseqType::from_raw(le32(&lb, l.body_type)) == IseqType::Method {
            Some(objects::string(mem, l, le64(&lb, loc + 8))?)
        } else {
            None
        }
    } else {
        None
    };
    let lines = line_table(mem, l, &b, size).unwrap_or_default();
    Ok(IseqInfo {
        addr: iseq,
        kind,
        label,
        base_label,
        path,
        first_line,
        encoded: le64(&b, l.body_iseq_encoded),
        size,
        local_iseq,
        method_name,
        lines,
    })
}

/// `location.pathobj`: a path, or `[path, realpath]` (the real path preferred).
fn path_of(mem: &dyn ProcessMemory, l: &Layout, pathobj: u64) -> Result<String> {
    let flags = word(mem, pathobj, "iseq path")?;
    if objects::value_type(flags) != T_ARRAY {
        return objects::string(mem, l, pathobj);
    }
    if let Some(real) = objects::array_entry(mem, l, pathobj, 1)?
        && let Ok(s) = objects::string(mem, l, real)
    {
        return Ok(s);
    }
    let path = objects::array_entry(mem, l, pathobj, 0)?
        .ok_or_else(|| Error::invalid("iseq path", pathobj, "an empty array"))?;
    objects::string(mem, l, path)
}

fn line_table(
    mem: &dyn ProcessMemory,
    l: &Layout,
    body: &[u8],
    size: u32,
) -> Result<Vec<(u32, u32)>> {
    let info = l.body_insns_info;
    let entries = le64(body, info);
    let positions = le64(body, info + 8);
    let count = le32(body, info + 16);
    let succ = le64(body, info + 24);
    if count == 0 || count > MAX_LINE_ENTRIES || size > MAX_ISEQ_SIZE {
        return Ok(Vec::new());
    }
    let es = l.insn_info_entry as usize;
    let raw = bytes(mem, entries, count as usize * es, "line table")?;
    let lines: Vec<u32> = raw.chunks_exact(es).map(|e| le32(e, 0)).collect();
    let pos: Vec<u32> = if count == 1 {
        vec![0]
    } else if positions != 0 {
        let p = bytes(mem, positions, count as usize * 4, "line positions")?;
        p.chunks_exact(4).map(|c| le32(c, 0)).collect()
    } else if succ != 0 {
        let len = succinct_len(size);
        let table = bytes(mem, succ, len, "succinct line index")?;
        decode_succinct(&table, size, count)
    } else {
        return Ok(Vec::new());
    };
    Ok(pos.into_iter().zip(lines).collect())
}

/// Bytes of a succinct index table for an iseq of `size` VALUEs.
pub fn succinct_len(size: u32) -> usize {
    let imm_words = (if size < IMMEDIATE {
        size + 8
    } else {
        IMMEDIATE
    }) / 9;
    let blocks = if size < IMMEDIATE {
        0
    } else {
        (size - IMMEDIATE).div_ceil(512)
    };
    imm_words as usize * 8 + blocks as usize * 80
}

/// The positions a succinct index table marks (at most `count`), sorted.
pub fn decode_succinct(table: &[u8], size: u32, count: u32) -> Vec<u32> {
    let imm_words = ((if size < IMMEDIATE {
        size + 8
    } else {
        IMMEDIATE
    }) / 9) as usize;
    let mut out = Vec::new();
    let mut prev = 0u32;
    for j in 0..imm_words {
        let w = le64(table, (j * 8) as u32);
        for i in 0..9u32 {
            let rank = ((w >> (7 * i)) & 0x7f) as u32;
            if rank > prev {
                out.push(j as u32 * 9 + i);
                prev = rank;
            }
        }
    }
    let mut block = imm_words * 8;
    let mut base = IMMEDIATE;
    while block + 80 <= table.len() && (out.len() as u32) < count {
        for k in 0..8u32 {
            let bits = le64(table, block as u32 + 16 + k * 8);
            for i in 0..64u32 {
                if bits >> i & 1 == 1 {
                    out.push(base + k * 64 + i);
                }
            }
        }
        block += 80;
        base += 512;
    }
    out.truncate(count as usize);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a table the way `succ_index_table_create` does.
    fn build(positions: &[u32], size: u32) -> Vec<u8> {
        let imm_words = ((if size < IMMEDIATE {
            size + 8
        } else {
            IMMEDIATE
        }) / 9) as usize;
        let blocks = if size < IMMEDIATE {
            0
        } else {
            ((size - IMMEDIATE).div_ceil(512)) as usize
        };
        let mut t = vec![0u8; imm_words * 8 + blocks * 80];
        let mut r = 0usize;
        for j in 0..imm_words {
            let mut w = 0u64;
            for i in 0..9 {
                if r < positions.len() && positions[r] == (j * 9 + i) as u32 {
                    r += 1;
                }
                w |= (r as u64) << (7 * i);
            }
            t[j * 8..j * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        for k in 0..blocks {
            let at = imm_words * 8 + k * 80;
            t[at..at + 4].copy_from_slice(&(r as u32).to_le_bytes());
            for j in 0..8 {
                let mut bits = 0u64;
                for i in 0..64 {
                    if r < positions.len() && positions[r] as usize == k * 512 + j * 64 + i + 54 {
                        bits |= 1 << i;
                        r += 1;
                    }
                }
                let b = at + 16 + j * 8;
                t[b..b + 8].copy_from_slice(&bits.to_le_bytes());
            }
        }
        t
    }

    #[test]
    fn succinct_tables_decode_to_their_positions() {
        for (positions, size) in [
            (vec![0u32, 3, 7, 20], 30u32),
            (vec![0, 5, 53, 54, 60, 100, 565, 566, 1200], 1300),
            (vec![0], 2),
        ] {
            let t = build(&positions, size);
            assert_eq!(t.len(), succinct_len(size));
            assert_eq!(
                decode_succinct(&t, size, positions.len() as u32),
                positions,
                "size {size}"
            );
        }
        // Garbage never panics.
        assert!(decode_succinct(&[0xff; 7], 1000, 10).len() <= 10);
    }

    #[test]
    fn lines_come_from_the_instruction_the_pc_points_past() {
        let info = IseqInfo {
            addr: 0,
            kind: IseqType::Method,
            label: "m".into(),
            base_label: "m".into(),
            path: "x.rb".into(),
            first_line: 3,
            encoded: 0x1000,
            size: 40,
            local_iseq: 0,
            method_name: Some("m".into()),
            lines: vec![(0, 3), (4, 4), (10, 6)],
        };
        assert_eq!(info.line_at(0), 3);
        assert_eq!(info.line_at(5), 4, "pc past the instruction at 4");
        assert_eq!(info.line_at(4), 3, "pc past the instruction at 3");
        assert_eq!(info.line_at(11), 6);
        assert_eq!(info.offset_of((0x1000 >> 3) + 7), Some(7));
        assert_eq!(info.offset_of((0x1000 >> 3) + 41), None);
    }
}
