//! The HotSpot walker's eBPF program (`bpf/hotspot.bpf.c`) and what userspace gives it: the
//! per-process `struct hs_proc`, mirrored here and checked against the object's BTF, and the
//! payload of the frames it records.

use ferroscope_unwind_api::EbpfProgram;

use crate::codecache::CodeCache;
use crate::layout::{BlobKinds, Layout};

/// `HS_MAX_HEAPS`: code heaps followed per process.
pub const HS_MAX_HEAPS: usize = 4;
/// `HS_BLOB_BUF`: the walker reads less of a CodeBlob header than this.
pub const HS_BLOB_BUF: u64 = 512;

/// `hs_proc.flags`: code begin/end are offsets.
pub const FLAG_CODE_OFFSETS: u8 = 0x1;
/// `hs_proc.flags`: the deoptimization handler is an offset.
pub const FLAG_DEOPT_OFFSET: u8 = 0x2;
/// `hs_proc.flags`: `_frame_complete_offset` is 16 bits.
pub const FLAG_FRAME_COMPLETE_16: u8 = 0x4;
/// `hs_proc.flags`: blobs have a `_kind`.
pub const FLAG_BLOB_KIND: u8 = 0x8;

/// `enum hs_frame_type`: an interpreted frame.
pub const FRAME_INTERPRETED: u64 = 1;
/// `enum hs_frame_type`: a compiled frame.
pub const FRAME_COMPILED: u64 = 2;
/// `enum hs_frame_type`: a stub's frame.
pub const FRAME_STUB: u64 = 3;

/// The walker's counters (`enum hs_counter`), as metric name parts, in index order.
pub const COUNTERS: &[&str] = &[
    "ErrNoProcess",
    "ErrNoCodeblob",
    "ErrReadFailed",
    "ErrInterpreterFrame",
    "ErrInvalidReturn",
    "PrologueEpilogue",
    "Deoptimized",
    "LeafBcpRegister",
];

/// The per-process map the plug-in writes (keyed by PID).
pub const PROCS_MAP: &str = "hs_procs";

/// The program, both builds.
pub fn program() -> EbpfProgram {
    EbpfProgram {
        program: "fs_rt_hotspot",
        objects: ferroscope_ebpf_abi::include_objects!("hotspot.bpf"),
        pid_maps: &[PROCS_MAP],
        counters: COUNTERS,
    }
}

/// A recorded frame's payload, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// An interpreted frame: the recorded address is a `Method*`.
    Interpreted {
        /// The bytecode index (`None`: unknown, as in a native method).
        bci: Option<u32>,
        /// The low 32 bits of its `ConstMethod*` >> 3.
        cookie: u32,
    },
    /// A compiled frame: the address is the nmethod.
    Compiled {
        /// The PC's offset from the nmethod.
        pc_offset: u32,
        /// The nmethod's compile ID, low 30 bits.
        compile_id: u32,
        /// The PC was the sampled instruction, not a return address.
        exact: bool,
    },
    /// A stub's frame: the address is its CodeBlob (or the interpreter's start).
    Stub {
        /// The PC's offset from it.
        pc_offset: u32,
    },
}

/// The bits of a compile ID the walker keeps.
pub const COMPILE_ID_MASK: u32 = (1 << 30) - 1;
/// The cookie of an interpreted frame from its `ConstMethod*`.
pub fn const_method_cookie(const_method: u64) -> u32 {
    (const_method >> 3) as u32
}

impl Payload {
    /// Decodes a recorded payload (56 bits); `None` for an unknown frame type.
    pub fn decode(aux: u64) -> Option<Payload> {
        match (aux >> 53) & 7 {
            FRAME_INTERPRETED => {
                let bci = ((aux >> 32) & 0xffff) as u32;
                Some(Payload::Interpreted {
                    bci: (bci != 0xffff).then_some(bci),
                    cookie: aux as u32,
                })
            }
            FRAME_COMPILED => Some(Payload::Compiled {
                pc_offset: ((aux >> 30) & ((1 << 22) - 1)) as u32,
                compile_id: aux as u32 & COMPILE_ID_MASK,
                exact: aux & (1 << 52) != 0,
            }),
            FRAME_STUB => Some(Payload::Stub {
                pc_offset: aux as u32,
            }),
            _ => None,
        }
    }

