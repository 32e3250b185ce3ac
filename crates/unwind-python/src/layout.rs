//! Byte offsets of the CPython structures a stack walker reads, one table per minor version
//! up to 3.12.
//!
//! Every offset is for 64-bit little-endian builds of the default (GIL, non-debug) flavour.
//! 3.6-3.12 are checked against the DWARF of real builds (`tests/layout_dwarf.rs`). 3.13 and
//! later publish their own offsets in `_Py_DebugOffsets`, which
//! [`Layout::from_debug_offsets`](crate::Layout::from_debug_offsets) reads instead of a table
//! here (see [`debug_offsets`](crate::debug_offsets)).

use std::ops::RangeInclusive;

/// The minor versions of CPython 3 that [`layout`] has a table for.
pub const TABLE_MINORS: RangeInclusive<u8> = 6..=12;

/// The minor versions of CPython 3 this crate was tested on: [`TABLE_MINORS`], then those
/// whose `_Py_DebugOffsets` schema it knows
/// ([`debug_offsets::SCHEMAS`](crate::debug_offsets::SCHEMAS)). A newer version is read
/// with the newest schema when its table is consistent.
pub const SUPPORTED_MINORS: RangeInclusive<u8> = 6..=15;

/// Where the offsets of one CPython minor version are. All offsets are in bytes from the start
/// of the named structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The minor version (`3.minor`) this table describes.
    pub minor: u8,

    // ---- runtime, interpreters, threads ----
    /// `_PyRuntimeState.interpreters.head` (3.7+), the first `PyInterpreterState *`, read at
    /// the `_PyRuntime` symbol. `None` for 3.6, where the static (`.symtab`-only) pointer
    /// `interp_head` in `Python/pystate.c` holds the head itself.
    pub runtime_interpreters_head: Option<u32>,
    /// `PyInterpreterState.next` (`struct _is`): the next interpreter.
    pub interp_next: u32,
    /// `PyInterpreterState.tstate_head` (≤3.10) / `.threads.head` (3.11+): the first thread.
    pub interp_threads_head: u32,
    /// `PyInterpreterState.modules` (≤3.11) / `.imports.modules` (3.12+): the interpreter's
    /// `sys.modules` dict, where the `threading` module (and its thread names) is found.
    pub interp_modules: u32,
    /// `PyThreadState.next` (`struct _ts`): the next thread of the same interpreter.
    pub tstate_next: u32,
    /// `PyThreadState.interp`: the interpreter the thread belongs to.
    pub tstate_interp: u32,
    /// `PyThreadState.thread_id` (`unsigned long`, `long` in 3.6): `pthread_self()` of the
    /// thread, the value of `threading.get_ident()`.
    pub tstate_thread_id: u32,
    /// `PyThreadState.native_thread_id` (3.11+; the field does not exist before, although
    /// `threading.get_native_id()` does since 3.8): the kernel TID.
    pub tstate_native_thread_id: Option<u32>,
    /// Where the thread's current frame is found: `PyThreadState.frame` (≤3.10, a
    /// `PyFrameObject *`), `.cframe` (3.11/3.12, a `_PyCFrame *`: follow it and read
    /// [`cframe_current_frame`](Self::cframe_current_frame)), `.current_frame` (3.13+, a
    /// `_PyInterpreterFrame *`).
    pub tstate_frame: u32,
    /// `_PyCFrame.current_frame` (3.11/3.12 only): the `_PyInterpreterFrame *` executing.
    pub cframe_current_frame: Option<u32>,

    // ---- frames ----
    /// The frame structure and how to step from one frame to its caller.
    pub frame: FrameLayout,
    /// Bytes to read at a frame's address to have every field of [`frame`](Self::frame):
    /// the smallest length from offset 0 that covers them (≤ 128).
    pub frame_read_len: u32,

    // ---- code objects ----
    /// `PyCodeObject.co_filename` (a `str`).
    pub co_filename: u32,
    /// `PyCodeObject.co_name` (a `str`).
    pub co_name: u32,
    /// `PyCodeObject.co_qualname` (3.11+, a `str` such as `Worker.run.<locals>.inner`).
    pub co_qualname: Option<u32>,
    /// `PyCodeObject.co_firstlineno` (`int`). Also the code's fingerprint, see
    /// [`code_fingerprint`](crate::code_fingerprint).
    pub co_firstlineno: u32,
    /// The `bytes` object holding the line table: `co_lnotab` (≤3.9), `co_linetable` (3.10+).
    pub co_linetable: u32,
    /// `PyCodeObject.co_code_adaptive` (3.11+): the instructions live inline in the code object
    /// from this offset, so an instruction's byte offset is `instr_ptr - (code + this)`.
    pub co_code_adaptive: Option<u32>,
    /// How [`co_linetable`](Self::co_linetable) is encoded.
    pub line_table: LineTableFormat,

    // ---- strings ----
    /// `str` objects (`PyASCIIObject`, `PyCompactUnicodeObject`).
    pub unicode: UnicodeLayout,
    /// `bytes` objects (`PyBytesObject`).
    pub bytes: BytesLayout,
}

