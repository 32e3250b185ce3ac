//! ECMA-335 metadata (partition II, chapter 24): the metadata root, its streams and the
//! tables of the `#~` stream, read from bytes (an assembly's metadata, or a portable PDB)
//! without trusting them: every read is bounds-checked, every count capped.
//!
//! Only what naming needs is decoded: row counts, row sizes and column offsets of every
//! table (so any table can be located), and typed access to the columns of the tables used
//! (`TypeDef`, `MethodDef`, `NestedClass`, `TypeRef`, `TypeSpec`, `GenericParam`, the PDB's
//! `Document` and `MethodDebugInformation`), the `#Strings`, `#Blob` and `#GUID` heaps.

use crate::Error;

/// Table numbers (ECMA-335 II.22, portable PDB tables from 0x30).
pub mod table {
    /// `Module`.
    pub const MODULE: usize = 0x00;
    /// `TypeRef`.
    pub const TYPE_REF: usize = 0x01;
    /// `TypeDef`.
    pub const TYPE_DEF: usize = 0x02;
    /// `Field`.
    pub const FIELD: usize = 0x04;
    /// `MethodDef`.
    pub const METHOD_DEF: usize = 0x06;
    /// `Param`.
    pub const PARAM: usize = 0x08;
    /// `TypeSpec`.
    pub const TYPE_SPEC: usize = 0x1b;
    /// `NestedClass`.
    pub const NESTED_CLASS: usize = 0x29;
    /// `GenericParam`.
    pub const GENERIC_PARAM: usize = 0x2a;
    /// `MethodSpec`.
    pub const METHOD_SPEC: usize = 0x2b;
    /// `Document` (portable PDB).
    pub const DOCUMENT: usize = 0x30;
    /// `MethodDebugInformation` (portable PDB).
    pub const METHOD_DEBUG_INFORMATION: usize = 0x31;
}

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    U8x2,
    U16,
    U32,
    Str,
    Guid,
    Blob,
    /// An index into one table.
    Table(usize),
    /// A coded index over several tables.
    Coded(Coded),
}

/// Coded index kinds (II.24.2.6): tag bits and the tables they tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coded {
    TypeDefOrRef,
    HasConstant,
    HasCustomAttribute,
    HasFieldMarshal,
    HasDeclSecurity,
    MemberRefParent,
    HasSemantics,
    MethodDefOrRef,
    MemberForwarded,
    Implementation,
    CustomAttributeType,
    ResolutionScope,
    TypeOrMethodDef,
    HasCustomDebugInformation,
}

impl Coded {
    fn tables(self) -> (u32, &'static [usize]) {
        match self {
            Coded::TypeDefOrRef => (2, &[0x02, 0x01, 0x1b]),
            Coded::HasConstant => (2, &[0x04, 0x08, 0x17]),
            Coded::HasCustomAttribute => (
                5,
                &[
                    0x06, 0x04, 0x01, 0x02, 0x08, 0x09, 0x0a, 0x00, 0x0e, 0x17, 0x14, 0x11, 0x1a,
                    0x1b, 0x20, 0x23, 0x26, 0x27, 0x28, 0x2a, 0x2c, 0x2b,
                ],
            ),
            Coded::HasFieldMarshal => (1, &[0x04, 0x08]),
            Coded::HasDeclSecurity => (2, &[0x02, 0x06, 0x20]),
            Coded::MemberRefParent => (3, &[0x02, 0x01, 0x1a, 0x06, 0x1b]),
            Coded::HasSemantics => (1, &[0x14, 0x17]),
            Coded::MethodDefOrRef => (1, &[0x06, 0x0a]),
            Coded::MemberForwarded => (1, &[0x04, 0x06]),
            Coded::Implementation => (2, &[0x26, 0x23, 0x27]),
            Coded::CustomAttributeType => (3, &[0x06, 0x0a]),
            Coded::ResolutionScope => (2, &[0x00, 0x1a, 0x23, 0x01]),
            Coded::TypeOrMethodDef => (1, &[0x02, 0x06]),
            Coded::HasCustomDebugInformation => (
                5,
                &[
                    0x06, 0x04, 0x01, 0x02, 0x08, 0x09, 0x0a, 0x00, 0x0e, 0x17, 0x14, 0x11, 0x1a,
                    0x1b, 0x20, 0x23, 0x26, 0x27, 0x28, 0x2a, 0x2c, 0x2b, 0x30, 0x32, 0x33, 0x34,
                    0x35,
                ],
            ),
        }
    }
}

