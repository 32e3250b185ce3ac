//! Per-version offsets of the Zend Engine structures a walker follows (x86-64, NTS builds).
//!
//! From `executor_globals` to the executing frame (`zend_execute_data`), its function
//! (`zend_function`: the common part, then `zend_op_array` for user code), the current
//! instruction (`zend_op.lineno`), class entries and strings. 7.4 and 8.2-8.5 are checked
//! against real interpreters by this crate's tests (`tests/layout.rs`); 7.3, 8.0 and 8.1 come
//! from php-src's headers (no build of them installs on this machine).

use crate::PhpVersion;

/// The offsets of one PHP minor version. Byte offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The versions it describes (`major`, `minor`).
    pub version: (u8, u8),
    /// `zend_executor_globals.current_execute_data`.
    pub eg_current_execute_data: u32,
    /// `zend_execute_data.opline`: the instruction executing (user code only).
    pub ex_opline: u32,
    /// `zend_execute_data.func`.
    pub ex_func: u32,
    /// `zend_execute_data.This.u1.type_info`: the call's `ZEND_CALL_*` flags in its high 16
    /// bits.
    pub ex_call_info: u32,
    /// `zend_execute_data.prev_execute_data`.
    pub ex_prev: u32,
    /// `zend_function.type` (a byte: [`FUNCTION_INTERNAL`], [`FUNCTION_USER`],
    /// [`FUNCTION_EVAL`]).
    pub func_type: u32,
    /// `zend_function.common.function_name` (a `zend_string *`; NULL for top-level code).
    pub func_name: u32,
    /// `zend_function.common.scope` (a `zend_class_entry *`).
    pub func_scope: u32,
    /// `zend_op_array.last`: how many instructions it has.
    pub op_last: u32,
    /// `zend_op_array.opcodes`: the fingerprint of a user function (its instructions'
    /// address never changes while the function lives, and differs between functions).
    pub op_opcodes: u32,
    /// `zend_op_array.filename`.
    pub op_filename: u32,
    /// `zend_op_array.line_start`; `line_end` follows it.
    pub op_line_start: u32,
    /// `zend_op.lineno`.
    pub zend_op_lineno: u32,
    /// `sizeof(zend_op)`.
    pub zend_op_size: u32,
    /// `zend_class_entry.name`.
    pub class_name: u32,
    /// `zend_string.len`.
    pub string_len: u32,
    /// `zend_string.val`.
    pub string_val: u32,
}

/// `zend_function.type` of a function written in C (`ZEND_INTERNAL_FUNCTION`).
pub const FUNCTION_INTERNAL: u8 = 1;
/// `zend_function.type` of PHP code (`ZEND_USER_FUNCTION`).
pub const FUNCTION_USER: u8 = 2;
/// `zend_function.type` of `eval()`'d code (`ZEND_EVAL_CODE`).
pub const FUNCTION_EVAL: u8 = 4;

/// `ZEND_CALL_CODE`: the frame runs a file's top-level code (or eval'd code), not a function.
pub const CALL_CODE: u32 = 1 << 16;
/// `ZEND_CALL_TOP`: the frame was pushed by C code (`zend_execute`, `zend_call_function`,
/// a generator's resumption) that runs it in a new call of the VM loop (`execute_ex`).
pub const CALL_TOP: u32 = 1 << 17;

/// `ZEND_VM_KIND_HYBRID`, what `zend_vm_kind()` returns for the VM whose handlers and JIT
/// code share `execute_ex`'s stack frame (every GCC build).
pub const VM_KIND_HYBRID: u32 = 4;

const fn entry(
    version: (u8, u8),
    eg_current_execute_data: u32,
    op_last: u32,
    op_opcodes: u32,
    op_filename: u32,
) -> Layout {
    Layout {
        version,
        eg_current_execute_data,
        ex_opline: 0,
        ex_func: 24,
        ex_call_info: 40,
        ex_prev: 48,
        func_type: 0,
        func_name: 8,
        func_scope: 16,
        op_last,
        op_opcodes,
        op_filename,
        op_line_start: op_filename + 8,
        zend_op_lineno: 24,
        zend_op_size: 32,
        class_name: 8,
        string_len: 16,
        string_val: 24,
    }
}

/// Every supported minor version's layout.
///
/// `zend_execute_data`, `zend_op`, `zend_class_entry` and `zend_string` keep their offsets
/// from 7.3 to 8.5; `zend_op_array`'s fields move with almost every minor (8.0 added
/// `attributes` to the common part, and later minors moved fields before `opcodes` and
/// `filename` back and forth); 8.5 moved `current_execute_data` in `zend_executor_globals`
/// from 488 to 512.
pub const LAYOUTS: &[Layout] = &[
    entry((7, 3), 488, 60, 64, 128),
    entry((7, 4), 488, 60, 64, 136),
    entry((8, 0), 488, 68, 72, 144),
    entry((8, 1), 488, 68, 72, 144),
    entry((8, 2), 488, 80, 88, 152),
    entry((8, 3), 488, 76, 80, 144),
    entry((8, 4), 488, 96, 104, 168),
    entry((8, 5), 512, 96, 104, 168),
];

/// The versions with a layout, as `major.minor`.
pub const SUPPORTED: &str = "7.3, 7.4 and 8.0 to 8.5";

/// The layout of `version`, when it has one.
pub fn layout(version: PhpVersion) -> Option<&'static Layout> {
    LAYOUTS
        .iter()
        .find(|l| l.version == (version.major, version.minor))
}

impl Layout {
    /// Bytes of a `zend_execute_data` the walker reads: up to `prev_execute_data`.
    pub fn ex_read_len(&self) -> u32 {
        self.ex_prev.max(self.ex_func).max(self.ex_call_info) + 8
    }

    /// Bytes of a `zend_function` the eBPF walker reads: its type and fingerprint.
    pub fn func_read_len(&self) -> u32 {
        self.op_opcodes + 8
    }

    /// Bytes of a `zend_function` naming reads: up to `line_end`.
    pub fn func_name_read_len(&self) -> u32 {
        self.op_line_start + 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_is_in_order_and_consistent() {
        for w in LAYOUTS.windows(2) {
            assert!(w[0].version < w[1].version);
        }
        for l in LAYOUTS {
            assert!(l.op_opcodes > l.func_scope, "{:?}", l.version);
            assert!(l.op_last + 4 <= l.op_opcodes, "{:?}", l.version);
            assert!(l.op_filename > l.op_opcodes, "{:?}", l.version);
            assert!(l.func_name_read_len() <= 256, "{:?}", l.version);
            assert!(l.func_read_len() <= 128, "{:?}", l.version);
            assert_eq!(l.ex_read_len(), 56);
        }
        assert_eq!(
            layout(PhpVersion::new(8, 5, 2))
                .unwrap()
                .eg_current_execute_data,
            512
        );
        assert!(layout(PhpVersion::new(7, 2, 0)).is_none());
        assert!(layout(PhpVersion::new(8, 6, 0)).is_none());
    }
}
