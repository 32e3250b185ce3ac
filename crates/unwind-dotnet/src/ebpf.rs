//! The .NET walker's eBPF program (`bpf/dotnet.bpf.c`) and what userspace gives it: the
//! per-process range table (`struct dn_proc`), mirrored here and checked against the
//! object's BTF, and the layout of the frames it records.

use ferroscope_unwind_api::EbpfProgram;

/// The walker's counters (`enum dn_counter`), as metric name parts, in index order.
pub const COUNTERS: &[&str] = &[
    "ErrNoProcess",
    "ErrNoRange",
    "ErrNoCode",
    "ErrCodeTooLarge",
    "ErrReadFailed",
    "ErrUnwindInfo",
    "ErrBadFrame",
    "RuleCacheHits",
    "RuleCacheMisses",
];

/// The per-process map the plug-in writes (keyed by PID).
pub const PROCS_MAP: &str = "dn_procs";

/// Ranges one process's table holds (`DN_MAX_RANGES`).
pub const MAX_RANGES: usize = 512;

/// `enum dn_range_kind`: a JIT code heap.
pub const RANGE_JIT: u32 = 1;
/// `enum dn_range_kind`: the code of a ReadyToRun image.
pub const RANGE_R2R: u32 = 2;
/// `enum dn_range_kind`: a block of stubs.
pub const RANGE_STUB: u32 = 3;

/// `enum dn_frame_kind`: a JIT-compiled method.
pub const FRAME_JIT: u8 = 1;
/// `enum dn_frame_kind`: ReadyToRun code.
pub const FRAME_R2R: u8 = 2;
/// `enum dn_frame_kind`: a stub of a stub range.
pub const FRAME_STUB: u8 = 3;
/// `enum dn_frame_kind`: a stub block inside a JIT code heap.
pub const FRAME_JIT_STUB: u8 = 4;

/// `enum dn_rule_mode`: CFA = RSP + offset.
pub const RULE_SP: u32 = 0;
/// `enum dn_rule_mode`: CFA = RBP + offset.
pub const RULE_FP: u32 = 1;
/// `enum dn_rule_mode`: not managed code (where the walk hands back).
pub const RULE_NATIVE: u32 = 2;

/// The program, both builds.
pub fn program() -> EbpfProgram {
    EbpfProgram {
        program: "fs_rt_dotnet",
        objects: ferroscope_ebpf_abi::include_objects!("dotnet.bpf"),
        // dn_procs keeps its own size (DN_MAX_PROCS): its values are large and preallocated.
        pid_maps: &[],
        counters: COUNTERS,
    }
}

/// `struct dn_range`: one code range of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct DnRange {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// JIT: the heap's `mapBase`; ReadyToRun: the image (RVA 0); stubs: the start.
    pub base: u64,
    /// JIT: the nibble map; ReadyToRun: the `RUNTIME_FUNCTION` array.
    pub table: u64,
    /// JIT: what `RUNTIME_FUNCTION` offsets are relative to; ReadyToRun: the image.
    pub unwind_base: u64,
    /// `RANGE_*`.
    pub kind: u32,
    /// ReadyToRun: `RUNTIME_FUNCTION`s; stubs: their kind.
    pub count: u32,
}

/// The fields of `struct dn_range` in C declaration order, with their sizes.
pub const DN_RANGE_FIELDS: &[(&str, usize)] = &[
    ("start", 8),
    ("end", 8),
    ("base", 8),
    ("table", 8),
    ("unwind_base", 8),
    ("kind", 4),
    ("count", 4),
];

impl DnRange {
    /// `sizeof(struct dn_range)`.
    pub const SIZE: usize = 48;

