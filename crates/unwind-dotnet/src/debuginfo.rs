//! The runtime's debug information of a compiled method (`debuginfostore.cpp`): the bounds
//! that map native offsets to IL offsets.
//!
//! 7+ start with a flags byte (bit 0: a `PatchpointInfo` of an OSR method follows, bit 1:
//! "rich" debug info, with its 32-bit size); then, nibble-encoded (3 data bits per nibble,
//! bit 3 continues, low nibble first), the sizes of the bounds and of the variables, and the
//! bounds: a count, then per entry the native offset's delta, the IL offset + 3 (-1 no
//! mapping, -2 prologue, -3 epilogue) and the source flags (0x10: a call instruction).

use crate::Error;

/// `ICorDebugInfo::SourceTypes::CALL_INSTRUCTION`.
const CALL_INSTRUCTION: u32 = 0x10;
/// Most bounds entries decoded.
const MAX_BOUNDS: u32 = 1 << 16;
/// Largest bounds blob believed.
pub const MAX_BOUNDS_BYTES: u32 = 1 << 20;

/// One mapping: from `native` on, the code is IL offset `il` (`None`: no IL offset, a
/// prologue or an epilogue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// Native offset from the code's start.
    pub native: u32,
    /// The IL offset.
    pub il: Option<u32>,
    /// The instruction at `native` is a call.
    pub call: bool,
}

/// Reads nibble-encoded values.
#[derive(Debug)]
pub struct Nibbles<'a> {
    bytes: &'a [u8],
    at: usize,
    high: bool,
}

