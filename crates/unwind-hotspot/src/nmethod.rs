//! Compiled methods (nmethods): which Java methods a PC of compiled code runs, innermost
//! first, from the nmethod's debug information.
//!
//! An nmethod records a `PcDesc` {pc offset, scope offset} for every call site and safepoint,
//! sorted by PC; the debug information of the instructions up to and including a PcDesc's
//! offset is that PcDesc's, so a PC maps to the first PcDesc at or after it (HotSpot's
//! "approximate" lookup; a return address is a call site's exact offset). Its scope is a chain
//! of records in the scopes data, innermost (the method inlined deepest) first, each naming a
//! method by index into the nmethod's metadata array and a bytecode index.

use ferroscope_unwind_api::ProcessMemory;

use crate::Error;
use crate::layout::{Layout, NmethodData};
use crate::stream;

/// Largest PcDesc array or scopes data read (real nmethods' are kilobytes).
pub const MAX_DEBUG_INFO: u64 = 4 << 20;

/// What naming needs of one nmethod, read once per (address, compile ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NmethodInfo {
    /// Its address (the CodeBlob's start).
    pub address: u64,
    /// `_compile_id`: unique per compilation, the identity check.
    pub compile_id: u32,
    /// The method compiled (the outermost scope of every PC).
    pub method: u64,
    /// Where its instructions start (PcDesc offsets are from here).
    pub code_begin: u64,
    /// Its PcDescs: `[start, end)`.
    pub pcs: (u64, u64),
    /// Its scopes data: `[start, end)`.
    pub scopes: (u64, u64),
    /// Its metadata array (`Metadata*` words): start and length in words.
    pub metadata: (u64, u64),
}

fn field(head: &[u8], off: u64, width: usize) -> u64 {
    let Some(b) = usize::try_from(off)
        .ok()
        .and_then(|o| head.get(o..o.checked_add(width)?))
    else {
        return 0;
    };
    let mut w = [0u8; 8];
    w[..width].copy_from_slice(b);
    u64::from_le_bytes(w)
}

/// The size of an nmethod header read (covers every field the layout names).
fn header_len(l: &Layout) -> u64 {
    let mut offsets = vec![
        l.blob_code_begin,
        l.blob_code_end,
        l.nm_method,
        l.nm_compile_id,
    ];
    match l.nm_data {
        NmethodData::InBlob {
            metadata_offset,
            pcs_offset,
            pcs_end_offset,
            scopes_data_begin,
        } => offsets.extend([
            metadata_offset,
            pcs_offset,
            pcs_end_offset,
            scopes_data_begin,
        ]),
        NmethodData::Immutable {
            immutable_data,
            immutable_data_size,
            pcs_offset,
            scopes_data_offset,
            mutable_data,
            mutable_data_size,
            relocation_size,
        } => offsets.extend([
            immutable_data,
            immutable_data_size,
            pcs_offset,
            scopes_data_offset,
            mutable_data,
            mutable_data_size,
            relocation_size,
        ]),
    }
    offsets.into_iter().max().unwrap_or(0) + 8
}

/// The compile ID of the nmethod at `addr` now.
pub fn compile_id_of(mem: &dyn ProcessMemory, l: &Layout, addr: u64) -> Result<u32, Error> {
    let at = addr.wrapping_add(l.nm_compile_id);
    let mut b = [0u8; 4];
    mem.read_exact_at(at, &mut b)
        .map_err(Error::read("nmethod::_compile_id", at))?;
    Ok(u32::from_le_bytes(b))
}

