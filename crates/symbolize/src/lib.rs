//! Host-side symbolization for ferroscope: turns the raw addresses in stack traces into
//! function names and the modules (executables, libraries, kernel modules) they belong to.
//!
//! The crate has three layers, each usable on its own:
//!
//! - [`maps`] parses `/proc/PID/maps` into [`maps::MapEntry`]s;
//! - [`elf`] reads function symbols, the build ID and the load layout of an ELF file into a
//!   compact, file-independent [`elf::ElfSymbols`]; [`kernel`] does the same for
//!   `/proc/kallsyms` ([`kernel::KernelSymbols`]);
//! - [`Symbolizer`] ties them together per process: it snapshots a process's maps, parses
//!   each mapped file once per file identity (shared by all processes through an LRU cache),
//!   and resolves addresses even after the process has exited.
//!
//! Everything read from `/proc` or from mapped files is treated as untrusted input: parsers
//! never panic, and a file that cannot be read only degrades its frames to `module+offset`.
//! The crate knows nothing about eBPF or profiles; it only reads `/proc` and files.
//!
//! ```
//! use ferroscope_symbolize::Symbolizer;
//!
//! #[inline(never)]
//! fn busy_function() -> u64 {
//!     std::hint::black_box(42)
//! }
//!
//! let mut symbolizer = Symbolizer::new();
//! let pid = std::process::id();
//! symbolizer.observe_process(pid)?;
//! let frame = symbolizer.symbolize_user(pid, busy_function as *const () as usize as u64);
//! assert!(frame.display_name().contains("busy_function"), "{frame:?}");
//! assert!(frame.module.is_some());
//!
//! // Maps text can also be parsed directly.
//! let maps = ferroscope_symbolize::maps::parse_maps(
//!     "7ffd3b5fe000-7ffd3b600000 r-xp 00000000 00:00 0   [vdso]",
//! )?;
//! assert!(maps[0].is_executable());
//! # Ok::<(), ferroscope_symbolize::Error>(())
//! ```
#![deny(missing_docs)]

mod error;
mod symbolizer;

pub mod elf;
pub mod kernel;
pub mod maps;

pub use error::Error;
pub use symbolizer::{
    DEFAULT_CACHE_CAPACITY, DEFAULT_REREAD_INTERVAL, KernelFrame, Module, Symbolizer,
    SymbolizerStats, UserFrame,
};