impl<'a> Nibbles<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Nibbles<'a> {
        Nibbles {
            bytes,
            at: 0,
            high: false,
        }
    }

    fn nibble(&mut self) -> Option<u32> {
        let b = *self.bytes.get(self.at)?;
        if self.high {
            self.high = false;
            self.at += 1;
            Some(u32::from(b >> 4))
        } else {
            self.high = true;
            Some(u32::from(b & 0xf))
        }
    }

    /// An unsigned value.
    pub fn unsigned(&mut self) -> Option<u32> {
        let mut v: u32 = 0;
        for _ in 0..11 {
            let n = self.nibble()?;
            v = (v << 3) | (n & 7);
            if n & 8 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// Moves to the next whole byte.
    pub fn align(&mut self) {
        if self.high {
            self.high = false;
            self.at += 1;
        }
    }

    /// The byte offset of the next whole byte.
    pub fn position(&self) -> usize {
        self.at + usize::from(self.high)
    }
}

/// Where the bounds blob is in a debug info that starts with `head`: (offset, size).
/// `patchpoint` gives the `PatchpointInfo`'s (size, offset of its local count) for OSR
/// methods; `flags_byte` whether the format has the leading flags byte.
pub fn bounds_location(
    head: &[u8],
    flags_byte: bool,
    patchpoint: (u32, u32),
) -> Result<(usize, usize), Error> {
    let bad = |why: &str| Error::format("debug info", why);
    let mut at = 0usize;
    if flags_byte {
        let flags = *head.first().ok_or_else(|| bad("empty"))?;
        if flags & !3 != 0 {
            return Err(bad("unknown flags"));
        }
        at = 1;
        if flags & 1 != 0 {
            let (size, locals_at) = patchpoint;
            let locals = crate::metadata::le_u32(head, at + locals_at as usize)
                .ok_or_else(|| bad("truncated patchpoint info"))?;
            at += size as usize + 4 * locals.min(1 << 16) as usize;
        }
        if flags & 2 != 0 {
            let rich = crate::metadata::le_u32(head, at).ok_or_else(|| bad("truncated"))?;
            at += 4 + rich.min(MAX_BOUNDS_BYTES) as usize;
        }
    }
    let mut n = Nibbles::new(head.get(at..).ok_or_else(|| bad("truncated"))?);
    let bounds = n.unsigned().ok_or_else(|| bad("truncated sizes"))?;
    let _vars = n.unsigned().ok_or_else(|| bad("truncated sizes"))?;
    n.align();
    if bounds > MAX_BOUNDS_BYTES {
        return Err(bad("bounds larger than 1 MiB"));
    }
    Ok((at + n.position(), bounds as usize))
}

/// Decodes a bounds blob.
pub fn decode_bounds(blob: &[u8]) -> Result<Vec<Bound>, Error> {
    let bad = || Error::format("debug info bounds", "truncated or corrupt");
    let mut n = Nibbles::new(blob);
    let count = n.unsigned().ok_or_else(bad)?;
    let mut out = Vec::with_capacity(count.min(MAX_BOUNDS) as usize);
    let mut native = 0u32;
    for _ in 0..count.min(MAX_BOUNDS) {
        native = native.wrapping_add(n.unsigned().ok_or_else(bad)?);
        let il = n.unsigned().ok_or_else(bad)?;
        let source = n.unsigned().ok_or_else(bad)?;
        out.push(Bound {
            native,
            il: il.checked_sub(3),
            call: source & CALL_INSTRUCTION != 0,
        });
    }
    Ok(out)
}

/// The IL offset of native offset `native`: the last mapping at or before it that has one.
/// A return address (`leaf` false) is looked up just before it, inside the call.
pub fn il_offset(bounds: &[Bound], native: u32, leaf: bool) -> Option<u32> {
    let at = if leaf { native } else { native.checked_sub(1)? };
    bounds
        .iter()
        .take_while(|b| b.native <= at)
        .filter_map(|b| b.il)
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nibble-encodes values as the runtime's NibbleWriter does.
    fn encode(values: &[u32]) -> Vec<u8> {
        let mut nibbles = Vec::new();
        for &v in values {
            let mut groups = Vec::new();
            let mut x = v;
            loop {
                groups.push(x & 7);
                x >>= 3;
                if x == 0 {
                    break;
                }
            }
            for (i, g) in groups.iter().rev().enumerate() {
                let more = if i + 1 < groups.len() { 8 } else { 0 };
                nibbles.push(g | more);
            }
        }
        nibbles
            .chunks(2)
            .map(|c| (c[0] | (c.get(1).copied().unwrap_or(0) << 4)) as u8)
            .collect()
    }

    #[test]
    fn nibbles_round_trip() {
        let values = [0, 7, 8, 63, 64, 1000, 0xffff_ffff];
        let bytes = encode(&values);
        let mut n = Nibbles::new(&bytes);
        for v in values {
            assert_eq!(n.unsigned(), Some(v));
        }
    }

    #[test]
    fn bounds_map_native_offsets_to_il_offsets() {
        // Three entries: native 0 -> prologue (-2), native 5 -> IL 0, native 20 -> IL 7
        // (a call), native 30 -> epilogue.
        let blob = encode(&[4, 0, 1, 0, 5, 3, 0, 15, 10, CALL_INSTRUCTION, 10, 0, 0]);
        let b = decode_bounds(&blob).unwrap();
        assert_eq!(
            b,
            [
                Bound {
                    native: 0,
                    il: None,
                    call: false
                },
                Bound {
                    native: 5,
                    il: Some(0),
                    call: false
                },
                Bound {
                    native: 20,
                    il: Some(7),
                    call: true
                },
                Bound {
                    native: 30,
                    il: None,
                    call: false
                },
            ]
        );
        assert_eq!(il_offset(&b, 3, true), None);
        assert_eq!(il_offset(&b, 5, true), Some(0));
        assert_eq!(il_offset(&b, 25, false), Some(7));
        assert_eq!(
            il_offset(&b, 20, false),
            Some(0),
            "inside the call before it"
        );
        assert_eq!(
            il_offset(&b, 40, true),
            Some(7),
            "epilogue keeps the last IL offset"
        );
    }

    #[test]
    fn the_header_is_skipped_to_the_bounds() {
        let sizes = encode(&[3, 9]);
        let mut head = vec![0u8];
        head.extend_from_slice(&sizes);
        head.extend_from_slice(&[0xaa, 0xbb, 0xcc]);
        let (at, size) = bounds_location(&head, true, (32, 8)).unwrap();
        assert_eq!((at, size), (1 + sizes.len(), 3));
        assert!(bounds_location(&[0x80], true, (32, 8)).is_err());
    }
}
