//! The crate's one error type.

/// Why [`extract`](crate::extract) could not build a table.
///
/// Damage inside a single CFI section or `.gopclntab` is not an error: the damaged part is
/// skipped (logged with `tracing` at `warn`) and the rest of the file still yields rules.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a parseable ELF file.
    #[error(
        "cannot parse the ELF file: {reason}; pass the whole file as mapped from disk \
         (a truncated read or a non-ELF file cannot be unwound)"
    )]
    Elf {
        /// What the ELF parser rejected.
        reason: String,
    },
    /// The file is ELF, but not 64-bit x86-64.
    #[error(
        "the ELF file is for machine {machine:#x} ({class}), but only 64-bit x86-64 \
         (EM_X86_64 = 0x3e) is supported; skip this file or unwind it with frame pointers"
    )]
    UnsupportedArchitecture {
        /// `e_machine` of the file (0 when the file is not 64-bit).
        machine: u16,
        /// "64-bit" or "32-bit".
        class: &'static str,
    },
    /// Neither the file nor its debug file has usable unwind information.
    #[error(
        "no unwind information found ({detail}); the file has no usable .eh_frame, \
         .debug_frame or .gopclntab: pass its separate debug file (found through \
         .gnu_debuglink or the build id) or unwind this module with frame pointers"
    )]
    NoUnwindInfo {
        /// What was looked at.
        detail: String,
    },
    /// Bytes given to [`StackDeltaTable::from_bytes`](crate::StackDeltaTable::from_bytes)
    /// are not a table this version wrote.
    #[error("not a usable stack-delta table file ({reason}); delete it to have it rebuilt")]
    Encoding {
        /// What is wrong with it.
        reason: String,
    },
}
