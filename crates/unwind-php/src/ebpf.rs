//! The PHP walker's eBPF program (`bpf/php.bpf.c`) and what userspace gives it: the
//! per-process `struct php_proc`, mirrored here and checked against the object's BTF, and
//! the payload of the frames it records.

use ferroscope_unwind_api::EbpfProgram;

use crate::layout::{CALL_CODE, CALL_TOP, Layout};

/// The walker's counters (`enum php_counter`), as metric name parts, in index order.
pub const COUNTERS: &[&str] = &[
    "ErrNoProcess",
    "ErrNoFrame",
    "ErrReadFailed",
    "ErrQueueFull",
    "JitFrames",
    "ErrJitUnknown",
];

/// The per-process map the plug-in writes (keyed by PID).
pub const PROCS_MAP: &str = "php_procs";

/// The program, both builds.
pub fn program() -> EbpfProgram {
    EbpfProgram {
        program: "fs_rt_php",
        objects: ferroscope_ebpf_abi::include_objects!("php.bpf"),
        pid_maps: &[PROCS_MAP],
        counters: COUNTERS,
    }
}

/// `struct php_proc`: where a process keeps its executing frame, one version's offsets, and
/// where the walk resumes after JIT code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PhpProc {
    /// Address of `executor_globals.current_execute_data`.
    pub current_execute_data: u64,
    /// An address inside `execute_ex`'s body, where the native walk goes on from a PC in
    /// the JIT buffer (0: JIT frames are left to the native unwinder).
    pub jit_resume: u64,
    /// `zend_execute_data.opline`.
    pub ex_opline: u16,
    /// `zend_execute_data.func`.
    pub ex_func: u16,
    /// `zend_execute_data.This.u1.type_info`.
    pub ex_call_info: u16,
    /// `zend_execute_data.prev_execute_data`.
    pub ex_prev: u16,
    /// Bytes read per `zend_execute_data`.
    pub ex_read_len: u16,
    /// `zend_op_array.opcodes` (the fingerprint).
    pub func_fingerprint: u16,
    /// Bytes read per `zend_function`.
    pub func_read_len: u16,
    /// `zend_op.lineno`.
    pub op_lineno: u16,
    /// `zend_op_array.last`.
    pub func_last: u16,
    /// `sizeof(zend_op)`.
    pub op_size: u16,
}

/// The fields in C declaration order, with their sizes (the layout test walks this list).
pub const PHP_PROC_FIELDS: &[(&str, usize)] = &[
    ("current_execute_data", 8),
    ("jit_resume", 8),
    ("ex_opline", 2),
    ("ex_func", 2),
    ("ex_call_info", 2),
    ("ex_prev", 2),
    ("ex_read_len", 2),
    ("func_fingerprint", 2),
    ("func_read_len", 2),
    ("op_lineno", 2),
    ("func_last", 2),
    ("op_size", 2),
    ("reserved", 4),
];

impl PhpProc {
    /// `sizeof(struct php_proc)`.
    pub const SIZE: usize = 40;

    /// The walker's data for a process: `current_execute_data` is the address of
    /// `EG(current_execute_data)`, `jit_resume` 0 or an address in `execute_ex`'s body.
    pub fn new(layout: &Layout, current_execute_data: u64, jit_resume: u64) -> PhpProc {
        let o = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        PhpProc {
            current_execute_data,
            jit_resume,
            ex_opline: o(layout.ex_opline),
            ex_func: o(layout.ex_func),
            ex_call_info: o(layout.ex_call_info),
            ex_prev: o(layout.ex_prev),
            ex_read_len: o(layout.ex_read_len()),
            func_fingerprint: o(layout.op_opcodes),
            func_read_len: o(layout.func_read_len()),
            op_lineno: o(layout.zend_op_lineno),
            func_last: o(layout.op_last),
            op_size: o(layout.zend_op_size),
        }
    }

    /// The bytes of `struct php_proc`, fields in [`PHP_PROC_FIELDS`] order, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::SIZE);
        b.extend_from_slice(&self.current_execute_data.to_le_bytes());
        b.extend_from_slice(&self.jit_resume.to_le_bytes());
        for v in [
            self.ex_opline,
            self.ex_func,
            self.ex_call_info,
            self.ex_prev,
            self.ex_read_len,
            self.func_fingerprint,
            self.func_read_len,
            self.op_lineno,
            self.func_last,
            self.op_size,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&[0; 4]);
        debug_assert_eq!(b.len(), Self::SIZE);
        b
    }
}

/// Bits of the line number a recorded frame keeps.
pub const LINE_MASK: u32 = 0xff_ffff;
/// Bits of the fingerprint a recorded frame keeps.
pub const FINGERPRINT_MASK: u32 = 0xff_ffff;
/// A recorded frame's flag: the call is `ZEND_CALL_TOP`.
pub const FLAG_TOP: u8 = 1;
/// A recorded frame's flag: the call is `ZEND_CALL_CODE` (top-level code of a file).
pub const FLAG_CODE: u8 = 2;

