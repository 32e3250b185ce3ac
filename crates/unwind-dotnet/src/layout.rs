//! Where CoreCLR keeps what the walker and the naming read, per major version.
//!
//! .NET 6 to 8 do not describe their own data structures: `g_dacTable` only lists the
//! addresses of the runtime's globals, in the order of the runtime's `dacvars.h`, so field
//! offsets are facts of each version's headers (release builds, x64, Linux). .NET 9 and later
//! ship a contract descriptor (`DotNetRuntimeContractDescriptor`) whose JSON names types,
//! field offsets and globals: [`crate::contract`] overrides these defaults from it.
//!
//! The .NET 8 values were checked on a live .NET 8.0.4 process (the tests do it again:
//! `tests/live.rs`); 6, 7, 9 and 10 come from their published sources and are not run here.

/// Offsets of one CoreCLR version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The major version.
    pub major: u32,
    /// `g_dacTable` holds 32-bit RVAs of libcoreclr (6) rather than pointers (7+).
    pub dac_rvas: bool,
    /// `g_dacTable` slot of `ExecutionManager::g_codeRangeMap` (8+: the RangeSectionMap
    /// object) or `m_CodeRangeList` (6, 7: a pointer to the first RangeSection).
    pub slot_code_ranges: u32,
    /// Slots of stub managers whose range lists hold stubs outside the range map:
    /// `StubLinkStubManager`, `ThunkHeapStubManager`.
    pub slot_stub_managers: &'static [(u32, u8)],
    /// 8+: ranges live in a five-level RangeSectionMap; 6, 7: a linked list.
    pub range_map: bool,
    /// `RangeSection`: `_range.begin`, `_range.end`, `_flags`, `_pR2RModule`, `_pHeapList`,
    /// `_pRangeList` (8+), and the list's `pnext` (6, 7).
    pub rs_begin: u32,
    /// See `rs_begin`.
    pub rs_end: u32,
    /// See `rs_begin`.
    pub rs_flags: u32,
    /// See `rs_begin`.
    pub rs_module: u32,
    /// See `rs_begin`.
    pub rs_heap_list: u32,
    /// See `rs_begin` (`None` before 8).
    pub rs_range_list: Option<u32>,
    /// See `rs_begin` (`None` from 8).
    pub rs_next: Option<u32>,
    /// `RangeSection` bytes read.
    pub rs_size: u32,
    /// `CodeRangeMapRangeList::_rangeListType` (8+).
    pub range_list_kind: u32,
    /// `HeapList`: `startAddress`, `endAddress`, `mapBase`, `pHdrMap`, and
    /// `CLRPersonalityRoutine` (the base of its RUNTIME_FUNCTION offsets when set).
    pub hl_start: u32,
    /// See `hl_start`.
    pub hl_end: u32,
    /// See `hl_start`.
    pub hl_map_base: u32,
    /// See `hl_start`.
    pub hl_hdr_map: u32,
    /// See `hl_start`.
    pub hl_personality: u32,
    /// `RealCodeHeader`: `phdrDebugInfo`, `phdrMDesc`, `nUnwindInfos`, `unwindInfos`.
    pub rch_debug_info: u32,
    /// See `rch_debug_info`.
    pub rch_method_desc: u32,
    /// See `rch_debug_info`.
    pub rch_unwind_count: u32,
    /// See `rch_debug_info`.
    pub rch_unwind_infos: u32,
    /// `MethodDesc`: `m_wFlags3AndTokenRemainder`, `m_chunkIndex`, `m_wFlags`, and how many
    /// bits of the token the first holds.
    pub md_token: u32,
    /// See `md_token`.
    pub md_chunk_index: u32,
    /// See `md_token`.
    pub md_flags: u32,
    /// See `md_token`.
    pub md_token_bits: u32,
    /// `MethodDesc::ALIGNMENT`.
    pub md_alignment: u32,
    /// `sizeof(MethodDesc)` (where the classification's own fields start).
    pub md_size: u32,
    /// `MethodDescChunk`: `m_methodTable`, `m_flagsAndTokenRange`, its size.
    pub chunk_method_table: u32,
    /// See `chunk_method_table`.
    pub chunk_token_range: u32,
    /// See `chunk_method_table`.
    pub chunk_size: u32,
    /// `MethodTable`: `m_wToken`, `m_pParentMethodTable`, `m_pModule`, `m_pPerInstInfo`, the
    /// `m_wFlags2`, `m_dwFlags`.
    pub mt_token: u32,
    /// See `mt_token`.
    pub mt_module: u32,
    /// See `mt_token`.
    pub mt_per_inst_info: u32,
    /// See `mt_token`.
    pub mt_flags: u32,
    /// `Module::m_pSimpleName` (a pointer into the flat-mapped image's `#Strings`).
    pub module_simple_name: u32,
    /// `InstantiatedMethodDesc`: `m_pPerInstInfo` (the method's type arguments) and
    /// `m_wNumGenericArgs`, from the start of the MethodDesc.
    pub imd_per_inst_info: u32,
    /// See `imd_per_inst_info`.
    pub imd_num_args: u32,
    /// `DynamicMethodDesc::m_pszMethodName`, from the start of the MethodDesc.
    pub dmd_name: u32,
    /// `PatchpointInfo`: its size and where `m_numberOfLocals` is (skipped in OSR debug
    /// info).
    pub patchpoint_size: u32,
    /// See `patchpoint_size`.
    pub patchpoint_locals: u32,
    /// The debug info starts with a flags byte (OSR patchpoints, rich info: 7+).
    pub debug_flags_byte: bool,
    /// The nibble maps also hold pointers to the method start in the words a method covers
    /// (ExecutionManager contract version 2: .NET 10).
    pub nibble_map_v2: bool,
}

