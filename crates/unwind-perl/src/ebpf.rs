//! The Perl walker's eBPF program (`bpf/perl.bpf.c`) and what userspace gives it: the
//! per-process `struct perl_proc`, mirrored here and checked against the object's BTF, and
//! the frames it records.

use ferroscope_unwind_api::EbpfProgram;

use crate::Layout;

/// An offset of a field this version does not have.
pub const NO_FIELD: u16 = 0xffff;

/// `enum perl_interp_kind`: `PL_current_context`, a thread-local variable of the executable.
pub const INTERP_TLS: u8 = 0;
/// `enum perl_interp_kind`: the value of the pthread key `PL_thr_key`.
pub const INTERP_TSD: u8 = 1;
/// `enum perl_interp_kind`: the interpreter `PL_curinterp` points to.
pub const INTERP_POINTER: u8 = 2;
/// `enum perl_interp_kind`: an unthreaded Perl's globals.
pub const INTERP_GLOBALS: u8 = 3;

/// Where glibc (x86-64, 2.36 to 2.42 checked, see `tests/glibc_tsd.rs`) keeps the value of
/// pthread key 0, from the thread pointer: `struct pthread.specific_1stblock[0].data`. Keys
/// 1 to 31 follow, 16 bytes apart.
pub const GLIBC_TSD_DATA: u16 = 0x318;

/// The walker's counters (`enum perl_counter`), as metric name parts, in index order.
pub const COUNTERS: &[&str] = &[
    "ErrNoProcess",
    "ErrNoInterpreter",
    "ErrReadFailed",
    "ErrQueueFull",
    "ErrBadContext",
    "ErrTooDeep",
    "IdleLevels",
    "Runlevels",
];

/// The per-process map the plug-in writes (keyed by PID).
pub const PROCS_MAP: &str = "perl_procs";

/// The program, both builds.
pub fn program() -> EbpfProgram {
    EbpfProgram {
        program: "fs_rt_perl",
        objects: ferroscope_ebpf_abi::include_objects!("perl.bpf"),
        pid_maps: &[PROCS_MAP],
        counters: COUNTERS,
    }
}

/// `struct perl_proc`: one version's offsets and where a process keeps its interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerlProc {
    /// Per `interp_kind`: the thread-pointer offset of `PL_current_context` (TLS, signed),
    /// the address of `PL_thr_key` (TSD) or of `PL_curinterp` (pointer); 0 (globals).
    pub interp_at: u64,
    /// `PL_curcop`: offset in the interpreter, or its address (globals).
    pub curcop: u64,
    /// `PL_curstackinfo`, likewise.
    pub curstackinfo: u64,
    /// `PL_op`, likewise.
    pub op: u64,
    /// The value of pthread key 0 from the thread pointer (TSD).
    pub tsd_data: u16,
    /// `si_cxstack`.
    pub si_cxstack: u16,
    /// `si_prev`.
    pub si_prev: u16,
    /// `si_cxix`.
    pub si_cxix: u16,
    /// `si_cxsubix`, or [`NO_FIELD`].
    pub si_cxsubix: u16,
    /// `si_type`.
    pub si_type: u16,
    /// `sizeof(PERL_CONTEXT)`.
    pub cx_size: u16,
    /// Bytes read per context.
    pub cx_read_len: u16,
    /// `blk_oldcop`.
    pub cx_oldcop: u16,
    /// `blk_sub.retop`.
    pub cx_retop: u16,
    /// `blk_sub.old_cxsubix`, or [`NO_FIELD`].
    pub cx_subix: u16,
    /// `blk_sub.cv`.
    pub cx_cv: u16,
    /// `blk_eval.old_namesv`.
    pub cx_namesv: u16,
    /// `blk_eval.cur_text`.
    pub cx_text: u16,
    /// `OP_REQUIRE`.
    pub op_require: u16,
    /// `OP_DOFILE`.
    pub op_dofile: u16,
    /// `cop_line`.
    pub cop_line: u16,
    /// `INTERP_*`.
    pub interp_kind: u8,
}

/// The fields in C declaration order, with their sizes (the layout test walks this list).
pub const PERL_PROC_FIELDS: &[(&str, usize)] = &[
    ("interp_at", 8),
    ("curcop", 8),
    ("curstackinfo", 8),
    ("op", 8),
    ("tsd_data", 2),
    ("si_cxstack", 2),
    ("si_prev", 2),
    ("si_cxix", 2),
    ("si_cxsubix", 2),
    ("si_type", 2),
    ("cx_size", 2),
    ("cx_read_len", 2),
    ("cx_oldcop", 2),
    ("cx_retop", 2),
    ("cx_subix", 2),
    ("cx_cv", 2),
    ("cx_namesv", 2),
    ("cx_text", 2),
    ("op_require", 2),
    ("op_dofile", 2),
    ("cop_line", 2),
    ("interp_kind", 1),
    ("reserved", 5),
];

