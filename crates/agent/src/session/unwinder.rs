//! The unwinder thread: owns the process manager, the runtime plug-ins and the maps they
//! write. For each batch the drain thread hands over it names the traces' runtime frames
//! (while the processes still live), notices a PID that now belongs to another process,
//! and delivers the samples and the kernel's process reports (passed to the manager too) in
//! the order they happened; then lets the manager and the plug-ins work.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferroscope_ebpf_abi::{
    PidEventKind, TRACE_KPROBE, TRACE_OFF_CPU, TRACE_PROBE, TRACE_PROBE_SHIFT,
};
use ferroscope_ebpf_programs::UnwindWriter;
use ferroscope_unwind_api::Metric;

use super::drain::{Batch, Incoming, Item, Report};
use super::kernel::Kernel;
use super::off_cpu::{Waiting, ktime_now};
use super::{Change, Delivery, Sample, SampleKind};
use crate::interp::{DetectionFailure, Interpreters};
use crate::process::{ManagerMetrics, ProcessManager};

/// How long the thread waits for a batch before it works on its own (refreshes, queued
/// loads, exits whose grace period is over).
const IDLE_TICK: Duration = Duration::from_millis(20);
/// How often the metrics the caller reads are published.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// How often every per-process structure is checked against the live processes.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What the caller asks of the thread.
pub(super) enum Command {
    /// Load these processes now and say when done (or when the budget is spent).
    LoadNow {
        pids: Vec<u32>,
        budget: Duration,
        done: Sender<()>,
    },
}