    /// Encodes it as the walker does (for tests).
    pub fn encode(&self) -> u64 {
        match *self {
            Payload::Interpreted { bci, cookie } => {
                FRAME_INTERPRETED << 53
                    | u64::from(bci.unwrap_or(0xffff) & 0xffff) << 32
                    | u64::from(cookie)
            }
            Payload::Compiled {
                pc_offset,
                compile_id,
                exact,
            } => {
                FRAME_COMPILED << 53
                    | u64::from(exact) << 52
                    | (u64::from(pc_offset) & ((1 << 22) - 1)) << 30
                    | u64::from(compile_id & COMPILE_ID_MASK)
            }
            Payload::Stub { pc_offset } => FRAME_STUB << 53 | u64::from(pc_offset),
        }
    }
}

/// `struct hs_heap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HsHeap {
    /// Reserved range start.
    pub low: u64,
    /// Reserved range end.
    pub high: u64,
    /// Segment map start.
    pub segmap: u64,
}

/// `struct hs_proc`: one JVM's code and offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HsProc {
    /// `heaps`.
    pub heaps: [HsHeap; HS_MAX_HEAPS],
    /// `interp_low`.
    pub interp_low: u64,
    /// `interp_high`.
    pub interp_high: u64,
    /// `heap_count`.
    pub heap_count: u32,
    /// `heapblock_size`.
    pub heapblock_size: u16,
    /// `blob_read`.
    pub blob_read: u16,
    /// `blob_name`.
    pub blob_name: u16,
    /// `blob_kind`.
    pub blob_kind: u16,
    /// `blob_code_begin`.
    pub blob_code_begin: u16,
    /// `blob_code_end`.
    pub blob_code_end: u16,
    /// `blob_frame_complete`.
    pub blob_frame_complete: u16,
    /// `blob_frame_size`.
    pub blob_frame_size: u16,
    /// `nm_compile_id`.
    pub nm_compile_id: u16,
    /// `nm_orig_pc_offset`.
    pub nm_orig_pc_offset: u16,
    /// `nm_deopt_handler`.
    pub nm_deopt_handler: u16,
    /// `method_const_method`.
    pub method_const_method: u16,
    /// `const_method_size`.
    pub const_method_size: u16,
    /// `const_method_code_size`.
    pub const_method_code_size: u16,
    /// `segment_shift`.
    pub segment_shift: u8,
    /// `flags`.
    pub flags: u8,
    /// `kind_nmethod`.
    pub kind_nmethod: u8,
    /// `kind_vtable`.
    pub kind_vtable: u8,
    /// `kind_adapter`.
    pub kind_adapter: u8,
    /// `interp_method_slot`.
    pub interp_method_slot: i8,
    /// `interp_bcp_slot`.
    pub interp_bcp_slot: i8,
    /// `interp_sender_sp_slot`.
    pub interp_sender_sp_slot: i8,
}

/// Member names of `struct hs_proc` in C order, with their byte offsets.
pub const HS_PROC_FIELDS: &[(&str, usize)] = &[
    ("heaps", 0),
    ("interp_low", 96),
    ("interp_high", 104),
    ("heap_count", 112),
    ("heapblock_size", 116),
    ("blob_read", 118),
    ("blob_name", 120),
    ("blob_kind", 122),
    ("blob_code_begin", 124),
    ("blob_code_end", 126),
    ("blob_frame_complete", 128),
    ("blob_frame_size", 130),
    ("nm_compile_id", 132),
    ("nm_orig_pc_offset", 134),
    ("nm_deopt_handler", 136),
    ("method_const_method", 138),
    ("const_method_size", 140),
    ("const_method_code_size", 142),
    ("segment_shift", 144),
    ("flags", 145),
    ("kind_nmethod", 146),
    ("kind_vtable", 147),
    ("kind_adapter", 148),
    ("interp_method_slot", 149),
    ("interp_bcp_slot", 150),
    ("interp_sender_sp_slot", 151),
    ("reserved", 152),
];

