//! The CPython walker's eBPF program (`bpf/python.bpf.c`) and what userspace gives it: the
//! per-process `struct py_proc`, mirrored here and checked against the object's BTF.

use ferroscope_unwind_api::EbpfProgram;

use crate::frame_binding::MAX_UNBOUND;
use crate::{Entry, FrameLayout, Layout};

/// `enum py_frame_model`: PyFrameObject (3.6-3.10).
pub const PY_FRAMES_OBJECT: u8 = 0;
/// `enum py_frame_model`: _PyInterpreterFrame (3.11+).
pub const PY_FRAMES_INTERPRETER: u8 = 1;
/// `enum py_entry_kind`: every eval call runs one frame (3.6-3.10).
pub const PY_ENTRY_ONE: u8 = 0;
/// `enum py_entry_kind`: the last frame of an eval call has `is_entry` (3.11).
pub const PY_ENTRY_FLAG: u8 = 1;
/// `enum py_entry_kind`: a shim frame starts each eval call (3.12+).
pub const PY_ENTRY_SHIM: u8 = 2;
/// An offset of a field this version does not have.
pub const NO_FIELD: u16 = 0xffff;

/// The walker's counters (`enum py_counter`), as metric name parts, in index order.
pub const COUNTERS: &[&str] = &[
    "ErrNoProcess",
    "ErrNoThreadState",
    "ErrReadFailed",
    "ErrQueueFull",
    "ThreadSearches",
];

/// The per-process map the plug-in writes (keyed by PID).
pub const PROCS_MAP: &str = "py_procs";

/// The program, both builds.
pub fn program() -> EbpfProgram {
    EbpfProgram {
        program: "fs_rt_python",
        objects: ferroscope_ebpf_abi::include_objects!("python.bpf"),
        pid_maps: &[PROCS_MAP],
        counters: COUNTERS,
    }
}