/// The columns of every table (II.22 and the portable PDB specification).
fn schema(t: usize) -> &'static [Col] {
    use self::Coded as C;
    use Col::*;
    match t {
        0x00 => &[U16, Str, Guid, Guid, Guid],
        0x01 => &[Coded(C::ResolutionScope), Str, Str],
        0x02 => &[
            U32,
            Str,
            Str,
            Coded(C::TypeDefOrRef),
            Table(0x04),
            Table(0x06),
        ],
        0x03 => &[Table(0x04)],
        0x04 => &[U16, Str, Blob],
        0x05 => &[Table(0x06)],
        0x06 => &[U32, U16, U16, Str, Blob, Table(0x08)],
        0x07 => &[Table(0x08)],
        0x08 => &[U16, U16, Str],
        0x09 => &[Table(0x02), Coded(C::TypeDefOrRef)],
        0x0a => &[Coded(C::MemberRefParent), Str, Blob],
        0x0b => &[U8x2, Coded(C::HasConstant), Blob],
        0x0c => &[
            Coded(C::HasCustomAttribute),
            Coded(C::CustomAttributeType),
            Blob,
        ],
        0x0d => &[Coded(C::HasFieldMarshal), Blob],
        0x0e => &[U16, Coded(C::HasDeclSecurity), Blob],
        0x0f => &[U16, U32, Table(0x02)],
        0x10 => &[U32, Table(0x04)],
        0x11 => &[Blob],
        0x12 => &[Table(0x02), Table(0x14)],
        0x13 => &[Table(0x14)],
        0x14 => &[U16, Str, Coded(C::TypeDefOrRef)],
        0x15 => &[Table(0x02), Table(0x17)],
        0x16 => &[Table(0x17)],
        0x17 => &[U16, Str, Blob],
        0x18 => &[U16, Table(0x06), Coded(C::HasSemantics)],
        0x19 => &[
            Table(0x02),
            Coded(C::MethodDefOrRef),
            Coded(C::MethodDefOrRef),
        ],
        0x1a => &[Str],
        0x1b => &[Blob],
        0x1c => &[U16, Coded(C::MemberForwarded), Str, Table(0x1a)],
        0x1d => &[U32, Table(0x04)],
        0x1e => &[U32, U32],
        0x1f => &[U32],
        0x20 => &[U32, U16, U16, U16, U16, U32, Blob, Str, Str],
        0x21 => &[U32],
        0x22 => &[U32, U32, U32],
        0x23 => &[U16, U16, U16, U16, U32, Blob, Str, Str, Blob],
        0x24 => &[U32, Table(0x23)],
        0x25 => &[U32, U32, U32, Table(0x23)],
        0x26 => &[U32, Str, Blob],
        0x27 => &[U32, U32, Str, Str, Coded(C::Implementation)],
        0x28 => &[U32, U32, Str, Coded(C::Implementation)],
        0x29 => &[Table(0x02), Table(0x02)],
        0x2a => &[U16, U16, Coded(C::TypeOrMethodDef), Str],
        0x2b => &[Coded(C::MethodDefOrRef), Blob],
        0x2c => &[Table(0x2a), Coded(C::TypeDefOrRef)],
        0x30 => &[Blob, Guid, Blob, Guid],
        0x31 => &[Table(0x30), Blob],
        0x32 => &[Table(0x06), Table(0x35), Table(0x33), Table(0x34), U32, U32],
        0x33 => &[U16, U16, Str],
        0x34 => &[Str, Blob],
        0x35 => &[Table(0x35), Blob],
        0x36 => &[Table(0x06), Table(0x06)],
        0x37 => &[Coded(C::HasCustomDebugInformation), Guid, Blob],
        _ => &[],
    }
}

/// Most rows believed in one table (CoreLib has about 40,000 methods).
const MAX_ROWS: u32 = 1 << 24;

/// Little-endian reads that fail instead of panicking.
pub(crate) fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// See [`le_u16`].
pub(crate) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// See [`le_u16`].
pub(crate) fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// A stream of the metadata root: its offset and size within the metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stream {
    /// Offset from the metadata root.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// The metadata root's streams (II.24.2.1-2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Streams {
    /// The version string (`v4.0.30319`; `PDB v1.0` for a portable PDB).
    pub version: String,
    /// `#~` (or `#-`).
    pub tables: Option<Stream>,
    /// `#Strings`.
    pub strings: Option<Stream>,
    /// `#Blob`.
    pub blob: Option<Stream>,
    /// `#GUID`.
    pub guid: Option<Stream>,
    /// `#Pdb` (portable PDB only).
    pub pdb: Option<Stream>,
}

