//! `_Py_DebugOffsets`: the offsets table CPython 3.13+ embeds at the start of `_PyRuntime`
//! (cookie `xdebugpy`) for out-of-process debuggers and profilers, and the [`Layout`] built
//! from it.
//!
//! The table is initialised data, so it is read from the interpreter's file, before any
//! process runs it. It is a struct of `uint64_t` fields grouped in sections
//! (`runtime_state`, `interpreter_state`, `thread_state`, `interpreter_frame`,
//! `code_object`, ...), each section starting with the `size` of the structure it describes.
//! Its own layout changes between minor versions (fields are inserted in the middle of
//! sections), so each minor version has a [schema](SCHEMAS) here: the names of the fields
//! in order, as in CPython's `Include/internal/pycore_debug_offsets.h`, up to the last
//! section read. A version newer than the newest schema is read with the newest one and
//! accepted only when everything read is consistent (sizes that match the `_PyRuntime`
//! symbol, every offset inside the size of its structure), so a new CPython works the day
//! it ships unless it moved these fields.
//!
//! What the table does not publish stays per era in [`Layout::from_debug_offsets`]: the
//! frame model, which `owner` values mark the eval loop's shim frame, the tag bits of
//! `_PyStackRef`, the line-table format and the `str` state bits.

use crate::layout::{BYTES, UNICODE_312};
use crate::{Entry, FrameLayout, Layout, LineTableFormat, PyVersion, version_from_hex};

/// The table's first 8 bytes.
pub const COOKIE: &[u8; 8] = b"xdebugpy";

/// The fields of one version's `_Py_DebugOffsets`, section by section (`""`: the header),
/// each a `uint64_t`, up to the last section this crate reads.
pub type Schema = &'static [(&'static str, &'static [&'static str])];

const HEADER: (&str, &[&str]) = ("", &["cookie", "version", "free_threaded"]);
const RUNTIME_STATE: (&str, &[&str]) = (
    "runtime_state",
    &["size", "finalizing", "interpreters_head"],
);
const INTERPRETER_STATE_313: &[&str] = &[
    "size",
    "id",
    "next",
    "threads_head",
    "gc",
    "imports_modules",
    "sysdict",
    "builtins",
    "ceval_gil",
    "gil_runtime_state",
    "gil_runtime_state_enabled",
    "gil_runtime_state_locked",
    "gil_runtime_state_holder",
];
/// 3.14+: `threads_main` after `threads_head`; `code_object_generation` and
/// `tlbc_generation` at the end.
const INTERPRETER_STATE_314: &[&str] = &[
    "size",
    "id",
    "next",
    "threads_head",
    "threads_main",
    "gc",
    "imports_modules",
    "sysdict",
    "builtins",
    "ceval_gil",
    "gil_runtime_state",
    "gil_runtime_state_enabled",
    "gil_runtime_state_locked",
    "gil_runtime_state_holder",
    "code_object_generation",
    "tlbc_generation",
];
const THREAD_STATE_313: &[&str] = &[
    "size",
    "prev",
    "next",
    "interp",
    "current_frame",
    "thread_id",
    "native_thread_id",
    "datastack_chunk",
    "status",
];
/// 3.15: `base_frame`, `last_profiled_frame(_seq)` before `thread_id`; the GIL and exception
/// fields at the end; then a section `err_stackitem`.
const THREAD_STATE_315: &[&str] = &[
    "size",
    "prev",
    "next",
    "interp",
    "current_frame",
    "base_frame",
    "last_profiled_frame",
    "last_profiled_frame_seq",
    "thread_id",
    "native_thread_id",
    "datastack_chunk",
    "status",
    "holds_gil",
    "gil_requested",
    "current_exception",
    "exc_state",
];
const INTERPRETER_FRAME_313: &[&str] = &[
    "size",
    "previous",
    "executable",
    "instr_ptr",
    "localsplus",
    "owner",
];
const INTERPRETER_FRAME_314: &[&str] = &[
    "size",
    "previous",
    "executable",
    "instr_ptr",
    "localsplus",
    "owner",
    "stackpointer",
    "tlbc_index",
];
const CODE_OBJECT_313: &[&str] = &[
    "size",
    "filename",
    "name",
    "qualname",
    "linetable",
    "firstlineno",
    "argcount",
    "localsplusnames",
    "localspluskinds",
    "co_code_adaptive",
];
const CODE_OBJECT_314: &[&str] = &[
    "size",
    "filename",
    "name",
    "qualname",
    "linetable",
    "firstlineno",
    "argcount",
    "localsplusnames",
    "localspluskinds",
    "co_code_adaptive",
    "co_tlbc",
];