/// The frame structure of one era.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLayout {
    /// ≤3.10: `PyFrameObject` (`struct _frame`); each frame is run by its own C-level call of
    /// `_PyEval_EvalFrameDefault`, so every frame is an entry frame.
    Object {
        /// `_frame.f_back`: the caller's frame object.
        f_back: u32,
        /// `_frame.f_code`: the `PyCodeObject *`.
        f_code: u32,
        /// `_frame.f_lasti` (`int`): the last instruction executed, -1 before the first one.
        f_lasti: u32,
        /// 3.10: `f_lasti` counts 2-byte code units; ≤3.9 it is a byte offset.
        lasti_in_code_units: bool,
    },
    /// 3.11+: `_PyInterpreterFrame`, kept on a per-thread data stack.
    Interpreter {
        /// `_PyInterpreterFrame.f_code` (3.11/3.12) / `.f_executable` (3.13+; a `_PyStackRef`
        /// in 3.14, see [`executable_tag_mask`](FrameLayout::Interpreter::executable_tag_mask)).
        executable: u32,
        /// `_PyInterpreterFrame.previous`: the caller's frame.
        previous: u32,
        /// `_PyInterpreterFrame.prev_instr` (3.11/3.12) / `.instr_ptr` (3.13+), a
        /// `_Py_CODEUNIT *` into the code object's inline instructions.
        instr_ptr: u32,
        /// 3.11/3.12: the pointer is `prev_instr`, the last code unit executed (an instruction
        /// or one of the CACHE units after it; `first instruction - 1` before the first one).
        /// 3.13+: `instr_ptr`, the instruction executing (for a caller: its CALL).
        instr_ptr_is_previous: bool,
        /// How to tell where one C-level `_PyEval_EvalFrameDefault` call ends.
        entry: Entry,
        /// Bits to clear from the executable pointer: 3.14's `_PyStackRef` keeps tag bits in
        /// the low bits (`Py_TAG_BITS`); 0 before.
        executable_tag_mask: u64,
    },
}

/// How a 3.11+ frame says that it is the first of its C-level `_PyEval_EvalFrameDefault` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 3.11: `_PyInterpreterFrame.is_entry` (`bool`): non-zero on the first frame of an eval call.
    IsEntry {
        /// Offset of `is_entry`.
        offset: u32,
    },
    /// 3.12+: `_PyInterpreterFrame.owner` (`char`). Every eval call pushes a shim frame
    /// (`entry_frame` in `_PyEval_EvalFrameDefault`) below its first Python frame; the shim is
    /// not a Python function. A frame whose owner is `>= cstack` is such a shim.
    Owner {
        /// Offset of `owner`.
        offset: u32,
        /// The smallest owner value of a shim: 3.12/3.13 `FRAME_OWNED_BY_CSTACK` (3);
        /// 3.14 `FRAME_OWNED_BY_INTERPRETER` (3, the eval-call shim), `FRAME_OWNED_BY_CSTACK`
        /// being 4 there.
        cstack: u8,
    },
}

/// Encoding of a code object's line table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineTableFormat {
    /// ≤3.9 `co_lnotab`: (byte increment, signed line increment) pairs.
    Lnotab,
    /// 3.10 `co_linetable`: (byte delta, signed line delta or -128 for "no line") pairs.
    Linetable310,
    /// 3.11+ `co_linetable`: the location table (varint entries with columns).
    Locations311,
}

/// `str` object layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnicodeLayout {
    /// `PyASCIIObject.length` (`Py_ssize_t`): number of code points.
    pub length: u32,
    /// `PyASCIIObject.state`: the 32-bit word of bit fields.
    pub state: u32,
    /// First bit of `state.kind` (3 bits: 1, 2 or 4 bytes per code point).
    pub kind_shift: u8,
    /// Bit of `state.compact` (the characters follow the header).
    pub compact_bit: u8,
    /// Bit of `state.ascii` (compact ASCII: characters follow `PyASCIIObject`).
    pub ascii_bit: u8,
    /// Bit of `state.ready` (≤3.11; a string that is not ready has only `wstr`).
    pub ready_bit: Option<u8>,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's characters start.
    pub ascii_size: u32,
    /// `sizeof(PyCompactUnicodeObject)`: where other compact strings' characters start, and
    /// the offset of `PyUnicodeObject.data.any` for legacy (non-compact) strings.
    pub compact_size: u32,
}

