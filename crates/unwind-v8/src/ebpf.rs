//! The V8 walker's eBPF program (`bpf/v8.bpf.c`) and what crosses to and from it: the
//! per-process `struct v8_proc`, mirrored here and checked against the object's BTF, the
//! counters, and the frames it records.

use ferroscope_unwind_api::{EbpfProgram, RawFrame};

/// The walker's counters (`enum v8_counter`), as metric name parts, in index order.
pub const COUNTERS: &[&str] = &[
    "ErrNoProcess",
    "ErrBadFramePointer",
    "ErrReadFrame",
    "ErrBadFunction",
    "ErrBadMarker",
    "Declined",
    "BytecodeFrames",
    "JitFrames",
    "BuiltinFrames",
    "StubFrames",
    "SkippedFrames",
];

/// The per-process map the plug-in writes (keyed by PID).
pub const PROCS_MAP: &str = "v8_procs";

/// The program, both builds.
pub fn program() -> EbpfProgram {
    EbpfProgram {
        program: "fs_rt_v8",
        objects: ferroscope_ebpf_abi::include_objects!("v8.bpf"),
        pid_maps: &[PROCS_MAP],
        counters: COUNTERS,
    }
}

/// `struct v8_proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct V8Proc {
    /// The embedded builtins in the file (process addresses).
    pub blob_start: u64,
    /// End of [`V8Proc::blob_start`]'s range.
    pub blob_end: u64,
    /// Their copy in the code range (0 when none).
    pub remap_start: u64,
    /// End of the copy.
    pub remap_end: u64,
    /// The bytecode handlers in the file (process addresses).
    pub handlers_start: u64,
    /// End of the handlers.
    pub handlers_end: u64,
    /// Native code without unwind tables that keeps a frame pointer (process addresses).
    pub native_start: u64,
    /// End of it.
    pub native_end: u64,
    /// Frame types recorded as stub frames (bit n: marker n).
    pub emit_types: u64,
    /// The map of SharedFunctionInfos, once known (0: check instance types).
    pub sfi_map: u64,
    /// The map of BytecodeArrays, once known.
    pub bytecode_array_map: u64,
    /// Frame slots: byte offsets into the bytes the walker reads from FP - 48.
    pub slot_context: u8,
    /// The JSFunction slot.
    pub slot_function: u8,
    /// The BytecodeArray slot.
    pub slot_bytecode_array: u8,
    /// The bytecode offset slot.
    pub slot_bytecode_offset: u8,
    /// `JSFunction::shared`.
    pub jsfunction_shared: u16,
    /// `SharedFunctionInfo::name_or_scope_info`.
    pub sfi_name_or_scope_info: u16,
    /// `SharedFunctionInfo::script`.
    pub sfi_script: u16,
    /// `Map::instance_type`.
    pub map_instance_type: u16,
    /// `SHARED_FUNCTION_INFO_TYPE`.
    pub type_sfi: u16,
    /// `BYTECODE_ARRAY_TYPE`.
    pub type_bytecode_array: u16,
}

/// The fields in C declaration order, with their sizes (the layout test walks this list).
pub const V8_PROC_FIELDS: &[(&str, usize)] = &[
    ("blob_start", 8),
    ("blob_end", 8),
    ("remap_start", 8),
    ("remap_end", 8),
    ("handlers_start", 8),
    ("handlers_end", 8),
    ("native_start", 8),
    ("native_end", 8),
    ("emit_types", 8),
    ("sfi_map", 8),
    ("bytecode_array_map", 8),
    ("slot_context", 1),
    ("slot_function", 1),
    ("slot_bytecode_array", 1),
    ("slot_bytecode_offset", 1),
    ("jsfunction_shared", 2),
    ("sfi_name_or_scope_info", 2),
    ("sfi_script", 2),
    ("map_instance_type", 2),
    ("type_sfi", 2),
    ("type_bytecode_array", 2),
    ("reserved", 8),
];

/// How far below FP the walker's read of a frame starts (`V8_FRAME_BELOW`).
pub const FRAME_BELOW: i16 = 48;

/// A frame slot (bytes from FP) as an offset into the walker's read of the frame.
pub fn slot(fp_offset: i16) -> u8 {
    (FRAME_BELOW + fp_offset).clamp(0, 56) as u8
}

impl V8Proc {
    /// `sizeof(struct v8_proc)`.
    pub const SIZE: usize = 112;

    /// The bytes of `struct v8_proc`, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::SIZE);
        for v in [
            self.blob_start,
            self.blob_end,
            self.remap_start,
            self.remap_end,
            self.handlers_start,
            self.handlers_end,
            self.native_start,
            self.native_end,
            self.emit_types,
            self.sfi_map,
            self.bytecode_array_map,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&[
            self.slot_context,
            self.slot_function,
            self.slot_bytecode_array,
            self.slot_bytecode_offset,
        ]);
        for v in [
            self.jsfunction_shared,
            self.sfi_name_or_scope_info,
            self.sfi_script,
            self.map_instance_type,
            self.type_sfi,
            self.type_bytecode_array,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&[0; 8]);
        debug_assert_eq!(b.len(), Self::SIZE);
        b
    }
}

