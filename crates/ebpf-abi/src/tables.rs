//! The unwinder's maps: process mappings (who owns which range), table pages, stack deltas
//! and unwind rules.

use crate::Plain;

/// `struct fs_pid_mapping_key`: key of the `fs_pid_mappings` LPM trie.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PidMappingKey {
    /// Bits of `pid` and `address_be` that must match (32 + the address prefix length).
    pub prefixlen: u32,
    /// The process.
    pub pid: u32,
    /// The address prefix, big-endian.
    pub address_be: u64,
}

/// `FS_MAPPING_SPLICE`: the owner's frames are spliced in place of the range's native
/// frames.
pub const MAPPING_SPLICE: u32 = 0x1;
/// `FS_MAPPING_FRAME_POINTER`: the range has no table; unwind it with the frame pointer.
pub const MAPPING_FRAME_POINTER: u32 = 0x2;

/// `struct fs_pid_mapping`: what one range of a process is and who unwinds it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PidMapping {
    /// The mapped file's content identity (0: an anonymous range).
    pub file_id: u64,
    /// The file's virtual address of process address A is A - bias.
    pub bias: u64,
    /// First address of the range with this value.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// The runtime slot that owns the range (0: the native unwinder).
    pub owner: u32,
    /// `MAPPING_*` bits.
    pub flags: u32,
}

/// `struct fs_delta_page_key`: one 64 KiB page of one file's virtual addresses.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeltaPageKey {
    /// The file.
    pub file_id: u64,
    /// `vaddr >> DELTA_PAGE_BITS`.
    pub page: u64,
}

/// `struct fs_delta_page`: where a page's entries are in the entries array.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeltaPage {
    /// Index of the first entry.
    pub first: u32,
    /// Number of entries (at least 1; the first has `address_low` 0).
    pub count: u32,
}

/// `struct fs_delta_entry`: a rule from a page offset to the next entry's.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DeltaEntry {
    /// Offset in the page where the rule starts.
    pub address_low: u16,
    /// Index of the rule in the infos array.
    pub info_index: u16,
}

/// `enum fs_unwind_kind`: how the unwinder finds the caller's frame.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnwindKind {
    /// CFA = RSP + cfa_offset.
    Sp = 0,
    /// CFA = RBP + cfa_offset.
    Fp = 1,
    /// CFA = *(RSP + cfa_offset).
    SpDeref = 2,
    /// CFA = *(RBP + cfa_offset).
    FpDeref = 3,
    /// A PLT stub.
    Plt = 4,
    /// The signal return trampoline: registers from the ucontext at RSP.
    Signal = 5,
    /// The outermost frame.
    Stop = 6,
    /// No rule.
    Invalid = 7,
    /// CFA = RBP + 16, caller's RBP at CFA - 16.
    FramePointer = 8,
}

impl UnwindKind {
    /// Every kind, in value order.
    pub const ALL: [UnwindKind; 9] = [
        UnwindKind::Sp,
        UnwindKind::Fp,
        UnwindKind::SpDeref,
        UnwindKind::FpDeref,
        UnwindKind::Plt,
        UnwindKind::Signal,
        UnwindKind::Stop,
        UnwindKind::Invalid,
        UnwindKind::FramePointer,
    ];

    /// The name of the C enumerator.
    pub fn c_name(self) -> &'static str {
        match self {
            UnwindKind::Sp => "FS_UNWIND_SP",
            UnwindKind::Fp => "FS_UNWIND_FP",
            UnwindKind::SpDeref => "FS_UNWIND_SP_DEREF",
            UnwindKind::FpDeref => "FS_UNWIND_FP_DEREF",
            UnwindKind::Plt => "FS_UNWIND_PLT",
            UnwindKind::Signal => "FS_UNWIND_SIGNAL",
            UnwindKind::Stop => "FS_UNWIND_STOP",
            UnwindKind::Invalid => "FS_UNWIND_INVALID",
            UnwindKind::FramePointer => "FS_UNWIND_FRAME_POINTER",
        }
    }
}

/// `FS_UNWIND_FLAG_FP_SAVED`: the caller's RBP is saved at CFA + `fp_offset`.
pub const UNWIND_FLAG_FP_SAVED: u8 = 0x1;

/// `struct fs_unwind_info`: one unwind rule.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UnwindInfoRaw {
    /// An [`UnwindKind`] value.
    pub kind: u8,
    /// `UNWIND_FLAG_*` bits.
    pub flags: u8,
    /// Zero.
    pub reserved: u16,
    /// Offset added to the CFA's base register.
    pub cfa_offset: i32,
    /// Where the caller's RBP is saved, relative to the CFA (with `UNWIND_FLAG_FP_SAVED`).
    pub fp_offset: i32,
    /// Zero.
    pub reserved2: u32,
}

// SAFETY: repr(C): u32, u32, u64 (16 bytes, no padding; tests/layout.rs pins every offset).
unsafe impl Plain for PidMappingKey {}
// SAFETY: repr(C): four u64, two u32 (40 bytes, no padding).
unsafe impl Plain for PidMapping {}
// SAFETY: repr(C): two u64 (16 bytes, no padding).
unsafe impl Plain for DeltaPageKey {}
// SAFETY: repr(C): two u32 (8 bytes, no padding).
unsafe impl Plain for DeltaPage {}
// SAFETY: repr(C): two u16 (4 bytes, no padding).
unsafe impl Plain for DeltaEntry {}
// SAFETY: repr(C): u8, u8, u16, i32, i32, u32 (16 bytes, no padding).
unsafe impl Plain for UnwindInfoRaw {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_a_mapping_lands_at_its_own_bytes() {
        // Distinct values everywhere, so that two swapped fields cannot round-trip.
        let m = PidMapping {
            file_id: 0x1111_1111_1111_1111,
            bias: 0x2222_2222_2222_2222,
            start: 0x3333_3333_3333_3333,
            end: 0x4444_4444_4444_4444,
            owner: 0x5555_5555,
            flags: 0x6666_6666,
        };
        let b = m.as_bytes();
        assert_eq!(b.len(), 40);
        for (i, chunk) in b.chunks(8).take(4).enumerate() {
            assert!(
                chunk.iter().all(|&x| x == 0x11 * (i as u8 + 1)),
                "{chunk:?}"
            );
        }
        assert!(b[32..36].iter().all(|&x| x == 0x55));
        assert!(b[36..40].iter().all(|&x| x == 0x66));
        assert_eq!(PidMapping::from_bytes(b), Some(m));
    }
}
