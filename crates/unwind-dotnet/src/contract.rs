//! The contract descriptor .NET 9 and later export (`DotNetRuntimeContractDescriptor`, the
//! runtime's `contract-descriptor.md` and `data_descriptor.md`): a header (magic
//! `DNCCDAC\0`, flags, the size of a JSON data descriptor, a pointer to it, and an array of
//! pointers its indirect globals index), whose compact JSON names the runtime's types with
//! their sizes and field offsets, its globals, and the versions of its algorithmic contracts.
//!
//! What it describes overrides the built-in layout ([`apply`]): the runtime describes itself
//! here, so nothing is hard-coded where it does. Written from the published format; no .NET 9
//! or 10 runtime is installable on this machine to run it against.

use std::collections::HashMap;

use ferroscope_unwind_api::ProcessMemory;

use crate::Error;
use crate::layout::Layout;
use crate::metadata::{le_u32, le_u64};

/// `"DNCCDAC\0"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"DNCCDAC\0");
/// Largest JSON descriptor read.
pub const MAX_JSON: u32 = 1 << 20;
/// Most indirect pointers read.
pub const MAX_POINTERS: u32 = 1 << 14;

/// A parsed JSON value (only what descriptors use).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`, `true`, `false`.
    Literal(Option<bool>),
    /// A number (integers only are meaningful here; kept as f64 and i128 when exact).
    Number(i128),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, keys in order.
    Object(Vec<(String, Json)>),
}

/// Parses JSON with comments (`//`, `/* */`), bounded in depth and size.
pub fn parse_json(text: &str) -> Result<Json, Error> {
    let mut p = Parser {
        b: text.as_bytes(),
        at: 0,
    };
    let v = p.value(0)?;
    p.space();
    if p.at != p.b.len() {
        return Err(p.bad("text after the value"));
    }
    Ok(v)
}

struct Parser<'a> {
    b: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn bad(&self, why: &str) -> Error {
        Error::format(
            "contract descriptor JSON",
            format!("{why} at byte {}", self.at),
        )
    }

    fn space(&mut self) {
        loop {
            while self.at < self.b.len() && self.b[self.at].is_ascii_whitespace() {
                self.at += 1;
            }
            let rest = self.b.get(self.at..).unwrap_or(&[]);
            if rest.starts_with(b"//") {
                while self.at < self.b.len() && self.b[self.at] != b'\n' {
                    self.at += 1;
                }
            } else if rest.starts_with(b"/*") {
                match rest[2..].windows(2).position(|w| w == b"*/") {
                    Some(end) => self.at += end + 4,
                    None => self.at = self.b.len(),
                }
            } else {
                return;
            }
        }
    }

    fn value(&mut self, depth: u32) -> Result<Json, Error> {
        if depth > 32 {
            return Err(self.bad("nested too deep"));
        }
        self.space();
        let rest = self.b.get(self.at..).unwrap_or(&[]);
        match self.b.get(self.at) {
            Some(b'{') => {
                self.at += 1;
                let mut out = Vec::new();
                loop {
                    self.space();
                    if self.b.get(self.at) == Some(&b'}') {
                        self.at += 1;
                        return Ok(Json::Object(out));
                    }
                    let key = match self.value(depth + 1)? {
                        Json::String(s) => s,
                        _ => return Err(self.bad("an object key that is not a string")),
                    };
                    self.space();
                    if self.b.get(self.at) != Some(&b':') {
                        return Err(self.bad("no ':' after a key"));
                    }
                    self.at += 1;
                    out.push((key, self.value(depth + 1)?));
                    self.space();
                    match self.b.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {}
                        _ => return Err(self.bad("no ',' or '}' in an object")),
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut out = Vec::new();
                loop {
                    self.space();
                    if self.b.get(self.at) == Some(&b']') {
                        self.at += 1;
                        return Ok(Json::Array(out));
                    }
                    out.push(self.value(depth + 1)?);
                    self.space();
                    match self.b.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {}
                        _ => return Err(self.bad("no ',' or ']' in an array")),
                    }
                }
            }
            Some(b'"') => {
                self.at += 1;
                let mut s = Vec::new();
                loop {
                    match self.b.get(self.at) {
                        None => return Err(self.bad("an unterminated string")),
                        Some(b'"') => {
                            self.at += 1;
                            return Ok(Json::String(String::from_utf8_lossy(&s).into_owned()));
                        }
                        Some(b'\\') => {
                            let e = *self
                                .b
                                .get(self.at + 1)
                                .ok_or_else(|| self.bad("a bad escape"))?;
                            s.push(match e {
                                b'n' => b'\n',
                                b't' => b'\t',
                                b'r' => b'\r',
                                b'u' => {
                                    self.at += 4; // names are ASCII: \u escapes are kept as '?'
                                    b'?'
                                }
                                other => other,
                            });
                            self.at += 2;
                        }
                        Some(&c) => {
                            s.push(c);
                            self.at += 1;
                        }
                    }
                }
            }
            Some(b't') if rest.starts_with(b"true") => {
                self.at += 4;
                Ok(Json::Literal(Some(true)))
            }
            Some(b'f') if rest.starts_with(b"false") => {
                self.at += 5;
                Ok(Json::Literal(Some(false)))
            }
            Some(b'n') if rest.starts_with(b"null") => {
                self.at += 4;
                Ok(Json::Literal(None))
            }
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let start = self.at;
                self.at += 1;
                while self.b.get(self.at).is_some_and(|c| {
                    c.is_ascii_alphanumeric() || *c == b'.' || *c == b'+' || *c == b'-'
                }) {
                    self.at += 1;
                }
                let text =
                    std::str::from_utf8(self.b.get(start..self.at).unwrap_or(&[])).unwrap_or("");
                integer(text)
                    .map(Json::Number)
                    .ok_or_else(|| self.bad("a number that is not an integer"))
            }
            _ => Err(self.bad("no value")),
        }
    }
}

