//! Loading, attaching and reading the CPU sampler.

use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::programs::{PerfEvent, RawTracePoint};
use aya::{Ebpf, EbpfLoader};

use crate::abi::{Counter, MAX_FILTER_PIDS, PidEvent, PidEventKind, TraceEvent};
use crate::unwind_maps::UnwindMaps;
use crate::{Error, SAMPLER_OBJECT, UnwinderConfig};

const PROGRAM: &str = "fs_sample";
const EXIT_PROGRAM: &str = "fs_process_exit";

/// What to sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Samples per second per CPU (perf frequency mode).
    pub sample_rate_hz: u32,
    /// Only these processes (thread-group IDs); `None` samples the whole host.
    pub pids: Option<Vec<u32>>,
    /// Unwind user stacks in eBPF from the stack-delta tables loaded through
    /// [`Sampler::unwind_maps`]; `None` keeps the kernel's frame-pointer walk for every
    /// sample.
    pub unwinder: Option<UnwinderConfig>,
}

/// The sampler's counters, summed over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Runs of the sampling program.
    pub samples: u64,
    /// Samples of idle CPUs, not recorded.
    pub idle: u64,
    /// Samples of processes outside the PID filter.
    pub filtered: u64,
    /// Samples lost because the ring buffer was full.
    pub lost_ringbuf_full: u64,
    /// Kernel stacks that could not be read.
    pub kernel_stack_errors: u64,
    /// User stacks that could not be read.
    pub user_stack_errors: u64,
    /// Samples sent to userspace.
    pub sent: u64,
    /// User stacks the stack-delta unwinder walked.
    pub unwind_attempts: u64,
    /// User frames it produced.
    pub unwind_frames: u64,
    /// Stacks that ended normally (Stop rule or zero return address).
    pub unwind_stop: u64,
    /// Return addresses below 0x1000.
    pub unwind_small_pc: u64,
    /// Stacks ended because the PC was in no loaded mapping.
    pub unwind_err_no_mapping: u64,
    /// Stacks ended because the PC's file had no table page.
    pub unwind_err_no_page: u64,
    /// Stacks ended at an Invalid rule.
    pub unwind_err_invalid_rule: u64,
    /// Stacks ended because reading the stack failed.
    pub unwind_err_read_failed: u64,
    /// Stacks deeper than the frame limit.
    pub unwind_err_stack_length: u64,
    /// Stacks ended by a CFA that did not move up the stack.
    pub unwind_err_bad_cfa: u64,
    /// Stacks whose user registers could not be read.
    pub unwind_err_no_regs: u64,
    /// Stacks ended by an inconsistent table.
    pub unwind_err_bad_table: u64,
    /// Samples of processes whose tables were not loaded (frame-pointer walk instead).
    pub pid_unknown: u64,
    /// Process reports sent to userspace (new, rescan, exit).
    pub pid_reports: u64,
    /// Process reports lost because their ring buffer was full.
    pub pid_reports_lost: u64,
    /// Signal frames unwound.
    pub unwind_signal_frames: u64,
    /// Native eval-loop frames whose Python frames were looked for.
    pub py_attempts: u64,
    /// Python frames recorded.
    pub py_frames: u64,
    /// Samples of a Python process's thread that has no Python thread state.
    pub py_err_no_thread: u64,
    /// Failed reads of a Python thread state or frame.
    pub py_err_read: u64,
    /// Eval-loop frames with no Python frame left for them.
    pub py_err_no_frame: u64,
}

