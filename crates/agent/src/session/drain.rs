//! The drain thread: empties the kernel's ring buffers and hands the records on, decoded
//! but not named. It does nothing else, so that nothing the rest of the agent does (loading
//! tables, scanning `/proc`, building a round of profiles) can make the kernel drop samples.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

use ferroscope_ebpf_abi::PidEventKind;
use ferroscope_ebpf_programs::TraceReader;
use ferroscope_unwind_api::{RecordedFrame, Trace};

use crate::aggregate::trace_of;

/// How often the ring buffers are emptied. The programs send without waking userspace (a
/// wake-up per sample would cost more than the sample), so this is a timer; the trace ring
/// buffer holds [`ferroscope_ebpf_programs::RING_BUFFER_SECONDS`] of samples.
pub(super) const DRAIN_EVERY: Duration = Duration::from_millis(25);

/// A sampled stack as the kernel recorded it.
#[derive(Debug)]
pub(super) struct Incoming {
    pub trace: Trace<RecordedFrame>,
    /// When the sampled process started (boot time, ns): with the PID, it names the process.
    pub start_ns: u64,
}

/// A process report of the kernel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Report {
    pub pid: u32,
    pub kind: PidEventKind,
}

/// What one pass over the ring buffers found, in the order found: traces, then reports.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub samples: Vec<Incoming>,
    pub reports: Vec<Report>,
}

/// Starts the thread. It drains until `stop` is set, then once more (the caller stops
/// sampling first, so that pass finds everything) and returns, closing `to`.
pub(super) fn spawn(
    mut reader: TraceReader,
    to: Sender<Batch>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ferroscope-drain".into())
        .spawn(move || {
            loop {
                let last = stop.load(Ordering::Acquire);
                let mut batch = Batch::default();
                reader.drain(|record| {
                    batch.samples.push(Incoming {
                        trace: trace_of(record),
                        start_ns: record.header.start_ns,
                    });
                });
                reader.drain_pid_events(|event, kind| {
                    batch.reports.push(Report {
                        pid: event.pid,
                        kind,
                    });
                });
                let empty = batch.samples.is_empty() && batch.reports.is_empty();
                if !empty && to.send(batch).is_err() {
                    return;
                }
                if last {
                    return;
                }
                std::thread::sleep(DRAIN_EVERY);
            }
        })
}