/// The schemas by minor version, oldest first (tests check each against the DWARF of a real
/// build's `struct _Py_DebugOffsets`).
pub const SCHEMAS: &[(u8, Schema)] = &[
    (
        13,
        &[
            HEADER,
            RUNTIME_STATE,
            ("interpreter_state", INTERPRETER_STATE_313),
            ("thread_state", THREAD_STATE_313),
            ("interpreter_frame", INTERPRETER_FRAME_313),
            ("code_object", CODE_OBJECT_313),
        ],
    ),
    (
        14,
        &[
            HEADER,
            RUNTIME_STATE,
            ("interpreter_state", INTERPRETER_STATE_314),
            ("thread_state", THREAD_STATE_313),
            ("interpreter_frame", INTERPRETER_FRAME_314),
            ("code_object", CODE_OBJECT_314),
        ],
    ),
    (
        15,
        &[
            HEADER,
            RUNTIME_STATE,
            ("interpreter_state", INTERPRETER_STATE_314),
            ("thread_state", THREAD_STATE_315),
            ("err_stackitem", &["exc_value"]),
            ("interpreter_frame", INTERPRETER_FRAME_314),
            ("code_object", CODE_OBJECT_314),
        ],
    ),
];

/// The schema a minor version's table is read with: its own, or the newest for a version
/// newer than every schema; `None` before 3.13 (no table).
pub fn schema_for(minor: u8) -> Option<(u8, Schema)> {
    let first = SCHEMAS.first()?.0;
    if minor < first {
        return None;
    }
    SCHEMAS.iter().rev().find(|(m, _)| *m <= minor).copied()
}

/// The byte offset of `section.field` in a table of `schema` (`section` `""` for the
/// header).
pub fn field_offset(schema: Schema, section: &str, field: &str) -> Option<usize> {
    let mut at = 0;
    for (name, fields) in schema {
        if *name == section {
            return fields.iter().position(|f| *f == field).map(|i| at + 8 * i);
        }
        at += 8 * fields.len();
    }
    None
}

/// Bytes of the table `schema` describes (what must be read at `_PyRuntime`).
pub fn schema_len(schema: Schema) -> usize {
    schema.iter().map(|(_, f)| 8 * f.len()).sum()
}

/// What the walker needs of `_Py_DebugOffsets`. Offsets are bytes from the start of the
/// named CPython structure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // Each field is the table's field of the same name.
pub struct DebugOffsets {
    /// `version` (`PY_VERSION_HEX`).
    pub version: PyVersion,
    /// The minor version whose schema read the table.
    pub schema_minor: u8,
    pub runtime_size: u64,
    pub runtime_interpreters_head: u64,
    pub interp_size: u64,
    pub interp_next: u64,
    pub interp_threads_head: u64,
    pub interp_imports_modules: u64,
    pub tstate_size: u64,
    pub tstate_next: u64,
    pub tstate_interp: u64,
    pub tstate_current_frame: u64,
    pub tstate_thread_id: u64,
    pub tstate_native_thread_id: u64,
    pub frame_size: u64,
    pub frame_previous: u64,
    pub frame_executable: u64,
    pub frame_instr_ptr: u64,
    pub frame_owner: u64,
    pub code_size: u64,
    pub code_filename: u64,
    pub code_name: u64,
    pub code_qualname: u64,
    pub code_linetable: u64,
    pub code_firstlineno: u64,
    pub code_adaptive: u64,
}

