//! A profiling session: the sampler with its runtime programs, the process manager and the
//! runtime plug-ins, driven together. `record` and `run` both sample through one.
//!
//! Each call to [`Session::drain`] hands over the traces the kernel sent, named; each call to
//! [`Session::manage`] (after draining, so an exited process's last traces come first) passes
//! the kernel's process reports to the process manager, lets it work, and hands what it did
//! to the plug-ins.

use std::time::{Duration, Instant};

use ferroscope_ebpf_abi::{DeltaEntry, DeltaPage, DeltaPageKey, PidMapping, UnwindInfoRaw};
use ferroscope_ebpf_programs::{
    Counters, ProgramReport, RuntimeCounters, Sampler, SamplerConfig, UnwinderConfig,
};
use ferroscope_unwind_api::{Metric, NameDetail, Trace};

use crate::Error;
use crate::aggregate::trace_of;
use crate::interp::{Interpreters, RuntimeMaps};
use crate::process::{ProcessManager, ProcessManagerConfig, UnwindBackend, UnwindMetrics};

/// How to start a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Samples per second per CPU.
    pub sample_rate_hz: u32,
    /// `None` samples the whole host; `Some` samples only the processes in the PID filter,
    /// which starts with these (often none: targets are added once their tables are loaded).
    pub pids: Option<Vec<u32>>,
    /// Runtime plug-ins turned off, by name.
    pub disabled_runtimes: Vec<String>,
    /// How detailed runtime frames' names are (the `demangle` setting).
    pub name_detail: NameDetail,
    /// Sizes of the unwinder's maps.
    pub unwinder: UnwinderConfig,
}

/// The running session.
#[derive(Debug)]
pub struct Session {
    sampler: Sampler,
    manager: ProcessManager,
    interpreters: Interpreters,
    unwinder: bool,
}

/// The sampler as the process manager and the plug-ins write into it.
struct Kernel<'a>(&'a mut Sampler);

fn no_unwinder() -> ferroscope_ebpf_programs::Error {
    ferroscope_ebpf_programs::Error::MissingMap("the unwinder's maps (started without it)".into())
}

impl UnwindBackend for Kernel<'_> {
    fn entries_capacity(&self) -> u32 {
        self.0.unwind_maps_ref().map_or(0, |m| m.entries_capacity())
    }
    fn write_entries(
        &mut self,
        first: u32,
        entries: &[DeltaEntry],
    ) -> Result<(), ferroscope_ebpf_programs::Error> {
        self.0
            .unwind_maps()
            .ok_or_else(no_unwinder)?
            .write_entries(first, entries)
    }
    fn set_info(
        &mut self,
        index: u32,
        info: UnwindInfoRaw,
    ) -> Result<(), ferroscope_ebpf_programs::Error> {
        self.0
            .unwind_maps()
            .ok_or_else(no_unwinder)?
            .set_info(index, info)
    }
    fn insert_page(
        &mut self,
        key: DeltaPageKey,
        page: DeltaPage,
    ) -> Result<(), ferroscope_ebpf_programs::Error> {
        self.0
            .unwind_maps()
            .ok_or_else(no_unwinder)?
            .insert_page(key, page)
    }
    fn remove_page(&mut self, key: &DeltaPageKey) -> Result<(), ferroscope_ebpf_programs::Error> {
        self.0
            .unwind_maps()
            .ok_or_else(no_unwinder)?
            .remove_page(key)
    }
    fn insert_mapping_prefix(
        &mut self,
        pid: u32,
        address: u64,
        prefix_len: u32,
        value: PidMapping,
    ) -> Result<(), ferroscope_ebpf_programs::Error> {
        self.0
            .unwind_maps()
            .ok_or_else(no_unwinder)?
            .insert_mapping_prefix(pid, address, prefix_len, value)
    }
    fn remove_mapping_prefix(
        &mut self,
        pid: u32,
        address: u64,
        prefix_len: u32,
    ) -> Result<(), ferroscope_ebpf_programs::Error> {
        self.0
            .unwind_maps()
            .ok_or_else(no_unwinder)?
            .remove_mapping_prefix(pid, address, prefix_len)
    }
    fn set_pid_known(&mut self, pid: u32) -> Result<(), ferroscope_ebpf_programs::Error> {
        self.0
            .unwind_maps()
            .ok_or_else(no_unwinder)?
            .set_pid_known(pid)
    }
    fn forget_pid(&mut self, pid: u32) -> Result<(), ferroscope_ebpf_programs::Error> {
        self.0
            .unwind_maps()
            .ok_or_else(no_unwinder)?
            .forget_pid(pid)
    }
}

impl RuntimeMaps for Kernel<'_> {
    fn write_runtime_map(
        &mut self,
        slot: u32,
        map: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        self.0
            .write_runtime_map(slot, map, key, value)
            .map_err(|e| crate::error::Chain(&e).to_string())
    }

    fn forget_runtime_pid(&mut self, slot: u32, pid: u32) {
        if let Err(e) = self.0.forget_runtime_pid(slot, pid) {
            tracing::debug!(
                pid,
                slot,
                "cannot delete the process from a runtime's maps: {}",
                crate::error::Chain(&e)
            );
        }
    }
}

