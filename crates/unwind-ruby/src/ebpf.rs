//! The CRuby walker's eBPF program (`bpf/ruby.bpf.c`) and what userspace gives it: the
//! per-process `struct rb_proc`, mirrored here and checked against the object's BTF.

use ferroscope_unwind_api::EbpfProgram;

use crate::layout::Layout;

/// `enum rb_ec_kind`: the global `ruby_current_execution_context_ptr` (2.7).
pub const RB_EC_GLOBAL: u8 = 0;
/// `enum rb_ec_kind`: `ruby_current_ec` at an offset from the thread pointer.
pub const RB_EC_TLS_STATIC: u8 = 1;
/// `enum rb_ec_kind`: `ruby_current_ec` in a module's block of the thread's DTV.
pub const RB_EC_TLS_DTV: u8 = 2;
/// `enum rb_frame_kind`: an iseq frame.
pub const RB_FRAME_ISEQ: u64 = 0;
/// `enum rb_frame_kind`: a C function frame.
pub const RB_FRAME_CFUNC: u64 = 1;

/// The walker's counters (`enum rb_counter`), as metric name parts, in index order.
pub const COUNTERS: &[&str] = &[
    "ErrNoProcess",
    "ErrNoContext",
    "ErrReadFailed",
    "ErrQueueFull",
    "ErrOtherThread",
    "JitFrames",
];

/// The per-process map the plug-in writes (keyed by PID).
pub const PROCS_MAP: &str = "rb_procs";

/// The program, both builds.
pub fn program() -> EbpfProgram {
    EbpfProgram {
        program: "fs_rt_ruby",
        objects: ferroscope_ebpf_abi::include_objects!("ruby.bpf"),
        pid_maps: &[PROCS_MAP],
        counters: COUNTERS,
    }
}

/// `struct rb_proc`: one version's offsets and where a process keeps its contexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RbProc {
    /// `RB_EC_GLOBAL`: the global's address.
    pub ec_global: u64,
    /// `RB_EC_TLS_*`: the offset of `ruby_current_ec`.
    pub tls_offset: i64,
    /// `RB_EC_TLS_DTV`: the module ID.
    pub tls_module: u32,
    /// `RB_EC_*`.
    pub ec_kind: u8,
    /// `sizeof(rb_control_frame_t)`.
    pub cfp_size: u16,
    /// `rb_execution_context_t.vm_stack`.
    pub ec_vm_stack: u16,
    /// `rb_execution_context_t.cfp`.
    pub ec_cfp: u16,
    /// `rb_execution_context_t.thread_ptr`.
    pub ec_thread: u16,
    /// `rb_thread_t.thread_id`.
    pub thread_id: u16,
    /// `rb_control_frame_t.pc`.
    pub cfp_pc: u16,
    /// `rb_control_frame_t.iseq`.
    pub cfp_iseq: u16,
    /// `rb_control_frame_t.ep`.
    pub cfp_ep: u16,
    /// `rb_callable_method_entry_t.def`.
    pub cme_def: u16,
    /// YJIT frames: 0 (frame pointer) or the frame's size with its return address.
    pub jit_cfa: u16,
}

/// The fields in C declaration order, with their sizes (the layout test walks this list).
pub const RB_PROC_FIELDS: &[(&str, usize)] = &[
    ("ec_global", 8),
    ("tls_offset", 8),
    ("tls_module", 4),
    ("ec_kind", 1),
    ("reserved", 1),
    ("cfp_size", 2),
    ("ec_vm_stack", 2),
    ("ec_cfp", 2),
    ("ec_thread", 2),
    ("thread_id", 2),
    ("cfp_pc", 2),
    ("cfp_iseq", 2),
    ("cfp_ep", 2),
    ("cme_def", 2),
    ("jit_cfa", 2),
    ("reserved2", 6),
];

impl RbProc {
    /// `sizeof(struct rb_proc)`.
    pub const SIZE: usize = 48;

    /// The walker's offsets for `layout`, with the context found as `ec_kind` says.
    pub fn new(
        layout: &Layout,
        ec_kind: u8,
        ec_global: u64,
        tls_module: u32,
        tls_offset: i64,
    ) -> RbProc {
        let o = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        RbProc {
            ec_global,
            tls_offset,
            tls_module,
            ec_kind,
            cfp_size: o(layout.cfp_size),
            ec_vm_stack: o(layout.ec_vm_stack),
            ec_cfp: o(layout.ec_cfp),
            ec_thread: o(layout.ec_thread_ptr),
            thread_id: o(layout.thread_id),
            cfp_pc: o(layout.cfp_pc),
            cfp_iseq: o(layout.cfp_iseq),
            cfp_ep: o(layout.cfp_ep),
            cme_def: o(layout.cme_def),
            jit_cfa: o(layout.jit_cfa),
        }
    }

    /// The bytes of `struct rb_proc`, fields in [`RB_PROC_FIELDS`] order, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::SIZE);
        b.extend_from_slice(&self.ec_global.to_le_bytes());
        b.extend_from_slice(&self.tls_offset.to_le_bytes());
        b.extend_from_slice(&self.tls_module.to_le_bytes());
        b.extend_from_slice(&[self.ec_kind, 0]);
        for v in [
            self.cfp_size,
            self.ec_vm_stack,
            self.ec_cfp,
            self.ec_thread,
            self.thread_id,
            self.cfp_pc,
            self.cfp_iseq,
            self.cfp_ep,
            self.cme_def,
            self.jit_cfa,
            0,
            0,
            0,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        debug_assert_eq!(b.len(), Self::SIZE);
        b
    }
}