/// Parses the metadata root at the start of `md`.
pub fn streams(md: &[u8]) -> Result<Streams, Error> {
    let bad = |why: &str| Error::format("metadata root", why);
    if le_u32(md, 0) != Some(0x424a_5342) {
        return Err(bad("no BSJB signature"));
    }
    let len = le_u32(md, 12).ok_or_else(|| bad("truncated"))? as usize;
    if len > 255 {
        return Err(bad("version string longer than 255 bytes"));
    }
    let version = md
        .get(16..16 + len)
        .ok_or_else(|| bad("truncated version"))?;
    let version =
        String::from_utf8_lossy(version.split(|&b| b == 0).next().unwrap_or(&[])).into_owned();
    let mut at = 16 + len;
    let count = le_u16(md, at + 2).ok_or_else(|| bad("truncated"))?;
    at += 4;
    let mut out = Streams {
        version,
        ..Streams::default()
    };
    for _ in 0..count.min(16) {
        let offset = le_u32(md, at).ok_or_else(|| bad("truncated stream header"))? as usize;
        let size = le_u32(md, at + 4).ok_or_else(|| bad("truncated stream header"))? as usize;
        let name_at = at + 8;
        let name_len = md
            .get(name_at..)
            .and_then(|b| b.iter().take(32).position(|&c| c == 0))
            .ok_or_else(|| bad("unterminated stream name"))?;
        let name = &md[name_at..name_at + name_len];
        at = name_at + (name_len + 4) / 4 * 4;
        if offset.checked_add(size).is_none_or(|end| end > md.len()) {
            return Err(bad("a stream extends past the metadata"));
        }
        let s = Some(Stream { offset, size });
        match name {
            b"#~" | b"#-" => out.tables = s,
            b"#Strings" => out.strings = s,
            b"#Blob" => out.blob = s,
            b"#GUID" => out.guid = s,
            b"#Pdb" => out.pdb = s,
            _ => {}
        }
    }
    Ok(out)
}

/// The tables of one `#~` stream: row counts, sizes and where each starts.
#[derive(Debug, Clone)]
pub struct Tables {
    rows: [u32; 64],
    /// Row counts of tables of another file this one refers to (a PDB's type system).
    external: [u32; 64],
    row_size: [usize; 64],
    start: [usize; 64],
    /// Column offsets within a row, per table.
    columns: Vec<Vec<(usize, usize)>>,
    str4: bool,
    guid4: bool,
    blob4: bool,
}

impl Tables {
    /// Parses the `#~` stream header (`stream` is the stream's bytes). `external` gives the
    /// row counts of tables that live elsewhere (a portable PDB's `TypeSystemTableRows`).
    pub fn parse(stream: &[u8], external: &[u32; 64]) -> Result<Tables, Error> {
        let bad = |why: &str| Error::format("metadata tables", why);
        let heap = *stream.get(6).ok_or_else(|| bad("truncated header"))?;
        let valid = le_u64(stream, 8).ok_or_else(|| bad("truncated header"))?;
        let mut rows = [0u32; 64];
        let mut at = 24;
        for (t, r) in rows.iter_mut().enumerate() {
            if valid & (1 << t) != 0 {
                let n = le_u32(stream, at).ok_or_else(|| bad("truncated row counts"))?;
                if n > MAX_ROWS {
                    return Err(bad("a table has more than 2^24 rows"));
                }
                *r = n;
                at += 4;
            }
        }
        if heap & 0x40 != 0 {
            at += 4; // extra data (#- streams)
        }
        let mut tables = Tables {
            rows,
            external: *external,
            row_size: [0; 64],
            start: [0; 64],
            columns: vec![Vec::new(); 64],
            str4: heap & 1 != 0,
            guid4: heap & 2 != 0,
            blob4: heap & 4 != 0,
        };
        for (t, &count) in rows.iter().enumerate() {
            let mut off = 0;
            let mut cols = Vec::new();
            for &c in schema(t) {
                let size = tables.col_size(c);
                cols.push((off, size));
                off += size;
            }
            tables.row_size[t] = off;
            tables.columns[t] = cols;
            if count > 0 && off == 0 {
                return Err(bad("rows in a table this reader does not know"));
            }
        }
        for (t, &count) in rows.iter().enumerate() {
            tables.start[t] = at;
            at = at
                .checked_add(tables.row_size[t] * count as usize)
                .ok_or_else(|| bad("tables too large"))?;
        }
        if at > stream.len() {
            return Err(bad("the tables extend past their stream"));
        }
        Ok(tables)
    }