/// The StubCodeBlockKind values this reports for stub managers' ranges (our own: the runtime
/// has none for them; chosen past its own kinds).
pub const STUB_LINK: u8 = 0x12;
/// See [`STUB_LINK`].
pub const STUB_THUNK_HEAP: u8 = 0x14;

/// The layout of .NET `major` (6 to 10), `None` for others.
pub fn layout(major: u32) -> Option<Layout> {
    let net8 = Layout {
        major: 8,
        dac_rvas: false,
        slot_code_ranges: 0,
        slot_stub_managers: &[(0xa, STUB_LINK), (0xb, STUB_THUNK_HEAP)],
        range_map: true,
        rs_begin: 0,
        rs_end: 8,
        rs_flags: 0x10,
        rs_module: 0x20,
        rs_heap_list: 0x28,
        rs_range_list: Some(0x30),
        rs_next: None,
        rs_size: 0x38,
        range_list_kind: 0x120,
        hl_start: 0x10,
        hl_end: 0x18,
        hl_map_base: 0x20,
        hl_hdr_map: 0x28,
        hl_personality: 0x48,
        rch_debug_info: 0,
        rch_method_desc: 0x18,
        rch_unwind_count: 0x20,
        rch_unwind_infos: 0x24,
        md_token: 0,
        md_chunk_index: 2,
        md_flags: 6,
        md_token_bits: 12,
        md_alignment: 8,
        md_size: 8,
        chunk_method_table: 0,
        chunk_token_range: 0x12,
        chunk_size: 0x18,
        mt_token: 0xa,
        mt_module: 0x18,
        mt_per_inst_info: 0x30,
        mt_flags: 0,
        module_simple_name: 0x108,
        imd_per_inst_info: 0x10,
        imd_num_args: 0x1a,
        dmd_name: 0x18,
        patchpoint_size: 32,
        patchpoint_locals: 8,
        debug_flags_byte: true,
        nibble_map_v2: false,
    };
    match major {
        6 => Some(Layout {
            major: 6,
            dac_rvas: true,
            slot_stub_managers: &[(0xa, STUB_LINK), (0xb, STUB_THUNK_HEAP)],
            range_map: false,
            rs_flags: 0x28,
            rs_module: 0x30,
            rs_heap_list: 0x30,
            rs_range_list: None,
            rs_next: Some(0x18),
            md_token_bits: 14,
            module_simple_name: 0x8,
            patchpoint_size: 20,
            patchpoint_locals: 0,
            debug_flags_byte: false,
            ..net8
        }),
        7 => Some(Layout {
            major: 7,
            range_map: false,
            rs_flags: 0x28,
            rs_module: 0x30,
            rs_heap_list: 0x30,
            rs_range_list: None,
            rs_next: Some(0x18),
            md_token_bits: 13,
            module_simple_name: 0x100,
            ..net8
        }),
        8 => Some(net8),
        // 9 and 10 start from the 8 values; the contract descriptor corrects them.
        9 => Some(Layout { major, ..net8 }),
        10 => Some(Layout {
            major,
            nibble_map_v2: true,
            ..net8
        }),
        _ => None,
    }
}

impl Layout {
    /// The `MethodDef` token bits a `MethodDescChunk` holds.
    pub fn chunk_token_mask(&self) -> u32 {
        (1 << (24 - self.md_token_bits)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_major_has_a_layout_whose_token_bits_add_up() {
        for major in 6..=10 {
            let l = layout(major).unwrap();
            assert_eq!(l.major, major);
            assert_eq!(l.md_token_bits + (24 - l.md_token_bits), 24);
            assert!(l.chunk_token_mask() > 0);
        }
        assert!(layout(5).is_none());
        assert!(layout(11).is_none());
    }
}