/// What the thread publishes for the caller.
#[derive(Debug, Default, Clone)]
pub(super) struct Snapshot {
    pub manager: Option<ManagerMetrics>,
    pub runtimes: Vec<Metric>,
    /// Entries of each per-process structure the thread owns.
    pub tracked: Vec<(&'static str, u64)>,
    /// Files a plug-in recognised as its runtime but cannot unwind, and why.
    pub detection_failures: Vec<DetectionFailure>,
}

pub(super) struct Unwinder {
    pub manager: ProcessManager,
    pub interpreters: Interpreters,
    pub writer: Option<UnwindWriter>,
    pub input: Receiver<Batch>,
    pub commands: Receiver<Command>,
    pub output: Sender<Delivery>,
    pub snapshot: Arc<Mutex<Snapshot>>,
    /// The start time of the process each PID was last seen with.
    pub starts: HashMap<u32, u64>,
    /// Off-CPU samples waiting for the report of their thread's return.
    pub off_cpu: Waiting,
}

impl Unwinder {
    /// Runs until the drain thread is done and everything it sent was delivered.
    pub(super) fn run(mut self) {
        let mut last_publish = Instant::now();
        let mut last_sweep = Instant::now();
        loop {
            let closed = match self.input.recv_timeout(IDLE_TICK) {
                Ok(batch) => {
                    self.handle(batch);
                    // Whatever else is waiting, before working.
                    let mut closed = false;
                    loop {
                        match self.input.try_recv() {
                            Ok(batch) => self.handle(batch),
                            Err(std::sync::mpsc::TryRecvError::Empty) => break,
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    closed
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            while let Ok(command) = self.commands.try_recv() {
                self.command(command);
            }
            self.work();
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                self.sweep();
            }
            if closed || last_publish.elapsed() >= PUBLISH_EVERY {
                last_publish = Instant::now();
                self.publish();
            }
            if closed {
                // Threads still off CPU: weighed up to now.
                let rest = self.off_cpu.finish(ktime_now());
                tracing::debug!(threads = rest.len(), "off-CPU samples without an end yet");
                for sample in rest {
                    let _ = self.output.send(Delivery::Sample(sample));
                }
                return;
            }
        }
    }

    fn handle(&mut self, batch: Batch) {
        for item in batch.in_order() {
            let sent = match item {
                Item::Sample(incoming) => self.sample(incoming),
                Item::Report(report) => {
                    self.report(report);
                    true
                }
            };
            if !sent {
                return;
            }
        }
    }

    /// Names a sample's runtime frames and delivers it; false when nobody takes deliveries
    /// any more.
    fn sample(
        &mut self,
        Incoming {
            trace,
            start_ns,
            ktime_ns,
            flags,
        }: Incoming,
    ) -> bool {
        let pid = trace.pid;
        match self.starts.insert(pid, start_ns) {
            Some(before) if before != start_ns => {
                // Another process has this PID now: what was loaded for the old one is wrong
                // for it.
                tracing::debug!(pid, "PID reused by a new process; reloading it");
                self.manager.report(pid, PidEventKind::Exec);
                let _ = self.output.send(Delivery::Changed {
                    pid,
                    change: Change::Reused,
                });
            }
            _ => {}
        }
        let tid = trace.tid;
        let trace = self.interpreters.resolve(trace);
        let kind = if flags & TRACE_PROBE != 0 {
            SampleKind::Probe {
                index: (flags >> TRACE_PROBE_SHIFT) as u16,
                kernel: flags & TRACE_KPROBE != 0,
            }
        } else {
            SampleKind::Cpu
        };
        let sample = Sample {
            trace,
            start_ns,
            kind,
        };
        if flags & TRACE_OFF_CPU != 0 {
            // Weighed when the thread runs again.
            self.off_cpu.hold(tid, ktime_ns, sample);
            return true;
        }
        self.output.send(Delivery::Sample(sample)).is_ok()
    }

    /// Passes a kernel report to the manager and delivers what it changes.
    fn report(&mut self, report: Report) {
        if report.kind == PidEventKind::OffCpuEnd {
            // pid is the thread, address when it left the CPU.
            match self
                .off_cpu
                .end(report.pid, report.address, report.ktime_ns)
            {
                Some(sample) => {
                    let _ = self.output.send(Delivery::Sample(sample));
                }
                None => tracing::trace!(
                    tid = report.pid,
                    left = report.address,
                    "an off-CPU end without its sample (it was not recorded, or dropped)"
                ),
            }
            return;
        }
        if self.writer.is_some() {
            self.manager.report(report.pid, report.kind);
        }
        let delivery = match report.kind {
            PidEventKind::Exec => Delivery::Changed {
                pid: report.pid,
                change: Change::Exec,
            },
            // The start time is kept (the sweep drops it once the PID is gone): a new process
            // that gets the PID is then told apart from the old one's last samples.
            PidEventKind::Exit => Delivery::Exit { pid: report.pid },
            PidEventKind::New | PidEventKind::Rescan | PidEventKind::OffCpuEnd => return,
        };
        let _ = self.output.send(delivery);
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::LoadNow { pids, budget, done } => {
                if self.writer.is_some() && !pids.is_empty() {
                    self.manager.scan(Some(&pids));
                    let deadline = Instant::now() + budget;
                    while self.manager.busy() && Instant::now() < deadline {
                        self.work();
                        // Tables are extracted on the manager's worker: wait for it.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    self.work();
                }
                let _ = done.send(());
            }
        }
    }

    /// Lets the manager and the plug-ins work for one tick.
    fn work(&mut self) {
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        let mut kernel = Kernel(writer);
        self.manager.tick(&mut kernel);
        let events = self.manager.take_events();
        self.interpreters
            .handle(events, &mut self.manager, &mut kernel);
        self.interpreters.refresh(&mut self.manager, &mut kernel);
    }

    /// Drops what is kept about processes that are gone (a lost exit report, a process
    /// that was never loaded).
    fn sweep(&mut self) {
        let alive = live_pids();
        if alive.is_empty() {
            return;
        }
        self.starts.retain(|pid, _| alive.contains(pid));
        self.off_cpu.expire(ktime_now());
        if let Some(writer) = self.writer.as_mut() {
            self.manager.sweep(&mut Kernel(writer), &alive);
        }
    }

    fn publish(&mut self) {
        let manager = self
            .writer
            .is_some()
            .then(|| self.manager.manager_metrics());
        let writer = self.writer.as_ref();
        let runtimes = self
            .interpreters
            .metrics(|slot| writer.and_then(|w| w.runtime_counters(slot).ok().flatten()));
        let mut tracked = self.manager.tracked();
        tracked.push(("unwinder_start_times", self.starts.len() as u64));
        tracked.push(("off_cpu_waiting", self.off_cpu.len() as u64));
        tracked.push(("runtime_instances", self.interpreters.attached() as u64));
        let mut s = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        *s = Snapshot {
            manager,
            runtimes,
            tracked,
            detection_failures: self.interpreters.detection_failures().to_vec(),
        };
    }
}

/// The PIDs in `/proc` now (empty when it cannot be read).
pub(crate) fn live_pids() -> HashSet<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
