//! Reading Ruby objects out of a process: strings, arrays, the global symbol table (ID to
//! name), `st_table`s and class paths. Every read goes through [`ProcessMemory`], is bounded,
//! and checks the object's type bits before trusting its layout; none panics on garbage.

use ferroscope_unwind_api::ProcessMemory;

use crate::layout::{ClassLayout, Layout, StringLayout};
use crate::{Error, Result};

/// Longest string read (labels, paths, class paths).
pub const MAX_STRING: usize = 4096;
/// Most `st_table` entries visited.
const MAX_ST_ENTRIES: u64 = 4096;

/// `T_*` of a `RBasic`'s flags.
pub const T_CLASS: u64 = 0x02;
/// A module.
pub const T_MODULE: u64 = 0x03;
/// A string.
pub const T_STRING: u64 = 0x05;
/// An array.
pub const T_ARRAY: u64 = 0x07;
/// An internal object (`imemo`).
pub const T_IMEMO: u64 = 0x1a;
/// An include class (a module in an ancestry).
pub const T_ICLASS: u64 = 0x1c;
const T_MASK: u64 = 0x1f;
/// `imemo_cref`.
pub const IMEMO_CREF: u64 = 1;
/// `imemo_svar`.
pub const IMEMO_SVAR: u64 = 2;
/// `imemo_ment`.
pub const IMEMO_MENT: u64 = 6;
/// `imemo_iseq`.
pub const IMEMO_ISEQ: u64 = 7;
/// `FL_USER1`: a heap string, or an embedded array.
const FL_USER1: u64 = 1 << 13;

/// The `T_*` type of flags.
pub fn value_type(flags: u64) -> u64 {
    flags & T_MASK
}

/// The imemo type of an imemo's flags.
pub fn imemo_type(flags: u64) -> u64 {
    (flags >> 12) & 0x0f
}

/// Whether a VALUE is a pointer to an object (not an immediate, nil or false).
pub fn is_object(v: u64) -> bool {
    v != 0 && v & 7 == 0 && v != 0x04 && v != 0x08
}

/// Reads a little-endian word.
pub fn word(mem: &dyn ProcessMemory, addr: u64, what: &'static str) -> Result<u64> {
    mem.read_u64(addr).map_err(Error::read(what, addr))
}

/// Reads `n` bytes.
pub fn bytes(mem: &dyn ProcessMemory, addr: u64, n: usize, what: &'static str) -> Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    mem.read_exact_at(addr, &mut b)
        .map_err(Error::read(what, addr))?;
    Ok(b)
}