/// `bytes` object layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BytesLayout {
    /// `PyVarObject.ob_size` (`Py_ssize_t`): the length.
    pub ob_size: u32,
    /// `PyBytesObject.ob_sval`: the bytes.
    pub ob_sval: u32,
}

/// The built-in layout of CPython `3.minor` (`major` is always 3), `None` for a version not
/// in [`TABLE_MINORS`] (3.13+ come from the interpreter's `_Py_DebugOffsets`).
pub fn layout(minor: u8) -> Option<&'static Layout> {
    LAYOUTS.iter().find(|l| l.minor == minor)
}

/// ≤3.11 strings (with `wstr` and the `ready` bit).
const UNICODE_WSTR: UnicodeLayout = UnicodeLayout {
    length: 16,
    state: 32,
    kind_shift: 2,
    compact_bit: 5,
    ascii_bit: 6,
    ready_bit: Some(7),
    ascii_size: 48,
    compact_size: 72,
};

/// 3.12+ strings (`wstr` removed).
pub(crate) const UNICODE_312: UnicodeLayout = UnicodeLayout {
    length: 16,
    state: 32,
    kind_shift: 2,
    compact_bit: 5,
    ascii_bit: 6,
    ready_bit: None,
    ascii_size: 40,
    compact_size: 56,
};

pub(crate) const BYTES: BytesLayout = BytesLayout {
    ob_size: 16,
    ob_sval: 32,
};

/// 3.8: co_posonlyargcount shifts the code object.
const PY38: Layout = Layout {
    minor: 8,
    runtime_interpreters_head: Some(32),
    interp_next: 0,
    interp_threads_head: 8,
    interp_modules: 56,
    tstate_next: 8,
    tstate_interp: 16,
    tstate_thread_id: 176,
    tstate_native_thread_id: None,
    tstate_frame: 24,
    cframe_current_frame: None,
    frame: FrameLayout::Object {
        f_back: 24,
        f_code: 32,
        f_lasti: 104,
        lasti_in_code_units: false,
    },
    frame_read_len: 108,
    co_filename: 104,
    co_name: 112,
    co_qualname: None,
    co_firstlineno: 40,
    co_linetable: 120,
    co_code_adaptive: None,
    line_table: LineTableFormat::Lnotab,
    unicode: UNICODE_WSTR,
    bytes: BYTES,
};

