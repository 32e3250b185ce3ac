//! The entries beyond the CPU sampler: off-CPU (the `sched_switch` raw tracepoint) and
//! probes (uprobes, uretprobes, kprobes and kretprobes: one program type, so one entry). Each is the native object and every loaded runtime's
//! object built for that entry, loaded in the CPU set's build, sharing its maps through the
//! pin directory, joined through the entry's own tail-call table.
//!
//! A runtime whose object for the entry the kernel rejects is left out of that entry only:
//! its frames are then missing from off-CPU (or probe) stacks, and the report says why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{MapData, ProgramArray};
use aya::programs::kprobe::KProbeLinkId;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::{KProbe, RawTracePoint, UProbe};
use ferroscope_ebpf_abi::{Entry, PROG_NATIVE};

use crate::loader::{
    Build, Kind, ProgramReport, RuntimeObject, Verdict, load_program, load_runtime,
    loader_with_pins, program_fd,
};
use crate::{Error, NATIVE_OBJECTS};

/// The off-CPU program (switch entry).
pub(crate) const OFF_CPU: &str = "fs_off_cpu";
/// The probe entry's programs.
const PROBE: &str = "fs_probe";
const PROBE_RET: &str = "fs_probe_ret";
const KPROBE: &str = "fs_kprobe";
const KRETPROBE: &str = "fs_kretprobe";
const NATIVE: &str = "fs_native";

/// Off-CPU profiles: what `sched_switch` records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OffCpuConfig {
    /// The probability (0 to 1) that a task leaving the CPU is recorded.
    pub threshold: f64,
}

impl OffCpuConfig {
    /// `fs_off_cpu_threshold`: the probability scaled to 2^32 (`bpf_get_prandom_u32()` is
    /// compared with it).
    fn scaled(self) -> u64 {
        (self.threshold.clamp(0.0, 1.0) * 4_294_967_296.0) as u64
    }
}

/// Probes: the programs loaded for [`crate::Sampler::attach_probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Most probe hits recorded per second on each CPU (0: no limit); the others are
    /// counted as `ProbeRateLimited_total`.
    pub rate_limit_per_cpu: u64,
}

/// Whether a probe fires at a function's entry or at its return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// At the function's first instruction.
    Entry,
    /// When the function returns (the stack is the caller's, at the return address).
    Return,
}

/// Where to attach one probe, and which it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Entry or return.
    pub kind: ProbeKind,
    /// The function.
    pub site: ProbeSite,
    /// Which probe this is: recorded with each uprobe's hit (`flags >> TRACE_PROBE_SHIFT`,
    /// 5.15+; kernel probes carry 0).
    pub index: u16,
}

/// The function a probe is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSite {
    /// A function in a file (a uprobe).
    File {
        /// The file (an executable or a shared library): the probe fires in every process
        /// that maps it, now or later.
        path: PathBuf,
        /// The offset in the file of the function's first instruction.
        offset: u64,
        /// Only in this process (the kernel then puts the breakpoint in its memory only);
        /// `None`: in every process that maps the file, where every call traps, profiled
        /// or not.
        pid: Option<u32>,
    },
    /// A kernel function, by its name in /proc/kallsyms (a kprobe). It fires whatever task
    /// calls it; hits of tasks the PID filter leaves out are dropped in the kernel.
    Kernel {
        /// The function's name.
        function: String,
    },
}

/// One entry's loaded objects. Dropping it detaches its programs.
pub(crate) struct EntrySet {
    pub(crate) entry: Entry,
    // Keeps the table's entries: the kernel empties a table when its last fd closes.
    _table: ProgramArray<MapData>,
    _runtimes: Vec<Ebpf>,
    pub(crate) native: Ebpf,
    pub(crate) links: Vec<UProbeLinkId>,
    pub(crate) kernel_links: Vec<KProbeLinkId>,
}

impl std::fmt::Debug for EntrySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntrySet")
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

/// What an entry's native object is loaded with: the CPU object's globals, and the entry's
/// own.
pub(crate) struct Globals {
    pub(crate) filter: u32,
    pub(crate) unwinder: u32,
    pub(crate) follow: u32,
}

impl Globals {
    /// Sets them on `loader` (every native object of the set gets the same ones).
    pub(crate) fn apply<'a>(&'a self, loader: &mut aya::EbpfLoader<'a>) {
        loader.override_global("fs_filter_pids", &self.filter, true);
        loader.override_global("fs_unwinder_enabled", &self.unwinder, true);
        loader.override_global("fs_follow_children", &self.follow, true);
    }
}

/// The entry programs of `entry`'s native object and how each loads (fs_native comes first,
/// reached by tail call). The probe entry's are all of the kernel's kprobe type, which the
/// tail-call table requires; aya loads uprobes and kprobes apart.
fn entry_programs(entry: Entry) -> &'static [(&'static str, Kind)] {
    match entry {
        Entry::Cpu => &[],
        Entry::Switch => &[(OFF_CPU, Kind::RawTracePoint)],
        Entry::Probe => &[
            (PROBE, Kind::UProbe),
            (PROBE_RET, Kind::UProbe),
            (KPROBE, Kind::KProbe),
            (KRETPROBE, Kind::KProbe),
        ],
    }
}

