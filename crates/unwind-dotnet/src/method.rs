//! From a JIT frame's code header to the method: `RealCodeHeader` → `MethodDesc` → its
//! `MethodDescChunk` (the `MethodTable` and the high bits of the `MethodDef` token) → the
//! `MethodTable`'s `Module` → the module's simple name, a pointer into the assembly's
//! flat-mapped image (how the image is found).

use ferroscope_unwind_api::ProcessMemory;

use crate::Error;
use crate::layout::Layout;
use crate::metadata::{le_u16, le_u32, le_u64};

/// A method's classification (`MethodDesc::m_wFlags & mdcClassification`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Classification {
    /// IL.
    Il,
    /// An FCall (implemented in the runtime).
    FCall,
    /// A P/Invoke.
    NDirect,
    /// Implemented by the runtime (delegates' Invoke).
    EEImpl,
    /// Array accessors.
    Array,
    /// An instantiated generic method, or a method of an instantiated type with its own desc.
    Instantiated,
    /// COM interop.
    ComInterop,
    /// Dynamic: LCG (`DynamicMethod`) or an IL stub.
    Dynamic,
}

impl Classification {
    fn from_bits(b: u16) -> Classification {
        match b & 7 {
            0 => Classification::Il,
            1 => Classification::FCall,
            2 => Classification::NDirect,
            3 => Classification::EEImpl,
            4 => Classification::Array,
            5 => Classification::Instantiated,
            6 => Classification::ComInterop,
            _ => Classification::Dynamic,
        }
    }
}

/// What a code header says about its method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeHeader {
    /// `phdrDebugInfo` (0: none).
    pub debug_info: u64,
    /// `phdrMDesc`.
    pub method_desc: u64,
}

/// Reads a `RealCodeHeader`.
pub fn code_header(mem: &dyn ProcessMemory, l: &Layout, at: u64) -> Result<CodeHeader, Error> {
    let mut b = vec![0u8; l.rch_method_desc as usize + 8];
    mem.read_exact_at(at, &mut b)
        .map_err(Error::read("a code header", at))?;
    let debug_info = le_u64(&b, l.rch_debug_info as usize).unwrap_or(0);
    let method_desc = le_u64(&b, l.rch_method_desc as usize).unwrap_or(0);
    if method_desc == 0 {
        return Err(Error::format("code header", "no method desc"));
    }
    Ok(CodeHeader {
        debug_info,
        method_desc,
    })
}

/// What naming needs of a `MethodDesc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodDesc {
    /// Its address.
    pub address: u64,
    /// The `MethodDef` row (the token without its table byte).
    pub rid: u32,
    /// Its classification.
    pub classification: Classification,
    /// The owning `MethodTable`.
    pub method_table: u64,
}

/// Reads a `MethodDesc` and its chunk.
pub fn method_desc(mem: &dyn ProcessMemory, l: &Layout, at: u64) -> Result<MethodDesc, Error> {
    let mut b = [0u8; 8];
    mem.read_exact_at(at, &mut b)
        .map_err(Error::read("a method desc", at))?;
    let remainder = u32::from(le_u16(&b, l.md_token as usize).unwrap_or(0));
    let chunk_index = u64::from(b[l.md_chunk_index as usize & 7]);
    let flags = le_u16(&b, l.md_flags as usize).unwrap_or(0);
    let chunk = at
        .checked_sub(chunk_index * u64::from(l.md_alignment) + u64::from(l.chunk_size))
        .ok_or_else(|| Error::format("method desc", "its chunk would be below address 0"))?;
    let mut c = vec![0u8; l.chunk_size as usize];
    mem.read_exact_at(chunk, &mut c)
        .map_err(Error::read("a method desc chunk", chunk))?;
    let method_table = le_u64(&c, l.chunk_method_table as usize).unwrap_or(0);
    let range = u32::from(le_u16(&c, l.chunk_token_range as usize).unwrap_or(0));
    let mask = (1u32 << l.md_token_bits) - 1;
    let rid = ((range & l.chunk_token_mask()) << l.md_token_bits) | (remainder & mask);
    if method_table == 0 {
        return Err(Error::format("method desc chunk", "no method table"));
    }
    Ok(MethodDesc {
        address: at,
        rid,
        classification: Classification::from_bits(flags),
        method_table,
    })
}

/// What naming needs of a `MethodTable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodTable {
    /// Its `Module`.
    pub module: u64,
    /// Its `TypeDef` row (`m_wToken`; 0 when it does not fit 16 bits).
    pub type_rid: u32,
    /// `m_pPerInstInfo`: the dictionary of a generic instantiation (0: none).
    pub per_inst_info: u64,
    /// `m_dwFlags`.
    pub flags: u32,
}

