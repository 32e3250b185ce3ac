//! ferroscope's eBPF programs, their ABI, and the typed code that loads and attaches them.
//!
//! The programs are C (`bpf/*.bpf.c`), compiled by `build.rs` with clang for the BPF target
//! with CO-RE against the committed `bpf/vmlinux.h`, and embedded in this crate. Everything
//! that crosses the kernel/user boundary is declared once in `bpf/ferroscope.h` and mirrored
//! in [`abi`]; a test compares the mirror with the BTF that clang emitted.
//!
//! [`Sampler`] is the only way the rest of ferroscope touches eBPF: it loads the sampling
//! program, attaches it to a cpu-clock perf event on every online CPU, and hands back the
//! decoded [`abi::TraceEvent`]s and the per-CPU counters. With an [`UnwinderConfig`] it also
//! unwinds user stacks from stack-delta tables, which the caller loads through
//! [`UnwindMaps`] when [`Sampler::drain_pid_events`] reports a process. No other crate
//! depends on aya's types through this API.
//!
//! ```no_run
//! use ferroscope_ebpf_programs::{Sampler, SamplerConfig};
//!
//! let mut sampler = Sampler::start(&SamplerConfig { sample_rate_hz: 97, pids: None, unwinder: None })?;
//! std::thread::sleep(std::time::Duration::from_secs(1));
//! let mut n = 0;
//! sampler.drain(|event| n += event.user_frames().len());
//! println!("{n} user frames, {:?}", sampler.counters()?);
//! # Ok::<(), ferroscope_ebpf_programs::Error>(())
//! ```
#![deny(missing_docs)]

pub mod abi;
mod error;
mod sampler;
mod unwind_maps;

#[cfg(test)]
mod btf;

pub use error::Error;
pub use sampler::{Counters, Sampler, SamplerConfig, ring_buffer_bytes};
pub use unwind_maps::{UnwindMaps, UnwinderConfig};

/// The compiled sampler object (`bpf/sampler.bpf.c`).
pub static SAMPLER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sampler.bpf.o"));
