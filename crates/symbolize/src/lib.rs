//! Host-side symbolization for ferroscope: turns the raw addresses in stack traces into
//! function names, source files, lines and inline chains, and the modules (executables,
//! libraries, kernel modules) they belong to. Usable on its own by other projects.
//!
//! Symbol sources, per file, in order: Go's `.gopclntab` ([`gopclntab`], every layout since
//! Go 1.2, stripped binaries too); the separate debug file ([`debuglink`], gdb's search order,
//! CRC and build ID verified, compressed sections handled); `.symtab` then `.dynsym`
//! ([`elf`]); `.gnu_debugdata` (MiniDebugInfo); and DWARF ([`dwarf`]) for file, line and
//! inlined functions. Kernel addresses come from `/proc/kallsyms` ([`kernel`]), with module
//! names and BPF programs as `bpf_prog_*`. Names are demangled per [`DemangleMode`].
//!
//! [`Symbolizer`] ties them together per process: `observe_process` only snapshots the maps
//! and opens the mapped files (inside the process's root, [`root`], so containers work);
//! each file is parsed on the first address that needs it and cached by identity (build
//! ID, else content hash) in an LRU bounded by count and bytes, shared by all processes,
//! optionally backed by an on-disk cache. Frames of processes that have exited still resolve.
//! Each cached file also keeps a bounded memo of the addresses it resolved
//! ([`SymbolizerBuilder::address_memo`]): a profiler asks for the same addresses every interval.
//!
//! Everything read from `/proc` or from files is untrusted input: parsers never panic, and a
//! file that cannot be read only degrades its frames to `module+offset` (counted in
//! [`SymbolizerStats`]). The crate knows nothing about eBPF or profiles.
//!
//! ```
//! use ferroscope_symbolize::{DemangleMode, Symbolizer};
//!
//! #[inline(never)]
//! fn busy_function() -> u64 {
//!     std::hint::black_box(42)
//! }
//!
//! let mut symbolizer = Symbolizer::builder()
//!     .demangle(DemangleMode::Simplified)
//!     .inline_frames(true)
//!     .cache_dir(None) // or Some(ferroscope_symbolize::DEFAULT_CACHE_DIR.into())
//!     .build();
//! let pid = std::process::id();
//! symbolizer.observe_process(pid)?;
//! let frame = symbolizer.symbolize_user(pid, busy_function as *const () as usize as u64);
//! assert!(frame.display_name().contains("busy_function"), "{frame:?}");
//! assert!(frame.module.is_some());
//! // With DWARF (this doctest is built with debug info): the source position, and the
//! // chain of inlined functions, innermost first.
//! for f in frame.source_frames() {
//!     let _ = (f.function, f.file, f.line);
//! }
//!
//! // An ELF file's own addresses, as `addr2line -e FILE` takes them:
//! let exe = std::env::current_exe().unwrap();
//! let _frame = symbolizer.symbolize_elf(&exe, 0x1000)?;
//!
//! // Maps text can also be parsed directly.
//! let maps = ferroscope_symbolize::maps::parse_maps(
//!     "7ffd3b5fe000-7ffd3b600000 r-xp 00000000 00:00 0   [vdso]",
//! )?;
//! assert!(maps[0].is_executable());
//! # Ok::<(), ferroscope_symbolize::Error>(())
//! ```
#![deny(missing_docs)]

/// The symbolizer can move to another thread (e.g. a background symbolization task).
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Symbolizer>();
};

mod disk_cache;
mod error;
mod memo;
mod source;
mod symbolizer;

pub mod debuglink;
pub mod demangle;
pub mod dwarf;
pub mod elf;
pub mod gopclntab;
pub mod kernel;
pub mod maps;
pub mod root;

pub use demangle::DemangleMode;
pub use disk_cache::DEFAULT_CACHE_DIR;
pub use error::Error;
pub use symbolizer::{
    DEFAULT_ADDRESS_MEMO_ENTRIES, DEFAULT_CACHE_BYTES, DEFAULT_CACHE_CAPACITY,
    DEFAULT_MAX_PENDING_FILES, DEFAULT_REREAD_INTERVAL, KernelFrame, Module, SourceFrame,
    Symbolizer, SymbolizerBuilder, SymbolizerStats, UserFrame,
};
