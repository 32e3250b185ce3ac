//! Reading V8 heap objects from another process: tagged values, maps and instance types,
//! fixed and byte arrays, and strings. Every read is bounded and goes through
//! [`ProcessMemory`]; garbage gives an error, never a panic.

use std::collections::HashMap;

use ferroscope_unwind_api::ProcessMemory;

use crate::{Error, Layout};

/// Most elements read from one fixed array.
pub const MAX_ARRAY_ELEMENTS: usize = 1 << 20;
/// Most bytes read from one byte array.
pub const MAX_BYTE_ARRAY: usize = 4 << 20;
/// Most characters of a name (function, file, class).
pub const MAX_NAME_CHARS: usize = 1024;
/// Most characters of a script source read to find its lines and classes.
pub const MAX_SOURCE_CHARS: usize = 16 << 20;
/// Deepest nesting of cons, thin and sliced strings followed.
pub const MAX_STRING_DEPTH: u32 = 32;
/// Maps whose instance type is remembered.
const TYPE_CACHE_LIMIT: usize = 4096;

/// Whether a word is a tagged heap object pointer.
pub fn is_heap_object(v: u64) -> bool {
    v & 3 == 1
}

/// Whether a word is a Smi (small integer).
pub fn is_smi(v: u64) -> bool {
    v & 1 == 0
}

/// The value of a Smi (32 bits in the upper half of the word).
pub fn smi_value(v: u64) -> i32 {
    (v >> 32) as i32
}

/// A V8 heap as seen from outside: the memory, the layout, and a cache of instance types by
/// map.
pub struct Heap<'m> {
    mem: &'m dyn ProcessMemory,
    layout: &'m Layout,
    types: &'m mut HashMap<u64, u16>,
}

impl std::fmt::Debug for Heap<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heap")
            .field("pid", &self.mem.pid())
            .field("version", &self.layout.version)
            .finish_non_exhaustive()
    }
}

/// A string's characters, as read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct V8String {
    /// UTF-16 code units (Latin-1 strings widened): what V8's source positions count.
    pub units: Vec<u16>,
}

impl V8String {
    /// The string as Rust text (lossy for unpaired surrogates).
    pub fn to_string_lossy(&self) -> String {
        String::from_utf16_lossy(&self.units)
    }
}

impl<'m> Heap<'m> {
    /// A heap over `mem` laid out as `layout`, remembering instance types in `types`.
    pub fn new(
        mem: &'m dyn ProcessMemory,
        layout: &'m Layout,
        types: &'m mut HashMap<u64, u16>,
    ) -> Self {
        Heap { mem, layout, types }
    }

