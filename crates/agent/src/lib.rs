//! The running ferroscope session: it composes the eBPF sampler, the symbolizer and the
//! profile builder into a recording.
//!
//! This is the only crate that knows about all the others, and it never names a runtime.
//! Data flows one way: [`ferroscope_ebpf_programs::Sampler`] produces raw trace records;
//! [`session::Session`] turns them into [`ferroscope_unwind_api::Trace`]s with every runtime
//! frame named by its plug-in ([`interp`]) while the [`process`] manager keeps the kernel's
//! unwind tables in step with the processes; [`aggregate`] counts identical traces;
//! [`probes`] attaches the probe links;
//! [`profile`] symbolizes each distinct frame once and builds a pprof profile; [`record`]
//! runs the whole thing for a duration with progress reporting, [`run`] continuously. [`check`] diagnoses whether this machine can run it
//! at all, and is run before any sampling so that users see a fix instead of an errno.
#![deny(missing_docs)]

pub mod aggregate;
pub mod check;
pub mod config;
mod discover;
mod error;
pub mod interp;
pub mod metrics;
pub mod probes;
pub mod process;
pub mod profile;
pub mod record;
pub mod run;
pub mod server;
pub mod session;

pub use error::Error;