/// The loaded and attached CPU sampler. Dropping it detaches everything.
pub struct Sampler {
    traces: RingBuf<MapData>,
    pid_events: Option<RingBuf<MapData>>,
    unwind_maps: Option<UnwindMaps>,
    counters: PerCpuArray<MapData, u64>,
    pid_filter: HashMap<MapData, u32, u8>,
    cpus: Vec<u32>,
    // While held, the kernel accounts run time per BPF program (kernel.bpf_stats_enabled).
    stats_fd: Option<std::os::fd::OwnedFd>,
    // Declared last so that the maps above are dropped first; holds programs and perf links.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// Loads the sampler, fills the PID filter, and attaches a cpu-clock perf event at
    /// `sample_rate_hz` on every online CPU.
    pub fn start(config: &SamplerConfig) -> Result<Sampler, Error> {
        if let Some(pids) = &config.pids
            && pids.len() > MAX_FILTER_PIDS
        {
            return Err(Error::TooManyPids {
                given: pids.len(),
                max: MAX_FILTER_PIDS,
            });
        }
        let filter: u32 = config.pids.is_some().into();
        let unwinder: u32 = config.unwinder.is_some().into();
        let mut loader = EbpfLoader::new();
        loader.override_global("fs_filter_pids", &filter, true);
        loader.override_global("fs_unwinder_enabled", &unwinder, true);
        if let Some(u) = &config.unwinder {
            u.validate()?;
            loader.map_max_entries("fs_known_pids", u.max_pids);
            loader.map_max_entries("fs_interp_procs", u.max_pids);
            loader.map_max_entries("fs_pid_mappings", u.max_mapping_prefixes);
            loader.map_max_entries("fs_delta_pages", u.max_delta_pages);
            loader.map_max_entries("fs_delta_entries", u.max_delta_entries);
        } else {
            // Unused: keep the kernel memory they take small.
            loader.map_max_entries("fs_known_pids", 1);
            loader.map_max_entries("fs_interp_procs", 1);
            loader.map_max_entries("fs_py_threads", 1);
            loader.map_max_entries("fs_pid_mappings", 1);
            loader.map_max_entries("fs_delta_pages", 1);
            loader.map_max_entries("fs_delta_entries", 1);
        }
        let online = aya::util::online_cpus().map_err(|(_, e)| Error::OnlineCpus(e))?;
        loader.map_max_entries(
            "fs_traces",
            ring_buffer_bytes(online.len(), config.sample_rate_hz),
        );
        let mut ebpf = loader.load(SAMPLER_OBJECT).map_err(|e| Error::Load {
            source: Box::new(e),
        })?;

        let mut pid_filter: HashMap<MapData, u32, u8> = take_map(&mut ebpf, "fs_pid_filter")?;
        for pid in config.pids.iter().flatten() {
            pid_filter.insert(pid, 1, 0).map_err(|e| Error::Map {
                map: "fs_pid_filter",
                action: "insert",
                source: Box::new(e),
            })?;
        }
        let traces: RingBuf<MapData> = take_map(&mut ebpf, "fs_traces")?;
        let counters: PerCpuArray<MapData, u64> = take_map(&mut ebpf, "fs_counters")?;
        let (pid_events, unwind_maps) = match &config.unwinder {
            Some(_) => {
                let events: RingBuf<MapData> = take_map(&mut ebpf, "fs_pid_events")?;
                (Some(events), Some(UnwindMaps::take(&mut ebpf)?))
            }
            None => (None, None),
        };
        if config.unwinder.is_some() {
            let exit: &mut RawTracePoint = ebpf
                .program_mut(EXIT_PROGRAM)
                .and_then(|p| p.try_into().ok())
                .ok_or(Error::MissingMap(EXIT_PROGRAM))?;
            exit.load().map_err(|e| Error::Program {
                action: "load".into(),
                program: EXIT_PROGRAM,
                source: Box::new(e),
                hint: "the verifier rejected it; run `ferroscope check` and report the log above as a bug",
            })?;
            exit.attach("sched_process_exit").map_err(|e| Error::Program {
                action: "attach to the sched_process_exit raw tracepoint".into(),
                program: EXIT_PROGRAM,
                source: Box::new(e),
                hint: "raw tracepoints need CAP_BPF and CAP_PERFMON (or root); `ferroscope check` tells which",
            })?;
        }

        let program: &mut PerfEvent = ebpf
            .program_mut(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(Error::MissingMap(PROGRAM))?;
        program.load().map_err(|e| Error::Program {
            action: "load".into(),
            program: PROGRAM,
            source: Box::new(e),
            hint: "the verifier rejected it; run `ferroscope check` and report the log above as a bug",
        })?;
        let cpus = aya::util::online_cpus().map_err(|(_, e)| Error::OnlineCpus(e))?;
        for &cpu in &cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(u64::from(config.sample_rate_hz)),
                    false,
                )
                .map_err(|e| Error::Program {
                    action: format!("attach a cpu-clock perf event on CPU {cpu} to"),
                    program: PROGRAM,
                    source: Box::new(e),
                    hint: "perf_event_open needs root or CAP_PERFMON, and a rate no higher than \
                           /proc/sys/kernel/perf_event_max_sample_rate; `ferroscope check` tells which",
                })?;
        }
        tracing::debug!(
            cpus = cpus.len(),
            rate = config.sample_rate_hz,
            "sampler attached"
        );
        Ok(Sampler {
            traces,
            pid_events,
            unwind_maps,
            counters,
            pid_filter,
            cpus,
            stats_fd: None,
            _ebpf: ebpf,
        })
    }

    /// The CPUs sampled.
    pub fn cpus(&self) -> &[u32] {
        &self.cpus
    }

    /// Hands every trace waiting in the ring buffer to `f`; returns how many there were.
    /// Records too short to be a [`TraceEvent`] are skipped (they cannot occur unless the
    /// object and this crate disagree, which the ABI tests prevent).
    pub fn drain(&mut self, mut f: impl FnMut(&TraceEvent)) -> usize {
        let mut n = 0;
        while let Some(item) = self.traces.next() {
            if let Some(event) = TraceEvent::from_bytes(&item) {
                f(&event);
                n += 1;
            }
        }
        n
    }

    /// Hands every process report waiting in the `fs_pid_events` ring buffer to `f`
    /// (nothing when the unwinder is off); returns how many there were.
    pub fn drain_pid_events(&mut self, mut f: impl FnMut(u32, PidEventKind)) -> usize {
        let Some(events) = &mut self.pid_events else {
            return 0;
        };
        let mut n = 0;
        while let Some(item) = events.next() {
            if let Some((pid, kind)) = PidEvent::from_bytes(&item) {
                f(pid, kind);
                n += 1;
            }
        }
        n
    }

    /// The maps the process manager loads unwind tables into; `None` when started without
    /// an unwinder.
    pub fn unwind_maps(&mut self) -> Option<&mut UnwindMaps> {
        self.unwind_maps.as_mut()
    }

    /// Adds a process to the PID filter (only effective when started with `pids`).
    pub fn add_pid(&mut self, pid: u32) -> Result<(), Error> {
        self.pid_filter.insert(pid, 1, 0).map_err(|e| Error::Map {
            map: "fs_pid_filter",
            action: "insert",
            source: Box::new(e),
        })
    }

    /// Removes a process from the PID filter. Removing a PID that is not there is not an
    /// error.
    pub fn remove_pid(&mut self, pid: u32) -> Result<(), Error> {
        match self.pid_filter.remove(&pid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::Map {
                map: "fs_pid_filter",
                action: "remove",
                source: Box::new(e),
            }),
        }
    }

    /// Asks the kernel to account the run time of BPF programs from now on, for
    /// [`Sampler::run_time`]. It stays on while this sampler lives.
    pub fn enable_run_time_stats(&mut self) -> Result<(), Error> {
        if self.stats_fd.is_none() {
            let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(Error::Stats)?;
            self.stats_fd = Some(fd);
        }
        Ok(())
    }

    /// Total time the sampling program has run in the kernel and how many times, when run
    /// time accounting is on (see [`Sampler::enable_run_time_stats`]).
    pub fn run_time(&self) -> Option<(std::time::Duration, u64)> {
        let info = self._ebpf.program(PROGRAM)?.info().ok()?;
        Some((info.run_time(), info.run_count()))
    }

    /// Reads the counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, Error> {
        let read = |c: Counter| -> Result<u64, Error> {
            let values = self.counters.get(&(c as u32), 0).map_err(|e| Error::Map {
                map: "fs_counters",
                action: "lookup",
                source: Box::new(e),
            })?;
            Ok(values.iter().sum())
        };
        Ok(Counters {
            samples: read(Counter::Samples)?,
            idle: read(Counter::Idle)?,
            filtered: read(Counter::Filtered)?,
            lost_ringbuf_full: read(Counter::LostRingbufFull)?,
            kernel_stack_errors: read(Counter::KernelStackError)?,
            user_stack_errors: read(Counter::UserStackError)?,
            sent: read(Counter::Sent)?,
            unwind_attempts: read(Counter::UnwindAttempts)?,
            unwind_frames: read(Counter::UnwindFrames)?,
            unwind_stop: read(Counter::UnwindStop)?,
            unwind_small_pc: read(Counter::UnwindSmallPc)?,
            unwind_err_no_mapping: read(Counter::UnwindErrNoMapping)?,
            unwind_err_no_page: read(Counter::UnwindErrNoPage)?,
            unwind_err_invalid_rule: read(Counter::UnwindErrInvalidRule)?,
            unwind_err_read_failed: read(Counter::UnwindErrReadFailed)?,
            unwind_err_stack_length: read(Counter::UnwindErrStackLength)?,
            unwind_err_bad_cfa: read(Counter::UnwindErrBadCfa)?,
            unwind_err_no_regs: read(Counter::UnwindErrNoRegs)?,
            unwind_err_bad_table: read(Counter::UnwindErrBadTable)?,
            pid_unknown: read(Counter::PidUnknown)?,
            pid_reports: read(Counter::PidReports)?,
            pid_reports_lost: read(Counter::PidReportsLost)?,
            unwind_signal_frames: read(Counter::UnwindSignalFrames)?,
            py_attempts: read(Counter::PyAttempts)?,
            py_frames: read(Counter::PyFrames)?,
            py_err_no_thread: read(Counter::PyErrNoThread)?,
            py_err_read: read(Counter::PyErrRead)?,
            py_err_no_frame: read(Counter::PyErrNoFrame)?,
        })
    }
}

