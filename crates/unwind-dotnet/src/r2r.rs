//! ReadyToRun images (the runtime's `readytorun-format.md`): the header and its sections, the
//! x64 `RUNTIME_FUNCTION` table, and which method each function is, from the
//! `MethodDefEntryPoints` array and the `InstanceEntryPoints` hashtable (generic
//! instantiations), both in the runtime's "native format" (`nativeformatreader.h`).
//!
//! Everything is decoded from bytes (fuzzed): a section is read once and looked at through
//! [`Window`], which maps the RVAs the format uses onto it and never reads outside it.

use crate::Error;
use crate::metadata::le_u32;

/// `READYTORUN_SIGNATURE` ("RTR").
pub const SIGNATURE: u32 = 0x0052_5452;
/// `READYTORUN_SECTION_RUNTIME_FUNCTIONS`.
pub const SECTION_RUNTIME_FUNCTIONS: u32 = 102;
/// `READYTORUN_SECTION_METHODDEF_ENTRYPOINTS`.
pub const SECTION_METHODDEF_ENTRYPOINTS: u32 = 103;
/// `READYTORUN_SECTION_DEBUG_INFO`.
pub const SECTION_DEBUG_INFO: u32 = 106;
/// `READYTORUN_SECTION_INSTANCE_METHOD_ENTRYPOINTS`.
pub const SECTION_INSTANCE_ENTRYPOINTS: u32 = 109;

/// Most functions believed in one image.
const MAX_FUNCTIONS: usize = 1 << 21;
/// Most entries read from one table.
const MAX_ENTRIES: usize = 1 << 21;

/// The ReadyToRun header: its version and sections (type, RVA, size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Major version (9 for .NET 8).
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// `READYTORUN_FLAG_*`.
    pub flags: u32,
    /// (type, RVA, size) of each section.
    pub sections: Vec<(u32, u32, u32)>,
}

impl Header {
    /// Parses a `READYTORUN_HEADER` and its section list.
    pub fn parse(b: &[u8]) -> Result<Header, Error> {
        let bad = |why: &str| Error::format("ReadyToRun header", why);
        if le_u32(b, 0) != Some(SIGNATURE) {
            return Err(bad("no RTR signature"));
        }
        let version = le_u32(b, 4).ok_or_else(|| bad("truncated"))?;
        let flags = le_u32(b, 8).ok_or_else(|| bad("truncated"))?;
        let n = le_u32(b, 12).ok_or_else(|| bad("truncated"))? as usize;
        let mut sections = Vec::new();
        for i in 0..n.min(256) {
            let at = 16 + 12 * i;
            let field = |o| le_u32(b, at + o).ok_or_else(|| bad("truncated section list"));
            sections.push((field(0)?, field(4)?, field(8)?));
        }
        Ok(Header {
            major: version as u16,
            minor: (version >> 16) as u16,
            flags,
            sections,
        })
    }

    /// The (RVA, size) of a section.
    pub fn section(&self, kind: u32) -> Option<(u32, u32)> {
        self.sections
            .iter()
            .find(|s| s.0 == kind)
            .map(|&(_, rva, size)| (rva, size))
    }

    /// Bytes to read for the header and `n` sections.
    pub fn size(n: u32) -> u32 {
        16 + 12 * n.min(256)
    }
}

/// One x64 `RUNTIME_FUNCTION`: RVAs of the function's start and end, and of its unwind data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeFunction {
    /// First byte.
    pub begin: u32,
    /// One past the last.
    pub end: u32,
    /// `UNWIND_INFO`.
    pub unwind: u32,
}

/// Decodes a `RUNTIME_FUNCTION` array.
pub fn runtime_functions(b: &[u8]) -> Vec<RuntimeFunction> {
    b.chunks_exact(12)
        .take(MAX_FUNCTIONS)
        .map(|c| RuntimeFunction {
            begin: le_u32(c, 0).unwrap_or(0),
            end: le_u32(c, 4).unwrap_or(0),
            unwind: le_u32(c, 8).unwrap_or(0),
        })
        .collect()
}

/// The index of the function holding `rva` (functions are sorted by start).
pub fn function_at(functions: &[RuntimeFunction], rva: u32) -> Option<usize> {
    let i = functions
        .partition_point(|f| f.begin <= rva)
        .checked_sub(1)?;
    (rva < functions[i].end).then_some(i)
}