/// A recorded frame's payload, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// An iseq frame: `(pc >> 3)` modulo 2^22, and `(me_cref >> 3)` modulo 2^32.
    Iseq {
        /// The instruction pointer's bits 3..24.
        pc22: u32,
        /// The method entry's (or cref's) bits 3..34.
        me32: u32,
    },
    /// A C function frame: its method definition `>> 3`.
    Cfunc {
        /// The definition pointer's bits 3..56.
        def: u64,
    },
}

impl Payload {
    /// Splits the 56-bit payload the walker wrote.
    pub fn split(aux: u64) -> Payload {
        if aux & 3 == RB_FRAME_CFUNC {
            Payload::Cfunc { def: aux >> 2 }
        } else {
            Payload::Iseq {
                pc22: ((aux >> 2) & 0x3f_ffff) as u32,
                me32: ((aux >> 24) & 0xffff_ffff) as u32,
            }
        }
    }

    /// The payload of an iseq frame (what the walker computes).
    pub fn iseq(pc: u64, me_cref: u64) -> u64 {
        RB_FRAME_ISEQ | (((pc >> 3) & 0x3f_ffff) << 2) | (((me_cref >> 3) & 0xffff_ffff) << 24)
    }

    /// The payload of a C function frame.
    pub fn cfunc(def: u64) -> u64 {
        (RB_FRAME_CFUNC | ((def >> 3) << 2)) & ((1 << 56) - 1)
    }
}

/// The candidates for a pointer whose bits 3..34 are `low32`, near `near` (same 32 GiB
/// region first, then its neighbours): heap objects of one process lie close together.
pub fn rebuild_pointer(low32: u32, near: u64) -> [u64; 3] {
    let low = u64::from(low32) << 3;
    let hi = near >> 35;
    [hi, hi.wrapping_sub(1), hi.wrapping_add(1)].map(|h| (h << 35) | low)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_ebpf_abi::btf::Btf;

    fn btf() -> Btf {
        Btf::from_elf(program().objects.cpu.modern).expect("the object has BTF")
    }

    #[test]
    fn rb_proc_matches_the_c_struct_byte_for_byte() {
        let b = btf();
        let layout = b
            .struct_layout("rb_proc")
            .expect("struct rb_proc in the BTF");
        assert_eq!(layout.size as usize, RbProc::SIZE);
        let names: Vec<&str> = layout.members.iter().map(|m| m.name.as_str()).collect();
        let ours: Vec<&str> = RB_PROC_FIELDS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ours, "fields and their order");
        let p = RbProc {
            ec_global: 0x0101_0101_0101_0101,
            tls_offset: 0x0202_0202_0202_0202,
            tls_module: 0x0303_0303,
            ec_kind: 0x04,
            cfp_size: 0x0606,
            ec_vm_stack: 0x0707,
            ec_cfp: 0x0808,
            ec_thread: 0x0909,
            thread_id: 0x0a0a,
            cfp_pc: 0x0b0b,
            cfp_iseq: 0x0c0c,
            cfp_ep: 0x0d0d,
            cme_def: 0x0e0e,
            jit_cfa: 0x0f0f,
        };
        let bytes = p.to_bytes();
        for (i, (m, (name, size))) in layout.members.iter().zip(RB_PROC_FIELDS).enumerate() {
            let at = m.bit_offset as usize / 8;
            let want = if name.starts_with("reserved") {
                0
            } else {
                i as u8 + 1
            };
            assert!(
                bytes[at..at + size].iter().all(|&x| x == want),
                "{name} at {at}: {:?}",
                &bytes[at..at + size]
            );
        }
    }

    #[test]
    fn counters_match_the_c_enum() {
        let values = btf().enum_values("rb_counter").expect("enum rb_counter");
        let (max, named) = values.split_last().expect("RB_CNT_MAX");
        assert_eq!(max.0, "RB_CNT_MAX");
        assert_eq!(max.1 as usize, COUNTERS.len());
        for ((name, v), ours) in named.iter().zip(COUNTERS) {
            let c = name
                .trim_start_matches("RB_CNT_")
                .replace('_', "")
                .to_lowercase();
            assert!(
                ours.to_lowercase().starts_with(&c[..c.len().min(8)]),
                "{name} vs {ours}"
            );
            assert_eq!(
                *v as usize,
                COUNTERS.iter().position(|x| x == ours).unwrap()
            );
        }
    }

    #[test]
    fn enums_match_c() {
        let b = btf();
        b.check_enum(
            "rb_ec_kind",
            &[
                ("RB_EC_GLOBAL", i64::from(RB_EC_GLOBAL)),
                ("RB_EC_TLS_STATIC", i64::from(RB_EC_TLS_STATIC)),
                ("RB_EC_TLS_DTV", i64::from(RB_EC_TLS_DTV)),
            ],
        )
        .unwrap();
        b.check_enum(
            "rb_frame_kind",
            &[
                ("RB_FRAME_ISEQ", RB_FRAME_ISEQ as i64),
                ("RB_FRAME_CFUNC", RB_FRAME_CFUNC as i64),
            ],
        )
        .unwrap();
    }

    #[test]
    fn payloads_round_trip() {
        let pc = 0x7f12_3456_7898u64;
        let me = 0x7f00_1234_5670u64;
        let Payload::Iseq { pc22, me32 } = Payload::split(Payload::iseq(pc, me)) else {
            panic!("an iseq payload");
        };
        assert_eq!(pc22 as u64, (pc >> 3) & 0x3f_ffff);
        assert!(rebuild_pointer(me32, 0x7f00_0000_0000).contains(&me));
        assert_eq!(
            Payload::split(Payload::cfunc(0x5555_1234_5678)),
            Payload::Cfunc {
                def: 0x5555_1234_5678 >> 3
            }
        );
    }
}