    fn write(&self, out: &mut Vec<u8>) {
        for v in [
            self.start,
            self.end,
            self.base,
            self.table,
            self.unwind_base,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
    }
}

/// `sizeof(struct dn_proc)`.
pub const DN_PROC_SIZE: usize = 16 + DnRange::SIZE * MAX_RANGES;

/// The bytes of `struct dn_proc` for `ranges` (sorted by start, not overlapping; at most
/// [`MAX_RANGES`] are used) and `generation`.
pub fn dn_proc_bytes(ranges: &[DnRange], generation: u32) -> Vec<u8> {
    let used = &ranges[..ranges.len().min(MAX_RANGES)];
    let mut b = Vec::with_capacity(DN_PROC_SIZE);
    b.extend_from_slice(&(used.len() as u32).to_le_bytes());
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    for r in used {
        r.write(&mut b);
    }
    b.resize(DN_PROC_SIZE, 0);
    b
}

/// Payload bits: the frame kind.
pub const KIND_SHIFT: u32 = 53;
/// Payload bit: the frame the sample interrupted (not a return address).
pub const LEAF_BIT: u64 = 1 << 52;

/// A recorded frame, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DotnetFrame {
    /// JIT-compiled code.
    Jit {
        /// The method's `RealCodeHeader`.
        code_header: u64,
        /// Bits 2-29 of the code's start (with the header, what tells code apart).
        start_bits: u32,
        /// The PC's offset from the code's start (saturated at 2^24 - 1).
        offset: u32,
        /// The frame the sample interrupted.
        leaf: bool,
    },
    /// ReadyToRun code.
    ReadyToRun {
        /// The image's address (RVA 0).
        image: u64,
        /// The PC's RVA.
        rva: u32,
        /// The frame the sample interrupted.
        leaf: bool,
    },
    /// A stub of a stub range (precodes), or a stub block inside a JIT heap.
    Stub {
        /// Where its range (or block) starts.
        start: u64,
        /// The runtime's `StubCodeBlockKind`.
        kind: u8,
        /// Whether it lies in a JIT heap.
        in_heap: bool,
    },
}

impl DotnetFrame {
    /// Decodes a frame the walker recorded; `None` for a kind it does not record.
    pub fn decode(address: u64, aux: u64) -> Option<DotnetFrame> {
        let kind = ((aux >> KIND_SHIFT) & 7) as u8;
        let leaf = aux & LEAF_BIT != 0;
        match kind {
            FRAME_JIT => Some(DotnetFrame::Jit {
                code_header: address,
                start_bits: ((aux >> 24) & 0xfff_ffff) as u32,
                offset: (aux & 0xff_ffff) as u32,
                leaf,
            }),
            FRAME_R2R => Some(DotnetFrame::ReadyToRun {
                image: address,
                rva: aux as u32,
                leaf,
            }),
            FRAME_STUB | FRAME_JIT_STUB => Some(DotnetFrame::Stub {
                start: address,
                kind: aux as u8,
                in_heap: kind == FRAME_JIT_STUB,
            }),
            _ => None,
        }
    }

