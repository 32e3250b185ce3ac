//! Portable PDBs (the runtime's `PortablePdb-Metadata.md`): source lines of IL offsets.
//!
//! A portable PDB is ECMA-335 metadata with a `#Pdb` stream (the row counts of the
//! assembly's tables its indexes refer to) and its own tables; `MethodDebugInformation`
//! row N is `MethodDef` row N: its document and its sequence-points blob (IL offset deltas,
//! line and column deltas, hidden points, document changes).

use crate::Error;
use crate::metadata::{Metadata, compressed_i32, compressed_u32, le_u32, le_u64, table};

/// One portable PDB.
#[derive(Debug)]
pub struct Pdb {
    metadata: Metadata,
}

/// A source location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The document's path as the compiler wrote it.
    pub file: String,
    /// The line.
    pub line: u32,
    /// The method's first line (its first sequence point's).
    pub start_line: u32,
}

/// One sequence point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    il: u32,
    line: u32,
    hidden: bool,
    document: u32,
}

impl Pdb {
    /// Parses a portable PDB file's bytes.
    pub fn parse(bytes: Vec<u8>) -> Result<Pdb, Error> {
        let streams = crate::metadata::streams(&bytes)?;
        let pdb = streams
            .pdb
            .ok_or_else(|| Error::format("portable PDB", "no #Pdb stream (a Windows PDB?)"))?;
        let p = &bytes[pdb.offset..pdb.offset + pdb.size];
        // PDB id (20 bytes), entry point (4), referenced tables (8), their row counts.
        let referenced = le_u64(p, 24).ok_or_else(|| Error::format("#Pdb stream", "truncated"))?;
        let mut external = [0u32; 64];
        let mut at = 32;
        for (t, rows) in external.iter_mut().enumerate() {
            if referenced & (1 << t) != 0 {
                *rows = le_u32(p, at).ok_or_else(|| Error::format("#Pdb stream", "truncated"))?;
                at += 4;
            }
        }
        Ok(Pdb {
            metadata: Metadata::parse(bytes, &external)?,
        })
    }

    /// The document's name: its blob is a separator byte then parts (blob indexes).
    fn document(&self, rid: u32) -> Option<String> {
        let md = &self.metadata;
        let name = md.blob(md.get(table::DOCUMENT, rid, 0)?)?;
        let (&sep, mut rest) = name.split_first()?;
        let mut out = String::new();
        let mut first = true;
        while !rest.is_empty() && out.len() < 4096 {
            let (part, used) = compressed_u32(rest)?;
            rest = &rest[used..];
            if !first && sep != 0 {
                out.push(char::from(sep));
            }
            first = false;
            if part != 0 {
                out.push_str(&String::from_utf8_lossy(md.blob(part)?));
            }
        }
        Some(out)
    }

    /// The sequence points of `MethodDef` row `method`.
    fn points(&self, method: u32) -> Option<Vec<Point>> {
        let md = &self.metadata;
        let mut document = md.get(table::METHOD_DEBUG_INFORMATION, method, 0)?;
        let blob = md.blob(md.get(table::METHOD_DEBUG_INFORMATION, method, 1)?)?;
        if blob.is_empty() {
            return Some(Vec::new());
        }
        let mut b = blob;
        let take_u = |b: &mut &[u8]| -> Option<u32> {
            let (v, n) = compressed_u32(b)?;
            *b = &b[n..];
            Some(v)
        };
        let take_i = |b: &mut &[u8]| -> Option<i32> {
            let (v, n) = compressed_i32(b)?;
            *b = &b[n..];
            Some(v)
        };
        let _local_signature = take_u(&mut b)?;
        if document == 0 {
            document = take_u(&mut b)?;
        }
        let mut out = Vec::new();
        let (mut il, mut line, mut column) = (0u32, 0i64, 0i64);
        let mut first_visible = true;
        while !b.is_empty() && out.len() < 1 << 16 {
            let delta_il = take_u(&mut b)?;
            if delta_il == 0 && !out.is_empty() {
                // A document record.
                document = take_u(&mut b)?;
                continue;
            }
            il = il.checked_add(delta_il)?;
            let delta_lines = take_u(&mut b)?;
            let delta_columns = if delta_lines == 0 {
                i64::from(take_u(&mut b)?)
            } else {
                i64::from(take_i(&mut b)?)
            };
            if delta_lines == 0 && delta_columns == 0 {
                out.push(Point {
                    il,
                    line: 0,
                    hidden: true,
                    document,
                });
                continue;
            }
            if first_visible {
                line = i64::from(take_u(&mut b)?);
                column = i64::from(take_u(&mut b)?);
                first_visible = false;
            } else {
                line += i64::from(take_i(&mut b)?);
                column += i64::from(take_i(&mut b)?);
            }
            let _ = column;
            out.push(Point {
                il,
                line: u32::try_from(line).ok()?,
                hidden: false,
                document,
            });
        }
        Some(out)
    }

    /// The source line of IL offset `il` in `MethodDef` row `method`: the last visible
    /// sequence point at or before it.
    pub fn line(&self, method: u32, il: u32) -> Option<Line> {
        let points = self.points(method)?;
        let start = points.iter().find(|p| !p.hidden)?;
        let at = points
            .iter()
            .rfind(|p| p.il <= il && !p.hidden)
            .unwrap_or(start);
        Some(Line {
            file: self.document(at.document)?,
            line: at.line,
            start_line: start.line,
        })
    }

    /// How many methods have debug information rows.
    pub fn methods(&self) -> u32 {
        self.metadata.rows(table::METHOD_DEBUG_INFORMATION)
    }
}