/// A decimal or `0x` hexadecimal integer, maybe negative.
fn integer(text: &str) -> Option<i128> {
    let (neg, t) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        i128::from_str_radix(h, 16).ok()?
    } else {
        t.parse::<i128>().ok()?
    };
    Some(if neg { -v } else { v })
}

/// A described type: its size (when determinate) and field offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeInfo {
    /// Its size in bytes.
    pub size: Option<u64>,
    /// Field offsets by name.
    pub fields: HashMap<String, u64>,
}

/// A runtime's contract descriptor, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// The types.
    pub types: HashMap<String, TypeInfo>,
    /// The globals (indirect ones resolved through the pointer array).
    pub globals: HashMap<String, u64>,
    /// The algorithmic contracts and their versions.
    pub contracts: HashMap<String, u64>,
}

impl Descriptor {
    /// The descriptor in `json` (the compact format), with indirect globals taken from
    /// `pointers`.
    pub fn from_json(json: &Json, pointers: &[u64]) -> Result<Descriptor, Error> {
        let Json::Object(top) = json else {
            return Err(Error::format(
                "contract descriptor",
                "the JSON is not an object",
            ));
        };
        let mut d = Descriptor::default();
        let number = |v: &Json| -> Option<u64> {
            match v {
                Json::Number(n) => u64::try_from(*n).ok().or(Some(*n as i64 as u64)),
                Json::String(s) => integer(s).map(|n| n as u64),
                _ => None,
            }
        };
        for (key, value) in top {
            match (key.as_str(), value) {
                ("types", Json::Object(types)) => {
                    for (name, fields) in types {
                        let Json::Object(fields) = fields else {
                            continue;
                        };
                        let mut t = TypeInfo::default();
                        for (field, v) in fields {
                            // `"!": size`, `"name": offset` or `"name": [offset, "type"]`.
                            let offset = match v {
                                Json::Array(a) => a.first().and_then(number),
                                v => number(v),
                            };
                            match (field.as_str(), offset) {
                                ("!", Some(size)) => t.size = Some(size),
                                (_, Some(off)) => {
                                    t.fields.insert(field.clone(), off);
                                }
                                _ => {}
                            }
                        }
                        d.types.insert(name.clone(), t);
                    }
                }
                ("globals", Json::Object(globals)) => {
                    for (name, v) in globals {
                        // `value`, `[index]` (indirect), `[value | [index], "type"]`.
                        let value = match v {
                            Json::Array(a) if a.len() == 1 => a
                                .first()
                                .and_then(number)
                                .and_then(|i| pointers.get(usize::try_from(i).ok()?).copied()),
                            Json::Array(a) => match a.first() {
                                Some(Json::Array(inner)) => inner
                                    .first()
                                    .and_then(number)
                                    .and_then(|i| pointers.get(usize::try_from(i).ok()?).copied()),
                                Some(v) => number(v),
                                None => None,
                            },
                            v => number(v),
                        };
                        if let Some(value) = value {
                            d.globals.insert(name.clone(), value);
                        }
                    }
                }
                ("contracts", Json::Object(contracts)) => {
                    for (name, v) in contracts {
                        if let Some(n) = number(v) {
                            d.contracts.insert(name.clone(), n);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(d)
    }

    fn field(&self, ty: &str, field: &str) -> Option<u32> {
        u32::try_from(*self.types.get(ty)?.fields.get(field)?).ok()
    }
}

/// Reads the contract descriptor at `at` in a process: the header (magic, flags, JSON size,
/// JSON pointer, pointer count, padding, pointer array), the JSON and the pointers.
pub fn read(mem: &dyn ProcessMemory, at: u64) -> Result<Descriptor, Error> {
    let mut h = [0u8; 40];
    mem.read_exact_at(at, &mut h)
        .map_err(Error::read("the contract descriptor", at))?;
    let bad = |why: &str| Error::format("contract descriptor", why);
    if le_u64(&h, 0) != Some(MAGIC) {
        return Err(bad("no DNCCDAC magic"));
    }
    let flags = le_u32(&h, 8).unwrap_or(0);
    if flags & 1 == 0 || flags & 2 != 0 {
        return Err(bad("not a 64-bit descriptor"));
    }
    let size = le_u32(&h, 12).unwrap_or(0).min(MAX_JSON);
    let json_at = le_u64(&h, 16).unwrap_or(0);
    let count = le_u32(&h, 24).unwrap_or(0).min(MAX_POINTERS);
    let pointers_at = le_u64(&h, 32).unwrap_or(0);
    let mut json = vec![0u8; size as usize];
    mem.read_exact_at(json_at, &mut json)
        .map_err(Error::read("the contract descriptor's JSON", json_at))?;
    let end = json.iter().position(|&b| b == 0).unwrap_or(json.len());
    let text = String::from_utf8_lossy(&json[..end]).into_owned();
    let mut raw = vec![0u8; 8 * count as usize];
    if count > 0 {
        mem.read_exact_at(pointers_at, &mut raw)
            .map_err(Error::read(
                "the contract descriptor's pointers",
                pointers_at,
            ))?;
    }
    let pointers: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| le_u64(c, 0).unwrap_or(0))
        .collect();
    Descriptor::from_json(&parse_json(&text)?, &pointers)
}

/// What a descriptor changes in the layout: the field offsets it gives, and the nibble-map
/// format of its ExecutionManager contract. Returns the address of the RangeSectionMap when
/// the descriptor names it (`ExecutionManagerCodeRangeMapAddress`).
pub fn apply(d: &Descriptor, l: &mut Layout) -> Option<u64> {
    let set = |v: &mut u32, ty: &str, field: &str| {
        if let Some(off) = d.field(ty, field) {
            *v = off;
        }
    };
    set(&mut l.rs_begin, "RangeSection", "RangeBegin");
    set(&mut l.rs_end, "RangeSection", "RangeEndOpen");
    set(&mut l.rs_flags, "RangeSection", "Flags");
    set(&mut l.rs_module, "RangeSection", "R2RModule");
    set(&mut l.rs_heap_list, "RangeSection", "HeapList");
    if let Some(off) = d.field("RangeSection", "RangeList") {
        l.rs_range_list = Some(off);
    }
    set(&mut l.hl_start, "CodeHeapListNode", "StartAddress");
    set(&mut l.hl_end, "CodeHeapListNode", "EndAddress");
    set(&mut l.hl_map_base, "CodeHeapListNode", "MapBase");
    set(&mut l.hl_hdr_map, "CodeHeapListNode", "HeaderMap");
    set(&mut l.rch_method_desc, "RealCodeHeader", "MethodDesc");
    set(&mut l.rch_debug_info, "RealCodeHeader", "DebugInfo");
    set(&mut l.rch_unwind_count, "RealCodeHeader", "NumUnwindInfos");
    set(&mut l.rch_unwind_infos, "RealCodeHeader", "UnwindInfos");
    set(&mut l.md_chunk_index, "MethodDesc", "ChunkIndex");
    set(&mut l.md_flags, "MethodDesc", "Flags");
    set(&mut l.md_token, "MethodDesc", "Flags3AndTokenRemainder");
    set(&mut l.chunk_method_table, "MethodDescChunk", "MethodTable");
    set(
        &mut l.chunk_token_range,
        "MethodDescChunk",
        "FlagsAndTokenRange",
    );
    if let Some(size) = d.types.get("MethodDescChunk").and_then(|t| t.size) {
        l.chunk_size = size as u32;
    }
    if let Some(size) = d.types.get("MethodDesc").and_then(|t| t.size) {
        l.md_size = size as u32;
    }
    set(&mut l.mt_flags, "MethodTable", "MTFlags");
    set(&mut l.mt_module, "MethodTable", "Module");
    set(&mut l.mt_per_inst_info, "MethodTable", "PerInstInfo");
    set(&mut l.module_simple_name, "Module", "SimpleName");
    set(
        &mut l.imd_per_inst_info,
        "InstantiatedMethodDesc",
        "PerInstInfo",
    );
    set(
        &mut l.imd_num_args,
        "InstantiatedMethodDesc",
        "NumGenericArgs",
    );
    set(&mut l.dmd_name, "DynamicMethodDesc", "MethodName");
    if let Some(&bits) = d.globals.get("MethodDescTokenRemainderBitCount") {
        l.md_token_bits = bits.min(24) as u32;
    }
    if let Some(&align) = d.globals.get("MethodDescAlignment") {
        l.md_alignment = align.clamp(1, 64) as u32;
    }
    if let Some(&v) = d.contracts.get("ExecutionManager") {
        l.nibble_map_v2 = v >= 2;
    }
    d.globals
        .get("ExecutionManagerCodeRangeMapAddress")
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_unwind_api::SnapshotMemory;

    const SAMPLE: &str = r#"{
        "version": 0, "baseline": "net10.0/coreclr/linux-x64",
        // Compact format: offsets, or [offset, "type"]; "!" the size.
        "types": {
            "RangeSection": { "RangeBegin": 0, "RangeEndOpen": 8, "Flags": [24, "int32"], "HeapList": 40 },
            "MethodDescChunk": { "!": 24, "MethodTable": 0, "FlagsAndTokenRange": 20 }
        },
        "globals": {
            "MethodDescTokenRemainderBitCount": [12, "uint8"],
            "ExecutionManagerCodeRangeMapAddress": [1],
            "StubCodeBlockLast": "0xF"
        },
        "contracts": { "ExecutionManager": 2, "Thread": 1 }
    }"#;

    #[test]
    fn a_compact_descriptor_overrides_the_layout() {
        let d =
            Descriptor::from_json(&parse_json(SAMPLE).unwrap(), &[0x10, 0x7f00_1234_0000]).unwrap();
        assert_eq!(d.globals["StubCodeBlockLast"], 0xf);
        assert_eq!(
            d.globals["ExecutionManagerCodeRangeMapAddress"],
            0x7f00_1234_0000
        );
        assert_eq!(d.contracts["ExecutionManager"], 2);
        let mut l = crate::layout::layout(10).unwrap();
        l.nibble_map_v2 = false;
        let map = apply(&d, &mut l);
        assert_eq!(map, Some(0x7f00_1234_0000));
        assert_eq!(
            (l.rs_flags, l.rs_heap_list, l.chunk_token_range),
            (24, 40, 20)
        );
        assert_eq!(l.chunk_size, 24);
        assert!(l.nibble_map_v2);
    }

    #[test]
    fn the_descriptor_is_read_from_process_memory() {
        let mut mem = SnapshotMemory::new(1);
        let json = format!("{SAMPLE}\0");
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&(json.len() as u32).to_le_bytes());
        header.extend_from_slice(&0x3000u64.to_le_bytes());
        header.extend_from_slice(&2u32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&0x4000u64.to_le_bytes());
        mem.add_region(0x1000, header)
            .add_region(0x3000, json.into_bytes())
            .add_region(
                0x4000,
                [0u64, 0x5555u64]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            );
        let d = read(&mem, 0x1000).unwrap();
        assert_eq!(d.globals["ExecutionManagerCodeRangeMapAddress"], 0x5555);
        assert!(read(&mem, 0x3000).is_err(), "no magic there");
    }

    #[test]
    fn bad_json_is_refused() {
        for text in [
            "",
            "{",
            "[1,",
            r#"{"a" 1}"#,
            "{1: 2}",
            "1.5",
            "\"abc",
            "[1] x",
            "/*",
        ] {
            assert!(parse_json(text).is_err(), "{text:?}");
        }
        assert_eq!(
            parse_json(" [ -0x10 , 7 ] ").unwrap(),
            Json::Array(vec![Json::Number(-16), Json::Number(7)])
        );
    }
}
