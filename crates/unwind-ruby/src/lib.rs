//! What a profiler needs to know about CRuby 2.7-3.4 to name Ruby frames.
//!
//! A sampled native stack of a Ruby process shows `rb_vm_exec` and `vm_exec_core` where the
//! program spent its time; the Ruby methods are in the VM's control frames. This crate holds
//! that knowledge, independent of how memory is read:
//!
//! - [`layout`]: per minor version, the offsets of the execution context, control frames,
//!   iseqs, method entries, classes, strings and arrays.
//! - [`detect`](mod@detect): the version, `rb_vm_exec`'s range, where `ruby_current_ec`
//!   lives and where the symbol table is, from symbols when the file has them and otherwise
//!   from the machine code of exported functions that use them ([`code`]) and the unwind
//!   table's function bounds ([`frames_table`]); Debian's 3.3 exports none of them.
//! - [`iseq`]: an iseq's label, file and line table (the succinct position index).
//! - [`names`]: method entries, class paths and labels as Ruby prints them
//!   (`block in Shop::Cart#checkout`, `Shop::Cart.build`, `Array#each`).
//! - [`Ruby`]: the plug-in the agent loads through `ferroscope-unwind-api`'s registry, with
//!   the eBPF walker (`bpf/ruby.bpf.c`, mirrored in [`ebpf`]).
//!
//! All reads go through [`ProcessMemory`](ferroscope_unwind_api::ProcessMemory), are bounded,
//! and never panic on garbage (fuzzed).
//!
//! ```
//! use ferroscope_unwind_ruby::{RubyVersion, layout};
//!
//! let v = RubyVersion::parse("3.3.8").unwrap();
//! let l = layout::layout(v.major, v.minor).unwrap();
//! assert_eq!(l.cfp_size, 56); // 3.3 dropped __bp__ from rb_control_frame_t
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod code;
pub mod detect;
pub mod ebpf;
pub mod frames_table;
mod interpreter;
pub mod iseq;
pub mod layout;
pub mod names;
pub mod objects;

pub use detect::{EcSource, RubyFile};
pub use interpreter::{NAME, Ruby, ebpf_proc, owned_ranges};

use ferroscope_unwind_api::MemoryError;

/// A Ruby version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RubyVersion {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
    /// Teeny (patch).
    pub patch: u8,
}

impl RubyVersion {
    /// Parses `"3.3.8"` (a suffix after the numbers is ignored).
    pub fn parse(s: &str) -> Option<RubyVersion> {
        let mut it = s.trim().split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let patch: String = it
            .next()
            .unwrap_or("0")
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some(RubyVersion {
            major,
            minor,
            patch: patch.parse().unwrap_or(0),
        })
    }

    /// Whether this is `major.minor` or later.
    pub fn at_least(&self, major: u8, minor: u8) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl std::fmt::Display for RubyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why reading Ruby state from a file or a process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A read of process memory failed.
    #[error(
        "cannot read the {what} at {addr:#x} (the process may have exited, or the object was \
         freed or moved by the garbage collector since the sample)"
    )]
    Read {
        /// What was being read.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The memory error.
        #[source]
        source: MemoryError,
    },
    /// Memory was readable but does not hold what the layout says it should.
    #[error(
        "the {what} at {addr:#x} is not valid: {reason}; either it changed since the sample, \
         or the process is not the Ruby version whose layout was used"
    )]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// Where.
        addr: u64,
        /// What was wrong.
        reason: String,
    },
    /// The Ruby version has no layout in this crate.
    #[error(
        "Ruby {version} is not supported: only 2.7 and 3.0 to 3.4 have known layouts; its Ruby \
         frames will show as native interpreter frames"
    )]
    UnsupportedVersion {
        /// The version found.
        version: RubyVersion,
    },
    /// What the walker needs was not found in the file.
    #[error("{0}; its Ruby frames will show as native interpreter frames")]
    Detect(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn read(what: &'static str, addr: u64) -> impl FnOnce(MemoryError) -> Error {
        move |source| Error::Read { what, addr, source }
    }

    pub(crate) fn invalid(what: &'static str, addr: u64, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what,
            addr,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        let v = RubyVersion::parse("3.1.2").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (3, 1, 2));
        assert!(v.at_least(3, 1) && !v.at_least(3, 2));
        assert_eq!(RubyVersion::parse("3.4.0preview1").unwrap().patch, 0);
        assert!(RubyVersion::parse("x").is_none());
    }
}