/// Bytes of a section, addressed by RVA.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    /// The section's bytes.
    pub bytes: &'a [u8],
    /// The RVA of its first byte.
    pub rva: u32,
}

impl Window<'_> {
    fn byte(&self, rva: u32) -> Option<u8> {
        self.bytes.get(rva.checked_sub(self.rva)? as usize).copied()
    }

    fn u16_at(&self, rva: u32) -> Option<u32> {
        Some(u32::from(self.byte(rva)?) | (u32::from(self.byte(rva.checked_add(1)?)?) << 8))
    }

    fn u32_at(&self, rva: u32) -> Option<u32> {
        Some(self.u16_at(rva)? | (self.u16_at(rva.checked_add(2)?)? << 16))
    }

    /// An ECMA-335 compressed unsigned integer at `rva`: (value, next RVA).
    pub fn compressed(&self, rva: u32) -> Option<(u32, u32)> {
        let at = rva.checked_sub(self.rva)? as usize;
        let (v, used) = crate::metadata::compressed_u32(self.bytes.get(at..)?)?;
        Some((v, rva + used as u32))
    }

    /// A native-format unsigned integer at `rva`: (value, next RVA).
    pub fn unsigned(&self, rva: u32) -> Option<(u32, u32)> {
        let b0 = u32::from(self.byte(rva)?);
        let b = |i: u32| -> Option<u32> { Some(u32::from(self.byte(rva.checked_add(i)?)?)) };
        if b0 & 1 == 0 {
            Some((b0 >> 1, rva + 1))
        } else if b0 & 2 == 0 {
            Some(((b0 >> 2) | (b(1)? << 6), rva + 2))
        } else if b0 & 4 == 0 {
            Some(((b0 >> 3) | (b(1)? << 5) | (b(2)? << 13), rva + 3))
        } else if b0 & 8 == 0 {
            Some((
                (b0 >> 4) | (b(1)? << 4) | (b(2)? << 12) | (b(3)? << 20),
                rva + 4,
            ))
        } else if b0 & 16 == 0 {
            Some((self.u32_at(rva.checked_add(1)?)?, rva + 5))
        } else {
            None
        }
    }

    /// A native-format signed integer at `rva`: (value, next RVA).
    pub fn signed(&self, rva: u32) -> Option<(i32, u32)> {
        let b0 = u32::from(self.byte(rva)?);
        let b = |i: u32| -> Option<u32> { Some(u32::from(self.byte(rva.checked_add(i)?)?)) };
        let sext = |v: u32, bits: u32| ((v << (32 - bits)) as i32) >> (32 - bits);
        if b0 & 1 == 0 {
            Some((sext(b0 >> 1, 7), rva + 1))
        } else if b0 & 2 == 0 {
            Some((sext((b0 >> 2) | (b(1)? << 6), 14), rva + 2))
        } else if b0 & 4 == 0 {
            Some((sext((b0 >> 3) | (b(1)? << 5) | (b(2)? << 13), 21), rva + 3))
        } else if b0 & 8 == 0 {
            Some((
                sext((b0 >> 4) | (b(1)? << 4) | (b(2)? << 12) | (b(3)? << 20), 28),
                rva + 4,
            ))
        } else if b0 & 16 == 0 {
            Some((self.u32_at(rva.checked_add(1)?)? as i32, rva + 5))
        } else {
            None
        }
    }

    /// Every (index, RVA of its entry) of the `NativeArray` at `rva`.
    pub fn native_array(&self, rva: u32) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let Some((header, base)) = self.unsigned(rva) else {
            return out;
        };
        let count = header >> 2;
        let entry_size = match header & 3 {
            0 => 1,
            1 => 2,
            _ => 4,
        };
        let blocks = count.div_ceil(16).min(MAX_ENTRIES as u32 / 16);
        for block in 0..blocks {
            let at = base.saturating_add(block * entry_size);
            let offset = match entry_size {
                1 => self.byte(at).map(u32::from),
                2 => self.u16_at(at),
                _ => self.u32_at(at),
            };
            let Some(offset) = offset else { break };
            self.array_block(
                base.saturating_add(offset),
                block * 16,
                8,
                count,
                &mut out,
                0,
            );
        }
        out
    }

    /// A block of a `NativeArray`: a binary tree over the 16 indexes of the block; each node
    /// is `val`: bit 0 a left child follows, bit 1 a right child at +(val >> 2), neither:
    /// a leaf for index (block | val >> 2) when val is small.
    fn array_block(
        &self,
        rva: u32,
        index: u32,
        bit: u32,
        count: u32,
        out: &mut Vec<(u32, u32)>,
        depth: u32,
    ) {
        if out.len() >= MAX_ENTRIES || depth > 5 {
            return;
        }
        if bit == 0 {
            if index < count {
                out.push((index, rva));
            }
            return;
        }
        let Some((val, next)) = self.unsigned(rva) else {
            return;
        };
        if val & 1 != 0 {
            self.array_block(next, index, bit >> 1, count, out, depth + 1);
        }
        if val & 2 != 0 {
            self.array_block(
                rva.saturating_add(val >> 2),
                index | bit,
                bit >> 1,
                count,
                out,
                depth + 1,
            );
        }
        if val & 3 == 0 {
            let leaf = (index & !15) | (val >> 2);
            if val >> 2 < 16 && leaf < count {
                out.push((leaf, next));
            }
        }
    }

    /// Every entry (the RVA where it starts) of the `NativeHashtable` at `rva`.
    pub fn native_hashtable(&self, rva: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let Some(header) = self.byte(rva) else {
            return out;
        };
        let base = rva + 1;
        let buckets = 1u32 << (u32::from(header >> 2).min(20));
        let entry_size = u32::from(header & 3);
        let bound = |i: u32| -> Option<u32> {
            match entry_size {
                0 => self.byte(base + i).map(u32::from),
                1 => self.u16_at(base + 2 * i),
                _ => self.u32_at(base + 4 * i),
            }
        };
        for bucket in 0..buckets {
            let (Some(start), Some(end)) = (bound(bucket), bound(bucket + 1)) else {
                break;
            };
            let (mut at, end) = (base.saturating_add(start), base.saturating_add(end));
            while at < end && out.len() < MAX_ENTRIES {
                // A low hash byte, then a relative offset to the entry.
                let Some((delta, next)) = self.signed(at + 1) else {
                    break;
                };
                out.push((at + 1).wrapping_add(delta as u32));
                at = next;
            }
        }
        out
    }

    /// The function index an entry point of `MethodDefEntryPoints` or `InstanceEntryPoints`
    /// names (its first value: index << 1, or << 2 with fixups).
    pub fn entry_point(&self, rva: u32) -> Option<u32> {
        let (id, _) = self.unsigned(rva)?;
        Some(if id & 1 != 0 { id >> 2 } else { id >> 1 })
    }
}

