//! Code objects: names, file, first line and line table, read from process memory.

use ferroscope_unwind_api::ProcessMemory;

use crate::{Error, Layout, LineTableFormat, linetable};

/// Longest string read, in code points; longer names are cut.
pub const MAX_STRING_CHARS: usize = 4096;
/// Largest line table read, in bytes; a code object with a larger one is refused.
pub const MAX_LINE_TABLE: usize = 1 << 20;

/// What a profile needs of one code object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeInfo {
    /// `co_qualname` (3.11+, e.g. `Worker.run.<locals>.inner`), else `co_name`.
    pub qualname: String,
    /// `co_name`.
    pub name: String,
    /// `co_filename`.
    pub filename: String,
    /// `co_firstlineno`.
    pub first_line: u32,
    first_line_raw: i64,
    table: Vec<u8>,
    format: LineTableFormat,
}

impl CodeInfo {
    /// The source line of the instruction at `byte_offset` in the code's bytecode (a
    /// [`RawFrame::byte_offset`](crate::RawFrame::byte_offset)); `None` when the code has no
    /// line there.
    pub fn line_for_offset(&self, byte_offset: u32) -> Option<u32> {
        linetable::line_for_offset(self.format, &self.table, self.first_line_raw, byte_offset)
    }

    /// The raw line table (`co_lnotab` or `co_linetable`).
    pub fn line_table(&self) -> (LineTableFormat, &[u8]) {
        (self.format, &self.table)
    }
}

/// Reads the code object at `code_addr`. Reads are bounded by [`MAX_STRING_CHARS`] and
/// [`MAX_LINE_TABLE`]; garbage gives an error, never a panic.
pub fn read_code(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    code_addr: u64,
) -> Result<CodeInfo, Error> {
    let offsets = [
        Some(layout.co_filename),
        Some(layout.co_name),
        layout.co_qualname,
        Some(layout.co_linetable),
    ];
    let len = offsets.iter().flatten().map(|o| o + 8).max().unwrap_or(0) as usize;
    let len = len.max(layout.co_firstlineno as usize + 4);
    let mut head = vec![0u8; len];
    mem.read_exact_at(code_addr, &mut head)
        .map_err(Error::read("code object", code_addr))?;
    let ptr = |off: u32| {
        let off = off as usize;
        u64::from_le_bytes(head[off..off + 8].try_into().unwrap_or([0; 8]))
    };
    let fl = layout.co_firstlineno as usize;
    let first_line_raw = i64::from(i32::from_le_bytes(
        head[fl..fl + 4].try_into().unwrap_or([0; 4]),
    ));
    let name = read_str(mem, layout, ptr(layout.co_name))?;
    let qualname = match layout.co_qualname {
        Some(off) => read_str(mem, layout, ptr(off))?,
        None => name.clone(),
    };
    let filename = read_str(mem, layout, ptr(layout.co_filename))?;
    let table = read_bytes(mem, layout, ptr(layout.co_linetable), MAX_LINE_TABLE)?;
    Ok(CodeInfo {
        qualname,
        name,
        filename,
        first_line: u32::try_from(first_line_raw).unwrap_or(0),
        first_line_raw,
        table,
        format: layout.line_table,
    })
}

/// The `u32` at `co_firstlineno` of the code object at `code_addr`. The eBPF walker records
/// it beside the code pointer, so a cache keyed by `(address, fingerprint)` notices a code
/// object freed and another allocated at the same address (most of the time).
pub fn code_fingerprint(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    code_addr: u64,
) -> Result<u32, Error> {
    let at = code_addr.wrapping_add(u64::from(layout.co_firstlineno));
    let mut b = [0u8; 4];
    mem.read_exact_at(at, &mut b)
        .map_err(Error::read("code object's co_firstlineno", at))?;
    Ok(u32::from_le_bytes(b))
}