/// Reads the header of the nmethod at `addr`.
pub fn read_nmethod(mem: &dyn ProcessMemory, l: &Layout, addr: u64) -> Result<NmethodInfo, Error> {
    let mut head = vec![0u8; header_len(l) as usize];
    mem.read_exact_at(addr, &mut head)
        .map_err(Error::read("nmethod", addr))?;
    let int = |off: u64| field(&head, off, 4) as u32 as i32 as i64 as u64;
    let ptr = |off: u64| field(&head, off, 8);
    let code_begin = if l.code_offsets {
        addr.wrapping_add(int(l.blob_code_begin))
    } else {
        ptr(l.blob_code_begin)
    };
    let (pcs, scopes, metadata) = match l.nm_data {
        NmethodData::InBlob {
            metadata_offset,
            pcs_offset,
            pcs_end_offset,
            scopes_data_begin,
        } => {
            let md = addr.wrapping_add(int(metadata_offset));
            let sd = ptr(scopes_data_begin);
            let pcs = addr.wrapping_add(int(pcs_offset));
            let pcs_end = addr.wrapping_add(int(pcs_end_offset));
            // Layout: metadata, scopes data, PcDescs.
            ((pcs, pcs_end), (sd, pcs), (md, sd.saturating_sub(md) / 8))
        }
        NmethodData::Immutable {
            immutable_data,
            immutable_data_size,
            pcs_offset,
            scopes_data_offset,
            mutable_data,
            mutable_data_size,
            relocation_size,
        } => {
            let imm = ptr(immutable_data);
            let imm_end = imm.wrapping_add(int(immutable_data_size));
            let sd = imm.wrapping_add(int(scopes_data_offset));
            let pcs = imm.wrapping_add(int(pcs_offset));
            let mutable = ptr(mutable_data);
            let md = mutable.wrapping_add(int(relocation_size));
            let md_end = mutable.wrapping_add(int(mutable_data_size));
            (
                (pcs, sd),
                (sd, imm_end),
                (md, md_end.saturating_sub(md) / 8),
            )
        }
    };
    let info = NmethodInfo {
        address: addr,
        compile_id: field(&head, l.nm_compile_id, 4) as u32,
        method: ptr(l.nm_method),
        code_begin,
        pcs,
        scopes,
        metadata,
    };
    let sane = |(a, b): (u64, u64)| a <= b && b - a <= MAX_DEBUG_INFO;
    if info.method < 0x1000
        || !sane(info.pcs)
        || !sane(info.scopes)
        || info.metadata.1 > MAX_DEBUG_INFO
    {
        return Err(Error::invalid(
            "nmethod",
            addr,
            format!(
                "method {:#x}, PcDescs {:x?}, scopes {:x?}",
                info.method, info.pcs, info.scopes
            ),
        ));
    }
    Ok(info)
}

/// The PcDesc that covers `offset` (from the code's start) among `pcs` (the raw array):
/// the first one at or after it (past the last one with a scope, the last one with a
/// scope). Returns its scope offset (0: none).
pub fn pc_desc_scope(pcs: &[u8], l: &Layout, offset: i64) -> Option<u32> {
    let size = usize::try_from(l.pc_desc_size).ok().filter(|&s| s >= 8)?;
    let n = pcs.len() / size;
    let at = |i: usize, off: u64| field(&pcs[i * size..(i + 1) * size], off, 4) as u32 as i32;
    // Sorted by PC offset: the first entry at or after `offset`.
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if i64::from(at(mid, l.pc_desc_pc_offset)) < offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo >= n {
        return None;
    }
    let scope = at(lo, l.pc_desc_scope_offset) as u32;
    if scope != 0 {
        return Some(scope);
    }
    // The sentinel after the last real PcDesc (no scope: HotSpot then names only the
    // method): the PC is past the last debug point, in code that the closest one before it
    // describes better (the tail of a loop whose safepoint poll comes first).
    (0..lo)
        .rev()
        .map(|i| at(i, l.pc_desc_scope_offset) as u32)
        .find(|&s| s != 0)
        .or(Some(0))
}

impl NmethodInfo {
    /// The methods and bytecode indexes running at the PC `pc_offset` bytes into the nmethod
    /// (from its start), innermost first; the nmethod's own method alone when it has no
    /// debug information there (a JNI wrapper, a stub part of the code).
    pub fn frames_at(
        &self,
        mem: &dyn ProcessMemory,
        l: &Layout,
        pc_offset: u64,
    ) -> Result<Vec<(u64, Option<u32>)>, Error> {
        let outer = vec![(self.method, None)];
        let offset = self
            .address
            .wrapping_add(pc_offset)
            .wrapping_sub(self.code_begin) as i64;
        if self.pcs.0 == self.pcs.1 {
            return Ok(outer);
        }
        let mut pcs = vec![0u8; (self.pcs.1 - self.pcs.0) as usize];
        mem.read_exact_at(self.pcs.0, &mut pcs)
            .map_err(Error::read("PcDescs", self.pcs.0))?;
        let Some(scope) = pc_desc_scope(&pcs, l, offset) else {
            return Ok(outer);
        };
        if scope == 0 {
            return Ok(outer);
        }
        let mut data = vec![0u8; (self.scopes.1 - self.scopes.0) as usize];
        mem.read_exact_at(self.scopes.0, &mut data)
            .map_err(Error::read("scopes data", self.scopes.0))?;
        let chain = stream::scope_chain(&data, scope, l.unsigned5_x);
        if chain.is_empty() {
            return Ok(outer);
        }
        let mut out = Vec::with_capacity(chain.len());
        for s in chain {
            let i = u64::from(s.method_index);
            if i == 0 || i > self.metadata.1 {
                return Err(Error::invalid(
                    "scope",
                    self.scopes.0.wrapping_add(u64::from(scope)),
                    format!("metadata index {i} of {}", self.metadata.1),
                ));
            }
            let at = self.metadata.0.wrapping_add(8 * (i - 1));
            let method = mem
                .read_u64(at)
                .map_err(Error::read("nmethod metadata", at))?;
            out.push((method, u32::try_from(s.bci).ok()));
        }
        Ok(out)
    }
}