    /// The layout.
    pub fn layout(&self) -> &'m Layout {
        self.layout
    }

    /// The memory.
    pub fn memory(&self) -> &dyn ProcessMemory {
        self.mem
    }

    /// Reads `buf.len()` bytes at `addr`.
    pub fn read(&self, what: &'static str, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.mem
            .read_exact_at(addr, buf)
            .map_err(Error::read(what, addr))
    }

    /// The word at `addr`.
    pub fn word(&self, what: &'static str, addr: u64) -> Result<u64, Error> {
        self.mem.read_u64(addr).map_err(Error::read(what, addr))
    }

    /// The 32-bit value at `addr`.
    pub fn u32_at(&self, what: &'static str, addr: u64) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        self.read(what, addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// The field at byte `offset` of the object `obj` (tagged).
    pub fn field(&self, what: &'static str, obj: u64, offset: u16) -> Result<u64, Error> {
        self.word(what, obj.wrapping_sub(1).wrapping_add(u64::from(offset)))
    }

    /// A field that must hold a Smi.
    pub fn smi_field(&self, what: &'static str, obj: u64, offset: u16) -> Result<i32, Error> {
        let v = self.field(what, obj, offset)?;
        if !is_smi(v) {
            return Err(Error::invalid(what, obj, format!("{v:#x} is not a Smi")));
        }
        Ok(smi_value(v))
    }

    /// The instance type of the object `obj` (tagged), through its map.
    pub fn instance_type(&mut self, obj: u64) -> Result<u16, Error> {
        if !is_heap_object(obj) {
            return Err(Error::invalid(
                "heap object",
                obj,
                "not a tagged pointer".to_string(),
            ));
        }
        let map = self.word("object map", obj - 1)?;
        self.map_instance_type(map)
    }

    /// The instance type a map (tagged) describes.
    pub fn map_instance_type(&mut self, map: u64) -> Result<u16, Error> {
        if let Some(&t) = self.types.get(&map) {
            return Ok(t);
        }
        if !is_heap_object(map) {
            return Err(Error::invalid(
                "object map",
                map,
                "not a tagged pointer".to_string(),
            ));
        }
        let mut b = [0u8; 2];
        self.read(
            "map instance type",
            map - 1 + u64::from(self.layout.map_instance_type),
            &mut b,
        )?;
        let t = u16::from_le_bytes(b);
        if self.types.len() >= TYPE_CACHE_LIMIT {
            self.types.clear();
        }
        self.types.insert(map, t);
        Ok(t)
    }

    /// `obj` if it is a heap object of instance type `t`.
    pub fn expect_type(&mut self, what: &'static str, obj: u64, t: u16) -> Result<u64, Error> {
        let got = self.instance_type(obj)?;
        if got != t {
            return Err(Error::invalid(
                what,
                obj,
                format!("instance type {got}, not {t}"),
            ));
        }
        Ok(obj)
    }

    /// The length (a Smi) of a fixed or byte array.
    pub fn array_length(&self, what: &'static str, obj: u64) -> Result<usize, Error> {
        let n = self.smi_field(what, obj, self.layout.fixed_array_length)?;
        usize::try_from(n).map_err(|_| Error::invalid(what, obj, format!("length {n}")))
    }

    /// The first `limit` elements of a fixed array (all, up to `MAX_ARRAY_ELEMENTS`).
    pub fn fixed_array(
        &self,
        what: &'static str,
        obj: u64,
        limit: usize,
    ) -> Result<Vec<u64>, Error> {
        let n = self.array_length(what, obj)?.min(limit);
        if n > MAX_ARRAY_ELEMENTS {
            return Err(Error::invalid(what, obj, format!("{n} elements")));
        }
        let mut bytes = vec![0u8; n * 8];
        self.read(
            what,
            obj - 1 + u64::from(self.layout.fixed_array_data),
            &mut bytes,
        )?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    /// The bytes of a byte array (up to `MAX_BYTE_ARRAY`).
    pub fn byte_array(&self, what: &'static str, obj: u64) -> Result<Vec<u8>, Error> {
        let n = self.array_length(what, obj)?;
        if n > MAX_BYTE_ARRAY {
            return Err(Error::invalid(what, obj, format!("{n} bytes")));
        }
        let mut bytes = vec![0u8; n];
        self.read(
            what,
            obj - 1 + u64::from(self.layout.fixed_array_data),
            &mut bytes,
        )?;
        Ok(bytes)
    }

    /// Whether `obj` is a string.
    pub fn is_string(&mut self, obj: u64) -> bool {
        is_heap_object(obj)
            && self
                .instance_type(obj)
                .is_ok_and(|t| t < self.layout.first_nonstring_type)
    }

    /// A short string (a name), at most `MAX_NAME_CHARS` characters.
    pub fn name(&mut self, obj: u64) -> Result<String, Error> {
        Ok(self.string(obj, MAX_NAME_CHARS)?.to_string_lossy())
    }

    /// The characters of the string `obj` (tagged), at most `limit` of them: sequential,
    /// cons, thin, sliced and (cached) external strings, one- or two-byte.
    pub fn string(&mut self, obj: u64, limit: usize) -> Result<V8String, Error> {
        let mut out = V8String::default();
        self.append_string(obj, 0, usize::MAX, limit, &mut out, 0)?;
        Ok(out)
    }

    /// The characters [from, from + count) of the string `obj` (tagged): a window of a
    /// long source.
    pub fn substring(&mut self, obj: u64, from: usize, count: usize) -> Result<V8String, Error> {
        let mut out = V8String::default();
        self.append_string(obj, from, count, count, &mut out, 0)?;
        Ok(out)
    }

    /// Appends the characters [from, from + count) of string `obj` to `out` (at most `limit`
    /// characters in all).
    fn append_string(
        &mut self,
        obj: u64,
        from: usize,
        count: usize,
        limit: usize,
        out: &mut V8String,
        depth: u32,
    ) -> Result<(), Error> {
        if depth > MAX_STRING_DEPTH {
            return Err(Error::invalid(
                "string",
                obj,
                "nested too deeply".to_string(),
            ));
        }
        let t = self.instance_type(obj)?;
        if t >= self.layout.first_nonstring_type {
            return Err(Error::invalid(
                "string",
                obj,
                format!("instance type {t} is not a string"),
            ));
        }
        let l = self.layout;
        let length = self.u32_at("string length", obj - 1 + u64::from(l.string_length))? as usize;
        if from >= length {
            return Ok(());
        }
        let count = count.min(length - from);
        let room = limit.saturating_sub(out.units.len());
        let one_byte = t & STRING_ENCODING_MASK == ONE_BYTE_TAG;
        match t & STRING_REPRESENTATION_MASK {
            SEQ_TAG => {
                let n = count.min(room);
                let chars = obj - 1 + u64::from(l.seq_string_chars);
                self.append_chars(chars, from, n, one_byte, out)
            }
            EXTERNAL_TAG => {
                if t & UNCACHED_EXTERNAL_MASK != 0 {
                    return Err(Error::invalid(
                        "string",
                        obj,
                        "an uncached external string (its characters are behind a C++ \
                         object)"
                            .to_string(),
                    ));
                }
                let data = self.word(
                    "external string data",
                    obj - 1 + u64::from(l.external_resource_data),
                )?;
                let n = count.min(room);
                self.append_chars(data, from, n, one_byte, out)
            }
            CONS_TAG => {
                let first = self.field("cons string", obj, l.cons_first)?;
                let second = self.field("cons string", obj, l.cons_second)?;
                let first_len = if is_heap_object(first) {
                    self.u32_at("string length", first - 1 + u64::from(l.string_length))? as usize
                } else {
                    0
                };
                if from < first_len {
                    let n = count.min(first_len - from);
                    self.append_string(first, from, n, limit, out, depth + 1)?;
                }
                let end = from + count;
                if end > first_len && out.units.len() < limit {
                    let start = from.max(first_len);
                    self.append_string(
                        second,
                        start - first_len,
                        end - start,
                        limit,
                        out,
                        depth + 1,
                    )?;
                }
                Ok(())
            }
            SLICED_TAG => {
                let parent = self.field("sliced string", obj, l.sliced_parent)?;
                let offset = self.smi_field("sliced string", obj, l.sliced_offset)?;
                let offset = usize::try_from(offset).unwrap_or(0);
                self.append_string(parent, offset + from, count, limit, out, depth + 1)
            }
            THIN_TAG => {
                let actual = self.field("thin string", obj, l.thin_actual)?;
                self.append_string(actual, from, count, limit, out, depth + 1)
            }
            r => Err(Error::invalid(
                "string",
                obj,
                format!("representation {r} of instance type {t}"),
            )),
        }
    }

    fn append_chars(
        &self,
        chars: u64,
        from: usize,
        n: usize,
        one_byte: bool,
        out: &mut V8String,
    ) -> Result<(), Error> {
        // In chunks, so that a huge source is not one huge read.
        const CHUNK: usize = 64 << 10;
        let width = if one_byte { 1 } else { 2 };
        let mut done = 0;
        let mut buf = vec![0u8; CHUNK.min(n * width)];
        while done < n {
            let take = (n - done).min(CHUNK / width);
            let bytes = &mut buf[..take * width];
            self.read(
                "string characters",
                chars + ((from + done) * width) as u64,
                bytes,
            )?;
            if one_byte {
                out.units.extend(bytes.iter().map(|&b| u16::from(b)));
            } else {
                out.units.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]])),
                );
            }
            done += take;
        }
        Ok(())
    }
}

// String instance type bits (the same in every V8 version supported, and in the binaries'
// v8dbg_StringRepresentationMask, _StringEncodingMask and _*StringTag constants).
const STRING_REPRESENTATION_MASK: u16 = 0x7;
const SEQ_TAG: u16 = 0x0;
const CONS_TAG: u16 = 0x1;
const EXTERNAL_TAG: u16 = 0x2;
const SLICED_TAG: u16 = 0x3;
const THIN_TAG: u16 = 0x5;
const STRING_ENCODING_MASK: u16 = 0x8;
const ONE_BYTE_TAG: u16 = 0x8;
const UNCACHED_EXTERNAL_MASK: u16 = 0x10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagging() {
        assert!(is_heap_object(0x1234_5679));
        assert!(!is_heap_object(0x1234_5678));
        assert!(is_smi(0x0000_0007_0000_0000));
        assert_eq!(smi_value(0x0000_0007_0000_0000), 7);
        assert_eq!(smi_value(0xffff_ffff_0000_0000), -1);
    }
}