/// Seconds of samples the trace ring buffer holds: how long userspace may be busy
/// elsewhere (building a round's profiles, loading tables) before samples are lost.
const RING_BUFFER_SECONDS: u64 = 2;

/// The trace ring buffer's size: every CPU at the full rate for [`RING_BUFFER_SECONDS`],
/// as a power of two (the kernel requires one) between 256 KiB and 64 MiB. The kernel maps
/// the buffer's pages into the agent twice, so this is what it adds to RSS, doubled.
pub fn ring_buffer_bytes(cpus: usize, sample_rate_hz: u32) -> u32 {
    let record = std::mem::size_of::<TraceEvent>() as u64 + 8;
    let want = cpus.max(1) as u64 * u64::from(sample_rate_hz.max(1)) * RING_BUFFER_SECONDS * record;
    want.next_power_of_two().clamp(256 << 10, 64 << 20) as u32
}

pub(crate) fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map>,
{
    ebpf.take_map(name)
        .and_then(|m| T::try_from(m).ok())
        .ok_or(Error::MissingMap(name))
}

#[cfg(test)]
mod tests {
    use super::ring_buffer_bytes;

    #[test]
    fn ring_buffer_is_a_power_of_two_sized_for_cpus_and_rate() {
        // The agent's default: 19 Hz on 2 CPUs: 2 x 19 x 2 s x ~4.8 KiB = ~370 KiB -> 512 KiB.
        assert_eq!(ring_buffer_bytes(2, 19), 512 << 10);
        // record's default on 2 CPUs: 2 x 97 x 2 s x ~4.8 KiB = ~1.9 MiB -> 2 MiB.
        assert_eq!(ring_buffer_bytes(2, 97), 2 << 20);
        // A big host at the highest rate hits the ceiling.
        assert_eq!(ring_buffer_bytes(256, 1000), 64 << 20);
        for (cpus, rate) in [(1, 1), (3, 250), (16, 499), (64, 97)] {
            let b = ring_buffer_bytes(cpus, rate);
            assert!(b.is_power_of_two() && b >= 4096, "{cpus} {rate}: {b}");
        }
    }
}