/// What the walker records of one frame, besides the `zend_function` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Payload {
    /// `opline->lineno` (0 for internal functions), low 24 bits.
    pub line: u32,
    /// [`fingerprint`] of the function (0 for internal functions).
    pub fingerprint: u32,
    /// [`FLAG_TOP`] | [`FLAG_CODE`].
    pub flags: u8,
}

/// A user function's fingerprint: bits 3 to 26 of its `opcodes` pointer.
pub fn fingerprint(opcodes: u64) -> u32 {
    ((opcodes >> 3) as u32) & FINGERPRINT_MASK
}

/// The recorded flags for a call's `ZEND_CALL_*` info.
pub fn call_flags(call_info: u32) -> u8 {
    (u8::from(call_info & CALL_TOP != 0) * FLAG_TOP)
        | (u8::from(call_info & CALL_CODE != 0) * FLAG_CODE)
}

impl Payload {
    /// The 56-bit payload: line in bits 0-23, fingerprint in 24-47, flags in 48-55.
    pub fn pack(&self) -> u64 {
        u64::from(self.line & LINE_MASK)
            | (u64::from(self.fingerprint & FINGERPRINT_MASK) << 24)
            | (u64::from(self.flags) << 48)
    }

    /// The payload of a recorded frame's aux word (its kind bits are ignored).
    pub fn unpack(aux: u64) -> Payload {
        Payload {
            line: (aux as u32) & LINE_MASK,
            fingerprint: ((aux >> 24) as u32) & FINGERPRINT_MASK,
            flags: (aux >> 48) as u8,
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
    fn php_proc_matches_the_c_struct_byte_for_byte() {
        for object in [program().objects.cpu.modern, program().objects.cpu.legacy] {
            let b = Btf::from_elf(object).expect("BTF");
            let layout = b.struct_layout("php_proc").expect("struct php_proc");
            assert_eq!(layout.size as usize, PhpProc::SIZE);
            let names: Vec<&str> = layout.members.iter().map(|m| m.name.as_str()).collect();
            let ours: Vec<&str> = PHP_PROC_FIELDS.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, ours, "fields and their order");
            let p = PhpProc {
                current_execute_data: 0x0101_0101_0101_0101,
                jit_resume: 0x0202_0202_0202_0202,
                ex_opline: 0x0303,
                ex_func: 0x0404,
                ex_call_info: 0x0505,
                ex_prev: 0x0606,
                ex_read_len: 0x0707,
                func_fingerprint: 0x0808,
                func_read_len: 0x0909,
                op_lineno: 0x0a0a,
                func_last: 0x0b0b,
                op_size: 0x0c0c,
            };
            let bytes = p.to_bytes();
            for (i, (m, (_, size))) in layout.members.iter().zip(PHP_PROC_FIELDS).enumerate() {
                let at = m.bit_offset as usize / 8;
                let want = if m.name == "reserved" { 0 } else { i as u8 + 1 };
                assert!(
                    bytes[at..at + size].iter().all(|&x| x == want),
                    "{} at {at}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn counters_match_the_c_enum() {
        let values = btf().enum_values("php_counter").expect("enum php_counter");
        let (max, named) = values.split_last().expect("PHP_CNT_MAX");
        assert_eq!(max.0, "PHP_CNT_MAX");
        assert_eq!(max.1 as usize, COUNTERS.len());
        for ((name, v), ours) in named.iter().zip(COUNTERS) {
            let c = name.trim_start_matches("PHP_CNT_").replace('_', "");
            assert_eq!(c.to_lowercase(), ours.to_lowercase(), "{name}");
            assert_eq!(
                *v as usize,
                COUNTERS.iter().position(|o| o == ours).unwrap()
            );
        }
    }

    #[test]
    fn payload_constants_match_c() {
        let b = btf();
        b.check_enum(
            "php_payload",
            &[
                ("PHP_LINE_BITS", 24),
                ("PHP_FINGERPRINT_SHIFT", 24),
                ("PHP_FLAGS_SHIFT", 48),
                ("PHP_FLAG_TOP", i64::from(FLAG_TOP)),
                ("PHP_FLAG_CODE", i64::from(FLAG_CODE)),
            ],
        )
        .unwrap();
    }

    #[test]
    fn payloads_round_trip() {
        let p = Payload {
            line: 1234,
            fingerprint: 0xab_cdef,
            flags: FLAG_TOP | FLAG_CODE,
        };
        assert_eq!(Payload::unpack(p.pack()), p);
        assert_eq!(
            Payload::unpack((7u64 << 56) | p.pack()),
            p,
            "kind bits ignored"
        );
        let big = Payload {
            line: u32::MAX,
            fingerprint: u32::MAX,
            flags: 0,
        };
        assert_eq!(big.pack() >> 48, 0);
        assert_eq!(
            fingerprint(0x7f00_1234_5678),
            ((0x7f00_1234_5678u64 >> 3) as u32) & 0xff_ffff
        );
        assert_eq!(
            call_flags(CALL_TOP | CALL_CODE | (1 << 20)),
            FLAG_TOP | FLAG_CODE
        );
        assert_eq!(call_flags(1 << 22), 0);
    }
}