    /// Rows of table `t` (this file's, else the external count).
    pub fn rows(&self, t: usize) -> u32 {
        let r = self.rows.get(t).copied().unwrap_or(0);
        if r > 0 {
            r
        } else {
            self.external.get(t).copied().unwrap_or(0)
        }
    }

    fn col_size(&self, c: Col) -> usize {
        match c {
            Col::U8x2 | Col::U16 => 2,
            Col::U32 => 4,
            Col::Str => 2 + 2 * usize::from(self.str4),
            Col::Guid => 2 + 2 * usize::from(self.guid4),
            Col::Blob => 2 + 2 * usize::from(self.blob4),
            Col::Table(t) => {
                if self.rows(t) < 1 << 16 {
                    2
                } else {
                    4
                }
            }
            Col::Coded(k) => {
                let (bits, tables) = k.tables();
                let max = tables.iter().map(|&t| self.rows(t)).max().unwrap_or(0);
                if max < 1 << (16 - bits) { 2 } else { 4 }
            }
        }
    }

    /// Column `col` of row `rid` (1-based) of table `t`, from the stream's bytes.
    pub fn get(&self, stream: &[u8], t: usize, rid: u32, col: usize) -> Option<u32> {
        if rid == 0 || rid > *self.rows.get(t)? {
            return None;
        }
        let &(off, size) = self.columns.get(t)?.get(col)?;
        let at = self.start[t] + self.row_size[t] * (rid as usize - 1) + off;
        match size {
            2 => le_u16(stream, at).map(u32::from),
            _ => le_u32(stream, at),
        }
    }

    /// Decodes a coded index value of a `TypeDefOrRef` column: (table, rid).
    pub fn type_def_or_ref(value: u32) -> (usize, u32) {
        let t = [table::TYPE_DEF, table::TYPE_REF, table::TYPE_SPEC];
        (t[(value & 3).min(2) as usize], value >> 2)
    }
}