/// `sfi_cookie()` of the C side: a hash of an SFI's name-or-scope-info and script pointers.
pub fn sfi_cookie(name_or_scope_info: u64, script: u64) -> u32 {
    let mut x = (name_or_scope_info >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= (script >> 3).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    (x >> 32) as u32
}

/// `enum v8_frame_kind`.
pub const FRAME_BYTECODE: u8 = 0;
/// A JavaScript frame in JIT code.
pub const FRAME_JIT: u8 = 1;
/// A JavaScript frame whose PC is in the builtins.
pub const FRAME_BUILTIN: u8 = 2;
/// A typed (stub, regexp, WebAssembly) frame.
pub const FRAME_STUB: u8 = 3;
/// `V8_PAYLOAD_EXACT`.
pub const PAYLOAD_EXACT: u64 = 0x8;
/// `V8_PAYLOAD_STACK_RA`: a JIT frame's PC was the word at the stack pointer while a
/// builtin without a frame of its own ran on top of the frame (a guess the walker cannot
/// check: userspace keeps its position only when the code there is the frame's function's).
pub const PAYLOAD_STACK_RA: u64 = 1 << 55;

/// A frame the walker recorded, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum V8Frame {
    /// An interpreted frame: the SFI (tagged), the raw bytecode offset slot value, the low
    /// 24 bits of the SFI's cookie.
    Bytecode {
        /// The SharedFunctionInfo (tagged).
        sfi: u64,
        /// The frame's bytecode offset slot (relative to the tagged BytecodeArray).
        raw_offset: u32,
        /// 24 bits of the cookie.
        cookie: u32,
    },
    /// A JavaScript frame of JIT code, or one whose PC is in the builtins.
    Compiled {
        /// The PC (a return address unless `exact`).
        pc: u64,
        /// The leaf: `pc` is the instruction itself.
        exact: bool,
        /// The frame's SFI (tagged).
        sfi: u64,
        /// 8 bits of the cookie.
        cookie: u8,
        /// The PC is in the builtins.
        builtin: bool,
        /// The PC is the word the stack pointer pointed at, under a frameless builtin
        /// ([`PAYLOAD_STACK_RA`]).
        from_stack: bool,
    },
    /// A typed frame.
    Stub {
        /// The PC.
        pc: u64,
        /// The leaf.
        exact: bool,
        /// Its frame-type marker.
        frame_type: u8,
    },
}

impl V8Frame {
    /// Decodes a recorded frame; `None` for a kind the walker does not write.
    pub fn decode(raw: &RawFrame) -> Option<V8Frame> {
        let aux = raw.aux;
        let exact = aux & PAYLOAD_EXACT != 0;
        match (aux & 7) as u8 {
            FRAME_BYTECODE => Some(V8Frame::Bytecode {
                sfi: raw.address,
                raw_offset: ((aux >> 4) & 0x0fff_ffff) as u32,
                cookie: ((aux >> 32) & 0xff_ffff) as u32,
            }),
            k @ (FRAME_JIT | FRAME_BUILTIN) => Some(V8Frame::Compiled {
                pc: raw.address,
                exact,
                sfi: (((aux >> 4) & 0xfff_ffff_ffff) << 3) | 1,
                cookie: ((aux >> 48) & 0x7f) as u8,
                builtin: k == FRAME_BUILTIN,
                from_stack: aux & PAYLOAD_STACK_RA != 0,
            }),
            FRAME_STUB => Some(V8Frame::Stub {
                pc: raw.address,
                exact,
                frame_type: ((aux >> 4) & 0xff) as u8,
            }),
            _ => None,
        }
    }

