//! ferroscope's native eBPF programs and the typed code that loads and attaches them, with
//! the runtime programs the caller hands over.
//!
//! The native programs are C (`bpf/native.bpf.c`: the sampler, the native stack-delta
//! unwinder, the process exit and exec reports), compiled by `build.rs` in two builds (with
//! `bpf_loop` for Linux 5.17+, and a legacy one for 5.10+) against the headers of
//! `ferroscope-ebpf-abi`, and embedded in this crate. Runtime programs (one per runtime,
//! from its own crate) are loaded next to them: they share the native object's maps, and the
//! native unwinder reaches each through the `fs_progs` tail-call table. Every program is
//! verified on its own, so a runtime the kernel rejects is off alone ([`Sampler::programs`]
//! says why).
//!
//! [`Sampler`] is the only way the rest of ferroscope touches eBPF: it loads the programs,
//! attaches the sampler to a cpu-clock perf event on every online CPU, and hands back the
//! decoded [`TraceRecord`](ferroscope_ebpf_abi::TraceRecord)s and the counters. With an
//! [`UnwinderConfig`] it also unwinds user stacks from stack-delta tables, which the caller
//! loads through [`UnwindMaps`] when [`Sampler::drain_pid_events`] reports a process. No
//! other crate depends on aya's types through this API.
//!
//! ```no_run
//! use ferroscope_ebpf_programs::{Sampler, SamplerConfig};
//!
//! let mut sampler = Sampler::start(&SamplerConfig::frame_pointers(97, None))?;
//! std::thread::sleep(std::time::Duration::from_secs(1));
//! let mut n = 0;
//! sampler.drain(|record| n += record.user_frames().len());
//! println!("{n} user frames, {:?}", sampler.counters()?);
//! # Ok::<(), ferroscope_ebpf_programs::Error>(())
//! ```
#![deny(missing_docs)]

mod diagnose;
mod entries;
mod error;
mod loader;
mod sampler;
mod sys;
mod unwind_maps;

pub use diagnose::explain_rejection;
pub use entries::{OffCpuConfig, ProbeConfig, ProbeKind, ProbeSite, ProbeTarget};
pub use error::Error;
pub use loader::{Build, ProgramReport, RuntimeObject, Verdict, kernel_version, preferred_build};
pub use sampler::{
    Counters, RING_BUFFER_SECONDS, RuntimeCounters, Sampler, SamplerConfig, TraceReader,
    UnwindWriter, probe, ring_buffer_bytes,
};
pub use unwind_maps::{UnwindMaps, UnwinderConfig};

/// The native object (`bpf/native.bpf.c`), every build: per entry, `bpf_loop` and legacy.
pub static NATIVE_OBJECTS: ferroscope_ebpf_abi::ObjectSet =
    ferroscope_ebpf_abi::include_objects!("native.bpf");