impl Session {
    /// Loads the programs (the native ones, and the program of every enabled runtime
    /// plug-in) and starts sampling. When the kernel refuses the unwinder, user stacks come
    /// from frame pointers only (with a warning).
    pub fn start(config: &SessionConfig) -> Result<Session, Error> {
        let mut interpreters = Interpreters::linked(&config.disabled_runtimes);
        interpreters.set_name_detail(config.name_detail);
        let with_unwinder = SamplerConfig {
            sample_rate_hz: config.sample_rate_hz,
            pids: config.pids.clone(),
            unwinder: Some(config.unwinder),
            runtimes: interpreters.programs(),
            build: None,
        };
        let (sampler, unwinder) = match Sampler::start(&with_unwinder) {
            Ok(s) => (s, true),
            Err(e) => {
                tracing::warn!(
                    "the stack-delta unwinder could not be loaded, user stacks will use frame pointers only: {}",
                    crate::error::Chain(&e)
                );
                let s = Sampler::start(&SamplerConfig::frame_pointers(
                    config.sample_rate_hz,
                    config.pids.clone(),
                ))?;
                (s, false)
            }
        };
        interpreters.set_slots(sampler.loaded_runtimes());
        Ok(Session {
            sampler,
            manager: ProcessManager::new(ProcessManagerConfig::default()),
            interpreters,
            unwinder,
        })
    }

    /// Every program's load report (native first, then each runtime's).
    pub fn programs(&self) -> &[ProgramReport] {
        self.sampler.programs()
    }

    /// Whether user stacks are unwound from tables (false: frame pointers only).
    pub fn has_unwinder(&self) -> bool {
        self.unwinder
    }

    /// Loads these processes now (their tables, their runtimes), for at most `budget`, so
    /// that their first samples are already unwound once they enter the PID filter.
    pub fn load_now(&mut self, pids: &[u32], budget: Duration) {
        if !self.unwinder || pids.is_empty() {
            return;
        }
        self.manager.scan(Some(pids));
        let deadline = Instant::now() + budget;
        while self.manager.busy() && Instant::now() < deadline {
            self.work();
        }
        self.work();
    }

    /// Lets `pid` into the PID filter.
    pub fn add_pid(&mut self, pid: u32) -> Result<(), Error> {
        Ok(self.sampler.add_pid(pid)?)
    }

    /// Takes `pid` out of the PID filter.
    pub fn remove_pid(&mut self, pid: u32) -> Result<(), Error> {
        Ok(self.sampler.remove_pid(pid)?)
    }

    /// How many processes the PID filter holds at most.
    pub fn max_filter_pids(&self) -> u32 {
        self.sampler.max_filter_pids()
    }

    /// Hands every trace the kernel sent to `f`, its runtime frames named; returns how many
    /// there were.
    pub fn drain(&mut self, mut f: impl FnMut(Trace)) -> usize {
        let interpreters = &mut self.interpreters;
        self.sampler
            .drain(|record| f(interpreters.resolve(trace_of(record))))
    }

    /// Passes the kernel's process reports to the process manager and lets it and the
    /// plug-ins work. Call it after [`Session::drain`].
    pub fn manage(&mut self) {
        if !self.unwinder {
            return;
        }
        let manager = &mut self.manager;
        self.sampler
            .drain_pid_events(|event, kind| manager.report(event.pid, kind));
        self.work();
    }

    fn work(&mut self) {
        let mut kernel = Kernel(&mut self.sampler);
        self.manager.tick(&mut kernel);
        let events = self.manager.take_events();
        self.interpreters
            .handle(events, &mut self.manager, &mut kernel);
        self.interpreters.refresh(&mut self.manager, &mut kernel);
    }

    /// The native counters.
    pub fn counters(&self) -> Result<Counters, Error> {
        Ok(self.sampler.counters()?)
    }

    /// The unwinder's and process manager's metrics; `None` without the unwinder.
    pub fn unwind_metrics(&self) -> Option<UnwindMetrics> {
        let counters = self.sampler.counters().ok()?;
        self.unwinder.then(|| self.manager.metrics(&counters))
    }

    /// Every runtime plug-in's metrics.
    pub fn runtime_metrics(&self) -> Vec<Metric> {
        self.interpreters
            .metrics(|slot| -> Option<RuntimeCounters> {
                self.sampler.runtime_counters(slot).ok().flatten()
            })
    }

    /// The runtime plug-ins.
    pub fn interpreters(&self) -> &Interpreters {
        &self.interpreters
    }

    /// The runtime plug-ins, to trim their name table between rounds.
    pub fn interpreters_mut(&mut self) -> &mut Interpreters {
        &mut self.interpreters
    }

    /// Turns on the kernel's run-time accounting of the programs.
    pub fn enable_run_time_stats(&mut self) -> Result<(), Error> {
        Ok(self.sampler.enable_run_time_stats()?)
    }

    /// Stops sampling; what is left is the plug-ins (and the names of the frames they
    /// named).
    pub fn stop(self) -> Interpreters {
        drop(self.sampler);
        self.interpreters
    }

    /// The programs' run time and the samples taken, with accounting on.
    pub fn run_time(&self) -> Option<(Duration, u64)> {
        self.sampler.run_time()
    }
}
