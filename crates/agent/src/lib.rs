//! The running ferroscope session: it composes the eBPF sampler, the symbolizer and the
//! profile builder into a recording.
//!
//! This is the only crate that knows about all the others. Data flows one way:
//! [`ferroscope_ebpf_programs::Sampler`] produces raw trace events; [`aggregate`] turns them
//! into [`ferroscope_unwind_api::Trace`]s and counts identical ones; [`profile`] symbolizes
//! each distinct frame once and builds a pprof profile; [`record`] runs the whole thing for
//! a duration with progress reporting. [`check`] diagnoses whether this machine can run it
//! at all, and is run before any sampling so that users see a fix instead of an errno.
#![deny(missing_docs)]

pub mod aggregate;
pub mod check;
pub mod config;
mod error;
pub mod interp;
pub mod metrics;
pub mod process;
pub mod profile;
pub mod record;
pub mod run;
pub mod server;

pub use error::Error;
