//! Off-CPU samples waiting for their weight: the kernel records a thread's stack as it leaves
//! the CPU, and reports how long it was off only when it runs again. The unwinder thread
//! names the stack at once (while the process lives) and keeps it here until that report.

use std::collections::HashMap;

use super::{Sample, SampleKind};

/// Most samples waiting at once; more are dropped (and counted): a thread that never runs
/// again must not grow the agent without bound.
const MAX_WAITING: usize = 65_536;
/// A sample waiting longer than this is dropped at the next sweep (its thread was lost: it
/// exited, or its end report was).
const MAX_WAIT_NS: u64 = 3_600_000_000_000;

/// The samples waiting, by (thread, time it left the CPU).
#[derive(Debug, Default)]
pub(super) struct Waiting {
    samples: HashMap<(u32, u64), Sample>,
    /// Samples dropped: too many waiting, or waiting too long.
    pub(super) dropped: u64,
}

impl Waiting {
    /// Keeps the sample of thread `tid` that left the CPU at `left_ns`.
    pub(super) fn hold(&mut self, tid: u32, left_ns: u64, sample: Sample) {
        if self.samples.len() >= MAX_WAITING {
            self.dropped += 1;
            return;
        }
        self.samples.insert((tid, left_ns), sample);
    }

    /// The thread came back at `back_ns`: its sample, weighed.
    pub(super) fn end(&mut self, tid: u32, left_ns: u64, back_ns: u64) -> Option<Sample> {
        let mut sample = self.samples.remove(&(tid, left_ns))?;
        sample.kind = SampleKind::OffCpu {
            nanos: back_ns.saturating_sub(left_ns),
        };
        Some(sample)
    }

    /// Drops the samples that waited too long.
    pub(super) fn expire(&mut self, now_ns: u64) {
        let before = self.samples.len();
        self.samples
            .retain(|&(_, left), _| now_ns.saturating_sub(left) < MAX_WAIT_NS);
        self.dropped += (before - self.samples.len()) as u64;
    }

    /// At the end of the session: every thread still off CPU, weighed up to `now_ns`.
    pub(super) fn finish(&mut self, now_ns: u64) -> Vec<Sample> {
        let mut out: Vec<((u32, u64), Sample)> = self.samples.drain().collect();
        out.sort_by_key(|(k, _)| k.1);
        out.into_iter()
            .map(|((_, left), mut s)| {
                s.kind = SampleKind::OffCpu {
                    nanos: now_ns.saturating_sub(left),
                };
                s
            })
            .collect()
    }

    /// Samples waiting now.
    pub(super) fn len(&self) -> usize {
        self.samples.len()
    }
}

/// `bpf_ktime_get_ns()`'s clock (CLOCK_MONOTONIC) now.
pub(super) fn ktime_now() -> u64 {
    // SAFETY: an all-zero timespec is valid, and clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock ID and a valid pointer to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_unwind_api::Trace;

    fn sample(tid: u32) -> Sample {
        Sample {
            trace: Trace {
                pid: 1,
                tid,
                comm: String::new(),
                thread_name: None,
                frames: Vec::new(),
            },
            start_ns: 0,
            kind: SampleKind::Cpu,
        }
    }

    #[test]
    fn a_sample_is_weighed_by_its_own_end_only() {
        let mut w = Waiting::default();
        w.hold(7, 100, sample(7));
        w.hold(7, 500, sample(7));
        // Another thread's end, or another switch of the same thread: not this sample.
        assert!(w.end(8, 100, 900).is_none());
        assert!(w.end(7, 101, 900).is_none());
        let s = w.end(7, 100, 400).unwrap();
        assert_eq!(s.kind, SampleKind::OffCpu { nanos: 300 });
        assert!(w.end(7, 100, 400).is_none(), "delivered once");
        let rest = w.finish(1_000);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].kind, SampleKind::OffCpu { nanos: 500 });
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn old_samples_expire() {
        let mut w = Waiting::default();
        w.hold(1, 0, sample(1));
        w.hold(2, MAX_WAIT_NS, sample(2));
        w.expire(MAX_WAIT_NS + 1);
        assert_eq!((w.len(), w.dropped), (1, 1));
    }
}