impl PerlProc {
    /// `sizeof(struct perl_proc)`.
    pub const SIZE: usize = 72;

    /// The version's offsets, with the interpreter's whereabouts still to fill in.
    pub fn from_layout(l: &Layout) -> PerlProc {
        PerlProc {
            interp_at: 0,
            curcop: u64::from(l.interp_curcop),
            curstackinfo: u64::from(l.interp_curstackinfo),
            op: u64::from(l.interp_op),
            tsd_data: GLIBC_TSD_DATA,
            si_cxstack: l.si_cxstack,
            si_prev: l.si_prev,
            si_cxix: l.si_cxix,
            si_cxsubix: l.si_cxsubix.unwrap_or(NO_FIELD),
            si_type: l.si_type,
            cx_size: l.cx_size,
            cx_read_len: l.cx_read_len(),
            cx_oldcop: l.cx_oldcop,
            cx_retop: l.cx_retop,
            cx_subix: l.cx_subix.unwrap_or(NO_FIELD),
            cx_cv: l.cx_cv,
            cx_namesv: l.cx_namesv,
            cx_text: l.cx_text,
            op_require: l.op_require,
            op_dofile: l.op_dofile,
            cop_line: l.cop_line,
            interp_kind: INTERP_TLS,
        }
    }

    /// The bytes of `struct perl_proc`, fields in [`PERL_PROC_FIELDS`] order, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::SIZE);
        for v in [self.interp_at, self.curcop, self.curstackinfo, self.op] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.tsd_data,
            self.si_cxstack,
            self.si_prev,
            self.si_cxix,
            self.si_cxsubix,
            self.si_type,
            self.cx_size,
            self.cx_read_len,
            self.cx_oldcop,
            self.cx_retop,
            self.cx_subix,
            self.cx_cv,
            self.cx_namesv,
            self.cx_text,
            self.op_require,
            self.op_dofile,
            self.cop_line,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.push(self.interp_kind);
        b.extend_from_slice(&[0; 5]);
        debug_assert_eq!(b.len(), Self::SIZE);
        b
    }
}

/// What a recorded frame is (`enum perl_frame_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    /// A sub (the pointer is its CV).
    Sub,
    /// A format (its CV).
    Format,
    /// A string eval (its source SV).
    Eval,
    /// A `require` (the name SV it was given).
    Require,
    /// A `do FILE` (the name SV).
    DoFile,
    /// The main program's file-level code.
    Main,
}

impl FrameKind {
    /// The C enum's value.
    pub fn code(self) -> u8 {
        match self {
            FrameKind::Sub => 1,
            FrameKind::Format => 2,
            FrameKind::Eval => 3,
            FrameKind::Require => 4,
            FrameKind::DoFile => 5,
            FrameKind::Main => 6,
        }
    }

    /// The kind of a C enum value.
    pub fn from_code(code: u8) -> Option<FrameKind> {
        Some(match code {
            1 => FrameKind::Sub,
            2 => FrameKind::Format,
            3 => FrameKind::Eval,
            4 => FrameKind::Require,
            5 => FrameKind::DoFile,
            6 => FrameKind::Main,
            _ => return None,
        })
    }
}

/// Bits of a payload holding the pointer.
pub const PTR_BITS: u32 = 48;

/// The payload bit of a string eval or `require` whose code is being compiled (the top bit of
/// the kind's byte): its statement is `PL_compiling`, whose line moves as the parser reads on,
/// so the payload's low 32 bits hold the line it was at when sampled, not a pointer (and its
/// name is not cached).
pub const COMPILING_BIT: u64 = 1 << 55;

/// Whether a recorded payload is that of a frame being compiled ([`COMPILING_BIT`]).
pub fn is_compiling(aux: u64) -> bool {
    aux & COMPILING_BIT != 0
}

/// The payload the walker records for a frame of `kind` whose pointer is `ptr`.
pub fn payload(kind: FrameKind, ptr: u64) -> u64 {
    (u64::from(kind.code()) << PTR_BITS) | (ptr & ((1 << PTR_BITS) - 1))
}

