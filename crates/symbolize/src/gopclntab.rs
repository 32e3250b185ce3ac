//! Go's `.gopclntab`: the function, file and line table every Go binary carries for its own
//! runtime (stack traces, `runtime.Callers`), kept even when the binary is stripped.
//!
//! Four layouts exist, told apart by the header's magic number:
//!
//! | magic | Go | functab entry | `_func.entry` | name offsets relative to | file numbers |
//! |---|---|---|---|---|---|
//! | `0xfffffffb` | 1.2–1.15 | `(pc, funcoff)` pointer-sized | pointer-sized PC | the table | index into `filetab` |
//! | `0xfffffffa` | 1.16–1.17 | `(pc, funcoff)` pointer-sized | pointer-sized PC | `funcnametab` | via `cutab[cuOffset + n]` |
//! | `0xfffffff0` | 1.18–1.19 | `(entryoff, funcoff)` `u32` | `u32` offset from text start | `funcnametab` | via `cutab` |
//! | `0xfffffff1` | 1.20+ | as 1.18 | as 1.18 | `funcnametab` | via `cutab` |
//!
//! The header is `magic: u32, 0: u8, 0: u8, pc_quantum: u8, ptr_size: u8`, followed by
//! pointer-sized words: for 1.2 the function count, then the functab; for 1.16 the function
//! count, file count and the offsets of `funcnametab`, `cutab`, `filetab`, `pctab` and the
//! functab; 1.18+ insert the text start address after the file count.
//!
//! `_func` is the entry (see above) followed by `u32` fields: `nameoff`, `args`,
//! `deferreturn`, `pcsp`, `pcfile`, `pcln`, `npcdata`, and (1.16+) `cuOffset`. `pcfile` and
//! `pcln` are offsets (into `pctab`, which is the whole table before 1.16) of "pc-value"
//! tables: pairs of varints `(zigzag value delta, pc delta / quantum)`, starting from value
//! -1 at the function's entry, ending at a zero value delta.
//!
//! The table is untrusted input: every read is bounds-checked and every walk bounded; a
//! malformed table yields [`Error::InvalidGoTable`] or unresolved lookups, never a panic.

use crate::Error;

/// The pclntab layout version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GoVersion {
    /// Go 1.2 to 1.15.
    Go12,
    /// Go 1.16 and 1.17.
    Go116,
    /// Go 1.18 and 1.19.
    Go118,
    /// Go 1.20 and later.
    Go120,
}

/// The result of a lookup in a Go table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFrame {
    /// The function's name as Go prints it (`main.main`, `runtime.goexit`).
    pub function: String,
    /// The function's entry address.
    pub entry: u64,
    /// The source file, if the table names one.
    pub file: Option<String>,
    /// The line, if the table has one.
    pub line: Option<u32>,
}

/// A parsed `.gopclntab`, owning a copy of the table's bytes.
#[derive(Debug, Clone)]
pub struct GoTable {
    data: Vec<u8>,
    version: GoVersion,
    big_endian: bool,
    quantum: u32,
    ptr_size: usize,
    nfunc: usize,
    text_start: u64,
    funcnametab: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    /// Offset of the functab; also the base of `_func` offsets.
    functab: usize,
    funcdata: usize,
}

/// Upper bound on entries in one pc-value table walk (a function has at most this many
/// distinct line/file changes in practice; bounds hostile tables).
const MAX_PCVALUE_STEPS: usize = 1 << 20;