/// Which method a ReadyToRun function is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPoint {
    /// Index in the `RUNTIME_FUNCTION` table.
    pub function: u32,
    /// The `MethodDef` row.
    pub method: u32,
    /// The instantiation (generic methods, methods of generic types); empty for a plain
    /// method.
    pub instantiation: Instantiation,
}

/// The encoded type signatures of an instantiated ReadyToRun method.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Instantiation {
    /// The owner type's signature (a `GENERICINST` of the method's type), when generic.
    pub owner: Vec<u8>,
    /// The method's type arguments: a compressed count, then each signature.
    pub args: Vec<u8>,
}

/// The methods of `MethodDefEntryPoints` (a `NativeArray` indexed by `MethodDef` row - 1).
pub fn method_def_entry_points(section: Window<'_>) -> Vec<EntryPoint> {
    section
        .native_array(section.rva)
        .into_iter()
        .filter_map(|(index, at)| {
            Some(EntryPoint {
                function: section.entry_point(at)?,
                method: index + 1,
                instantiation: Instantiation::default(),
            })
        })
        .collect()
}

/// `READYTORUN_METHOD_SIG_*` flags of an instance entry's signature.
const SIG_METHOD_INSTANTIATION: u32 = 0x04;
const SIG_SLOT_INSTEAD_OF_TOKEN: u32 = 0x08;
const SIG_MEMBER_REF_TOKEN: u32 = 0x10;
const SIG_CONSTRAINED: u32 = 0x20;
const SIG_OWNER_TYPE: u32 = 0x40;
const SIG_UPDATE_CONTEXT: u32 = 0x80;