/// The kind and pointer of a recorded payload (`None` for a kind the walker never writes).
pub fn split_payload(aux: u64) -> Option<(FrameKind, u64)> {
    let kind = FrameKind::from_code(((aux >> PTR_BITS) & 0x7f) as u8)?;
    Some((kind, aux & ((1 << PTR_BITS) - 1)))
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
    fn perl_proc_matches_the_c_struct_byte_for_byte() {
        for object in objects() {
            let b = btf(object);
            let layout = b
                .struct_layout("perl_proc")
                .expect("struct perl_proc in the BTF");
            assert_eq!(layout.size as usize, PerlProc::SIZE);
            let names: Vec<&str> = layout.members.iter().map(|m| m.name.as_str()).collect();
            let ours: Vec<&str> = PERL_PROC_FIELDS.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, ours, "fields and their order");
            // Distinct values in every field: a swapped pair or a wrong offset shows.
            let p = PerlProc {
                interp_at: 0x0101_0101_0101_0101,
                curcop: 0x0202_0202_0202_0202,
                curstackinfo: 0x0303_0303_0303_0303,
                op: 0x0404_0404_0404_0404,
                tsd_data: 0x0505,
                si_cxstack: 0x0606,
                si_prev: 0x0707,
                si_cxix: 0x0808,
                si_cxsubix: 0x0909,
                si_type: 0x0a0a,
                cx_size: 0x0b0b,
                cx_read_len: 0x0c0c,
                cx_oldcop: 0x0d0d,
                cx_retop: 0x0e0e,
                cx_subix: 0x0f0f,
                cx_cv: 0x1010,
                cx_namesv: 0x1111,
                cx_text: 0x1212,
                op_require: 0x1313,
                op_dofile: 0x1414,
                cop_line: 0x1515,
                interp_kind: 0x16,
            };
            let bytes = p.to_bytes();
            for (i, (m, (_, size))) in layout.members.iter().zip(PERL_PROC_FIELDS).enumerate() {
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
        for object in objects() {
            let values = btf(object)
                .enum_values("perl_counter")
                .expect("enum perl_counter");
            let (max, named) = values.split_last().expect("PERL_CNT_MAX");
            assert_eq!(max.0, "PERL_CNT_MAX");
            assert_eq!(max.1 as usize, COUNTERS.len());
            for (i, ((name, v), ours)) in named.iter().zip(COUNTERS).enumerate() {
                assert_eq!(*v as usize, i, "{name}");
                // PERL_CNT_ERR_NO_INTERPRETER ~ ErrNoInterpreter
                let c = name
                    .trim_start_matches("PERL_CNT_")
                    .replace('_', "")
                    .to_lowercase();
                assert!(ours.to_lowercase().starts_with(&c), "{name} vs {ours}");
            }
        }
    }

    #[test]
    fn enums_match_c() {
        for object in objects() {
            let b = btf(object);
            b.check_enum(
                "perl_interp_kind",
                &[
                    ("PERL_INTERP_TLS", i64::from(INTERP_TLS)),
                    ("PERL_INTERP_TSD", i64::from(INTERP_TSD)),
                    ("PERL_INTERP_POINTER", i64::from(INTERP_POINTER)),
                    ("PERL_INTERP_GLOBALS", i64::from(INTERP_GLOBALS)),
                ],
            )
            .unwrap();
            let kinds = [
                ("PERL_FRAME_SUB", FrameKind::Sub),
                ("PERL_FRAME_FORMAT", FrameKind::Format),
                ("PERL_FRAME_EVAL", FrameKind::Eval),
                ("PERL_FRAME_REQUIRE", FrameKind::Require),
                ("PERL_FRAME_DOFILE", FrameKind::DoFile),
                ("PERL_FRAME_MAIN", FrameKind::Main),
            ];
            let expected: Vec<(&str, i64)> = kinds
                .iter()
                .map(|(n, k)| (*n, i64::from(k.code())))
                .collect();
            b.check_enum("perl_frame_kind", &expected).unwrap();
        }
    }

    #[test]
    fn payloads_round_trip() {
        for kind in [
            FrameKind::Sub,
            FrameKind::Format,
            FrameKind::Eval,
            FrameKind::Require,
            FrameKind::DoFile,
            FrameKind::Main,
        ] {
            let aux = payload(kind, 0x7fff_1234_5678);
            assert!(aux < 1 << 56, "fits a frame's 56-bit payload");
            assert_eq!(split_payload(aux), Some((kind, 0x7fff_1234_5678)));
        }
        assert_eq!(split_payload(0), None);
        assert_eq!(split_payload(7 << PTR_BITS), None);
        let compiling = payload(FrameKind::Eval, 0x1234) | COMPILING_BIT;
        assert!(compiling < 1 << 56 && is_compiling(compiling));
        assert_eq!(split_payload(compiling), Some((FrameKind::Eval, 0x1234)));
        assert!(!is_compiling(payload(FrameKind::Main, 0)));
    }
}
