//! A table's bytes, to keep it on disk: a header, fixed-size entries and a checksum.
//!
//! ```text
//! "FSDT" | format version u32 | TABLE_REVISION u32 | entries u64
//! entries x { address u64 | kind u8 | fp saved u8 | 0 u16 | cfa_offset i32 | fp_offset i32 }
//! CRC-32 (IEEE) of everything before it, u32
//! ```
//!
//! All little-endian. Decoding checks every field: bytes from disk are not trusted (a
//! truncated write, another version's file, a file someone else put there).

use crate::{Error, Kind, StackDelta, StackDeltaTable, UnwindInfo};

const MAGIC: &[u8; 4] = b"FSDT";
const FORMAT: u32 = 1;
const HEADER: usize = 4 + 4 + 4 + 8;
const ENTRY: usize = 8 + 1 + 1 + 2 + 4 + 4;
/// More entries than any file has (the largest libraries have a few million).
const MAX_ENTRIES: u64 = 1 << 28;

/// Changes whenever extraction gives different tables for the same file (a fix in CFI
/// evaluation, a new source): tables encoded by another revision are not decoded, so a
/// cache of them is rebuilt.
pub const TABLE_REVISION: u32 = 1;

fn kind_of(v: u8) -> Option<Kind> {
    Some(match v {
        0 => Kind::Sp,
        1 => Kind::Fp,
        2 => Kind::SpDeref,
        3 => Kind::FpDeref,
        4 => Kind::Plt,
        5 => Kind::Signal,
        6 => Kind::Stop,
        7 => Kind::Invalid,
        8 => Kind::FramePointer,
        _ => return None,
    })
}

fn corrupt(why: &str) -> Error {
    Error::Encoding {
        reason: why.to_owned(),
    }
}

impl StackDeltaTable {
    /// The table's bytes (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.deltas.len() * ENTRY + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&TABLE_REVISION.to_le_bytes());
        out.extend_from_slice(&(self.deltas.len() as u64).to_le_bytes());
        for d in &self.deltas {
            out.extend_from_slice(&d.address.to_le_bytes());
            out.push(d.info.kind as u8);
            out.push(u8::from(d.info.fp_offset.is_some()));
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&d.info.cfa_offset.to_le_bytes());
            out.extend_from_slice(&d.info.fp_offset.unwrap_or(0).to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// A table from [`StackDeltaTable::to_bytes`]; an error when the bytes are damaged,
    /// truncated, of another format or revision, or not a valid table (addresses not
    /// increasing).
    pub fn from_bytes(bytes: &[u8]) -> Result<StackDeltaTable, Error> {
        if bytes.len() < HEADER + 4 {
            return Err(corrupt("shorter than the header"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err(corrupt("checksum mismatch"));
        }
        if &body[..4] != MAGIC {
            return Err(corrupt("not a table"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().unwrap_or([0; 4]));
        if u32_at(4) != FORMAT || u32_at(8) != TABLE_REVISION {
            return Err(corrupt("written by another version"));
        }
        let count = u64::from_le_bytes(body[12..20].try_into().unwrap_or([0; 8]));
        if count > MAX_ENTRIES || (body.len() - HEADER) as u64 != count.saturating_mul(ENTRY as u64)
        {
            return Err(corrupt("entry count does not match the size"));
        }
        let mut deltas = Vec::with_capacity(count as usize);
        let mut previous: Option<u64> = None;
        for e in body[HEADER..].chunks_exact(ENTRY) {
            let address = u64::from_le_bytes(e[0..8].try_into().unwrap_or([0; 8]));
            let kind = kind_of(e[8]).ok_or_else(|| corrupt("unknown rule kind"))?;
            let cfa_offset = i32::from_le_bytes(e[12..16].try_into().unwrap_or([0; 4]));
            let fp = i32::from_le_bytes(e[16..20].try_into().unwrap_or([0; 4]));
            let fp_offset = match e[9] {
                0 => None,
                1 => Some(fp),
                _ => return Err(corrupt("bad flag")),
            };
            if previous.is_some_and(|p| p >= address) {
                return Err(corrupt("addresses not increasing"));
            }
            previous = Some(address);
            deltas.push(StackDelta {
                address,
                info: UnwindInfo {
                    kind,
                    cfa_offset,
                    fp_offset,
                },
            });
        }
        Ok(StackDeltaTable { deltas })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_table_comes_back_the_same_and_damage_is_refused() {
        let libc = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let table = crate::extract(&libc, None, &crate::ExtractOptions::default()).unwrap();
        let bytes = table.to_bytes();
        assert_eq!(StackDeltaTable::from_bytes(&bytes).unwrap(), table);
        for cut in [0, 10, HEADER, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                StackDeltaTable::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut flipped = bytes.clone();
        flipped[HEADER + 3] ^= 1;
        assert!(StackDeltaTable::from_bytes(&flipped).is_err());
        let mut other = bytes;
        other[8] = other[8].wrapping_add(1); // another revision (checksum fixed below)
        let n = other.len();
        let crc = crc32fast::hash(&other[..n - 4]);
        other[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let err = StackDeltaTable::from_bytes(&other).unwrap_err();
        assert!(err.to_string().contains("another version"), "{err}");
    }
}