/// The methods of `InstanceEntryPoints`: a `NativeHashtable` whose entries are a method
/// signature (flags, the owner type when generic, the `MethodDef` row, the method's type
/// arguments; ECMA-335 compressed integers as in the runtime's `SigPointer`) followed by the
/// entry point (native format).
pub fn instance_entry_points(section: Window<'_>) -> Vec<EntryPoint> {
    let mut out = Vec::new();
    for at in section.native_hashtable(section.rva) {
        if let Some(e) = instance_entry(section, at) {
            out.push(e);
        }
    }
    out
}

fn instance_entry(w: Window<'_>, start: u32) -> Option<EntryPoint> {
    let (flags, mut at) = w.compressed(start)?;
    if flags & SIG_UPDATE_CONTEXT != 0 {
        at = w.compressed(at)?.1; // the module override
    }
    let owner_start = at;
    if flags & SIG_OWNER_TYPE != 0 {
        at = skip_type(w, at, 0)?;
    }
    let owner_end = at;
    if flags & (SIG_SLOT_INSTEAD_OF_TOKEN | SIG_MEMBER_REF_TOKEN) != 0 {
        return None; // not a MethodDef of this module
    }
    let (rid, next) = w.compressed(at)?;
    at = next;
    let args_start = at;
    if flags & SIG_METHOD_INSTANTIATION != 0 {
        let (n, next) = w.compressed(at)?;
        at = next;
        for _ in 0..n.min(64) {
            at = skip_type(w, at, 0)?;
        }
    }
    let args_end = at;
    if flags & SIG_CONSTRAINED != 0 {
        at = skip_type(w, at, 0)?;
    }
    // The entry point follows the signature.
    let function = w.entry_point(at)?;
    let owner = (owner_start..owner_end)
        .map(|r| w.byte(r))
        .collect::<Option<Vec<u8>>>()?;
    let args = (args_start..args_end)
        .map(|r| w.byte(r))
        .collect::<Option<Vec<u8>>>()?;
    Some(EntryPoint {
        function,
        method: rid,
        instantiation: Instantiation { owner, args },
    })
}

/// Skips one type signature (ECMA-335 II.23.2.12 with compressed integers, plus the
/// runtime's ZapSig element types). Returns the RVA after it.
pub fn skip_type(w: Window<'_>, at: u32, depth: u32) -> Option<u32> {
    if depth > 16 {
        return None;
    }
    let et = w.byte(at)?;
    let at = at + 1;
    Some(match et {
        // Primitive types, Object, String, TypedByRef, I, U, __Canon (0x3e).
        0x01..=0x0e | 0x16 | 0x18 | 0x19 | 0x1c | 0x3e => at,
        // PTR, BYREF, SZARRAY, pinned, a native value type: one type follows.
        0x0f | 0x10 | 0x1d | 0x45 | 0x3d => skip_type(w, at, depth + 1)?,
        // VALUETYPE, CLASS: a TypeDefOrRef coded token; VAR, MVAR: a number.
        0x11 | 0x12 | 0x13 | 0x1e => w.compressed(at)?.1,
        // ARRAY: type, rank, sizes, lower bounds.
        0x14 => {
            let mut at = skip_type(w, at, depth + 1)?;
            at = w.compressed(at)?.1;
            for _ in 0..2 {
                let (n, next) = w.compressed(at)?;
                at = next;
                for _ in 0..n.min(32) {
                    at = w.compressed(at)?.1;
                }
            }
            at
        }
        // GENERICINST: type, count, arguments.
        0x15 => {
            let mut at = skip_type(w, at, depth + 1)?;
            let (n, next) = w.compressed(at)?;
            at = next;
            for _ in 0..n.min(64) {
                at = skip_type(w, at, depth + 1)?;
            }
            at
        }
        // ELEMENT_TYPE_MODULE_ZAPSIG: a module index, then the type in that module;
        // CMOD_REQD / CMOD_OPT: a token, then the type.
        0x3f | 0x1f | 0x20 => {
            let (_index, next) = w.compressed(at)?;
            skip_type(w, next, depth + 1)?
        }
        _ => return None,
    })
}