/// Why a `_Py_DebugOffsets` table was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DebugOffsetsError {
    /// No schema for the version (before 3.13).
    #[error("CPython 3.{minor} publishes no _Py_DebugOffsets (it appeared in 3.13)")]
    NoTable {
        /// The minor version.
        minor: u8,
    },
    /// Fewer bytes than the schema reads.
    #[error("only {got} bytes of _PyRuntime are in the file, the table needs {need}")]
    TooShort {
        /// Bytes available.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The first 8 bytes are not the cookie.
    #[error("_PyRuntime does not start with the cookie \"xdebugpy\" (found {found:02x?})")]
    Cookie {
        /// The bytes found.
        found: [u8; 8],
    },
    /// The table's version is not the interpreter's.
    #[error("the table is of CPython {found}, but the interpreter is {expected}")]
    Version {
        /// In the table.
        found: PyVersion,
        /// From `Py_Version` or the file name.
        expected: PyVersion,
    },
    /// A free-threaded (no-GIL) build: its objects and frames have other layouts.
    #[error(
        "this is a free-threaded (no-GIL) build of CPython {version}, whose objects and frames \
         this profiler does not read; profile a default (GIL) build"
    )]
    FreeThreaded {
        /// The version.
        version: PyVersion,
    },
    /// A value read does not make sense with the schema used.
    #[error("{field} is {value}, {why}")]
    Inconsistent {
        /// `section.field`.
        field: String,
        /// Its value.
        value: u64,
        /// What it should have been.
        why: String,
    },
}

/// Largest structure size believed (the interpreter state, the biggest, is ~220 KiB).
const MAX_STRUCT_SIZE: u64 = 16 << 20;