/// A NUL-terminated string of the `#Strings` heap (`heap` is the heap's bytes).
pub fn string(heap: &[u8], index: u32) -> Option<&str> {
    let rest = heap.get(index as usize..)?;
    let end = rest.iter().take(4096).position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// A blob of the `#Blob` heap (II.24.2.4: a compressed length, then the bytes).
pub fn blob(heap: &[u8], index: u32) -> Option<&[u8]> {
    let at = index as usize;
    let (len, used) = compressed_u32(heap.get(at..)?)?;
    heap.get(at + used..at + used + len as usize)
}

/// A compressed unsigned integer (II.23.2) and the bytes it took.
pub fn compressed_u32(b: &[u8]) -> Option<(u32, usize)> {
    let first = *b.first()?;
    if first & 0x80 == 0 {
        Some((u32::from(first), 1))
    } else if first & 0xc0 == 0x80 {
        Some(((u32::from(first & 0x3f) << 8) | u32::from(*b.get(1)?), 2))
    } else if first & 0xe0 == 0xc0 {
        let v = (u32::from(first & 0x1f) << 24)
            | (u32::from(*b.get(1)?) << 16)
            | (u32::from(*b.get(2)?) << 8)
            | u32::from(*b.get(3)?);
        Some((v, 4))
    } else {
        None
    }
}

/// A compressed signed integer (II.23.2): the value rotated left by one bit.
pub fn compressed_i32(b: &[u8]) -> Option<(i32, usize)> {
    let (v, used) = compressed_u32(b)?;
    let bits = match used {
        1 => 7,
        2 => 14,
        _ => 29,
    };
    let negative = v & 1 != 0;
    let magnitude = (v >> 1) as i32;
    let value = if negative {
        magnitude - (1 << (bits - 1))
    } else {
        magnitude
    };
    Some((value, used))
}

/// One assembly's (or PDB's) metadata, owned: the bytes and their parsed tables.
#[derive(Debug, Clone)]
pub struct Metadata {
    bytes: Vec<u8>,
    streams: Streams,
    tables: Tables,
}

impl Metadata {
    /// Parses the metadata root in `bytes` (`external`: see [`Tables::parse`]).
    pub fn parse(bytes: Vec<u8>, external: &[u32; 64]) -> Result<Metadata, Error> {
        let streams = streams(&bytes)?;
        let t = streams
            .tables
            .ok_or_else(|| Error::format("metadata", "no #~ stream"))?;
        let tables = Tables::parse(&bytes[t.offset..t.offset + t.size], external)?;
        Ok(Metadata {
            bytes,
            streams,
            tables,
        })
    }

    fn stream(&self, s: Option<Stream>) -> &[u8] {
        s.and_then(|s| self.bytes.get(s.offset..s.offset + s.size))
            .unwrap_or(&[])
    }

    /// The streams.
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// The bytes of a stream.
    pub fn stream_bytes(&self, s: Stream) -> &[u8] {
        self.stream(Some(s))
    }

    /// The parsed tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Rows of table `t`.
    pub fn rows(&self, t: usize) -> u32 {
        self.tables.rows(t)
    }

    /// Column `col` of row `rid` of table `t`.
    pub fn get(&self, t: usize, rid: u32, col: usize) -> Option<u32> {
        self.tables
            .get(self.stream(self.streams.tables), t, rid, col)
    }

    /// A string of `#Strings`.
    pub fn string(&self, index: u32) -> Option<&str> {
        string(self.stream(self.streams.strings), index)
    }

    /// A blob of `#Blob`.
    pub fn blob(&self, index: u32) -> Option<&[u8]> {
        blob(self.stream(self.streams.blob), index)
    }

    /// A GUID of `#GUID` (1-based index).
    pub fn guid(&self, index: u32) -> Option<[u8; 16]> {
        let heap = self.stream(self.streams.guid);
        let at = (index as usize).checked_sub(1)? * 16;
        heap.get(at..at + 16)?.try_into().ok()
    }

    /// The module's MVID (its identity across processes).
    pub fn mvid(&self) -> Option<[u8; 16]> {
        self.guid(self.get(table::MODULE, 1, 2)?)
    }

    /// The module's name (`hello.dll`).
    pub fn module_name(&self) -> Option<&str> {
        self.string(self.get(table::MODULE, 1, 1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_integers_decode_as_ecma_335_shows() {
        // II.23.2's examples.
        assert_eq!(compressed_u32(&[0x03]), Some((3, 1)));
        assert_eq!(compressed_u32(&[0x7f]), Some((0x7f, 1)));
        assert_eq!(compressed_u32(&[0x80, 0x80]), Some((0x80, 2)));
        assert_eq!(compressed_u32(&[0xbf, 0xff]), Some((0x3fff, 2)));
        assert_eq!(compressed_u32(&[0xc0, 0x00, 0x40, 0x00]), Some((0x4000, 4)));
        assert_eq!(
            compressed_u32(&[0xdf, 0xff, 0xff, 0xff]),
            Some((0x1fff_ffff, 4))
        );
        assert_eq!(compressed_u32(&[0xff]), None);
        assert_eq!(compressed_i32(&[0x06]), Some((3, 1)));
        assert_eq!(compressed_i32(&[0x7b]), Some((-3, 1)));
        assert_eq!(compressed_i32(&[0x80, 0x80]), Some((64, 2)));
        assert_eq!(compressed_i32(&[0x01]), Some((-64, 1)));
        assert_eq!(compressed_i32(&[0xc0, 0x00, 0x40, 0x00]), Some((8192, 4)));
        assert_eq!(compressed_i32(&[0x80, 0x01]), Some((-8192, 2)));
        assert_eq!(
            compressed_i32(&[0xdf, 0xff, 0xff, 0xfe]),
            Some((268_435_455, 4))
        );
        assert_eq!(
            compressed_i32(&[0xc0, 0x00, 0x00, 0x01]),
            Some((-268_435_456, 4))
        );
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for bytes in [
            &b""[..],
            b"BSJB",
            b"BSJB\x01\x00\x01\x00\x00\x00\x00\x00\xff\xff\xff\xff",
            &[
                0x42, 0x53, 0x4a, 0x42, 1, 0, 1, 0, 0, 0, 0, 0, 4, 0, 0, 0, b'v', b'4', 0, 0, 0, 0,
                9, 0,
            ],
        ] {
            assert!(Metadata::parse(bytes.to_vec(), &[0; 64]).is_err());
        }
    }
}
