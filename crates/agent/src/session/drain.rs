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
    /// When it was sampled (`bpf_ktime_get_ns`).
    pub ktime_ns: u64,
    /// The record's `FS_TRACE_*` flags (what took it).
    pub flags: u32,
}

/// A process report of the kernel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Report {
    pub pid: u32,
    pub kind: PidEventKind,
    /// When it happened (`bpf_ktime_get_ns`).
    pub ktime_ns: u64,
    /// The report's address ([`PidEventKind::OffCpuEnd`]: when the thread left the CPU).
    pub address: u64,
}

/// What one pass over the ring buffers found: the reports, read first, and the traces.
///
/// Reports first: a trace taken before a report was then written before the reports were
/// read, so it is in this pass or an earlier one, and [`Batch::in_order`] puts it before
/// the report. (Traces first let a process's last traces before its exec arrive a pass after
/// the exec, and be labelled as the new program.)
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub samples: Vec<Incoming>,
    pub reports: Vec<Report>,
}

/// One thing of a batch, in time order.
pub(super) enum Item {
    Sample(Incoming),
    Report(Report),
}

impl Batch {
    /// The samples and reports in the order they happened: each report before the first
    /// sample taken after it (samples stay in the order the ring buffer gave them).
    pub(super) fn in_order(self) -> impl Iterator<Item = Item> {
        let mut reports = self.reports;
        reports.sort_by_key(|r| r.ktime_ns);
        let mut reports = reports.into_iter().peekable();
        let mut samples = self.samples.into_iter().peekable();
        std::iter::from_fn(move || match (samples.peek(), reports.peek()) {
            (Some(s), Some(r)) if r.ktime_ns <= s.ktime_ns => reports.next().map(Item::Report),
            (Some(_), _) => samples.next().map(Item::Sample),
            (None, _) => reports.next().map(Item::Report),
        })
    }
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
                reader.drain_pid_events(|event, kind| {
                    batch.reports.push(Report {
                        pid: event.pid,
                        kind,
                        ktime_ns: event.ktime_ns,
                        address: event.address,
                    });
                });
                reader.drain(|record| {
                    batch.samples.push(Incoming {
                        trace: trace_of(record),
                        start_ns: record.header.start_ns,
                        ktime_ns: record.header.ktime_ns,
                        flags: record.header.flags,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, ktime_ns: u64) -> Incoming {
        Incoming {
            trace: Trace {
                pid,
                tid: pid,
                comm: String::new(),
                thread_name: None,
                frames: Vec::new(),
            },
            start_ns: 0,
            ktime_ns,
            flags: 0,
        }
    }

    #[test]
    fn a_report_goes_between_the_samples_before_and_after_it() {
        let batch = Batch {
            samples: vec![sample(1, 10), sample(1, 20), sample(1, 40)],
            reports: vec![
                Report {
                    pid: 1,
                    kind: PidEventKind::Exit,
                    ktime_ns: 50,
                    address: 0,
                },
                Report {
                    pid: 1,
                    kind: PidEventKind::Exec,
                    ktime_ns: 30,
                    address: 0,
                },
            ],
        };
        let order: Vec<String> = batch
            .in_order()
            .map(|i| match i {
                Item::Sample(s) => format!("s{}", s.ktime_ns),
                Item::Report(r) => format!("{:?}{}", r.kind, r.ktime_ns),
            })
            .collect();
        assert_eq!(order, ["s10", "s20", "Exec30", "s40", "Exit50"]);
    }
}