/// `struct py_proc`: one version's offsets and where a process keeps its interpreters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PyProc {
    /// Address of the pointer to the first interpreter.
    pub interp_head: u64,
    /// ANDed with a frame's code pointer.
    pub code_mask: u64,
    /// `PyInterpreterState.next`.
    pub interp_next: u16,
    /// `PyInterpreterState.threads.head` (or `tstate_head`).
    pub interp_threads_head: u16,
    /// `PyThreadState.next`.
    pub tstate_next: u16,
    /// `PyThreadState.thread_id`.
    pub tstate_thread_id: u16,
    /// `PyThreadState.frame` / `cframe` / `current_frame`.
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame` (3.11, 3.12), else [`NO_FIELD`].
    pub cframe_current_frame: u16,
    /// The frame's code object field.
    pub frame_code: u16,
    /// The frame's caller field.
    pub frame_previous: u16,
    /// The frame's instruction field.
    pub frame_instr: u16,
    /// `is_entry` or `owner`, else [`NO_FIELD`].
    pub frame_entry: u16,
    /// Bytes read per frame.
    pub frame_read_len: u16,
    /// `co_firstlineno`.
    pub code_firstlineno: u16,
    /// `co_code_adaptive` (3.11+).
    pub code_adaptive: u16,
    /// `PY_FRAMES_*`.
    pub frame_model: u8,
    /// `PY_ENTRY_*`.
    pub entry_kind: u8,
    /// The first `owner` value of a shim frame.
    pub owner_cstack: u8,
    /// 1 when `PyThreadState.native_thread_id` (the kernel TID) is the 8 bytes after
    /// `thread_id` (3.11+): the walker then matches a thread's state by TID too.
    pub native_tid: u8,
    /// 3.6-3.10: the process address of the eval loop's entry part.
    pub eval_base: u64,
    /// The ranges `[start, end)` (offsets from `eval_base`) where the thread state does not
    /// point at the frame the eval call runs ([`frame_binding`](crate::frame_binding));
    /// unused ones `(0, 0)`.
    pub unbound: [(u32, u32); MAX_UNBOUND],
}

/// The fields in C declaration order, with their sizes (the layout test walks this list).
pub const PY_PROC_FIELDS: &[(&str, usize)] = &[
    ("interp_head", 8),
    ("code_mask", 8),
    ("interp_next", 2),
    ("interp_threads_head", 2),
    ("tstate_next", 2),
    ("tstate_thread_id", 2),
    ("tstate_frame", 2),
    ("cframe_current_frame", 2),
    ("frame_code", 2),
    ("frame_previous", 2),
    ("frame_instr", 2),
    ("frame_entry", 2),
    ("frame_read_len", 2),
    ("code_firstlineno", 2),
    ("code_adaptive", 2),
    ("frame_model", 1),
    ("entry_kind", 1),
    ("owner_cstack", 1),
    ("native_tid", 1),
    ("reserved", 2),
    ("eval_base", 8),
    ("unbound_start", 4 * MAX_UNBOUND),
    ("unbound_end", 4 * MAX_UNBOUND),
];

impl PyProc {
    /// `sizeof(struct py_proc)`.
    pub const SIZE: usize = 88;

    /// The bytes of `struct py_proc`, fields in [`PY_PROC_FIELDS`] order, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::SIZE);
        b.extend_from_slice(&self.interp_head.to_le_bytes());
        b.extend_from_slice(&self.code_mask.to_le_bytes());
        for v in [
            self.interp_next,
            self.interp_threads_head,
            self.tstate_next,
            self.tstate_thread_id,
            self.tstate_frame,
            self.cframe_current_frame,
            self.frame_code,
            self.frame_previous,
            self.frame_instr,
            self.frame_entry,
            self.frame_read_len,
            self.code_firstlineno,
            self.code_adaptive,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&[
            self.frame_model,
            self.entry_kind,
            self.owner_cstack,
            self.native_tid,
            0,
            0,
        ]);
        b.extend_from_slice(&self.eval_base.to_le_bytes());
        for (start, _) in self.unbound {
            b.extend_from_slice(&start.to_le_bytes());
        }
        for (_, end) in self.unbound {
            b.extend_from_slice(&end.to_le_bytes());
        }
        debug_assert_eq!(b.len(), Self::SIZE);
        b
    }
}

/// An offset that the eBPF walker keeps in 16 bits; every CPython offset it follows is far
/// below that, and a layout that is not would be a bug in the tables.
fn offset16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(NO_FIELD)
}

/// The walker's data for a process whose interpreters' head pointer is at `interp_head`.
pub fn py_proc(layout: &Layout, interp_head: u64) -> PyProc {
    let l = layout;
    let field = |v: Option<u32>| v.map_or(NO_FIELD, offset16);
    let mut py = PyProc {
        interp_head,
        code_mask: u64::MAX,
        interp_next: offset16(l.interp_next),
        interp_threads_head: offset16(l.interp_threads_head),
        tstate_next: offset16(l.tstate_next),
        tstate_thread_id: offset16(l.tstate_thread_id),
        tstate_frame: offset16(l.tstate_frame),
        cframe_current_frame: field(l.cframe_current_frame),
        frame_read_len: offset16(l.frame_read_len),
        code_firstlineno: offset16(l.co_firstlineno),
        code_adaptive: l.co_code_adaptive.map_or(0, offset16),
        native_tid: u8::from(l.tstate_native_thread_id == Some(l.tstate_thread_id + 8)),
        ..PyProc::default()
    };
    match l.frame {
        FrameLayout::Object {
            f_back,
            f_code,
            f_lasti,
            ..
        } => {
            py.frame_model = PY_FRAMES_OBJECT;
            py.frame_code = offset16(f_code);
            py.frame_previous = offset16(f_back);
            py.frame_instr = offset16(f_lasti);
            py.frame_entry = NO_FIELD;
            py.entry_kind = PY_ENTRY_ONE;
        }
        FrameLayout::Interpreter {
            executable,
            previous,
            instr_ptr,
            entry,
            executable_tag_mask,
            ..
        } => {
            py.frame_model = PY_FRAMES_INTERPRETER;
            py.frame_code = offset16(executable);
            py.frame_previous = offset16(previous);
            py.frame_instr = offset16(instr_ptr);
            py.code_mask = !executable_tag_mask;
            match entry {
                Entry::IsEntry { offset } => {
                    py.frame_entry = offset16(offset);
                    py.entry_kind = PY_ENTRY_FLAG;
                }
                Entry::Owner { offset, cstack } => {
                    py.frame_entry = offset16(offset);
                    py.entry_kind = PY_ENTRY_SHIM;
                    py.owner_cstack = cstack;
                }
            }
        }
    }
    py
}

/// The payload the walker records for a frame: the raw instruction offset and the low 24 bits
/// of the code object's first line.
pub fn split_payload(aux: u64) -> (u32, u32) {
    (aux as u32, ((aux >> 32) & FINGERPRINT_MASK as u64) as u32)
}

/// The bits of `co_firstlineno` the walker keeps as the fingerprint.
pub const FINGERPRINT_MASK: u32 = 0xff_ffff;

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_ebpf_abi::btf::Btf;

    fn btf() -> Btf {
        Btf::from_elf(program().objects.cpu.modern).expect("the object has BTF")
    }

    #[test]
    fn py_proc_matches_the_c_struct_byte_for_byte() {
        let b = btf();
        let layout = b
            .struct_layout("py_proc")
            .expect("struct py_proc in the BTF");
        assert_eq!(layout.size as usize, PyProc::SIZE);
        let names: Vec<&str> = layout.members.iter().map(|m| m.name.as_str()).collect();
        let ours: Vec<&str> = PY_PROC_FIELDS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ours, "fields and their order");
        // Distinct values in every field: a swapped pair or a wrong offset shows.
        let p = PyProc {
            interp_head: 0x0101_0101_0101_0101,
            code_mask: 0x0202_0202_0202_0202,
            interp_next: 0x0303,
            interp_threads_head: 0x0404,
            tstate_next: 0x0505,
            tstate_thread_id: 0x0606,
            tstate_frame: 0x0707,
            cframe_current_frame: 0x0808,
            frame_code: 0x0909,
            frame_previous: 0x0a0a,
            frame_instr: 0x0b0b,
            frame_entry: 0x0c0c,
            frame_read_len: 0x0d0d,
            code_firstlineno: 0x0e0e,
            code_adaptive: 0x0f0f,
            frame_model: 0x10,
            entry_kind: 0x11,
            owner_cstack: 0x12,
            native_tid: 0x13,
            eval_base: 0x1515_1515_1515_1515,
            unbound: [(0x1616_1616, 0x1717_1717); MAX_UNBOUND],
        };
        let bytes = p.to_bytes();
        for (i, (m, (_, size))) in layout.members.iter().zip(PY_PROC_FIELDS).enumerate() {
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

    #[test]
    fn counters_match_the_c_enum() {
        let values = btf().enum_values("py_counter").expect("enum py_counter");
        let (max, named) = values.split_last().expect("PY_CNT_MAX");
        assert_eq!(max.0, "PY_CNT_MAX");
        assert_eq!(max.1 as usize, COUNTERS.len());
        for (i, (name, v)) in named.iter().enumerate() {
            assert_eq!(*v as usize, i, "{name}");
        }
        // The C names, spelt as the metric parts are: PY_CNT_ERR_NO_THREAD ~ ErrNoThreadState.
        let c: Vec<String> = named
            .iter()
            .map(|(n, _)| {
                n.trim_start_matches("PY_CNT_")
                    .replace('_', "")
                    .to_lowercase()
            })
            .collect();
        for (c, ours) in c.iter().zip(COUNTERS) {
            assert!(ours.to_lowercase().starts_with(c.as_str()), "{c} vs {ours}");
        }
    }

    #[test]
    fn enums_match_c() {
        let b = btf();
        b.check_enum(
            "py_frame_model",
            &[
                ("PY_FRAMES_OBJECT", i64::from(PY_FRAMES_OBJECT)),
                ("PY_FRAMES_INTERPRETER", i64::from(PY_FRAMES_INTERPRETER)),
            ],
        )
        .unwrap();
        b.check_enum(
            "py_entry_kind",
            &[
                ("PY_ENTRY_ONE", i64::from(PY_ENTRY_ONE)),
                ("PY_ENTRY_FLAG", i64::from(PY_ENTRY_FLAG)),
                ("PY_ENTRY_SHIM", i64::from(PY_ENTRY_SHIM)),
            ],
        )
        .unwrap();
    }

    #[test]
    fn payloads_split_into_offset_and_fingerprint() {
        assert_eq!(split_payload((0x12_3456 << 32) | 77), (77, 0x12_3456));
        assert_eq!(split_payload((0xff12_3456 << 32) | 5).1, 0x12_3456);
    }
}