impl DebugOffsets {
    /// Reads the table at the start of `bytes` (the initialised bytes of `_PyRuntime`) for
    /// CPython `expected`. `runtime_size` is the `_PyRuntime` symbol's size (0 when unknown):
    /// the table's `runtime_state.size` must be it.
    pub fn parse(
        bytes: &[u8],
        expected: PyVersion,
        runtime_size: u64,
    ) -> Result<DebugOffsets, DebugOffsetsError> {
        let (schema_minor, schema) =
            schema_for(expected.minor).ok_or(DebugOffsetsError::NoTable {
                minor: expected.minor,
            })?;
        let need = schema_len(schema);
        if bytes.len() < need {
            return Err(DebugOffsetsError::TooShort {
                got: bytes.len(),
                need,
            });
        }
        let mut cookie = [0u8; 8];
        cookie.copy_from_slice(&bytes[..8]);
        if &cookie != COOKIE {
            return Err(DebugOffsetsError::Cookie { found: cookie });
        }
        let get = |section: &str, field: &str| -> u64 {
            field_offset(schema, section, field)
                .and_then(|o| bytes.get(o..o + 8))
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        let version = version_from_hex(get("", "version") as u32);
        if (version.major, version.minor) != (expected.major, expected.minor) {
            return Err(DebugOffsetsError::Version {
                found: version,
                expected,
            });
        }
        if get("", "free_threaded") != 0 {
            return Err(DebugOffsetsError::FreeThreaded { version });
        }
        let d = DebugOffsets {
            version,
            schema_minor,
            runtime_size: get("runtime_state", "size"),
            runtime_interpreters_head: get("runtime_state", "interpreters_head"),
            interp_size: get("interpreter_state", "size"),
            interp_next: get("interpreter_state", "next"),
            interp_threads_head: get("interpreter_state", "threads_head"),
            interp_imports_modules: get("interpreter_state", "imports_modules"),
            tstate_size: get("thread_state", "size"),
            tstate_next: get("thread_state", "next"),
            tstate_interp: get("thread_state", "interp"),
            tstate_current_frame: get("thread_state", "current_frame"),
            tstate_thread_id: get("thread_state", "thread_id"),
            tstate_native_thread_id: get("thread_state", "native_thread_id"),
            frame_size: get("interpreter_frame", "size"),
            frame_previous: get("interpreter_frame", "previous"),
            frame_executable: get("interpreter_frame", "executable"),
            frame_instr_ptr: get("interpreter_frame", "instr_ptr"),
            frame_owner: get("interpreter_frame", "owner"),
            code_size: get("code_object", "size"),
            code_filename: get("code_object", "filename"),
            code_name: get("code_object", "name"),
            code_qualname: get("code_object", "qualname"),
            code_linetable: get("code_object", "linetable"),
            code_firstlineno: get("code_object", "firstlineno"),
            code_adaptive: get("code_object", "co_code_adaptive"),
        };
        d.check(runtime_size)?;
        Ok(d)
    }

    /// Every size plausible and every offset inside its structure, with room for what is
    /// read there; the frame fields inside the walker's 128-byte frame read.
    fn check(&self, runtime_size: u64) -> Result<(), DebugOffsetsError> {
        let bad = |field: &str, value: u64, why: String| {
            Err(DebugOffsetsError::Inconsistent {
                field: field.to_owned(),
                value,
                why,
            })
        };
        if runtime_size != 0 && self.runtime_size != runtime_size {
            return bad(
                "runtime_state.size",
                self.runtime_size,
                format!("not the size of the _PyRuntime symbol ({runtime_size})"),
            );
        }
        let sizes = [
            ("runtime_state.size", self.runtime_size),
            ("interpreter_state.size", self.interp_size),
            ("thread_state.size", self.tstate_size),
            ("interpreter_frame.size", self.frame_size),
            ("code_object.size", self.code_size),
        ];
        for (field, size) in sizes {
            if size == 0 || size > MAX_STRUCT_SIZE {
                return bad(
                    field,
                    size,
                    format!("not a structure size (1..={MAX_STRUCT_SIZE})"),
                );
            }
        }
        // (field, value, bytes read there, size of its structure)
        let fields = [
            (
                "runtime_state.interpreters_head",
                self.runtime_interpreters_head,
                8,
                self.runtime_size,
            ),
            (
                "interpreter_state.next",
                self.interp_next,
                8,
                self.interp_size,
            ),
            (
                "interpreter_state.threads_head",
                self.interp_threads_head,
                8,
                self.interp_size,
            ),
            (
                "interpreter_state.imports_modules",
                self.interp_imports_modules,
                8,
                self.interp_size,
            ),
            ("thread_state.next", self.tstate_next, 8, self.tstate_size),
            (
                "thread_state.interp",
                self.tstate_interp,
                8,
                self.tstate_size,
            ),
            (
                "thread_state.current_frame",
                self.tstate_current_frame,
                8,
                self.tstate_size,
            ),
            (
                "thread_state.thread_id",
                self.tstate_thread_id,
                8,
                self.tstate_size,
            ),
            (
                "thread_state.native_thread_id",
                self.tstate_native_thread_id,
                8,
                self.tstate_size,
            ),
            (
                "interpreter_frame.previous",
                self.frame_previous,
                8,
                self.frame_size.min(128),
            ),
            (
                "interpreter_frame.executable",
                self.frame_executable,
                8,
                self.frame_size.min(128),
            ),
            (
                "interpreter_frame.instr_ptr",
                self.frame_instr_ptr,
                8,
                self.frame_size.min(128),
            ),
            (
                "interpreter_frame.owner",
                self.frame_owner,
                1,
                self.frame_size.min(128),
            ),
            (
                "code_object.filename",
                self.code_filename,
                8,
                self.code_size,
            ),
            ("code_object.name", self.code_name, 8, self.code_size),
            (
                "code_object.qualname",
                self.code_qualname,
                8,
                self.code_size,
            ),
            (
                "code_object.linetable",
                self.code_linetable,
                8,
                self.code_size,
            ),
            (
                "code_object.firstlineno",
                self.code_firstlineno,
                4,
                self.code_size,
            ),
            // The bytecode starts right at the end of the fixed part.
            (
                "code_object.co_code_adaptive",
                self.code_adaptive,
                0,
                self.code_size,
            ),
        ];
        for (field, value, width, size) in fields {
            if value.saturating_add(width) > size || value > u64::from(u16::MAX) {
                return bad(
                    field,
                    value,
                    format!("outside its structure of {size} bytes"),
                );
            }
        }
        Ok(())
    }
}

fn off(v: u64) -> u32 {
    // `check` bounded every offset by u16::MAX.
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl Layout {
    /// The layout of CPython 3.13+ from its `_Py_DebugOffsets`, with the facts the table
    /// does not publish taken from the era: `_PyInterpreterFrame` with `instr_ptr` at the
    /// instruction executing; the eval loop's shim frame marked by an `owner` of 3 or more
    /// (3.13 `FRAME_OWNED_BY_CSTACK`, 3.14+ `FRAME_OWNED_BY_INTERPRETER`, 3.14's
    /// `FRAME_OWNED_BY_CSTACK` 4); `f_executable` a `_PyStackRef` with tag bits from 3.14;
    /// the 3.11+ location table; 3.12+ `str` objects.
    pub fn from_debug_offsets(d: &DebugOffsets) -> Layout {
        let frame = FrameLayout::Interpreter {
            executable: off(d.frame_executable),
            previous: off(d.frame_previous),
            instr_ptr: off(d.frame_instr_ptr),
            instr_ptr_is_previous: false,
            entry: Entry::Owner {
                offset: off(d.frame_owner),
                cstack: 3,
            },
            executable_tag_mask: if d.version.minor >= 14 { 0b11 } else { 0 },
        };
        Layout {
            minor: d.version.minor,
            runtime_interpreters_head: Some(off(d.runtime_interpreters_head)),
            interp_next: off(d.interp_next),
            interp_threads_head: off(d.interp_threads_head),
            interp_modules: off(d.interp_imports_modules),
            tstate_next: off(d.tstate_next),
            tstate_interp: off(d.tstate_interp),
            tstate_thread_id: off(d.tstate_thread_id),
            tstate_native_thread_id: Some(off(d.tstate_native_thread_id)),
            tstate_frame: off(d.tstate_current_frame),
            cframe_current_frame: None,
            frame_read_len: frame.min_read_len(),
            frame,
            co_filename: off(d.code_filename),
            co_name: off(d.code_name),
            co_qualname: Some(off(d.code_qualname)),
            co_firstlineno: off(d.code_firstlineno),
            co_linetable: off(d.code_linetable),
            co_code_adaptive: Some(off(d.code_adaptive)),
            line_table: LineTableFormat::Locations311,
            unicode: UNICODE_312,
            bytes: BYTES,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A table of `schema` with `values` (section, field, value) set and the rest 0.
    pub(crate) fn table(schema: Schema, values: &[(&str, &str, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; schema_len(schema)];
        b[..8].copy_from_slice(COOKIE);
        for (section, field, v) in values {
            let at = field_offset(schema, section, field)
                .unwrap_or_else(|| panic!("{section}.{field} not in the schema"));
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// The values of Debian sid's CPython 3.14.10 (read from its `_PyRuntime`; the
    /// `debug_offsets` integration test reads them from the real file and checks them
    /// against its DWARF).
    pub(crate) fn debian_314() -> Vec<(&'static str, &'static str, u64)> {
        vec![
            ("", "version", 0x030e_0af0),
            ("runtime_state", "size", 0x4d4c8),
            ("runtime_state", "interpreters_head", 808),
            ("interpreter_state", "size", 225_864),
            ("interpreter_state", "next", 7272),
            ("interpreter_state", "threads_head", 7344),
            ("interpreter_state", "imports_modules", 7688),
            ("thread_state", "size", 832),
            ("thread_state", "next", 8),
            ("thread_state", "interp", 16),
            ("thread_state", "current_frame", 72),
            ("thread_state", "thread_id", 152),
            ("thread_state", "native_thread_id", 160),
            ("interpreter_frame", "size", 88),
            ("interpreter_frame", "previous", 8),
            ("interpreter_frame", "executable", 0),
            ("interpreter_frame", "instr_ptr", 56),
            ("interpreter_frame", "owner", 74),
            ("code_object", "size", 216),
            ("code_object", "filename", 112),
            ("code_object", "name", 120),
            ("code_object", "qualname", 128),
            ("code_object", "linetable", 136),
            ("code_object", "firstlineno", 68),
            ("code_object", "co_code_adaptive", 208),
        ]
    }

    pub(crate) fn v(minor: u8, micro: u8) -> PyVersion {
        PyVersion {
            major: 3,
            minor,
            micro,
        }
    }

    /// The layout of Debian's CPython 3.14.10, for unit tests of the walker.
    pub(crate) fn layout_314() -> Layout {
        let (_, schema) = schema_for(14).unwrap();
        let d = DebugOffsets::parse(&table(schema, &debian_314()), v(14, 10), 0x4d4c8).unwrap();
        Layout::from_debug_offsets(&d)
    }

    #[test]
    fn schemas_cover_313_on_and_newer_versions_use_the_newest() {
        assert!(schema_for(12).is_none());
        assert_eq!(schema_for(13).unwrap().0, 13);
        assert_eq!(schema_for(15).unwrap().0, 15);
        assert_eq!(schema_for(16).unwrap().0, 15);
        for (_, schema) in SCHEMAS {
            for section in ["runtime_state", "interpreter_state", "thread_state"] {
                assert_eq!(
                    field_offset(schema, section, "size").map(|o| o % 8),
                    Some(0)
                );
            }
        }
        // 3.15 moved thread_id behind three new fields.
        let at = |m: u8| field_offset(schema_for(m).unwrap().1, "thread_state", "thread_id");
        assert_eq!((at(13), at(14), at(15)), (Some(192), Some(216), Some(240)));
    }

    #[test]
    fn debian_314_reads_into_the_314_layout() {
        let l = layout_314();
        assert_eq!(l.minor, 14);
        assert_eq!(l.runtime_interpreters_head, Some(808));
        assert_eq!((l.interp_next, l.interp_threads_head), (7272, 7344));
        assert_eq!((l.tstate_frame, l.tstate_thread_id), (72, 152));
        assert_eq!(
            l.frame,
            FrameLayout::Interpreter {
                executable: 0,
                previous: 8,
                instr_ptr: 56,
                instr_ptr_is_previous: false,
                entry: Entry::Owner {
                    offset: 74,
                    cstack: 3
                },
                executable_tag_mask: 3,
            }
        );
        assert_eq!(l.frame_read_len, 75);
        assert_eq!(l.co_code_adaptive, Some(208));
    }

    #[test]
    fn bad_tables_say_what_is_wrong() {
        let (_, schema) = schema_for(14).unwrap();
        let good = table(schema, &debian_314());
        let parse = |b: &[u8], size| DebugOffsets::parse(b, v(14, 10), size);
        assert!(parse(&good, 0).is_ok(), "unknown symbol size");
        assert!(matches!(
            parse(&good[..100], 0),
            Err(DebugOffsetsError::TooShort { got: 100, .. })
        ));
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(
            parse(&b, 0),
            Err(DebugOffsetsError::Cookie { .. })
        ));
        assert!(matches!(
            DebugOffsets::parse(&good, v(13, 0), 0),
            Err(DebugOffsetsError::TooShort { .. } | DebugOffsetsError::Version { .. })
        ));
        let e = parse(&good, 1234).unwrap_err();
        assert!(e.to_string().contains("runtime_state.size"), "{e}");
        let mut values = debian_314();
        values.push(("", "free_threaded", 1));
        let e = parse(&table(schema, &values), 0).unwrap_err();
        assert!(matches!(e, DebugOffsetsError::FreeThreaded { .. }), "{e}");
        // An offset past its structure: what a table of another layout read with this
        // schema gives.
        let mut values = debian_314();
        values.push(("thread_state", "thread_id", 4000));
        let e = parse(&table(schema, &values), 0).unwrap_err();
        assert!(
            e.to_string().contains("thread_state.thread_id is 4000"),
            "{e}"
        );
        let mut values = debian_314();
        values.push(("interpreter_frame", "owner", 200));
        assert!(
            parse(&table(schema, &values), 0).is_err(),
            "frame fields stay in 128 bytes"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let (_, schema) = schema_for(15).unwrap();
        let len = schema_len(schema);
        let mut b = vec![0xffu8; len];
        b[..8].copy_from_slice(COOKIE);
        for seed in 0..64u64 {
            for (i, x) in b.iter_mut().enumerate().skip(8) {
                *x = (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8;
            }
            let _ = DebugOffsets::parse(&b, v(15, 0), 0);
            let _ = DebugOffsets::parse(&b[..len / 2], v(16, 0), 0);
        }
    }
}