/// The function index → method map of an image, sorted by function index.
pub fn method_map(mut entries: Vec<EntryPoint>) -> Vec<EntryPoint> {
    entries.sort_by_key(|e| e.function);
    entries.dedup_by_key(|e| e.function);
    entries
}

/// The method of function `index`: its own entry, or the closest entry before it (funclets
/// and cold parts follow their method in the table).
pub fn method_of(map: &[EntryPoint], index: u32) -> Option<&EntryPoint> {
    let i = map
        .partition_point(|e| e.function <= index)
        .checked_sub(1)?;
    map.get(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(bytes: &[u8]) -> Window<'_> {
        Window { bytes, rva: 0x1000 }
    }

    #[test]
    fn native_unsigned_integers_decode_in_all_sizes() {
        // 1 byte: value << 1.
        assert_eq!(w(&[0x54]).unsigned(0x1000), Some((0x2a, 0x1001)));
        // 2 bytes: value << 2 | 1.
        let v = 0x1234u32;
        let e = (v << 2) | 1;
        assert_eq!(
            w(&[e as u8, (e >> 8) as u8]).unsigned(0x1000),
            Some((v, 0x1002))
        );
        // 3 bytes: value << 3 | 3.
        let v = 0x12_3456u32 & 0x1f_ffff;
        let e = (v << 3) | 3;
        assert_eq!(
            w(&[e as u8, (e >> 8) as u8, (e >> 16) as u8]).unsigned(0x1000),
            Some((v, 0x1003))
        );
        // 5 bytes: 0x0f then the value.
        assert_eq!(
            w(&[0x0f, 0x78, 0x56, 0x34, 0x12]).unsigned(0x1000),
            Some((0x1234_5678, 0x1005))
        );
        assert_eq!(w(&[0x1f]).unsigned(0x1000), None);
        assert_eq!(w(&[0x01]).unsigned(0x1000), None, "truncated");
        assert_eq!(w(&[0xfe]).signed(0x1000), Some((-1, 0x1001)));
        assert_eq!(w(&[0x7e]).signed(0x1000), Some((63, 0x1001)));
        assert_eq!(w(&[0x04]).signed(0x1000), Some((2, 0x1001)));
    }

    #[test]
    fn a_native_array_lists_its_entries() {
        // Three elements, one-byte block offsets: header = 3 << 2 | 0; then the offset of
        // block 0 (relative to the byte after the header); the block is a tree: index bit 8
        // left (val & 1), 4 left, 2 left, 1: a node with both children.
        let mut b = vec![3 << 3, 1];
        // Tree at base + 1: bit 8 -> left only (val = 1), bit 4 -> left, bit 2 -> left,
        // bit 1 -> leaf val: both (left = index 0 right after, right = index 1 at +(val>>2)).
        b.extend_from_slice(&[1 << 1, 1 << 1, 1 << 1]);
        // The bit-1 node: left child follows (bit 0), right child 2 bytes ahead.
        b.push(((2 << 2) | 3) << 1);
        b.push(5 << 1); // index 0's entry: 5 (an unsigned)
        b.push(7 << 1); // index 1's entry: 7
        let entries = w(&b).native_array(0x1000);
        let values: Vec<(u32, u32)> = entries
            .iter()
            .map(|&(i, at)| (i, w(&b).unsigned(at).unwrap().0))
            .collect();
        assert_eq!(values, [(0, 5), (1, 7)]);
    }

    #[test]
    fn functions_are_found_by_rva_and_methods_by_function() {
        let f = |begin, end| RuntimeFunction {
            begin,
            end,
            unwind: 0,
        };
        let fs = [f(0x100, 0x180), f(0x180, 0x200), f(0x300, 0x340)];
        assert_eq!(function_at(&fs, 0x100), Some(0));
        assert_eq!(function_at(&fs, 0x1ff), Some(1));
        assert_eq!(function_at(&fs, 0x250), None);
        assert_eq!(function_at(&fs, 0x50), None);
        let map = method_map(vec![
            EntryPoint {
                function: 2,
                method: 9,
                instantiation: Instantiation::default(),
            },
            EntryPoint {
                function: 0,
                method: 4,
                instantiation: Instantiation::default(),
            },
        ]);
        assert_eq!(method_of(&map, 1).map(|e| e.method), Some(4), "a funclet");
        assert_eq!(method_of(&map, 2).map(|e| e.method), Some(9));
    }
}