/// `struct hs_heap` members.
pub const HS_HEAP_FIELDS: &[(&str, usize)] = &[("low", 0), ("high", 8), ("segmap", 16)];

impl HsProc {
    /// `sizeof(struct hs_proc)`.
    pub const SIZE: usize = 160;

    /// Its bytes, as the C struct lays them out (little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::SIZE);
        for h in &self.heaps {
            for v in [h.low, h.high, h.segmap] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b.extend_from_slice(&self.interp_low.to_le_bytes());
        b.extend_from_slice(&self.interp_high.to_le_bytes());
        b.extend_from_slice(&self.heap_count.to_le_bytes());
        for v in [
            self.heapblock_size,
            self.blob_read,
            self.blob_name,
            self.blob_kind,
            self.blob_code_begin,
            self.blob_code_end,
            self.blob_frame_complete,
            self.blob_frame_size,
            self.nm_compile_id,
            self.nm_orig_pc_offset,
            self.nm_deopt_handler,
            self.method_const_method,
            self.const_method_size,
            self.const_method_code_size,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&[
            self.segment_shift,
            self.flags,
            self.kind_nmethod,
            self.kind_vtable,
            self.kind_adapter,
            self.interp_method_slot as u8,
            self.interp_bcp_slot as u8,
            self.interp_sender_sp_slot as u8,
        ]);
        b.resize(Self::SIZE, 0);
        b
    }
}

/// An offset the walker keeps in 16 bits (every one is far smaller; `0xffff` otherwise,
/// which the walker's bounds checks refuse).
fn o16(v: u64) -> u16 {
    u16::try_from(v).unwrap_or(0xffff)
}