static LAYOUTS: [Layout; 7] = [
    // 3.6: Include/pystate.h, Include/frameobject.h, Include/code.h.
    Layout {
        minor: 6,
        runtime_interpreters_head: None,
        interp_next: 0,
        interp_threads_head: 8,
        interp_modules: 16,
        tstate_next: 8,
        tstate_interp: 16,
        tstate_thread_id: 152,
        tstate_native_thread_id: None,
        tstate_frame: 24,
        cframe_current_frame: None,
        frame: FrameLayout::Object {
            f_back: 24,
            f_code: 32,
            f_lasti: 120,
            lasti_in_code_units: false,
        },
        frame_read_len: 124,
        co_filename: 96,
        co_name: 104,
        co_qualname: None,
        co_firstlineno: 36,
        co_linetable: 112,
        co_code_adaptive: None,
        line_table: LineTableFormat::Lnotab,
        unicode: UNICODE_WSTR,
        bytes: BYTES,
    },
    // 3.7: _PyRuntime appears (Include/internal/pystate.h).
    Layout {
        minor: 7,
        runtime_interpreters_head: Some(24),
        interp_next: 0,
        interp_threads_head: 8,
        interp_modules: 40,
        tstate_next: 8,
        tstate_interp: 16,
        tstate_thread_id: 176,
        tstate_native_thread_id: None,
        tstate_frame: 24,
        cframe_current_frame: None,
        frame: FrameLayout::Object {
            f_back: 24,
            f_code: 32,
            f_lasti: 104,
            lasti_in_code_units: false,
        },
        frame_read_len: 108,
        co_filename: 96,
        co_name: 104,
        co_qualname: None,
        co_firstlineno: 36,
        co_linetable: 112,
        co_code_adaptive: None,
        line_table: LineTableFormat::Lnotab,
        unicode: UNICODE_WSTR,
        bytes: BYTES,
    },
    PY38,
    // 3.9: the same frames and code objects as 3.8; the interpreter state grew.
    Layout {
        minor: 9,
        interp_modules: 856,
        ..PY38
    },
    // 3.10: f_lasti counts code units; co_linetable replaces co_lnotab.
    Layout {
        minor: 10,
        runtime_interpreters_head: Some(32),
        interp_next: 0,
        interp_threads_head: 8,
        interp_modules: 856,
        tstate_next: 8,
        tstate_interp: 16,
        tstate_thread_id: 176,
        tstate_native_thread_id: None,
        tstate_frame: 24,
        cframe_current_frame: None,
        frame: FrameLayout::Object {
            f_back: 24,
            f_code: 32,
            f_lasti: 96,
            lasti_in_code_units: true,
        },
        frame_read_len: 100,
        co_filename: 104,
        co_name: 112,
        co_qualname: None,
        co_firstlineno: 40,
        co_linetable: 120,
        co_code_adaptive: None,
        line_table: LineTableFormat::Linetable310,
        unicode: UNICODE_WSTR,
        bytes: BYTES,
    },
    // 3.11: _PyInterpreterFrame (Include/internal/pycore_frame.h), _PyCFrame, is_entry.
    Layout {
        minor: 11,
        runtime_interpreters_head: Some(40),
        interp_next: 0,
        interp_threads_head: 16,
        interp_modules: 888,
        tstate_next: 8,
        tstate_interp: 16,
        tstate_thread_id: 152,
        tstate_native_thread_id: Some(160),
        tstate_frame: 56,
        cframe_current_frame: Some(8),
        frame: FrameLayout::Interpreter {
            executable: 32,
            previous: 48,
            instr_ptr: 56,
            instr_ptr_is_previous: true,
            entry: Entry::IsEntry { offset: 68 },
            executable_tag_mask: 0,
        },
        frame_read_len: 69,
        co_filename: 112,
        co_name: 120,
        co_qualname: Some(128),
        co_firstlineno: 72,
        co_linetable: 136,
        co_code_adaptive: Some(184),
        line_table: LineTableFormat::Locations311,
        unicode: UNICODE_WSTR,
        bytes: BYTES,
    },
    // 3.12: owner == FRAME_OWNED_BY_CSTACK shim frames replace is_entry; wstr removed.
    Layout {
        minor: 12,
        runtime_interpreters_head: Some(40),
        interp_next: 0,
        interp_threads_head: 72,
        interp_modules: 944,
        tstate_next: 8,
        tstate_interp: 16,
        tstate_thread_id: 136,
        tstate_native_thread_id: Some(144),
        tstate_frame: 56,
        cframe_current_frame: Some(0),
        frame: FrameLayout::Interpreter {
            executable: 0,
            previous: 8,
            instr_ptr: 56,
            instr_ptr_is_previous: true,
            entry: Entry::Owner {
                offset: 70,
                cstack: 3,
            },
            executable_tag_mask: 0,
        },
        frame_read_len: 71,
        co_filename: 112,
        co_name: 120,
        co_qualname: Some(128),
        co_firstlineno: 68,
        co_linetable: 136,
        co_code_adaptive: Some(192),
        line_table: LineTableFormat::Locations311,
        unicode: UNICODE_312,
        bytes: BYTES,
    },
];

impl FrameLayout {
    /// The smallest read length from offset 0 that covers every field this walker uses.
    pub fn min_read_len(&self) -> u32 {
        match *self {
            FrameLayout::Object {
                f_back,
                f_code,
                f_lasti,
                ..
            } => (f_back + 8).max(f_code + 8).max(f_lasti + 4),
            FrameLayout::Interpreter {
                executable,
                previous,
                instr_ptr,
                entry,
                ..
            } => {
                let entry_end = match entry {
                    Entry::IsEntry { offset } | Entry::Owner { offset, .. } => offset + 1,
                };
                (executable + 8)
                    .max(previous + 8)
                    .max(instr_ptr + 8)
                    .max(entry_end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_minor_has_one_layout() {
        for minor in TABLE_MINORS {
            let l = layout(minor).unwrap_or_else(|| panic!("no layout for 3.{minor}"));
            assert_eq!(l.minor, minor);
        }
        assert!(layout(5).is_none());
        assert!(layout(13).is_none(), "3.13+ come from _Py_DebugOffsets");
        assert_eq!(LAYOUTS.len(), TABLE_MINORS.count());
    }

    #[test]
    fn frame_read_len_is_the_smallest_covering_length() {
        for l in &LAYOUTS {
            assert_eq!(l.frame_read_len, l.frame.min_read_len(), "3.{}", l.minor);
            assert!(l.frame_read_len <= 128);
        }
    }

    #[test]
    fn eras_are_consistent() {
        for l in &LAYOUTS {
            let interp = matches!(l.frame, FrameLayout::Interpreter { .. });
            assert_eq!(interp, l.minor >= 11, "3.{}", l.minor);
            assert_eq!(l.co_qualname.is_some(), l.minor >= 11);
            assert_eq!(l.co_code_adaptive.is_some(), l.minor >= 11);
            assert_eq!(l.cframe_current_frame.is_some(), matches!(l.minor, 11 | 12));
            assert_eq!(l.runtime_interpreters_head.is_some(), l.minor >= 7);
            assert_eq!(l.unicode.ready_bit.is_some(), l.minor <= 11);
        }
    }
}