/// `MethodTable` flags: the generics kind (an instantiation, or the canonical one whose code
/// reference types share), an array.
const MT_FLAG_GENERICS_MASK: u32 = 0x0000_0030;
const MT_FLAG_GENERICS_INST: u32 = 0x0000_0010;
const MT_FLAG_GENERICS_SHARED: u32 = 0x0000_0020;
const MT_FLAG_ARRAY: u32 = 0x0008_0000;

impl MethodTable {
    /// Whether it is an instantiated generic type (its arguments in `per_inst_info`).
    pub fn is_generic_instantiation(&self) -> bool {
        matches!(
            self.flags & MT_FLAG_GENERICS_MASK,
            MT_FLAG_GENERICS_INST | MT_FLAG_GENERICS_SHARED
        )
    }

    /// Whether it is an array type.
    pub fn is_array(&self) -> bool {
        self.flags & MT_FLAG_ARRAY != 0
    }
}

/// Reads a `MethodTable`.
pub fn method_table(mem: &dyn ProcessMemory, l: &Layout, at: u64) -> Result<MethodTable, Error> {
    let mut b = vec![0u8; l.mt_per_inst_info as usize + 8];
    mem.read_exact_at(at, &mut b)
        .map_err(Error::read("a method table", at))?;
    let module = le_u64(&b, l.mt_module as usize).unwrap_or(0);
    if module == 0 {
        return Err(Error::format("method table", "no module"));
    }
    Ok(MethodTable {
        module,
        type_rid: u32::from(le_u16(&b, l.mt_token as usize).unwrap_or(0)),
        per_inst_info: le_u64(&b, l.mt_per_inst_info as usize).unwrap_or(0),
        flags: le_u32(&b, l.mt_flags as usize).unwrap_or(0),
    })
}

/// The address of a module's simple name (inside its flat-mapped image).
pub fn module_name_address(mem: &dyn ProcessMemory, l: &Layout, module: u64) -> Result<u64, Error> {
    let at = module.wrapping_add(u64::from(l.module_simple_name));
    let p = mem
        .read_u64(at)
        .map_err(Error::read("a module's simple name", at))?;
    if p == 0 {
        return Err(Error::format("module", "no simple name"));
    }
    Ok(p)
}

/// The type arguments of an instantiated method (`InstantiatedMethodDesc`): their
/// `MethodTable`s (a type handle with bit 1 set is not a MethodTable and is returned as 0).
pub fn method_type_args(mem: &dyn ProcessMemory, l: &Layout, md: u64) -> Result<Vec<u64>, Error> {
    let mut b = [0u8; 8];
    mem.read_exact_at(md.wrapping_add(u64::from(l.imd_num_args)), &mut b[..2])
        .map_err(Error::read("an instantiated method desc", md))?;
    let n = le_u16(&b, 0).unwrap_or(0).min(16);
    let dict = mem
        .read_u64(md.wrapping_add(u64::from(l.imd_per_inst_info)))
        .map_err(Error::read("an instantiated method desc", md))?;
    type_handles(mem, dict, n.into())
}

/// `n` type handles at `at` (0 for ones that are not MethodTables).
pub fn type_handles(mem: &dyn ProcessMemory, at: u64, n: usize) -> Result<Vec<u64>, Error> {
    if at == 0 || n == 0 {
        return Ok(Vec::new());
    }
    let mut b = vec![0u8; 8 * n];
    mem.read_exact_at(at, &mut b)
        .map_err(Error::read("a type argument list", at))?;
    Ok((0..n)
        .map(|i| {
            let h = le_u64(&b, 8 * i).unwrap_or(0);
            if h & 2 != 0 { 0 } else { h }
        })
        .collect())
}

/// The type arguments of an instantiated generic type: the last dictionary of its
/// `m_pPerInstInfo` (one per generic ancestor; its own is the last), `n` handles.
pub fn type_args(
    mem: &dyn ProcessMemory,
    mt: &MethodTable,
    dictionaries: usize,
    n: usize,
) -> Result<Vec<u64>, Error> {
    if mt.per_inst_info == 0 || dictionaries == 0 {
        return Ok(Vec::new());
    }
    let slot = mt
        .per_inst_info
        .wrapping_add(8u64.wrapping_mul(dictionaries as u64 - 1));
    let dict = mem
        .read_u64(slot)
        .map_err(Error::read("a generic dictionary", slot))?;
    type_handles(mem, dict, n)
}