/// Reads a `str` object: compact ASCII, compact latin-1/UCS-2/UCS-4, or a legacy string
/// with its characters behind `data.any`. At most [`MAX_STRING_CHARS`] code points.
pub(crate) fn read_str(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    addr: u64,
) -> Result<String, Error> {
    const WHAT: &str = "str object";
    if addr == 0 {
        return Err(Error::invalid(WHAT, addr, "null pointer"));
    }
    let u = &layout.unicode;
    let mut head = vec![0u8; (u.state + 4).max(u.length + 8) as usize];
    mem.read_exact_at(addr, &mut head)
        .map_err(Error::read(WHAT, addr))?;
    let field = |off: u32, n: usize| &head[off as usize..off as usize + n];
    let length = i64::from_le_bytes(field(u.length, 8).try_into().unwrap_or([0; 8]));
    let state = u32::from_le_bytes(field(u.state, 4).try_into().unwrap_or([0; 4]));
    let bit = |b: u8| state >> b & 1 != 0;
    let kind = (state >> u.kind_shift) & 7;
    if length < 0 {
        return Err(Error::invalid(
            WHAT,
            addr,
            format!("negative length {length}"),
        ));
    }
    if u.ready_bit.is_some_and(|b| !bit(b)) {
        return Err(Error::invalid(
            WHAT,
            addr,
            "string is not ready (wstr only)",
        ));
    }
    let width: usize = match kind {
        1 => 1,
        2 => 2,
        4 => 4,
        _ => return Err(Error::invalid(WHAT, addr, format!("bad kind {kind}"))),
    };
    let ascii = bit(u.ascii_bit);
    if ascii && width != 1 {
        return Err(Error::invalid(WHAT, addr, "ascii string of wide kind"));
    }
    let data = if bit(u.compact_bit) {
        addr.wrapping_add(u64::from(if ascii { u.ascii_size } else { u.compact_size }))
    } else {
        let at = addr.wrapping_add(u64::from(u.compact_size));
        mem.read_u64(at)
            .map_err(Error::read("legacy str's data pointer", at))?
    };
    let chars = usize::try_from(length)
        .unwrap_or(usize::MAX)
        .min(MAX_STRING_CHARS);
    let mut raw = vec![0u8; chars * width];
    mem.read_exact_at(data, &mut raw)
        .map_err(Error::read("str characters", data))?;
    let s = match width {
        1 if ascii => String::from_utf8_lossy(&raw).into_owned(),
        1 => raw.iter().map(|&b| char::from(b)).collect(),
        2 => raw
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .map(|c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .map(|c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    };
    Ok(s)
}

/// Reads a `bytes` object of at most `max` bytes (a longer one is an error).
pub(crate) fn read_bytes(
    mem: &dyn ProcessMemory,
    layout: &Layout,
    addr: u64,
    max: usize,
) -> Result<Vec<u8>, Error> {
    const WHAT: &str = "bytes object";
    if addr == 0 {
        return Err(Error::invalid(WHAT, addr, "null pointer"));
    }
    let at = addr.wrapping_add(u64::from(layout.bytes.ob_size));
    let size = mem.read_u64(at).map_err(Error::read(WHAT, at))? as i64;
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s <= max)
        .ok_or_else(|| Error::invalid(WHAT, addr, format!("size {size} is not in 0..={max}")))?;
    let mut out = vec![0u8; size];
    let data = addr.wrapping_add(u64::from(layout.bytes.ob_sval));
    mem.read_exact_at(data, &mut out)
        .map_err(Error::read("bytes object's contents", data))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;
    use ferroscope_unwind_api::SnapshotMemory;

    /// A `str` object of `kind` (1, 2, 4) holding `chars`, laid out for `l`.
    fn put_str(mem: &mut SnapshotMemory, l: &Layout, addr: u64, s: &str, compact: bool) {
        let u = &l.unicode;
        let chars: Vec<u32> = s.chars().map(u32::from).collect();
        let max = chars.iter().copied().max().unwrap_or(0);
        let (kind, ascii) = match max {
            0..=0x7f => (1u32, true),
            0x80..=0xff => (1, false),
            0x100..=0xffff => (2, false),
            _ => (4, false),
        };
        let mut state = kind << u.kind_shift;
        if compact {
            state |= 1 << u.compact_bit;
        }
        if ascii {
            state |= 1 << u.ascii_bit;
        }
        if let Some(b) = u.ready_bit {
            state |= 1 << b;
        }
        let header = if compact && ascii {
            u.ascii_size
        } else {
            u.compact_size
        };
        let mut b = vec![0u8; header as usize + 8];
        b[u.length as usize..][..8].copy_from_slice(&(chars.len() as i64).to_le_bytes());
        b[u.state as usize..][..4].copy_from_slice(&state.to_le_bytes());
        let mut data = Vec::new();
        for c in &chars {
            data.extend_from_slice(&c.to_le_bytes()[..kind as usize]);
        }
        if compact {
            b.truncate(header as usize);
            b.extend_from_slice(&data);
            mem.add_region(addr, b);
        } else {
            let data_addr = addr + 0x800;
            b[u.compact_size as usize..][..8].copy_from_slice(&data_addr.to_le_bytes());
            mem.add_region(addr, b);
            mem.add_region(data_addr, data);
        }
    }

    fn put_bytes(mem: &mut SnapshotMemory, l: &Layout, addr: u64, data: &[u8]) {
        let mut b = vec![0u8; l.bytes.ob_sval as usize];
        b[l.bytes.ob_size as usize..][..8].copy_from_slice(&(data.len() as i64).to_le_bytes());
        b.extend_from_slice(data);
        mem.add_region(addr, b);
    }

    #[test]
    fn strings_of_every_kind_decode() {
        let layouts = [6u8, 11, 12]
            .map(|m| layout(m).unwrap().clone())
            .into_iter()
            .chain([crate::debug_offsets::tests::layout_314()]);
        for l in layouts {
            let (l, minor) = (&l, l.minor);
            for (i, s) in ["plain_ascii", "café", "Ωmega_λ", "emoji_😀"]
                .iter()
                .enumerate()
            {
                for compact in [true, false] {
                    let mut mem = SnapshotMemory::new(1);
                    let addr = 0x10_000 + i as u64 * 0x1000;
                    put_str(&mut mem, l, addr, s, compact);
                    assert_eq!(read_str(&mem, l, addr).unwrap(), *s, "3.{minor} {s}");
                }
            }
        }
    }

    #[test]
    fn bad_strings_are_errors() {
        let l = layout(11).unwrap();
        let mut mem = SnapshotMemory::new(1);
        put_str(&mut mem, l, 0x1000, "abc", true);
        // Clear the ready bit: a wstr-only string.
        let mut raw = vec![0u8; 51];
        mem.read_exact_at(0x1000, &mut raw).unwrap();
        raw[l.unicode.state as usize] &= !(1 << l.unicode.ready_bit.unwrap());
        let mut m2 = SnapshotMemory::new(1);
        m2.add_region(0x1000, raw.clone());
        assert!(matches!(
            read_str(&m2, l, 0x1000),
            Err(Error::Invalid { .. })
        ));
        // Kind 3 does not exist.
        raw[l.unicode.state as usize] = (3 << 2) | (1 << 7) | (1 << 5);
        let mut m3 = SnapshotMemory::new(1);
        m3.add_region(0x1000, raw);
        assert!(matches!(
            read_str(&m3, l, 0x1000),
            Err(Error::Invalid { .. })
        ));
        assert!(read_str(&mem, l, 0).is_err());
        assert!(matches!(read_str(&mem, l, 0x9000), Err(Error::Read { .. })));
    }

    #[test]
    fn code_objects_read_and_cap_sizes() {
        let l = layout(12).unwrap();
        let mut mem = SnapshotMemory::new(1);
        let code = 0x1000u64;
        let mut c = vec![0u8; 256];
        let mut w = |off: u32, v: &[u8]| c[off as usize..][..v.len()].copy_from_slice(v);
        w(l.co_name, &0x2000u64.to_le_bytes());
        w(l.co_qualname.unwrap(), &0x3000u64.to_le_bytes());
        w(l.co_filename, &0x4000u64.to_le_bytes());
        w(l.co_linetable, &0x5000u64.to_le_bytes());
        w(l.co_firstlineno, &42i32.to_le_bytes());
        mem.add_region(code, c);
        put_str(&mut mem, l, 0x2000, "inner", true);
        put_str(&mut mem, l, 0x3000, "Worker.run.<locals>.inner", true);
        put_str(&mut mem, l, 0x4000, "/srv/app.py", true);
        // RESUME (no columns, same line), then 2 units one line below.
        put_bytes(&mut mem, l, 0x5000, &[0xe8, 0x00, 0xd9, 0x02, 0x03]);
        let info = read_code(&mem, l, code).unwrap();
        assert_eq!(info.name, "inner");
        assert_eq!(info.qualname, "Worker.run.<locals>.inner");
        assert_eq!(info.filename, "/srv/app.py");
        assert_eq!(info.first_line, 42);
        assert_eq!(info.line_for_offset(0), Some(42));
        assert_eq!(info.line_for_offset(2), Some(43));
        assert_eq!(info.line_for_offset(4), Some(43));
        assert_eq!(info.line_for_offset(6), None);
        assert_eq!(code_fingerprint(&mem, l, code).unwrap(), 42);

        // A line table claiming 2 GiB is refused without allocating it.
        let mut huge = vec![0u8; 40];
        huge[16..24].copy_from_slice(&(1i64 << 31).to_le_bytes());
        mem.add_region(0x6000, huge);
        let err = read_bytes(&mem, l, 0x6000, MAX_LINE_TABLE).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
    }
}
