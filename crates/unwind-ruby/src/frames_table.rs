//! Function bounds of a stripped file from its `.eh_frame_hdr` search table, read through
//! [`ElfFile::read_vaddr`]: the ELF header and program headers at the start of the first
//! segment, `PT_GNU_EH_FRAME`, then the sorted table of (function start, FDE) pairs. A
//! function is taken to end where the next one starts (the padding between them never holds a
//! return address). Every read is bounded and checked; malformed input gives `None` (fuzzed).

use ferroscope_unwind_api::ElfFile;

const PT_GNU_EH_FRAME: u32 = 0x6474_e550;
/// Most table entries read (a large libruby has about 12,000).
const MAX_ENTRIES: usize = 1 << 20;

/// The sorted function starts of a file's `.eh_frame_hdr` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionStarts {
    starts: Vec<u64>,
}

impl FunctionStarts {
    /// Reads the table of `file` (its ELF header at virtual address 0, as in shared objects
    /// and position-independent executables, or at 0x400000).
    pub fn read(file: &dyn ElfFile) -> Option<FunctionStarts> {
        [0u64, 0x40_0000]
            .into_iter()
            .find_map(|base| Self::read_at(&|vaddr, buf| file.read_vaddr(vaddr, buf), base))
    }

    /// Reads the table from an ELF image whose header is at `base`, through `read`.
    pub fn read_at(read: &dyn Fn(u64, &mut [u8]) -> bool, base: u64) -> Option<FunctionStarts> {
        let mut eh = [0u8; 64];
        if !read(base, &mut eh) || eh[..4] != *b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
            return None;
        }
        let phoff = u64::from_le_bytes(eh[32..40].try_into().ok()?);
        let phentsize = u16::from_le_bytes([eh[54], eh[55]]) as usize;
        let phnum = u16::from_le_bytes([eh[56], eh[57]]) as usize;
        if phentsize < 56 || phnum > 256 {
            return None;
        }
        let mut ph = vec![0u8; phentsize * phnum];
        if !read(base.checked_add(phoff)?, &mut ph) {
            return None;
        }
        let hdr = ph.chunks_exact(phentsize).find_map(|p| {
            let kind = u32::from_le_bytes(p[0..4].try_into().ok()?);
            let vaddr = u64::from_le_bytes(p[16..24].try_into().ok()?);
            let memsz = u64::from_le_bytes(p[40..48].try_into().ok()?);
            (kind == PT_GNU_EH_FRAME).then_some((vaddr, memsz))
        })?;
        Self::parse(read, hdr.0, hdr.1)
    }

    /// Parses the `.eh_frame_hdr` at `vaddr` (`len` bytes).
    pub fn parse(
        read: &dyn Fn(u64, &mut [u8]) -> bool,
        vaddr: u64,
        len: u64,
    ) -> Option<FunctionStarts> {
        let mut head = [0u8; 4];
        if len < 12 || !read(vaddr, &mut head) || head[0] != 1 {
            return None;
        }
        let (ptr_enc, count_enc, table_enc) = (head[1], head[2], head[3]);
        let mut at = vaddr + 4;
        let _eh_frame = read_encoded(read, &mut at, ptr_enc, vaddr)?;
        let count = read_encoded(read, &mut at, count_enc, vaddr)? as usize;
        // The table must be 4-byte values relative to the header (datarel sdata4 or udata4):
        // what every linker writes.
        if table_enc != 0x3b && table_enc != 0x33 {
            return None;
        }
        let entries = count.min(MAX_ENTRIES);
        let bytes = entries.checked_mul(8)?;
        if (at - vaddr).checked_add(bytes as u64)? > len {
            return None;
        }
        let mut table = vec![0u8; bytes];
        if !read(at, &mut table) {
            return None;
        }
        let mut starts: Vec<u64> = table
            .chunks_exact(8)
            .map(|e| {
                let rel = i32::from_le_bytes([e[0], e[1], e[2], e[3]]);
                vaddr.wrapping_add(rel as i64 as u64)
            })
            .collect();
        starts.sort_unstable();
        starts.dedup();
        Some(FunctionStarts { starts })
    }

    /// The function that starts exactly at `addr`: its bounds `[addr, next start)`.
    pub fn function_at(&self, addr: u64) -> Option<(u64, u64)> {
        let i = self.starts.binary_search(&addr).ok()?;
        let end = self.starts.get(i + 1).copied()?;
        Some((addr, end))
    }

    /// The function containing `addr`.
    pub fn function_containing(&self, addr: u64) -> Option<(u64, u64)> {
        let i = match self.starts.binary_search(&addr) {
            Ok(i) => i,
            Err(0) => return None,
            Err(i) => i - 1,
        };
        let end = self.starts.get(i + 1).copied()?;
        Some((self.starts[i], end))
    }

    /// How many functions the table lists.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
}

/// Reads one DWARF-encoded pointer (`DW_EH_PE_*`) at `*at`, moving past it.
fn read_encoded(
    read: &dyn Fn(u64, &mut [u8]) -> bool,
    at: &mut u64,
    enc: u8,
    datarel: u64,
) -> Option<u64> {
    if enc == 0xff {
        return Some(0);
    }
    let start = *at;
    let value = match enc & 0x0f {
        0x03 | 0x0b => {
            let mut b = [0u8; 4];
            if !read(*at, &mut b) {
                return None;
            }
            *at += 4;
            if enc & 0x0f == 0x0b {
                i32::from_le_bytes(b) as i64 as u64
            } else {
                u32::from_le_bytes(b) as u64
            }
        }
        0x04 | 0x0c => {
            let mut b = [0u8; 8];
            if !read(*at, &mut b) {
                return None;
            }
            *at += 8;
            u64::from_le_bytes(b)
        }
        _ => return None,
    };
    Some(match enc & 0x70 {
        0x00 => value,
        0x10 => start.wrapping_add(value),
        0x30 => datarel.wrapping_add(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Vec<u8> {
        // A header at 0x100: version 1, eh_frame pcrel sdata4, count udata4, table datarel
        // sdata4; three functions.
        let mut img = vec![0u8; 0x200];
        let hdr = 0x100usize;
        img[hdr..hdr + 4].copy_from_slice(&[1, 0x1b, 0x03, 0x3b]);
        img[hdr + 4..hdr + 8].copy_from_slice(&0x40i32.to_le_bytes());
        img[hdr + 8..hdr + 12].copy_from_slice(&3u32.to_le_bytes());
        for (i, start) in [-0x80i32, -0x60, -0x10].iter().enumerate() {
            let e = hdr + 12 + i * 8;
            img[e..e + 4].copy_from_slice(&start.to_le_bytes());
        }
        img
    }

    #[test]
    fn functions_end_where_the_next_one_starts() {
        let img = image();
        let read = |v: u64, buf: &mut [u8]| {
            let v = v as usize;
            match img.get(v..v + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        };
        let t = FunctionStarts::parse(&read, 0x100, 36).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.function_at(0xa0), Some((0xa0, 0xf0)));
        assert_eq!(t.function_containing(0xb0), Some((0xa0, 0xf0)));
        assert_eq!(t.function_at(0xf0), None, "the last one has no known end");
        assert_eq!(t.function_containing(0x10), None);
        assert!(
            FunctionStarts::parse(&read, 0x100, 20).is_none(),
            "a table longer than its header says"
        );
        assert!(FunctionStarts::read_at(&read, 0).is_none(), "no ELF header");
    }
}
