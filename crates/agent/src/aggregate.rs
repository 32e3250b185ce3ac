//! From ring-buffer records to traces, and counting identical traces.

use std::collections::{HashMap, HashSet};

use ferroscope_ebpf_abi::{FRAME_NATIVE, TraceRecord, UnwindError};
use ferroscope_unwind_api::{Frame, RawFrame, RecordedFrame, Trace};

/// A record as a trace: kernel frames first (leaf first), then user frames. The first frame
/// of each stack is the interrupted instruction, and so is a frame a signal interrupted;
/// every other frame is a return address. A user stack the unwinder could not finish ends
/// with an [`RecordedFrame::UnwindError`]. Runtime frames come out raw (as their programs
/// recorded them): name them with [`crate::interp::Interpreters::resolve`].
pub fn trace_of(record: &TraceRecord<'_>) -> Trace<RecordedFrame> {
    let kernel = record
        .kernel_frames()
        .enumerate()
        .map(|(i, a)| RecordedFrame::kernel(a, i == 0));
    // When the sample interrupted a syscall, the user stack's first frame is the
    // instruction the syscall returns to: the thread is "at" it, so it is looked up as is,
    // as perf does.
    let user = record.user_frames().map(|f| {
        if f.kind() == FRAME_NATIVE {
            RecordedFrame::native(f.addr, f.is_exact())
        } else {
            RecordedFrame::Runtime(RawFrame {
                runtime: f.kind(),
                address: f.addr,
                aux: f.payload(),
            })
        }
    });
    let error = record
        .user_error()
        .map(|e| RecordedFrame::UnwindError(e as u8));
    Trace {
        pid: record.header.pid,
        tid: record.header.tid,
        comm: record.comm(),
        thread_name: None,
        frames: kernel.chain(user).chain(error).collect(),
    }
}

/// The unwind error a frame stands for.
pub fn unwind_error_of(frame: &Frame) -> Option<UnwindError> {
    match frame {
        Frame::UnwindError(code) => UnwindError::from_raw(u32::from(*code)),
        _ => None,
    }
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

    /// Counts `count` samples of `trace`. Returns true when its process was not seen before.
    pub fn add(&mut self, trace: Trace, count: u64) -> bool {
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
    use ferroscope_ebpf_abi::{
        FRAME_KIND_SHIFT, NATIVE_EXACT, TRACE_IN_KERNEL, TraceHeader, UserFrame,
    };

    fn header(pid: u32) -> TraceHeader {
        TraceHeader {
            pid,
            tid: pid + 1,
            ktime_ns: 0,
            start_ns: 0,
            cpu: 0,
            flags: TRACE_IN_KERNEL,
            kernel_len: 0,
            user_len: 0,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            user_error: 0,
            interp_frames: 0,
        }
    }

    fn native(addr: u64, exact: bool) -> UserFrame {
        UserFrame {
            addr,
            aux: if exact { NATIVE_EXACT } else { 0 },
        }
    }

    fn trace(h: &TraceHeader, kernel: &[u64], user: &[UserFrame]) -> Trace<RecordedFrame> {
        let bytes = TraceRecord::encode(h, user, kernel);
        trace_of(&TraceRecord::parse(&bytes).unwrap())
    }

    fn named(t: Trace<RecordedFrame>) -> Trace {
        crate::interp::Interpreters::new(Vec::new()).resolve(t)
    }

    #[test]
    fn identical_traces_are_counted_together() {
        let mut agg = TraceAggregator::new();
        let h = header(10);
        let t = |second| {
            named(trace(
                &h,
                &[],
                &[native(0x1000, true), native(second, false)],
            ))
        };
        assert!(agg.add(t(0x2000), 1));
        assert!(!agg.add(t(0x2000), 1));
        assert!(!agg.add(t(0x2001), 1));
        assert!(agg.add(named(trace(&header(11), &[], &[native(0x1000, true)])), 1));
        assert_eq!(agg.samples(), 4);
        assert_eq!(agg.processes(), 2);
        assert_eq!(agg.distinct(), 3);
        assert_eq!(agg.iter().map(|(_, c)| c).max(), Some(2));
    }

    #[test]
    fn kernel_frames_come_first_and_exactness_comes_from_the_record() {
        let t = trace(
            &header(1),
            &[0xffff_1000, 0xffff_2000],
            // A frame a signal interrupted is exact too, wherever it is.
            &[native(0x10, true), native(0x20, false), native(0x30, true)],
        );
        assert_eq!(
            t.frames,
            vec![
                RecordedFrame::kernel(0xffff_1000, true),
                RecordedFrame::kernel(0xffff_2000, false),
                RecordedFrame::native(0x10, true),
                RecordedFrame::native(0x20, false),
                RecordedFrame::native(0x30, true),
            ]
        );
        assert_eq!(t.comm, "worker");
    }

    #[test]
    fn runtime_frames_come_out_raw_and_an_error_ends_the_stack() {
        let mut h = header(1);
        h.user_error = UnwindError::NoMapping as u32;
        let runtime = UserFrame {
            addr: 0x7f00_0000_1000,
            aux: (3 << FRAME_KIND_SHIFT) | 0x42,
        };
        let t = trace(&h, &[], &[native(0x10, true), runtime]);
        assert_eq!(
            t.frames[1],
            RecordedFrame::Runtime(RawFrame {
                runtime: 3,
                address: 0x7f00_0000_1000,
                aux: 0x42
            })
        );
        assert_eq!(
            t.frames[2],
            RecordedFrame::UnwindError(UnwindError::NoMapping as u8)
        );
        let n = named(t);
        assert_eq!(unwind_error_of(&n.frames[2]), Some(UnwindError::NoMapping));
        assert_eq!(unwind_error_of(&n.frames[0]), None);
    }
}