/// A `u64` at `off` of `b` (0 past its end).
pub fn le64(b: &[u8], off: u32) -> u64 {
    let o = off as usize;
    b.get(o..o + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}

/// A `u32` at `off` of `b` (0 past its end).
pub fn le32(b: &[u8], off: u32) -> u32 {
    let o = off as usize;
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
}

/// Reads a `String` object as UTF-8 (lossy).
pub fn string(mem: &dyn ProcessMemory, l: &Layout, v: u64) -> Result<String> {
    if !is_object(v) {
        return Err(Error::invalid("string", v, "not an object"));
    }
    let head = bytes(mem, v, 32, "string")?;
    let flags = le64(&head, 0);
    if value_type(flags) != T_STRING {
        return Err(Error::invalid(
            "string",
            v,
            format!("type {:#x}, not T_STRING", value_type(flags)),
        ));
    }
    let heap = flags & FL_USER1 != 0;
    let (len, at) = match (l.string, heap) {
        (_, true) => (le64(&head, 16), le64(&head, 24)),
        (StringLayout::LengthInFlags, false) => ((flags >> 14) & 0x1f, v + 16),
        (StringLayout::LengthField, false) => (le64(&head, 16), v + 24),
    };
    if len > MAX_STRING as u64 {
        return Err(Error::invalid("string", v, format!("{len} bytes long")));
    }
    let b = bytes(mem, at, len as usize, "string bytes")?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// Element `i` of an `Array` object (`None` past its end).
pub fn array_entry(mem: &dyn ProcessMemory, l: &Layout, v: u64, i: u64) -> Result<Option<u64>> {
    if !is_object(v) {
        return Err(Error::invalid("array", v, "not an object"));
    }
    let head = bytes(mem, v, 40, "array")?;
    let flags = le64(&head, 0);
    if value_type(flags) != T_ARRAY {
        return Err(Error::invalid(
            "array",
            v,
            format!("type {:#x}, not T_ARRAY", value_type(flags)),
        ));
    }
    let (len, ptr) = if flags & FL_USER1 != 0 {
        ((flags >> 15) & l.array_embed_len_mask, v + 16)
    } else {
        (le64(&head, 16), le64(&head, 32))
    };
    if i >= len {
        return Ok(None);
    }
    Ok(Some(word(mem, ptr + i * 8, "array element")?))
}

/// Where a process's global symbol table is, and how IDs map to its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbols {
    /// Address of `ruby_global_symbols` (`last_id` at 0, `ids` at 16).
    pub global: u64,
    /// IDs up to this one are operators, their own serial numbers (`tLAST_OP_ID`).
    pub last_op_id: u64,
}

impl Symbols {
    /// The name of an ID, like `rb_id2str`.
    pub fn name(&self, mem: &dyn ProcessMemory, l: &Layout, id: u64) -> Result<String> {
        let serial = if id > self.last_op_id { id >> 4 } else { id };
        let last = word(mem, self.global, "global symbols")? & 0xffff_ffff;
        if serial == 0 || serial > last {
            return Err(Error::invalid(
                "symbol ID",
                id,
                format!("serial {serial} is not below the last one, {last}"),
            ));
        }
        let ids = word(mem, self.global + 16, "global symbol IDs")?;
        let chunk = array_entry(mem, l, ids, serial / 512)?
            .ok_or_else(|| Error::invalid("symbol ID", id, "past the symbol table"))?;
        let s = array_entry(mem, l, chunk, (serial % 512) * 2)?
            .ok_or_else(|| Error::invalid("symbol ID", id, "past its chunk"))?;
        string(mem, l, s)
    }
}

/// The entries of an `st_table` (key, record), at most 4,096.
pub fn st_entries(mem: &dyn ProcessMemory, table: u64) -> Result<Vec<(u64, u64)>> {
    let head = bytes(mem, table, 56, "st_table")?;
    let start = le64(&head, 32);
    let bound = le64(&head, 40);
    let entries = le64(&head, 48);
    if bound < start || bound - start > MAX_ST_ENTRIES {
        return Err(Error::invalid(
            "st_table",
            table,
            format!("entries {start}..{bound}"),
        ));
    }
    let n = (bound - start) as usize;
    let raw = bytes(mem, entries + start * 24, n * 24, "st_table entries")?;
    Ok(raw
        .chunks_exact(24)
        .filter(|e| le64(e, 0) != u64::MAX)
        .map(|e| (le64(e, 8), le64(e, 16)))
        .collect())
}

/// The path of a class or module (`"Shop::Cart"`), when it has one.
pub fn class_path(
    mem: &dyn ProcessMemory,
    l: &Layout,
    symbols: Option<&Symbols>,
    klass: u64,
) -> Result<Option<String>> {
    match l.class {
        ClassLayout::Embedded { ext, classpath, .. } => {
            let v = word(mem, klass + u64::from(ext + classpath), "class path")?;
            if !is_object(v) {
                return Ok(None);
            }
            string(mem, l, v).map(Some)
        }
        ClassLayout::Ivars { .. } => {
            let Some(symbols) = symbols else {
                return Ok(None);
            };
            let v = class_ivar(
                mem,
                l,
                symbols,
                klass,
                &["__classpath__", "__tmp_classpath__"],
            )?;
            match v {
                Some(v) if is_object(v) => string(mem, l, v).map(Some),
                _ => Ok(None),
            }
        }
        ClassLayout::Unsupported => Ok(None),
    }
}

/// The object a singleton class belongs to.
pub fn attached_object(
    mem: &dyn ProcessMemory,
    l: &Layout,
    symbols: Option<&Symbols>,
    klass: u64,
) -> Result<Option<u64>> {
    match l.class {
        ClassLayout::Embedded {
            ext,
            attached_object,
            ..
        } => Ok(Some(word(
            mem,
            klass + u64::from(ext + attached_object),
            "attached object",
        )?)),
        ClassLayout::Ivars { .. } => match symbols {
            Some(s) => class_ivar(mem, l, s, klass, &["__attached__"]),
            None => Ok(None),
        },
        ClassLayout::Unsupported => Ok(None),
    }
}

/// A class's instance variable by name, 2.7 to 3.1 (its `iv_tbl`, keyed by ID).
fn class_ivar(
    mem: &dyn ProcessMemory,
    l: &Layout,
    symbols: &Symbols,
    klass: u64,
    names: &[&str],
) -> Result<Option<u64>> {
    let ClassLayout::Ivars { ext_ptr, iv_tbl } = l.class else {
        return Ok(None);
    };
    let ext = word(mem, klass + u64::from(ext_ptr), "class extension")?;
    if ext == 0 {
        return Ok(None);
    }
    let table = word(mem, ext + u64::from(iv_tbl), "class ivars")?;
    if table == 0 {
        return Ok(None);
    }
    let entries = st_entries(mem, table)?;
    for want in names {
        for &(key, value) in &entries {
            if symbols.name(mem, l, key).is_ok_and(|n| n == *want) {
                return Ok(Some(value));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::layout;
    use ferroscope_unwind_api::SnapshotMemory;

    fn put(mem: &mut SnapshotMemory, addr: u64, words: &[u64]) {
        mem.add_region(addr, words.iter().flat_map(|w| w.to_le_bytes()).collect());
    }

    #[test]
    fn strings_of_both_eras() {
        let l31 = layout(3, 1).unwrap();
        let l33 = layout(3, 3).unwrap();
        let mut mem = SnapshotMemory::new(1);
        // 3.1 embedded "checkout": length 8 in the flags' bits 14..18, bytes at 16.
        let mut b = (T_STRING | (8 << 14)).to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(b"checkout");
        b.resize(40, 0);
        mem.add_region(0x1000, b);
        assert_eq!(string(&mem, &l31, 0x1000).unwrap(), "checkout");
        // 3.3 embedded: length at 16, bytes at 24.
        let mut b = T_STRING.to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(b"Cart");
        b.resize(40, 0);
        mem.add_region(0x2000, b);
        assert_eq!(string(&mem, &l33, 0x2000).unwrap(), "Cart");
        // A heap string: length at 16, pointer at 24.
        put(&mut mem, 0x3000, &[T_STRING | FL_USER1, 0, 5, 0x4000, 0]);
        mem.add_region(0x4000, b"Shop!".to_vec());
        assert_eq!(string(&mem, &l31, 0x3000).unwrap(), "Shop!");
        assert!(string(&mem, &l31, 0x5000).is_err(), "unreadable");
        put(&mut mem, 0x6000, &[T_ARRAY, 0, 0, 0, 0]);
        assert!(string(&mem, &l31, 0x6000).is_err(), "not a string");
        assert!(string(&mem, &l31, 0x08).is_err(), "nil");
    }

    #[test]
    fn symbols_resolve_through_chunks() {
        let l = layout(3, 3).unwrap();
        let mut mem = SnapshotMemory::new(1);
        // global: last_id 600, ids at 16 -> root array (embedded, 2 chunks).
        put(&mut mem, 0x100, &[600, 0, 0x1000]);
        put(
            &mut mem,
            0x1000,
            &[T_ARRAY | FL_USER1 | (2 << 15), 0, 0x2000, 0x3000, 0],
        );
        // chunk 1 (serials 512..1023): heap array, entry (550 % 512) * 2 = 76.
        put(&mut mem, 0x3000, &[T_ARRAY, 0, 1024, 0, 0x4000]);
        let mut entries = vec![0u64; 1024];
        entries[76] = 0x5000;
        put(&mut mem, 0x4000, &entries);
        let mut b = T_STRING.to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(b"each");
        b.resize(40, 0);
        mem.add_region(0x5000, b);
        let s = Symbols {
            global: 0x100,
            last_op_id: 0xa9,
        };
        assert_eq!(s.name(&mem, &l, (550 << 4) | 1).unwrap(), "each");
        assert!(s.name(&mem, &l, 700 << 4).is_err(), "beyond last_id");
        assert!(s.name(&mem, &l, 0).is_err());
    }
}