    /// The payload the walker writes for this frame (for tests).
    pub fn encode(&self) -> (u64, u64) {
        match *self {
            V8Frame::Bytecode {
                sfi,
                raw_offset,
                cookie,
            } => (
                sfi,
                u64::from(FRAME_BYTECODE)
                    | (u64::from(raw_offset & 0x0fff_ffff) << 4)
                    | (u64::from(cookie & 0xff_ffff) << 32),
            ),
            V8Frame::Compiled {
                pc,
                exact,
                sfi,
                cookie,
                builtin,
                from_stack,
            } => (
                pc,
                u64::from(if builtin { FRAME_BUILTIN } else { FRAME_JIT })
                    | if exact { PAYLOAD_EXACT } else { 0 }
                    | if from_stack { PAYLOAD_STACK_RA } else { 0 }
                    | ((((sfi - 1) >> 3) & 0xfff_ffff_ffff) << 4)
                    | (u64::from(cookie & 0x7f) << 48),
            ),
            V8Frame::Stub {
                pc,
                exact,
                frame_type,
            } => (
                pc,
                u64::from(FRAME_STUB)
                    | if exact { PAYLOAD_EXACT } else { 0 }
                    | (u64::from(frame_type) << 4),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_ebpf_abi::btf::Btf;

    fn btf() -> Btf {
        Btf::from_elf(program().objects.cpu.modern).expect("the object has BTF")
    }

    #[test]
    fn v8_proc_matches_the_c_struct_byte_for_byte() {
        for object in [program().objects.cpu.modern, program().objects.cpu.legacy] {
            let b = Btf::from_elf(object).expect("BTF");
            let layout = b.struct_layout("v8_proc").expect("struct v8_proc");
            assert_eq!(layout.size as usize, V8Proc::SIZE);
            let names: Vec<&str> = layout.members.iter().map(|m| m.name.as_str()).collect();
            let ours: Vec<&str> = V8_PROC_FIELDS.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, ours, "fields and their order");
            let p = V8Proc {
                blob_start: 0x0101_0101_0101_0101,
                blob_end: 0x0202_0202_0202_0202,
                remap_start: 0x0303_0303_0303_0303,
                remap_end: 0x0404_0404_0404_0404,
                handlers_start: 0x0505_0505_0505_0505,
                handlers_end: 0x0606_0606_0606_0606,
                native_start: 0x0707_0707_0707_0707,
                native_end: 0x0808_0808_0808_0808,
                emit_types: 0x0909_0909_0909_0909,
                sfi_map: 0x0a0a_0a0a_0a0a_0a0a,
                bytecode_array_map: 0x0b0b_0b0b_0b0b_0b0b,
                slot_context: 0x0c,
                slot_function: 0x0d,
                slot_bytecode_array: 0x0e,
                slot_bytecode_offset: 0x0f,
                jsfunction_shared: 0x1010,
                sfi_name_or_scope_info: 0x1111,
                sfi_script: 0x1212,
                map_instance_type: 0x1313,
                type_sfi: 0x1414,
                type_bytecode_array: 0x1515,
            };
            let bytes = p.to_bytes();
            for (i, (m, (_, size))) in layout.members.iter().zip(V8_PROC_FIELDS).enumerate() {
                let at = m.bit_offset as usize / 8;
                let want = if m.name == "reserved" { 0 } else { i as u8 + 1 };
                assert!(
                    bytes[at..at + size].iter().all(|&x| x == want),
                    "{} at {at}: {:?}",
                    m.name,
                    &bytes[at..at + size]
                );
            }
        }
    }

    #[test]
    fn counters_match_the_c_enum() {
        let values = btf().enum_values("v8_counter").expect("enum v8_counter");
        let (max, named) = values.split_last().expect("V8_CNT_MAX");
        assert_eq!(max.0, "V8_CNT_MAX");
        assert_eq!(max.1 as usize, COUNTERS.len());
        for ((name, v), ours) in named.iter().zip(COUNTERS) {
            let c = name
                .trim_start_matches("V8_CNT_")
                .replace('_', "")
                .to_lowercase();
            let ours_l = ours.to_lowercase();
            assert!(
                ours_l.starts_with(&c)
                    || c.starts_with(&ours_l)
                    || c.replace("fp", "framepointer") == ours_l,
                "{name} ({v}) vs {ours}"
            );
        }
    }

    #[test]
    fn frame_kinds_match_c() {
        btf()
            .check_enum(
                "v8_frame_kind",
                &[
                    ("V8_FRAME_BYTECODE", i64::from(FRAME_BYTECODE)),
                    ("V8_FRAME_JIT", i64::from(FRAME_JIT)),
                    ("V8_FRAME_BUILTIN", i64::from(FRAME_BUILTIN)),
                    ("V8_FRAME_STUB", i64::from(FRAME_STUB)),
                ],
            )
            .unwrap();
    }

    #[test]
    fn frames_round_trip_through_the_payload() {
        let frames = [
            V8Frame::Bytecode {
                sfi: 0x3f0b_ed1a_4339,
                raw_offset: 0x3f,
                cookie: 0xab_cdef,
            },
            V8Frame::Compiled {
                pc: 0x7f36_7000_5b80,
                exact: true,
                sfi: 0x2d7b_e2b1_b829,
                cookie: 0x5a & 0x7f,
                builtin: false,
                from_stack: false,
            },
            V8Frame::Compiled {
                pc: 0x7f36_7000_5b80,
                exact: false,
                sfi: 0x2d7b_e2b1_b829,
                cookie: 0x5a & 0x7f,
                builtin: false,
                from_stack: true,
            },
            V8Frame::Compiled {
                pc: 0x1a5_dec0,
                exact: false,
                sfi: 0x2d7b_e2b1_b829,
                cookie: 0,
                builtin: true,
                from_stack: false,
            },
            V8Frame::Stub {
                pc: 0x1a5_dec0,
                exact: false,
                frame_type: 17,
            },
        ];
        for f in frames {
            let (address, aux) = f.encode();
            assert!(aux >> 56 == 0, "payloads are 56 bits");
            let raw = RawFrame {
                runtime: 2,
                address,
                aux,
            };
            assert_eq!(V8Frame::decode(&raw), Some(f));
        }
        assert_eq!(sfi_cookie(0x1001, 0x2001), sfi_cookie(0x1001, 0x2001));
        assert_ne!(sfi_cookie(0x1001, 0x2001), sfi_cookie(0x1009, 0x2001));
    }
}
