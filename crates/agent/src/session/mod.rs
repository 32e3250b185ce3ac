//! A profiling session: the sampler with its runtime programs, the process manager and the
//! runtime plug-ins, on threads of their own, so that emptying the kernel's ring buffer
//! never waits for anything else:
//!
//! - the drain thread (`ferroscope-drain`, `drain.rs`) empties the trace and process-report
//!   ring buffers every 25 ms and hands the records on, decoded but not named;
//! - the unwinder thread (`ferroscope-unwind`, `unwinder.rs`) owns the process manager, the
//!   runtime plug-ins and the maps they write: it names each trace's runtime frames while
//!   the process still lives, loads the processes the kernel reported and delivers samples
//!   and process changes, in order;
//! - the caller (`record`'s or `run`'s loop) takes the deliveries with [`Session::drain`],
//!   reads the counters and edits the PID filter. It may take as long as it likes between
//!   two drains: deliveries wait in memory, not in the kernel.
//!
//! [`Session::finish`] stops sampling, lets both threads finish what was sampled, and
//! delivers the rest.

mod children;
mod drain;
mod kernel;
mod off_cpu;
mod unwinder;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferroscope_ebpf_programs::{
    Counters, OffCpuConfig, ProbeConfig, ProbeTarget, ProgramReport, Sampler, SamplerConfig,
    UnwinderConfig,
};
use ferroscope_unwind_api::{Metric, NameDetail, Trace};

use crate::Error;
use crate::interp::{DetectionFailure, Interpreters, SharedNames};
use crate::process::{ManagerMetrics, ProcessManager, ProcessManagerConfig, UnwindMetrics};
use unwinder::{Command, Snapshot, Unwinder};

pub use children::{descendants, parent_in_stat};
pub(crate) use unwinder::live_pids;

/// How to start a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Samples per second per CPU.
    pub sample_rate_hz: u32,
    /// `None` samples the whole host; `Some` samples only the processes in the PID filter,
    /// which starts with these (often none: targets are added once their tables are loaded).
    pub pids: Option<Vec<u32>>,
    /// With `pids`: the processes that filtered processes start join the filter (in the
    /// kernel, at fork) and leave it when they exit.
    pub follow_children: bool,
    /// Runtime plug-ins turned off, by name.
    pub disabled_runtimes: Vec<String>,
    /// How detailed runtime frames' names are (the `demangle` setting).
    pub name_detail: NameDetail,
    /// Sizes of the unwinder's maps.
    pub unwinder: UnwinderConfig,
    /// The process manager's limits and timings.
    pub manager: ProcessManagerConfig,
    /// Off-CPU profiles: the probability (0 to 1) that a task leaving the CPU is recorded
    /// (0: off).
    pub off_cpu_threshold: f64,
    /// Load the probe programs ([`Session::attach_probe`]), with this many hits recorded per
    /// second per CPU at most (0: no limit); `None`: no probes.
    pub probe_rate_limit: Option<u64>,
}

/// One sampled stack, its runtime frames named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The stack.
    pub trace: Trace,
    /// When its process started (boot time, ns): with the PID, it names the process.
    pub start_ns: u64,
    /// What took it.
    pub kind: SampleKind,
}

/// What took a sample, and what it weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleKind {
    /// The CPU sampler: one period of CPU time.
    Cpu,
    /// The thread left the CPU with this stack and stayed off for `nanos`.
    OffCpu {
        /// Time off CPU.
        nanos: u64,
    },
    /// A probe hit; `index` is the probe's (as given to [`Session::attach_probe`]; 0 when
    /// the kernel has no attach cookies, and for kernel probes).
    Probe {
        /// Which probe.
        index: u16,
        /// A kernel probe's (kprobe or kretprobe): the stack has the kernel's frames where
        /// it fired, then the user frames of the task.
        kernel: bool,
    },
}

/// Why what is known about a process no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It called exec: a new program, new mappings, maybe a new target.
    Exec,
    /// The PID now names another process (the old one exited).
    Reused,
}

/// What the session hands over, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A sample.
    Sample(Sample),
    /// Samples of `pid` after this one are of a new program or process.
    Changed {
        /// The process.
        pid: u32,
        /// What happened.
        change: Change,
    },
    /// The process exited; its last samples came before.
    Exit {
        /// The process.
        pid: u32,
    },
}

/// What a finished session last measured.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The process manager's metrics; `None` without the unwinder.
    pub manager: Option<ManagerMetrics>,
    /// Every runtime plug-in's metrics.
    pub runtimes: Vec<Metric>,
    /// Files a plug-in recognised as its runtime but cannot unwind, and why.
    pub detection_failures: Vec<DetectionFailure>,
}

/// The running session.
#[derive(Debug)]
pub struct Session {
    sampler: Option<Sampler>,
    deliveries: Receiver<Delivery>,
    commands: Sender<Command>,
    snapshot: Arc<Mutex<Snapshot>>,
    names: SharedNames,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    unwinder: bool,
    /// When CPU hotplug was last looked at.
    cpus_checked: Instant,
    cpu_error_said: bool,
}