    /// The payload the walker records for this frame (the inverse of [`DotnetFrame::decode`]).
    pub fn payload(&self) -> u64 {
        let leaf = |l: bool| if l { LEAF_BIT } else { 0 };
        match *self {
            DotnetFrame::Jit {
                start_bits,
                offset,
                leaf: l,
                ..
            } => {
                (u64::from(FRAME_JIT) << KIND_SHIFT)
                    | leaf(l)
                    | (u64::from(start_bits & 0xfff_ffff) << 24)
                    | u64::from(offset & 0xff_ffff)
            }
            DotnetFrame::ReadyToRun { rva, leaf: l, .. } => {
                (u64::from(FRAME_R2R) << KIND_SHIFT) | leaf(l) | u64::from(rva)
            }
            DotnetFrame::Stub { kind, in_heap, .. } => {
                let k = if in_heap { FRAME_JIT_STUB } else { FRAME_STUB };
                (u64::from(k) << KIND_SHIFT) | u64::from(kind)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_ebpf_abi::btf::Btf;

    fn btf(object: &[u8]) -> Btf {
        Btf::from_elf(object).expect("the object has BTF")
    }

    fn objects() -> [&'static [u8]; 2] {
        let p = program();
        [p.objects.cpu.modern, p.objects.cpu.legacy]
    }

    #[test]
    fn dn_range_matches_the_c_struct_byte_for_byte() {
        for object in objects() {
            let b = btf(object);
            let layout = b.struct_layout("dn_range").expect("struct dn_range");
            assert_eq!(layout.size as usize, DnRange::SIZE);
            let names: Vec<&str> = layout.members.iter().map(|m| m.name.as_str()).collect();
            let ours: Vec<&str> = DN_RANGE_FIELDS.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, ours);
            let r = DnRange {
                start: 0x0101_0101_0101_0101,
                end: 0x0202_0202_0202_0202,
                base: 0x0303_0303_0303_0303,
                table: 0x0404_0404_0404_0404,
                unwind_base: 0x0505_0505_0505_0505,
                kind: 0x0606_0606,
                count: 0x0707_0707,
            };
            let mut bytes = Vec::new();
            r.write(&mut bytes);
            for (i, (m, (_, size))) in layout.members.iter().zip(DN_RANGE_FIELDS).enumerate() {
                let at = m.bit_offset as usize / 8;
                assert!(
                    bytes[at..at + size].iter().all(|&x| x == i as u8 + 1),
                    "{}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn dn_proc_holds_the_count_the_generation_and_the_ranges() {
        for object in objects() {
            let b = btf(object);
            let layout = b.struct_layout("dn_proc").expect("struct dn_proc");
            assert_eq!(layout.size as usize, DN_PROC_SIZE);
            let offsets: Vec<(&str, u32)> = layout
                .members
                .iter()
                .map(|m| (m.name.as_str(), m.bit_offset / 8))
                .collect();
            assert_eq!(
                offsets,
                [
                    ("count", 0),
                    ("generation", 4),
                    ("reserved", 8),
                    ("ranges", 16)
                ]
            );
        }
        let r = DnRange {
            start: 0x1000,
            end: 0x2000,
            kind: RANGE_JIT,
            ..DnRange::default()
        };
        let bytes = dn_proc_bytes(&[r, r], 7);
        assert_eq!(bytes.len(), DN_PROC_SIZE);
        assert_eq!(&bytes[0..8], &[2, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(&bytes[16..24], &0x1000u64.to_le_bytes());
        assert_eq!(&bytes[16 + 48..16 + 56], &0x1000u64.to_le_bytes());
    }

    #[test]
    fn rules_and_keys_match_the_c_structs() {
        for object in objects() {
            let b = btf(object);
            let rule = b.struct_layout("dn_rule").expect("struct dn_rule");
            assert_eq!(rule.size, 32);
            let slot = b
                .struct_layout("dn_rule_slot")
                .expect("struct dn_rule_slot");
            assert_eq!(slot.size, 48);
        }
    }

    #[test]
    fn counters_and_enums_match_the_c_enums() {
        for object in objects() {
            let b = btf(object);
            let values = b.enum_values("dn_counter").expect("enum dn_counter");
            let (max, named) = values.split_last().expect("DN_CNT_MAX");
            assert_eq!(max.0, "DN_CNT_MAX");
            assert_eq!(max.1 as usize, COUNTERS.len());
            for ((c, v), (i, ours)) in named.iter().zip(COUNTERS.iter().enumerate()) {
                assert_eq!(*v as usize, i, "{c}");
                let c = c
                    .trim_start_matches("DN_CNT_")
                    .replace('_', "")
                    .to_lowercase();
                assert!(ours.to_lowercase().starts_with(&c), "{c} vs {ours}");
            }
            b.check_enum(
                "dn_range_kind",
                &[
                    ("DN_RANGE_JIT", i64::from(RANGE_JIT)),
                    ("DN_RANGE_R2R", i64::from(RANGE_R2R)),
                    ("DN_RANGE_STUB", i64::from(RANGE_STUB)),
                ],
            )
            .unwrap();
            b.check_enum(
                "dn_frame_kind",
                &[
                    ("DN_FRAME_JIT", i64::from(FRAME_JIT)),
                    ("DN_FRAME_R2R", i64::from(FRAME_R2R)),
                    ("DN_FRAME_STUB", i64::from(FRAME_STUB)),
                    ("DN_FRAME_JIT_STUB", i64::from(FRAME_JIT_STUB)),
                ],
            )
            .unwrap();
            b.check_enum(
                "dn_rule_mode",
                &[
                    ("DN_RULE_SP", i64::from(RULE_SP)),
                    ("DN_RULE_FP", i64::from(RULE_FP)),
                    ("DN_RULE_NATIVE", i64::from(RULE_NATIVE)),
                ],
            )
            .unwrap();
        }
    }

    #[test]
    fn frames_round_trip_through_their_payload() {
        for f in [
            DotnetFrame::Jit {
                code_header: 0x7f00_1234_5678,
                start_bits: 0xabc_def1,
                offset: 0x12_3456,
                leaf: true,
            },
            DotnetFrame::ReadyToRun {
                image: 0x7f00_0000_0000,
                rva: 0x1234_5678,
                leaf: false,
            },
            DotnetFrame::Stub {
                start: 0x7f00_0001_0000,
                kind: 5,
                in_heap: false,
            },
            DotnetFrame::Stub {
                start: 0x7f00_0002_0000,
                kind: 1,
                in_heap: true,
            },
        ] {
            let address = match f {
                DotnetFrame::Jit { code_header, .. } => code_header,
                DotnetFrame::ReadyToRun { image, .. } => image,
                DotnetFrame::Stub { start, .. } => start,
            };
            assert_eq!(DotnetFrame::decode(address, f.payload()), Some(f));
        }
        assert_eq!(DotnetFrame::decode(1, 0), None);
    }
}