impl GoTable {
    /// Parses a `.gopclntab`. `text_start` is the address of the `.text` section (Go 1.18+
    /// store entries relative to it; the table's own copy of it may be unrelocated in PIE
    /// binaries).
    pub fn parse(data: &[u8], text_start: u64) -> Result<GoTable, Error> {
        let bad = |reason: &str| Error::InvalidGoTable {
            reason: reason.to_owned(),
        };
        if data.len() < 16 {
            return Err(bad("the table is shorter than its header"));
        }
        let le = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let be = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let (version, big_endian) = match (le, be) {
            (0xfffffffb, _) => (GoVersion::Go12, false),
            (_, 0xfffffffb) => (GoVersion::Go12, true),
            (0xfffffffa, _) => (GoVersion::Go116, false),
            (_, 0xfffffffa) => (GoVersion::Go116, true),
            (0xfffffff0, _) => (GoVersion::Go118, false),
            (_, 0xfffffff0) => (GoVersion::Go118, true),
            (0xfffffff1, _) => (GoVersion::Go120, false),
            (_, 0xfffffff1) => (GoVersion::Go120, true),
            _ => return Err(bad("unknown magic number (not a Go 1.2+ pclntab)")),
        };
        if data[4] != 0 || data[5] != 0 {
            return Err(bad("header padding is not zero"));
        }
        let quantum = u32::from(data[6]);
        let ptr_size = usize::from(data[7]);
        if !matches!(quantum, 1 | 2 | 4) || !matches!(ptr_size, 4 | 8) {
            return Err(bad("bad pc quantum or pointer size"));
        }
        let mut t = GoTable {
            data: Vec::new(),
            version,
            big_endian,
            quantum,
            ptr_size,
            nfunc: 0,
            text_start,
            funcnametab: 0,
            cutab: 0,
            filetab: 0,
            pctab: 0,
            functab: 0,
            funcdata: 0,
        };
        let word = |i: usize| -> Result<usize, Error> {
            let v = read_uint(data, 8 + i * ptr_size, ptr_size, big_endian)
                .ok_or_else(|| bad("header is truncated"))?;
            usize::try_from(v).map_err(|_| bad("header offset does not fit in memory"))
        };
        match version {
            GoVersion::Go12 => {
                t.nfunc = word(0)?;
                t.functab = 8 + ptr_size;
                let functab_size = t
                    .nfunc
                    .checked_mul(2)
                    .and_then(|n| n.checked_add(1))
                    .and_then(|n| n.checked_mul(ptr_size))
                    .ok_or_else(|| bad("function count overflows"))?;
                let fileoff = read_uint(data, t.functab + functab_size, 4, big_endian)
                    .ok_or_else(|| bad("file table offset is out of bounds"))?;
                t.filetab = fileoff as usize;
                t.funcdata = 0;
            }
            GoVersion::Go116 => {
                t.nfunc = word(0)?;
                t.funcnametab = word(2)?;
                t.cutab = word(3)?;
                t.filetab = word(4)?;
                t.pctab = word(5)?;
                t.functab = word(6)?;
                t.funcdata = t.functab;
            }
            GoVersion::Go118 | GoVersion::Go120 => {
                t.nfunc = word(0)?;
                let stored_text = read_uint(data, 8 + 2 * ptr_size, ptr_size, big_endian)
                    .ok_or_else(|| bad("header is truncated"))?;
                if t.text_start == 0 {
                    t.text_start = stored_text;
                }
                t.funcnametab = word(3)?;
                t.cutab = word(4)?;
                t.filetab = word(5)?;
                t.pctab = word(6)?;
                t.functab = word(7)?;
                t.funcdata = t.functab;
            }
        }
        for off in [t.funcnametab, t.cutab, t.filetab, t.pctab, t.functab] {
            if off > data.len() {
                return Err(bad("a header offset points past the end of the table"));
            }
        }
        let field = t.functab_field_size();
        let needed = t
            .nfunc
            .checked_mul(2)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(field))
            .and_then(|n| n.checked_add(t.functab));
        if needed.is_none_or(|n| n > data.len()) || t.nfunc == 0 {
            return Err(bad("the function table is empty or truncated"));
        }
        t.data = data.to_vec();
        Ok(t)
    }

    /// The layout version.
    pub fn version(&self) -> GoVersion {
        self.version
    }

    /// Bytes of the table copy held.
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// Number of functions in the table.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    /// Whether the table lists no function (never true for a parsed table).
    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    fn functab_field_size(&self) -> usize {
        if self.version >= GoVersion::Go118 {
            4
        } else {
            self.ptr_size
        }
    }

    fn uint(&self, off: usize, size: usize) -> Option<u64> {
        read_uint(&self.data, off, size, self.big_endian)
    }

    fn u32_at(&self, off: usize) -> Option<u32> {
        self.uint(off, 4).map(|v| v as u32)
    }

    /// The entry PC of the `i`th functab entry (`i == nfunc` is the end of the last function).
    fn functab_pc(&self, i: usize) -> Option<u64> {
        let sz = self.functab_field_size();
        let v = self.uint(self.functab.checked_add(2 * i * sz)?, sz)?;
        if self.version >= GoVersion::Go118 {
            self.text_start.checked_add(v)
        } else {
            Some(v)
        }
    }

    fn functab_funcoff(&self, i: usize) -> Option<usize> {
        let sz = self.functab_field_size();
        let v = self.uint(self.functab.checked_add((2 * i + 1) * sz)?, sz)?;
        self.funcdata.checked_add(usize::try_from(v).ok()?)
    }

    /// Offset of field `n` (1-based, after the entry) of the `_func` at `func`.
    fn func_field(&self, func: usize, n: usize) -> Option<u32> {
        let first = if self.version >= GoVersion::Go118 {
            4
        } else {
            self.ptr_size
        };
        self.u32_at(func.checked_add(first + (n - 1) * 4)?)
    }

    fn func_entry(&self, func: usize) -> Option<u64> {
        if self.version >= GoVersion::Go118 {
            self.text_start.checked_add(u64::from(self.u32_at(func)?))
        } else {
            self.uint(func, self.ptr_size)
        }
    }

    fn cstr(&self, off: usize) -> Option<&str> {
        let rest = self.data.get(off..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    /// Looks up the function containing `pc`, with its file and line.
    pub fn lookup(&self, pc: u64) -> Option<GoFrame> {
        // Binary search the functab for the last entry <= pc.
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.functab_pc(mid)? <= pc {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let i = lo.checked_sub(1)?;
        if pc >= self.functab_pc(i + 1)? {
            return None;
        }
        let func = self.functab_funcoff(i)?;
        let entry = self.func_entry(func)?;
        let nameoff = self.func_field(func, 1)? as usize;
        let function = self
            .cstr(self.funcnametab.checked_add(nameoff)?)?
            .to_owned();
        let pcfile = self.func_field(func, 5)?;
        let pcln = self.func_field(func, 6)?;
        let line = self
            .pcvalue(pcln, entry, pc)
            .and_then(|l| u32::try_from(l).ok());
        let file = self
            .pcvalue(pcfile, entry, pc)
            .and_then(|fno| self.file_name(func, fno));
        Some(GoFrame {
            function,
            entry,
            file,
            line,
        })
    }

    fn file_name(&self, func: usize, fno: i32) -> Option<String> {
        let off = match self.version {
            GoVersion::Go12 => {
                if fno <= 0 {
                    return None;
                }
                let nfiles = self.u32_at(self.filetab)?;
                if fno as u32 >= nfiles {
                    return None;
                }
                self.u32_at(self.filetab.checked_add(4 * fno as usize)?)? as usize
            }
            GoVersion::Go116 | GoVersion::Go118 | GoVersion::Go120 => {
                let fno = u32::try_from(fno).ok()?;
                let cu = self.func_field(func, 8)?;
                let idx = cu.checked_add(fno)? as usize;
                let fnoff = self.u32_at(self.cutab.checked_add(idx.checked_mul(4)?)?)?;
                if fnoff == u32::MAX {
                    return None;
                }
                self.filetab.checked_add(fnoff as usize)?
            }
        };
        self.cstr(off).map(str::to_owned)
    }

    /// The value of the pc-value table at `table` (offset into pctab) for `target`.
    fn pcvalue(&self, table: u32, entry: u64, target: u64) -> Option<i32> {
        if table == 0 {
            return None;
        }
        let mut p = self.pctab.checked_add(table as usize)?;
        let mut pc = entry;
        let mut val: i32 = -1;
        for step in 0..MAX_PCVALUE_STEPS {
            let uvdelta = read_varint(&self.data, &mut p)?;
            if uvdelta == 0 && step > 0 {
                return None;
            }
            let vdelta = if uvdelta & 1 != 0 {
                !(uvdelta >> 1)
            } else {
                uvdelta >> 1
            } as i32;
            let pcdelta = read_varint(&self.data, &mut p)?.checked_mul(self.quantum)?;
            pc = pc.checked_add(u64::from(pcdelta))?;
            val = val.wrapping_add(vdelta);
            if target < pc {
                return Some(val);
            }
        }
        None
    }

    /// All functions as `(entry, name)`, in table order (for tests and tools).
    pub fn functions(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        (0..self.nfunc).filter_map(move |i| {
            let func = self.functab_funcoff(i)?;
            let entry = self.func_entry(func)?;
            let nameoff = self.func_field(func, 1)? as usize;
            Some((entry, self.cstr(self.funcnametab.checked_add(nameoff)?)?))
        })
    }
}

fn read_uint(data: &[u8], off: usize, size: usize, big_endian: bool) -> Option<u64> {
    let b = data.get(off..off.checked_add(size)?)?;
    let mut v = 0u64;
    if big_endian {
        for &x in b {
            v = (v << 8) | u64::from(x);
        }
    } else {
        for &x in b.iter().rev() {
            v = (v << 8) | u64::from(x);
        }
    }
    Some(v)
}

/// Reads an unsigned LEB128 varint of at most 32 bits, advancing `p`.
fn read_varint(data: &[u8], p: &mut usize) -> Option<u32> {
    let mut v: u32 = 0;
    let mut shift = 0;
    loop {
        let b = *data.get(*p)?;
        *p += 1;
        v |= u32::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift >= 35 {
            return None;
        }
    }
}

/// Finds the pclntab of a Go ELF binary: the `.gopclntab` section, else (PIE and
/// external-linking builds put it inside `.data.rel.ro`) a header inside a read-only data
/// section that the `runtime.pclntab`/`runtime.epclntab` symbols or a magic search point to.
/// Returns the table bytes and the `.text` address.
pub fn find_in_elf<'data>(file: &object::File<'data>) -> Option<(&'data [u8], u64)> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let text_start = file
        .section_by_name(".text")
        .map(|s| s.address())
        .unwrap_or(0);
    if let Some(s) = file.section_by_name(".gopclntab")
        && let Ok(d) = s.data()
        && !d.is_empty()
    {
        return Some((d, text_start));
    }
    // Not a Go binary unless it has a Go build ID note or buildinfo section.
    let is_go = file.section_by_name(".note.go.buildid").is_some()
        || file.section_by_name(".go.buildinfo").is_some();
    if !is_go {
        return None;
    }
    let sym = |name: &str| {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
    };
    for name in [".data.rel.ro", ".rodata"] {
        let Some(s) = file.section_by_name(name) else {
            continue;
        };
        let Ok(d) = s.data() else { continue };
        if let (Some(start), Some(end)) = (sym("runtime.pclntab"), sym("runtime.epclntab")) {
            let (a, b) = (start.checked_sub(s.address()), end.checked_sub(s.address()));
            if let (Some(a), Some(b)) = (a, b)
                && let Some(t) = d.get(a as usize..b as usize)
            {
                return Some((t, text_start));
            }
        }
        // Magic search, validated by a full header parse.
        for magic in [0xfffffff1u32, 0xfffffff0, 0xfffffffa, 0xfffffffb] {
            let pat = magic.to_le_bytes();
            let mut at = 0;
            while let Some(i) = d
                .get(at..)
                .and_then(|rest| rest.windows(4).position(|w| w == pat))
            {
                let cand = &d[at + i..];
                if GoTable::parse(cand, text_start).is_ok_and(|t| t.lookup_first_ok()) {
                    return Some((cand, text_start));
                }
                at += i + 4;
            }
        }
    }
    None
}

impl GoTable {
    /// Whether the first function of the table resolves (validates a magic-search hit).
    fn lookup_first_ok(&self) -> bool {
        self.functab_pc(0)
            .and_then(|pc| self.lookup(pc))
            .is_some_and(|f| !f.function.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal table in the given layout with two functions, `main.a` at 0x1000 and
    /// `main.b` at 0x1010, end 0x1020; `main.b` at 0x1014 is on line 7 of `/src/x.go`.
    fn synthetic(version: GoVersion) -> (Vec<u8>, u64) {
        let ps = 8usize;
        let text = 0x1000u64;
        let magic: u32 = match version {
            GoVersion::Go12 => 0xfffffffb,
            GoVersion::Go116 => 0xfffffffa,
            GoVersion::Go118 => 0xfffffff0,
            GoVersion::Go120 => 0xfffffff1,
        };
        // pc-value tables: file: value 0 (1.16+) or 1 (1.2) for 0x20 bytes;
        // line: value 5 for 4 bytes, then 7 for 0x10.
        let file_val: u32 = if version == GoVersion::Go12 { 1 } else { 0 };
        let zig = |d: i32| -> u8 {
            if d < 0 {
                (((!d) as u32) << 1 | 1) as u8
            } else {
                ((d as u32) << 1) as u8
            }
        };
        let pcfile = vec![zig(file_val as i32 + 1), 0x10, 0];
        let pcln = vec![zig(6), 4, zig(2), 0x10, 0];
        let mut names = b"\0main.a\0main.b\0".to_vec();
        let name_a = 1u32;
        let name_b = 8u32;
        let file_name = b"/src/x.go\0".to_vec();

        let mut out = Vec::new();
        out.extend(magic.to_le_bytes());
        out.extend([0, 0, 1, ps as u8]);
        let entry_sz = if version >= GoVersion::Go118 { 4 } else { ps };
        let push_uint = |out: &mut Vec<u8>, v: u64, sz: usize| out.extend(&v.to_le_bytes()[..sz]);
        let func_size = if version >= GoVersion::Go118 { 4 } else { ps } + 4 * 9;
        match version {
            GoVersion::Go12 => {
                // header: magic, nfunc, functab (2 entries + end), filetab offset, funcs,
                // names, pc tables, file table.
                push_uint(&mut out, 2, ps);
                let functab = out.len();
                let functab_len = 5 * ps + 4;
                let funcs = functab + functab_len;
                let names_at = funcs + 2 * func_size;
                let pcfile_at = names_at + names.len();
                let pcln_at = pcfile_at + pcfile.len();
                let filestr_at = pcln_at + pcln.len();
                let filetab_at = filestr_at + file_name.len();
                push_uint(&mut out, 0x1000, ps);
                push_uint(&mut out, funcs as u64, ps);
                push_uint(&mut out, 0x1010, ps);
                push_uint(&mut out, (funcs + func_size) as u64, ps);
                push_uint(&mut out, 0x1020, ps);
                out.extend((filetab_at as u32).to_le_bytes());
                for (entry, name) in [(0x1000u64, name_a), (0x1010, name_b)] {
                    push_uint(&mut out, entry, ps);
                    for f in [
                        names_at as u32 + name,
                        0,
                        0,
                        0,
                        pcfile_at as u32,
                        pcln_at as u32,
                        0,
                        0,
                        0,
                    ] {
                        out.extend(f.to_le_bytes());
                    }
                }
                out.append(&mut names);
                out.extend(&pcfile);
                out.extend(&pcln);
                out.extend(&file_name);
                out.extend(2u32.to_le_bytes());
                out.extend((filestr_at as u32).to_le_bytes());
            }
            _ => {
                let words = if version == GoVersion::Go116 { 7 } else { 8 };
                let hdr = 8 + words * ps;
                let names_at = hdr;
                let cutab_at = names_at + names.len();
                let filetab_at = cutab_at + 4;
                let pctab_at = filetab_at + file_name.len();
                let functab_at = pctab_at + 1 + pcfile.len() + pcln.len();
                let pcfile_off = 1u32;
                let pcln_off = 1 + pcfile.len() as u32;
                let mut hdr_words = vec![2u64, 1];
                if version != GoVersion::Go116 {
                    hdr_words.push(text);
                }
                hdr_words.extend(
                    [names_at, cutab_at, filetab_at, pctab_at, functab_at].map(|v| v as u64),
                );
                for w in hdr_words {
                    push_uint(&mut out, w, ps);
                }
                out.append(&mut names);
                out.extend(0u32.to_le_bytes()); // cutab[0] = offset 0 in filetab
                out.extend(&file_name);
                out.push(0);
                out.extend(&pcfile);
                out.extend(&pcln);
                let functab_len = 5 * entry_sz;
                let rel = |pc: u64| {
                    if version >= GoVersion::Go118 {
                        pc - text
                    } else {
                        pc
                    }
                };
                push_uint(&mut out, rel(0x1000), entry_sz);
                push_uint(&mut out, functab_len as u64, entry_sz);
                push_uint(&mut out, rel(0x1010), entry_sz);
                push_uint(&mut out, (functab_len + func_size) as u64, entry_sz);
                push_uint(&mut out, rel(0x1020), entry_sz);
                for (entry, name) in [(0x1000u64, name_a), (0x1010, name_b)] {
                    push_uint(&mut out, rel(entry), entry_sz);
                    for f in [name, 0, 0, 0, pcfile_off, pcln_off, 0, 0, 0] {
                        out.extend(f.to_le_bytes());
                    }
                }
            }
        }
        (out, text)
    }

    #[test]
    fn each_layout_resolves_name_file_and_line() {
        for v in [
            GoVersion::Go12,
            GoVersion::Go116,
            GoVersion::Go118,
            GoVersion::Go120,
        ] {
            let (data, text) = synthetic(v);
            let t = GoTable::parse(&data, text).unwrap_or_else(|e| panic!("{v:?}: {e}"));
            assert_eq!(t.version(), v);
            assert_eq!(t.len(), 2);
            let f = t
                .lookup(0x1014)
                .unwrap_or_else(|| panic!("{v:?}: no frame"));
            assert_eq!(f.function, "main.b", "{v:?}");
            assert_eq!(f.entry, 0x1010);
            assert_eq!(f.file.as_deref(), Some("/src/x.go"), "{v:?}");
            assert_eq!(f.line, Some(7), "{v:?}");
            let f = t.lookup(0x1011).unwrap();
            assert_eq!(f.line, Some(5), "{v:?}");
            assert_eq!(t.lookup(0x1000).unwrap().function, "main.a");
            assert_eq!(t.lookup(0xfff), None);
            assert_eq!(t.lookup(0x1020), None);
            let names: Vec<_> = t.functions().map(|(_, n)| n.to_owned()).collect();
            assert_eq!(names, ["main.a", "main.b"]);
        }
    }

    #[test]
    fn truncations_and_corruptions_never_panic() {
        for v in [
            GoVersion::Go12,
            GoVersion::Go116,
            GoVersion::Go118,
            GoVersion::Go120,
        ] {
            let (data, text) = synthetic(v);
            for len in 0..data.len() {
                if let Ok(t) = GoTable::parse(&data[..len], text) {
                    for pc in 0xff0..0x1030 {
                        let _ = t.lookup(pc);
                    }
                }
            }
            for i in 0..data.len() {
                let mut d = data.clone();
                for x in [0u8, 0xff, 0x80, d[i] ^ 1] {
                    d[i] = x;
                    if let Ok(t) = GoTable::parse(&d, text) {
                        for pc in 0xff0..0x1030 {
                            let _ = t.lookup(pc);
                        }
                        let _ = t.functions().count();
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_non_tables() {
        assert!(GoTable::parse(b"", 0).is_err());
        assert!(GoTable::parse(&[0u8; 64], 0).is_err());
        let mut d = vec![0xfb, 0xff, 0xff, 0xff, 0, 0, 3, 8];
        d.resize(64, 0);
        assert!(GoTable::parse(&d, 0).is_err(), "quantum 3 is invalid");
    }
}