/// Loads `entry`'s native object and every runtime of `runtimes` (name, object, slot) for
/// it, in `build`, sharing the maps pinned in `pins`. Errors when the native programs are
/// rejected (the entry cannot work); runtimes rejected are reported in `reports`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn load_entry(
    entry: Entry,
    build: Build,
    globals: &Globals,
    off_cpu: Option<OffCpuConfig>,
    probes: Option<ProbeConfig>,
    pins: &HashMap<String, PathBuf>,
    runtimes: &[(RuntimeObject, u32, HashMap<String, PathBuf>)],
    max_pids: u32,
    reports: &mut Vec<ProgramReport>,
) -> Result<EntrySet, Error> {
    let objects = NATIVE_OBJECTS.get(entry);
    let bytes = match build {
        Build::Loop => objects.modern,
        Build::Legacy => objects.legacy,
    };
    let mut loader = loader_with_pins(Some(pins));
    globals.apply(&mut loader);
    let threshold = off_cpu.map_or(0, OffCpuConfig::scaled);
    loader.override_global("fs_off_cpu_threshold", &threshold, true);
    let limit = probes.map_or(0, |p| p.rate_limit_per_cpu);
    loader.override_global("fs_probe_rate_limit", &limit, true);
    let mut native = loader.load(bytes).map_err(|e| Error::Load {
        source: Box::new(e),
    })?;
    let kind = Kind::of(entry);
    let mut programs = vec![(NATIVE, Some(PROG_NATIVE), kind)];
    for &(p, kind) in entry_programs(entry) {
        programs.push((p, None, kind));
    }
    for (name, slot, kind) in programs {
        let report = ProgramReport {
            entry,
            ..load_program(&mut native, "native", name, slot, build, kind)
        };
        let rejected = match &report.verdict {
            Verdict::Rejected { reason, log_tail } => Some((reason.clone(), log_tail.clone())),
            Verdict::Loaded { .. } => None,
        };
        reports.push(report);
        if let Some((reason, log_tail)) = rejected {
            return Err(Error::ProgramRejected {
                program: name.to_owned(),
                reason,
                log_tail,
            });
        }
    }
    let mut table: ProgramArray<MapData> = native
        .take_map(entry.table())
        .and_then(|m| ProgramArray::try_from(m).ok())
        .ok_or_else(|| Error::MissingMap(entry.table().into()))?;
    let fd = program_fd(&native, NATIVE).map_err(|e| Error::Map {
        map: entry.table().into(),
        action: "get the native unwinder's descriptor for",
        source: std::io::Error::other(e),
    })?;
    table.set(PROG_NATIVE, &fd, 0).map_err(|e| Error::Map {
        map: entry.table().into(),
        action: "insert the native unwinder into",
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut loaded = Vec::new();
    for (rt, slot, own_pins) in runtimes {
        let mut all = pins.clone();
        all.extend(own_pins.iter().map(|(k, v)| (k.clone(), v.clone())));
        let (got, report) = load_runtime(rt, entry, *slot, build, &all, max_pids, &mut table, None);
        if let Verdict::Rejected { reason, .. } = &report.verdict {
            tracing::warn!(
                runtime = rt.name,
                entry = entry.describe(),
                "the kernel rejected the runtime's eBPF program for this entry, so its frames \
                 are missing from these stacks: {reason}"
            );
        }
        reports.push(report);
        loaded.extend(got.map(|l| l._ebpf));
    }
    Ok(EntrySet {
        entry,
        _table: table,
        _runtimes: loaded,
        native,
        links: Vec::new(),
        kernel_links: Vec::new(),
    })
}

impl EntrySet {
    /// Attaches the off-CPU program to `sched_switch`.
    pub(crate) fn attach_switch(&mut self) -> Result<(), Error> {
        let p: &mut RawTracePoint = program(&mut self.native, OFF_CPU)?;
        p.attach("sched_switch").map_err(|e| Error::Program {
            action: "attach to the sched_switch raw tracepoint".into(),
            program: OFF_CPU,
            source: Box::new(e),
            hint: "raw tracepoints need CAP_BPF and CAP_PERFMON (or root)",
        })?;
        Ok(())
    }

    /// Attaches a probe; `cookies` says whether the kernel passes a uprobe's index
    /// (`bpf_get_attach_cookie`, the `bpf_loop` build only).
    pub(crate) fn attach_probe(
        &mut self,
        target: &ProbeTarget,
        cookies: bool,
    ) -> Result<(), Error> {
        match &target.site {
            ProbeSite::File { path, offset, pid } => {
                let name = match target.kind {
                    ProbeKind::Entry => PROBE,
                    ProbeKind::Return => PROBE_RET,
                };
                let p: &mut UProbe = program(&mut self.native, name)?;
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(*offset),
                    cookie: cookies.then_some(u64::from(target.index)),
                };
                let scope = match pid.and_then(std::num::NonZeroU32::new) {
                    Some(pid) => UProbeScope::OneProcess(pid),
                    None => UProbeScope::AllProcesses,
                };
                let link = p
                    .attach(point, Path::new(path), scope)
                    .map_err(|e| Error::Probe {
                        path: path.clone(),
                        offset: *offset,
                        source: Box::new(e),
                    })?;
                self.links.push(link);
            }
            ProbeSite::Kernel { function } => {
                let name = match target.kind {
                    ProbeKind::Entry => KPROBE,
                    ProbeKind::Return => KRETPROBE,
                };
                let p: &mut KProbe = program(&mut self.native, name)?;
                let link = p.attach(function, 0).map_err(|e| Error::KernelProbe {
                    function: function.clone(),
                    source: Box::new(e),
                })?;
                self.kernel_links.push(link);
            }
        }
        Ok(())
    }
}

/// Program `name` of `ebpf` as its aya type; an error when the object has no such program of
/// that type (the object and the loader are out of step).
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| Error::MissingMap(name.into()))
}