/// The walker's data for one JVM.
pub fn hs_proc(l: &Layout, code: &CodeCache) -> HsProc {
    let mut p = HsProc {
        interp_low: code.interpreter.0,
        interp_high: code.interpreter.1,
        heap_count: code.heaps.len().min(HS_MAX_HEAPS) as u32,
        heapblock_size: o16(l.heap_block_size),
        blob_name: o16(l.blob_name),
        blob_kind: 0xffff,
        blob_code_begin: o16(l.blob_code_begin),
        blob_code_end: o16(l.blob_code_end),
        blob_frame_complete: o16(l.blob_frame_complete),
        blob_frame_size: o16(l.blob_frame_size),
        nm_compile_id: o16(l.nm_compile_id),
        nm_orig_pc_offset: o16(l.nm_orig_pc_offset),
        nm_deopt_handler: o16(l.nm_deopt_handler),
        method_const_method: o16(l.method_const_method),
        const_method_size: o16(l.const_method_size),
        const_method_code_size: o16(l.cm_code_size),
        segment_shift: code.heaps.first().map_or(0, |h| h.segment_shift),
        interp_method_slot: l.interp_method_slot,
        interp_bcp_slot: l.interp_bcp_slot,
        interp_sender_sp_slot: l.interp_sender_sp_slot,
        ..HsProc::default()
    };
    for (slot, h) in p.heaps.iter_mut().zip(&code.heaps) {
        *slot = HsHeap {
            low: h.low,
            high: h.high,
            segmap: h.segmap,
        };
    }
    if l.code_offsets {
        p.flags |= FLAG_CODE_OFFSETS;
    }
    if l.deopt_offset {
        p.flags |= FLAG_DEOPT_OFFSET;
    }
    if l.frame_complete_16 {
        p.flags |= FLAG_FRAME_COMPLETE_16;
    }
    let mut widest = [
        l.blob_name,
        l.blob_code_begin,
        l.blob_code_end,
        l.blob_frame_complete,
        l.blob_frame_size,
        l.nm_compile_id,
        l.nm_orig_pc_offset,
        l.nm_deopt_handler,
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
        + 8;
    if let BlobKinds::ByKind {
        offset,
        nmethod,
        vtable,
        adapter,
    } = l.blob_kinds
    {
        p.flags |= FLAG_BLOB_KIND;
        p.blob_kind = o16(offset);
        p.kind_nmethod = nmethod;
        p.kind_vtable = vtable;
        p.kind_adapter = adapter;
        widest = widest.max(offset + 1);
    }
    // The nmethod fields lie past a small stub's end: reading them there reads the next
    // block's bytes, harmless, and keeps it to one read.
    p.blob_read = o16(widest.min(HS_BLOB_BUF - 1));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_ebpf_abi::btf::Btf;

    fn btf(legacy: bool) -> Btf {
        let p = program();
        Btf::from_elf(if legacy {
            p.objects.cpu.legacy
        } else {
            p.objects.cpu.modern
        })
        .expect("BTF")
    }

    #[test]
    fn hs_proc_matches_the_c_struct_in_both_builds() {
        for legacy in [false, true] {
            let b = btf(legacy);
            b.check_struct("hs_proc", HsProc::SIZE, HS_PROC_FIELDS)
                .unwrap();
            b.check_struct("hs_heap", 24, HS_HEAP_FIELDS).unwrap();
            assert_eq!(b.array_len("hs_proc", "heaps"), Some(HS_MAX_HEAPS as u32));
        }
        // Every field lands where the C struct has it: distinct values per field.
        let mut p = HsProc::default();
        p.heaps[1].segmap = 0x1111;
        p.interp_high = 0x2222;
        p.heap_count = 3;
        p.const_method_code_size = 0x3344;
        p.segment_shift = 7;
        p.interp_sender_sp_slot = -1;
        let b = p.to_bytes();
        assert_eq!(b.len(), HsProc::SIZE);
        assert_eq!(&b[40..48], &0x1111u64.to_le_bytes());
        assert_eq!(&b[104..112], &0x2222u64.to_le_bytes());
        assert_eq!(&b[112..116], &3u32.to_le_bytes());
        assert_eq!(&b[142..144], &0x3344u16.to_le_bytes());
        assert_eq!(b[144], 7);
        assert_eq!(b[151], 0xff);
    }

    #[test]
    fn counters_and_frame_types_match_the_c_enums() {
        let b = btf(false);
        let values = b.enum_values("hs_counter").expect("enum hs_counter");
        let (max, named) = values.split_last().unwrap();
        assert_eq!(max.0, "HS_CNT_MAX");
        assert_eq!(max.1 as usize, COUNTERS.len());
        for ((c, v), (i, ours)) in named.iter().zip(COUNTERS.iter().enumerate()) {
            assert_eq!(*v as usize, i, "{c}");
            let spelt = c
                .trim_start_matches("HS_CNT_")
                .replace('_', "")
                .to_lowercase();
            assert!(ours.to_lowercase().starts_with(&spelt), "{c} is {ours}");
        }
        b.check_enum(
            "hs_frame_type",
            &[
                ("HS_FRAME_INTERPRETED", FRAME_INTERPRETED as i64),
                ("HS_FRAME_COMPILED", FRAME_COMPILED as i64),
                ("HS_FRAME_STUB", FRAME_STUB as i64),
            ],
        )
        .unwrap();
    }

    #[test]
    fn payloads_round_trip() {
        for p in [
            Payload::Interpreted {
                bci: Some(13),
                cookie: 0xdead_beef,
            },
            Payload::Interpreted {
                bci: None,
                cookie: 1,
            },
            Payload::Compiled {
                pc_offset: 0x3f_ffff,
                compile_id: 12345,
                exact: true,
            },
            Payload::Compiled {
                pc_offset: 0x150,
                compile_id: COMPILE_ID_MASK,
                exact: false,
            },
            Payload::Stub { pc_offset: 0xc9 },
        ] {
            let aux = p.encode();
            assert!(aux < 1 << 56, "fits the 56-bit payload");
            assert_eq!(Payload::decode(aux), Some(p));
        }
        assert_eq!(Payload::decode(0), None);
    }
}