/// How often the online CPUs are compared with the sampled ones.
const CPU_CHECK_EVERY: Duration = Duration::from_secs(2);

impl Session {
    /// Loads the programs (the native ones, and the program of every enabled runtime
    /// plug-in), starts sampling and the session's threads. When the kernel refuses the
    /// unwinder, user stacks come from frame pointers only (with a warning).
    pub fn start(config: &SessionConfig) -> Result<Session, Error> {
        let mut interpreters = Interpreters::linked(&config.disabled_runtimes);
        interpreters.set_name_detail(config.name_detail);
        let with_unwinder = SamplerConfig {
            sample_rate_hz: config.sample_rate_hz,
            pids: config.pids.clone(),
            follow_children: config.follow_children,
            unwinder: Some(config.unwinder),
            runtimes: interpreters.programs(),
            build: None,
            off_cpu: (config.off_cpu_threshold > 0.0).then_some(OffCpuConfig {
                threshold: config.off_cpu_threshold,
            }),
            probes: config.probe_rate_limit.map(|limit| ProbeConfig {
                rate_limit_per_cpu: limit,
            }),
        };
        let (mut sampler, unwinder) = match Sampler::start(&with_unwinder) {
            Ok(s) => (s, true),
            Err(e) => {
                tracing::warn!(
                    "the stack-delta unwinder could not be loaded, user stacks will use frame pointers only: {}",
                    crate::error::Chain(&e)
                );
                let s = Sampler::start(&SamplerConfig {
                    follow_children: config.follow_children,
                    off_cpu: with_unwinder.off_cpu,
                    probes: with_unwinder.probes,
                    ..SamplerConfig::frame_pointers(config.sample_rate_hz, config.pids.clone())
                })?;
                (s, false)
            }
        };
        interpreters.set_slots(sampler.loaded_runtimes());
        let names = interpreters.frame_names();
        let reader = sampler
            .take_reader()
            .ok_or_else(|| Error::Thread("the sampler's ring buffers were taken".into()))?;
        let (batches_tx, batches_rx) = channel();
        let (deliveries_tx, deliveries_rx) = channel();
        let (commands_tx, commands_rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let drain = drain::spawn(reader, batches_tx, Arc::clone(&stop))
            .map_err(|e| Error::Thread(format!("cannot start the drain thread: {e}")))?;
        let worker = Unwinder {
            manager: ProcessManager::new(config.manager.clone()),
            interpreters,
            writer: sampler.take_writer(),
            input: batches_rx,
            commands: commands_rx,
            output: deliveries_tx,
            snapshot: Arc::clone(&snapshot),
            starts: Default::default(),
            off_cpu: Default::default(),
        };
        let unwind = std::thread::Builder::new()
            .name("ferroscope-unwind".into())
            .spawn(move || worker.run())
            .map_err(|e| Error::Thread(format!("cannot start the unwinder thread: {e}")))?;
        Ok(Session {
            sampler: Some(sampler),
            deliveries: deliveries_rx,
            commands: commands_tx,
            snapshot,
            names,
            stop,
            threads: vec![drain, unwind],
            unwinder,
            cpus_checked: Instant::now(),
            cpu_error_said: false,
        })
    }

    fn sampler(&self) -> &Sampler {
        self.sampler
            .as_ref()
            .expect("the sampler lives until finish() consumes the session")
    }

    /// Every program's load report (native first, then each runtime's).
    pub fn programs(&self) -> &[ProgramReport] {
        self.sampler().programs()
    }

    /// Whether user stacks are unwound from tables (false: frame pointers only).
    pub fn has_unwinder(&self) -> bool {
        self.unwinder
    }

    /// Loads these processes now (their tables, their runtimes), waiting at most `budget`,
    /// so that their first samples are already unwound once they enter the PID filter.
    pub fn load_now(&mut self, pids: &[u32], budget: Duration) {
        if !self.unwinder || pids.is_empty() {
            return;
        }
        let (done, wait) = channel();
        let sent = self.commands.send(Command::LoadNow {
            pids: pids.to_vec(),
            budget,
            done,
        });
        if sent.is_ok() {
            // A little more than the budget: the thread may be finishing a tick.
            let _ = wait.recv_timeout(budget + Duration::from_millis(500));
        }
    }

    /// Attaches a probe (the session was started with `probe_rate_limit`): its hits are
    /// delivered as [`SampleKind::Probe`] samples.
    pub fn attach_probe(&mut self, target: &ProbeTarget) -> Result<(), Error> {
        Ok(self
            .sampler
            .as_mut()
            .expect("the sampler lives until finish()")
            .attach_probe(target)?)
    }

    /// Lets `pid` into the PID filter.
    pub fn add_pid(&mut self, pid: u32) -> Result<(), Error> {
        Ok(self
            .sampler
            .as_mut()
            .expect("the sampler lives until finish()")
            .add_pid(pid)?)
    }

    /// The processes in the PID filter now (with `follow_children`, the children the kernel
    /// added too; exited ones have left it).
    pub fn filter_pids(&self) -> Result<Vec<u32>, Error> {
        Ok(self
            .sampler
            .as_ref()
            .expect("the sampler lives until finish()")
            .filter_pids()?)
    }

    /// Takes `pid` out of the PID filter.
    pub fn remove_pid(&mut self, pid: u32) -> Result<(), Error> {
        Ok(self
            .sampler
            .as_mut()
            .expect("the sampler lives until finish()")
            .remove_pid(pid)?)
    }

    /// How many processes the PID filter holds at most.
    pub fn max_filter_pids(&self) -> u32 {
        self.sampler().max_filter_pids()
    }

    /// Hands over everything delivered so far, in order; returns how many deliveries there
    /// were. Never waits.
    pub fn drain(&mut self, mut f: impl FnMut(Delivery)) -> usize {
        if self.cpus_checked.elapsed() >= CPU_CHECK_EVERY {
            self.cpus_checked = Instant::now();
            self.follow_cpus();
        }
        let mut n = 0;
        loop {
            match self.deliveries.try_recv() {
                Ok(d) => {
                    f(d);
                    n += 1;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return n,
            }
        }
    }

    /// Samples CPUs that came online since sampling started (CPU hotplug).
    fn follow_cpus(&mut self) {
        let Some(sampler) = self.sampler.as_mut() else {
            return;
        };
        match sampler.follow_cpus() {
            Ok((added, removed)) => {
                if !added.is_empty() || !removed.is_empty() {
                    tracing::info!(?added, ?removed, "online CPUs changed; sampling follows");
                }
            }
            Err(e) => {
                if !self.cpu_error_said {
                    self.cpu_error_said = true;
                    tracing::warn!(
                        "cannot sample a CPU that came online: {} (said once)",
                        crate::error::Chain(&e)
                    );
                }
            }
        }
    }

    /// The native counters.
    pub fn counters(&self) -> Result<Counters, Error> {
        Ok(self.sampler().counters()?)
    }

    /// The unwinder's and process manager's metrics (as of the last quarter second);
    /// `None` without the unwinder.
    pub fn unwind_metrics(&self) -> Option<UnwindMetrics> {
        let native = self.sampler().counters().ok()?;
        let manager = self.snapshot().manager?;
        self.unwinder.then_some(UnwindMetrics { native, manager })
    }

    /// Every runtime plug-in's metrics (as of the last quarter second).
    pub fn runtime_metrics(&self) -> Vec<Metric> {
        self.snapshot().runtimes
    }

    /// Files a plug-in recognised as its runtime but cannot unwind, and why (as of the last
    /// quarter second).
    pub fn detection_failures(&self) -> Vec<DetectionFailure> {
        self.snapshot().detection_failures
    }

    /// How many entries each per-process structure of the session's threads holds.
    pub fn tracked(&self) -> Vec<(&'static str, u64)> {
        self.snapshot().tracked
    }

    fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The names of the runtime frames in delivered samples.
    pub fn frame_names(&self) -> SharedNames {
        Arc::clone(&self.names)
    }

    /// Turns on the kernel's run-time accounting of the programs.
    pub fn enable_run_time_stats(&mut self) -> Result<(), Error> {
        Ok(self
            .sampler
            .as_mut()
            .expect("the sampler lives until finish()")
            .enable_run_time_stats()?)
    }

    /// The programs' run time and the samples taken, with accounting on.
    pub fn run_time(&self) -> Option<(Duration, u64)> {
        self.sampler().run_time()
    }

    /// The off-CPU and probe programs' run time and runs, with accounting on (see
    /// [`ferroscope_ebpf_programs::Sampler::entry_run_times`]).
    pub fn entry_run_times(&self) -> Vec<(String, Duration, u64)> {
        self.sampler().entry_run_times()
    }

    /// Stops sampling, lets the threads finish what was sampled, and hands over the rest of
    /// the deliveries. Returns the threads' final metrics.
    pub fn finish(mut self, f: impl FnMut(Delivery)) -> Finished {
        self.shut_down(f);
        let s = self.snapshot();
        Finished {
            manager: s.manager.filter(|_| self.unwinder),
            runtimes: s.runtimes,
            detection_failures: s.detection_failures,
        }
    }

    fn shut_down(&mut self, mut f: impl FnMut(Delivery)) {
        // Detaching the perf events first: the drain thread's last pass then sees every
        // sample there will be.
        drop(self.sampler.take());
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            // The unwinder thread ends once the drain thread closed its channel and it
            // delivered everything; meanwhile deliveries must keep flowing.
            while !t.is_finished() {
                while let Ok(d) = self.deliveries.try_recv() {
                    f(d);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.join().is_err() {
                tracing::error!("a session thread panicked; the last samples may be missing");
            }
        }
        while let Ok(d) = self.deliveries.try_recv() {
            f(d);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shut_down(|_| {});
        }
    }
}
