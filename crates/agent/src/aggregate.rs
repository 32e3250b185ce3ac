//! Counting identical traces.

use std::collections::{HashMap, HashSet};

use ferroscope_ebpf_programs::abi::{FRAME_NATIVE, TraceEvent, UnwindError};
use ferroscope_unwind_api::{Frame, FrameKind, Trace};

use crate::interp::Interpreters;

/// Addresses at and above this, in a native frame, are not code: they stand for the
/// [`UnwindError`] (`address - UNWIND_ERROR_FRAME_BASE`) that ended the user stack. No
/// user-space address is this high on any 64-bit architecture.
pub const UNWIND_ERROR_FRAME_BASE: u64 = 0xffff_ffff_ffff_ff00;

/// The frame that ends a user stack the unwinder could not finish.
pub fn unwind_error_frame(error: UnwindError) -> Frame {
    Frame::native(UNWIND_ERROR_FRAME_BASE + error as u64, false)
}

/// The unwind error a frame from [`unwind_error_frame`] stands for.
pub fn unwind_error_of(frame: &Frame) -> Option<UnwindError> {
    if frame.kind != FrameKind::Native || frame.address < UNWIND_ERROR_FRAME_BASE {
        return None;
    }
    UnwindError::from_raw((frame.address - UNWIND_ERROR_FRAME_BASE) as u32)
}

/// Counts identical traces (same process, thread, comm and frames).
#[derive(Debug, Default)]
pub struct TraceAggregator {
    counts: HashMap<Trace, u64>,
    processes: HashSet<u32>,
    samples: u64,
}

impl TraceAggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Converts a sampled event into a [`Trace`]: kernel frames first (leaf first), then
    /// user frames. The first frame of each stack is the interrupted instruction; every
    /// other frame is a return address. A user stack the unwinder could not finish ends
    /// with an [`unwind_error_frame`]. Interpreter frames come out raw (as the eBPF walker
    /// recorded them): name them with [`crate::interp::Interpreters::resolve`] before
    /// counting the trace.
    pub fn trace_of(event: &TraceEvent) -> Trace {
        let kernel = event
            .kernel_frames()
            .iter()
            .enumerate()
            .map(|(i, &a)| Frame::kernel(a, i == 0));
        // When the sample interrupted a syscall, the user stack's first frame is the
        // instruction the syscall returns to: the thread is "at" it, so it is looked up as
        // is, as perf does.
        let kinds = event.user_frame_kinds();
        let user = event
            .user_frames()
            .iter()
            .enumerate()
            .map(|(i, &a)| match kinds {
                Some((kinds, aux)) if kinds[i] != FRAME_NATIVE => {
                    Frame::interpreted(kinds[i], a, aux[i], i == 0)
                }
                _ => Frame::native(a, i == 0),
            });
        let error = event.user_error().map(unwind_error_frame);
        Trace {
            pid: event.pid,
            tid: event.tid,
            comm: event.comm_str(),
            frames: kernel.chain(user).chain(error).collect(),
        }
    }

    /// Counts one event. Returns true when its process was not seen before.
    /// Interpreter frames are named by `interpreters` first.
    pub fn add(&mut self, event: &TraceEvent, interpreters: &mut Interpreters) -> bool {
        let mut trace = Self::trace_of(event);
        if event.interp_frames > 0 {
            interpreters.resolve(&mut trace);
        }
        self.add_trace(trace, 1)
    }

    /// Counts `count` samples of `trace`. Returns true when its process was not seen before.
    pub fn add_trace(&mut self, trace: Trace, count: u64) -> bool {
        self.samples += count;
        let new = self.processes.insert(trace.pid);
        *self.counts.entry(trace).or_insert(0) += count;
        new
    }

    /// Samples counted.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Distinct processes seen.
    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    /// Distinct traces.
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// The counted traces.
    pub fn iter(&self) -> impl Iterator<Item = (&Trace, u64)> {
        self.counts.iter().map(|(t, &c)| (t, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_ebpf_programs::abi::{MAX_KERNEL_FRAMES, MAX_USER_FRAMES};

    fn event(pid: u32, kernel: &[u64], user: &[u64]) -> TraceEvent {
        let mut e = TraceEvent {
            pid,
            tid: pid + 1,
            ktime_ns: 0,
            cpu: 0,
            flags: 0,
            kernel_len: kernel.len() as i32,
            user_len: user.len() as i32,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            user_error: 0,
            interp_frames: 0,
            kernel_frames: [0; MAX_KERNEL_FRAMES],
            user_frames: [0; MAX_USER_FRAMES],
            user_aux: [0; MAX_USER_FRAMES],
            user_kinds: [0; MAX_USER_FRAMES],
        };
        e.kernel_frames[..kernel.len()].copy_from_slice(kernel);
        e.user_frames[..user.len()].copy_from_slice(user);
        e
    }

    #[test]
    fn identical_traces_are_counted_together() {
        let mut agg = TraceAggregator::new();
        let mut i = Interpreters::new(&[]);
        assert!(agg.add(&event(10, &[], &[0x1000, 0x2000]), &mut i));
        assert!(!agg.add(&event(10, &[], &[0x1000, 0x2000]), &mut i));
        assert!(!agg.add(&event(10, &[], &[0x1000, 0x2001]), &mut i));
        assert!(agg.add(&event(11, &[], &[0x1000, 0x2000]), &mut i));
        assert_eq!(agg.samples(), 4);
        assert_eq!(agg.processes(), 2);
        assert_eq!(agg.distinct(), 3);
        let max = agg.iter().map(|(_, c)| c).max().unwrap();
        assert_eq!(max, 2);
    }

    #[test]
    fn kernel_frames_come_first_and_only_leaves_are_exact() {
        let t =
            TraceAggregator::trace_of(&event(1, &[0xffff_1000, 0xffff_2000], &[0x10, 0x20, 0x30]));
        let kinds: Vec<_> = t.frames.iter().map(|f| (f.kind, f.is_leaf)).collect();
        use ferroscope_unwind_api::FrameKind::*;
        assert_eq!(
            kinds,
            vec![
                (Kernel, true),
                (Kernel, false),
                (Native, true),
                (Native, false),
                (Native, false)
            ]
        );
        assert_eq!(t.comm, "worker");
        assert_eq!(t.frames[4].lookup_address(), 0x2f);
    }

    #[test]
    fn an_unwind_error_ends_the_user_stack_with_its_frame() {
        let mut e = event(1, &[], &[0x10, 0x20]);
        e.user_error = UnwindError::NoMapping as u32;
        let t = TraceAggregator::trace_of(&e);
        assert_eq!(t.frames.len(), 3);
        assert_eq!(unwind_error_of(&t.frames[2]), Some(UnwindError::NoMapping));
        assert_eq!(unwind_error_of(&t.frames[1]), None);
        assert_eq!(unwind_error_of(&Frame::kernel(u64::MAX, false)), None);
    }
}
