//! Runtime plug-ins in a session: their programs and slots, detection per file, instances
//! per (process, runtime), what they want the kernel to know, and naming of the frames their
//! programs recorded.
//!
//! The agent never names a runtime. Every plug-in linked into the binary (see
//! [`ferroscope_unwind_api::plugins`]) and not turned off in the configuration brings its
//! eBPF program; the sampler loads each into a slot, and a plug-in whose program did not load
//! is off. The others are asked once per distinct file whether the file is their runtime; a
//! process that maps a detected file gets an instance of the plug-in (a process may have
//! several runtimes), whose [`ProcessUpdate`]s go to the runtime's own maps and to the
//! process manager (the ranges it owns), at attach, when the process's mappings change, and
//! whenever the plug-in asks to be refreshed.
//!
//! Runtime frames are named when their trace is drained, while the process still lives (a
//! short script may be gone by the time a profile is built): the instance turns a
//! [`RawFrame`] into one or more named frames, which [`FrameNames`] interns; the trace that
//! comes out has only named frames.

mod elf;
mod names;
mod threads;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ferroscope_ebpf_programs::{RuntimeCounters, RuntimeObject};
use ferroscope_unwind_api::{
    AttachContext, FileData, Frame, InterpretedFrame, Interpreter, InterpreterProcess,
    MappingsChanged, Metric, NameDetail, ProcessUpdate, RawFrame, RecordedFrame, RemoteMemory,
    SharedMemory, Trace,
};

pub use names::{FrameNames, NameLookup, NameSubset, NamedLine, SharedNames};

use crate::process::{FileId, MappedFile, ProcessEvent, ProcessManager, UnwindBackend};
use elf::MappedElf;

/// What the plug-ins write into the kernel besides the process manager's maps: their own
/// maps, by runtime slot.
pub trait RuntimeMaps {
    /// Writes (or with `None` deletes) a key of a runtime's map.
    fn write_runtime_map(
        &mut self,
        slot: u32,
        map: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), String>;
    /// Deletes `pid` from every per-process map of the runtime.
    fn forget_runtime_pid(&mut self, slot: u32, pid: u32);
}

/// Everything a session writes into the kernel.
pub trait KernelMaps: UnwindBackend + RuntimeMaps {
    /// Itself as the process manager's backend.
    fn backend(&mut self) -> &mut dyn UnwindBackend;
}

impl<T: UnwindBackend + RuntimeMaps> KernelMaps for T {
    fn backend(&mut self) -> &mut dyn UnwindBackend {
        self
    }
}

/// One enabled plug-in.
struct Runtime {
    plugin: Box<dyn Interpreter>,
    slot: Option<u32>,
    successes: u64,
    failures: u64,
    /// Files that are this runtime but that its plug-in cannot unwind.
    detection_failures: u64,
}

/// A file that a plug-in recognised as its runtime but cannot unwind, and why (from
/// [`Interpreter::detect`]'s error): reported by `record`'s summary and `/metrics`
/// (`ferroscope_runtime_detection_failed`), so that a runtime never silently shows as native
/// frames only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectionFailure {
    /// The plug-in's name (`python`).
    pub runtime: &'static str,
    /// The file, as the process maps it.
    pub path: String,
    /// What failed, why, and what to do.
    pub reason: String,
}

/// Most detection failures kept (distinct files); more are counted only.
const DETECTION_FAILURES_KEPT: usize = 32;

struct Attached {
    process: Box<dyn InterpreterProcess>,
    next_refresh: Option<Instant>,
}

/// The session's runtime plug-ins and the processes they follow.
pub struct Interpreters {
    runtimes: Vec<Runtime>,
    /// Which runtimes each file is (part of): usually none or one, several when a binary
    /// embeds more than one.
    detected: HashMap<FileId, Vec<(usize, FileData)>>,
    /// By (PID, index in `runtimes`).
    attached: HashMap<(u32, usize), Attached>,
    names: SharedNames,
    threads: threads::ThreadNames,
    scratch: Vec<InterpretedFrame>,
    lines: Vec<NamedLine>,
    detection_failures: Vec<DetectionFailure>,
}

impl std::fmt::Debug for Interpreters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interpreters")
            .field("runtimes", &self.names())
            .field("attached", &self.attached.len())
            .finish_non_exhaustive()
    }
}

const DETECTED_LIMIT: usize = 65536;

impl Interpreters {
    /// Every plug-in linked into this binary except those named in `disabled`.
    pub fn linked(disabled: &[String]) -> Self {
        Self::from_registry(ferroscope_unwind_api::plugins(), disabled)
    }

    /// The plug-ins of a registry except those named in `disabled`, which are not even
    /// created.
    pub fn from_registry<'a>(
        registry: impl IntoIterator<Item = &'a ferroscope_unwind_api::InterpreterPlugin>,
        disabled: &[String],
    ) -> Self {
        Self::new(
            registry
                .into_iter()
                .filter(|p| !disabled.iter().any(|d| d == p.name))
                .map(|p| (p.create)())
                .collect(),
        )
    }

    /// These plug-ins (none has a slot until [`Interpreters::set_slots`]).
    pub fn new(plugins: Vec<Box<dyn Interpreter>>) -> Self {
        Interpreters {
            runtimes: plugins
                .into_iter()
                .map(|plugin| Runtime {
                    plugin,
                    slot: None,
                    successes: 0,
                    failures: 0,
                    detection_failures: 0,
                })
                .collect(),
            detected: HashMap::new(),
            attached: HashMap::new(),
            names: SharedNames::default(),
            threads: threads::ThreadNames::default(),
            scratch: Vec::new(),
            lines: Vec::new(),
            detection_failures: Vec::new(),
        }
    }

    /// Tells every plug-in how detailed names should be (before any process is attached).
    pub fn set_name_detail(&mut self, detail: NameDetail) {
        for r in &mut self.runtimes {
            r.plugin.set_name_detail(detail);
        }
    }

    /// The enabled runtimes' names, in slot order.
    pub fn names(&self) -> Vec<&'static str> {
        self.runtimes.iter().map(|r| r.plugin.name()).collect()
    }

    /// The eBPF programs to load, in slot order (slot 1 first), of the plug-ins that have
    /// one.
    pub fn programs(&self) -> Vec<RuntimeObject> {
        self.runtimes
            .iter()
            .filter_map(|r| {
                let p = r.plugin.ebpf()?;
                Some(RuntimeObject {
                    name: r.plugin.name(),
                    program: p.program,
                    objects: p.objects,
                    pid_maps: p.pid_maps,
                })
            })
            .collect()
    }

    /// Which runtimes' programs were loaded, and in which slot; the others stay off.
    pub fn set_slots<'a>(&mut self, loaded: impl IntoIterator<Item = (&'a str, u32)>) {
        let loaded: HashMap<&str, u32> = loaded.into_iter().collect();
        for r in &mut self.runtimes {
            r.slot = loaded.get(r.plugin.name()).copied();
        }
    }

    /// The runtimes that are on (their programs are loaded), with their slots.
    pub fn active(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        self.runtimes
            .iter()
            .filter_map(|r| Some((r.plugin.name(), r.slot?)))
    }

    fn any_active(&self) -> bool {
        self.runtimes.iter().any(|r| r.slot.is_some())
    }

    /// Takes what the process manager did into account: detects runtimes in newly mapped
    /// files, attaches to processes that map them, passes mapping changes on, and detaches
    /// from removed processes.
    pub fn handle(
        &mut self,
        events: Vec<ProcessEvent>,
        manager: &mut ProcessManager,
        kernel: &mut dyn KernelMaps,
    ) {
        if !self.any_active() {
            return;
        }
        for event in events {
            match event {
                ProcessEvent::Mapped {
                    pid,
                    rescan,
                    files,
                    mappings,
                } => self.mapped(pid, rescan, &files, &mappings, manager, kernel),
                ProcessEvent::Removed { pid } => self.remove(pid, kernel),
            }
        }
    }

    fn mapped(
        &mut self,
        pid: u32,
        rescan: bool,
        files: &[MappedFile],
        mappings: &[ferroscope_unwind_api::MappedRange],
        manager: &mut ProcessManager,
        kernel: &mut dyn KernelMaps,
    ) {
        for f in files {
            self.detect_file(pid, f);
        }
        // Instances already attached: tell them; detach the ones whose runtime is gone.
        if rescan {
            let keys: Vec<(u32, usize)> = self
                .attached
                .keys()
                .filter(|(p, _)| *p == pid)
                .copied()
                .collect();
            for key in keys {
                let Some(a) = self.attached.get_mut(&key) else {
                    continue;
                };
                match a.process.mappings_changed(mappings) {
                    MappingsChanged::Keep(update) => {
                        self.apply(pid, key.1, update, manager, kernel);
                    }
                    MappingsChanged::Detach => self.detach(key, manager, kernel),
                }
            }
        }
        // New runtimes in this process.
        let memory: SharedMemory = Arc::new(RemoteMemory::new(pid));
        let found: Vec<(&MappedFile, usize, FileData)> = files
            .iter()
            .flat_map(|f| {
                self.detected
                    .get(&f.file_id)
                    .into_iter()
                    .flatten()
                    .map(move |(i, d)| (f, *i, Arc::clone(d)))
            })
            .collect();
        for (f, index, data) in found {
            if self.attached.contains_key(&(pid, index)) {
                continue;
            }
            let runtime = &self.runtimes[index];
            let name = runtime.plugin.name();
            let context = AttachContext {
                pid,
                path: &f.path,
                bias: f.bias,
                mappings,
                memory: Arc::clone(&memory),
            };
            let mut process = match runtime.plugin.attach(&data, &context) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(
                        pid,
                        runtime = name,
                        "cannot attach to the process: {}",
                        crate::error::Chain(&e)
                    );
                    continue;
                }
            };
            let update = match process.start() {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(
                        pid,
                        runtime = name,
                        "cannot start following the process: {}",
                        crate::error::Chain(&e)
                    );
                    process.detach();
                    continue;
                }
            };
            tracing::debug!(pid, runtime = name, "runtime attached");
            let next_refresh = process.refresh_interval().map(|i| Instant::now() + i);
            self.attached.insert(
                (pid, index),
                Attached {
                    process,
                    next_refresh,
                },
            );
            self.apply(pid, index, update, manager, kernel);
        }
    }

    /// Asks every plug-in about a file (mapped by `pid`), once per identity.
    fn detect_file(&mut self, pid: u32, f: &MappedFile) {
        if self.detected.contains_key(&f.file_id) {
            return;
        }
        let found = std::fs::File::open(&f.open_path)
            .and_then(ferroscope_symbolize::root::regular)
            .ok()
            .and_then(|file| {
                let identity = file.metadata().ok().map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.dev(), m.ino())
                });
                // A second handle for reads with caches of their own (the CFI's ranges).
                let source = file.try_clone().ok()?;
                Some((source, object::ReadCache::new(file), identity))
            })
            .map(|(source, data, identity)| {
                let search = elf::DebugSearch {
                    pid,
                    path: std::path::PathBuf::from(&f.path),
                    identity,
                };
                let Some(elf) = MappedElf::new(&f.path, &source, &data, Some(search)) else {
                    return Vec::new();
                };
                let mut found = Vec::new();
                for (i, r) in self.runtimes.iter_mut().enumerate() {
                    if r.slot.is_none() {
                        continue;
                    }
                    match r.plugin.detect(&elf) {
                        Ok(Some(d)) => {
                            tracing::debug!(path = %f.path, runtime = r.plugin.name(), "runtime detected");
                            found.push((i, d));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let reason = reason(&e);
                            tracing::warn!(path = %f.path, runtime = r.plugin.name(), "this runtime cannot be unwound in this file: {reason}");
                            r.detection_failures += 1;
                            let known = self
                                .detection_failures
                                .iter()
                                .any(|d| d.runtime == r.plugin.name() && d.path == f.path);
                            if !known && self.detection_failures.len() < DETECTION_FAILURES_KEPT {
                                self.detection_failures.push(DetectionFailure {
                                    runtime: r.plugin.name(),
                                    path: f.path.clone(),
                                    reason,
                                });
                            }
                        }
                    }
                }
                found
            })
            .unwrap_or_default();
        if self.detected.len() >= DETECTED_LIMIT {
            self.detected.clear();
        }
        self.detected.insert(f.file_id, found);
    }

    fn apply(
        &mut self,
        pid: u32,
        index: usize,
        update: ProcessUpdate,
        manager: &mut ProcessManager,
        kernel: &mut dyn KernelMaps,
    ) {
        let Some(slot) = self.runtimes[index].slot else {
            return;
        };
        let name = self.runtimes[index].plugin.name();
        for w in &update.map_writes {
            if let Err(e) = kernel.write_runtime_map(slot, w.map, &w.key, w.value.as_deref()) {
                tracing::warn!(
                    pid,
                    runtime = name,
                    map = w.map,
                    "cannot give the runtime's eBPF program what it needs for this process: {e}"
                );
            }
        }
        if let Some(ranges) = &update.ranges {
            manager.set_owned_ranges(kernel.backend(), pid, slot, ranges);
        }
    }

    fn detach(
        &mut self,
        key: (u32, usize),
        manager: &mut ProcessManager,
        kernel: &mut dyn KernelMaps,
    ) {
        let Some(a) = self.attached.remove(&key) else {
            return;
        };
        if let Some(slot) = self.runtimes[key.1].slot {
            manager.set_owned_ranges(kernel.backend(), key.0, slot, &[]);
            kernel.forget_runtime_pid(slot, key.0);
        }
        a.process.detach();
    }

    /// Detaches every runtime from a removed process (its ranges went with it).
    fn remove(&mut self, pid: u32, kernel: &mut dyn KernelMaps) {
        let keys: Vec<(u32, usize)> = self
            .attached
            .keys()
            .filter(|(p, _)| *p == pid)
            .copied()
            .collect();
        for key in keys {
            if let Some(a) = self.attached.remove(&key) {
                if let Some(slot) = self.runtimes[key.1].slot {
                    kernel.forget_runtime_pid(slot, pid);
                }
                a.process.detach();
            }
        }
        self.threads.forget(pid);
    }

    /// Refreshes the instances whose interval is over (JIT code registered or freed).
    pub fn refresh(&mut self, manager: &mut ProcessManager, kernel: &mut dyn KernelMaps) {
        let now = Instant::now();
        let due: Vec<(u32, usize)> = self
            .attached
            .iter()
            .filter(|(_, a)| a.next_refresh.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(a) = self.attached.get_mut(&key) else {
                continue;
            };
            a.next_refresh = a.process.refresh_interval().map(|i| now + i);
            match a.process.refresh() {
                Ok(update) if update.is_empty() => {}
                Ok(update) => self.apply(key.0, key.1, update, manager, kernel),
                Err(e) => tracing::debug!(
                    pid = key.0,
                    "runtime refresh failed: {}",
                    crate::error::Chain(&e)
                ),
            }
        }
    }

    /// Files whose runtime was recognised but cannot be unwound, and why (the first
    /// 32 distinct ones; [`Interpreters::metrics`] counts them all).
    pub fn detection_failures(&self) -> &[DetectionFailure] {
        &self.detection_failures
    }

    /// Processes with a runtime attached.
    pub fn attached(&self) -> usize {
        self.attached.len()
    }

    /// Whether `pid` has the runtime named `name` attached.
    pub fn is_attached(&self, pid: u32, name: &str) -> bool {
        self.runtimes
            .iter()
            .position(|r| r.plugin.name() == name)
            .is_some_and(|i| self.attached.contains_key(&(pid, i)))
    }

    /// Names the trace's runtime frames: the trace that comes out has only named frames (an
    /// unnamed one becomes `[unknown <runtime> frame]`).
    pub fn resolve(&mut self, trace: Trace<RecordedFrame>) -> Trace<Frame> {
        let frames = trace
            .frames
            .iter()
            .map(|f| match *f {
                RecordedFrame::Kernel { address, exact } => Frame::Kernel { address, exact },
                RecordedFrame::Native { address, exact } => Frame::Native { address, exact },
                RecordedFrame::UnwindError(e) => Frame::UnwindError(e),
                RecordedFrame::Runtime(raw) => Frame::Named(self.name(trace.pid, &raw)),
            })
            .collect();
        let thread_name = self.thread_name(trace.pid, trace.tid);
        Trace {
            pid: trace.pid,
            tid: trace.tid,
            comm: trace.comm,
            thread_name,
            frames,
        }
    }

    /// The runtime's name for a thread of a process with a runtime attached: asked of its
    /// plug-ins once per thread (a few more times while they have none), then kept.
    fn thread_name(&mut self, pid: u32, tid: u32) -> Option<Arc<str>> {
        let runtimes = self.runtimes.len();
        if !(0..runtimes).any(|i| self.attached.contains_key(&(pid, i))) {
            return None;
        }
        let attached = &mut self.attached;
        self.threads.get(pid, tid, Instant::now(), || {
            (0..runtimes).find_map(|i| {
                attached
                    .get_mut(&(pid, i))
                    .and_then(|a| a.process.thread_name(tid))
            })
        })
    }

    fn name(&mut self, pid: u32, raw: &RawFrame) -> u64 {
        let index = self
            .runtimes
            .iter()
            .position(|r| r.slot == Some(u32::from(raw.runtime)));
        let runtime_name = index.map_or("runtime", |i| self.runtimes[i].plugin.name());
        self.scratch.clear();
        let named = match index.and_then(|i| self.attached.get_mut(&(pid, i))) {
            Some(a) => a
                .process
                .symbolize(raw, &mut self.scratch)
                .map_err(|e| e.to_string()),
            None => Err("the process has no such runtime attached any more".into()),
        };
        self.lines.clear();
        match named {
            Ok(()) if !self.scratch.is_empty() => {
                if let Some(i) = index {
                    self.runtimes[i].successes += 1;
                }
                self.lines.extend(self.scratch.drain(..).map(|f| NamedLine {
                    runtime: raw.runtime,
                    function: f.function,
                    file: f.file,
                    line: f.line,
                    start_line: f.start_line,
                }));
            }
            other => {
                if let Some(i) = index {
                    self.runtimes[i].failures += 1;
                }
                if let Err(e) = other {
                    tracing::trace!(pid, runtime = runtime_name, "runtime frame not named: {e}");
                }
                self.lines.push(NamedLine {
                    runtime: raw.runtime,
                    function: Arc::from(format!("[unknown {runtime_name} frame]")),
                    file: Arc::from(""),
                    line: 0,
                    start_line: 0,
                });
            }
        }
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .intern(&self.lines)
    }

    /// The interned names of resolved frames, shared with whoever builds profiles.
    pub fn frame_names(&self) -> SharedNames {
        Arc::clone(&self.names)
    }

    /// Forgets interned names when there are too many (see [`FrameNames::trim`]).
    pub fn trim_names(&mut self) {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).trim();
    }

    /// Every runtime's metrics: its eBPF counters (`counters` reads them by slot), its
    /// naming counters and its plug-in's own; then the session's.
    pub fn metrics(&self, counters: impl Fn(u32) -> Option<RuntimeCounters>) -> Vec<Metric> {
        let mut out = Vec::new();
        for r in &self.runtimes {
            let m = r.plugin.metric_name();
            let c = r.slot.and_then(&counters).unwrap_or_default();
            out.push(Metric::counter(
                format!("Unwind{m}Attempts_total"),
                c.attempts,
            ));
            out.push(Metric::counter(format!("Unwind{m}Frames_total"), c.frames));
            out.push(Metric::counter(
                format!("Unwind{m}ErrNoFrame_total"),
                c.no_frames,
            ));
            let own = r.plugin.ebpf().map_or(&[][..], |p| p.counters);
            for (i, name) in own.iter().enumerate() {
                let v = c.own.get(i).copied().unwrap_or(0);
                out.push(Metric::counter(format!("Unwind{m}{name}_total"), v));
            }
            let (ok, failed) = r.plugin.symbolization_metric_names();
            out.push(Metric::counter(ok, r.successes));
            out.push(Metric::counter(failed, r.failures));
            out.push(Metric::counter(
                format!("{m}DetectionFailures_total"),
                r.detection_failures,
            ));
            out.extend(r.plugin.metrics());
            out.push(Metric::gauge(
                format!("Unwind{m}ProgramLoaded"),
                u64::from(r.slot.is_some()),
            ));
        }
        out.push(Metric::gauge(
            "InterpreterProcesses",
            self.attached.len() as u64,
        ));
        out
    }
}

/// What a plug-in's detection error says, without the plug-in's name in front.
fn reason(e: &ferroscope_unwind_api::InterpreterError) -> String {
    match e {
        ferroscope_unwind_api::InterpreterError::Runtime { source, .. } => {
            crate::error::Chain(source.as_ref()).to_string()
        }
        other => crate::error::Chain(other).to_string(),
    }
}

/// The runtime plug-ins linked into this binary, sorted by name.
pub fn built_in() -> Vec<&'static str> {
    ferroscope_unwind_api::plugins().map(|p| p.name).collect()
}

/// For the end of a recording: one line per linked runtime that recorded or named frames,
/// from [`Interpreters::metrics`]: frames recorded, named and not, and the plug-in's own
/// non-zero metrics.
pub fn summary_lines(metrics: &[Metric]) -> Vec<String> {
    let value = |name: &str| {
        metrics
            .iter()
            .find(|m| m.name == name)
            .map_or(0, |m| m.value)
    };
    let mut out = Vec::new();
    for p in ferroscope_unwind_api::plugins() {
        let plugin = (p.create)();
        let m = plugin.metric_name();
        let recorded = value(&format!("Unwind{m}Frames_total"));
        let (ok_name, failed_name) = plugin.symbolization_metric_names();
        let (named, failed) = (value(&ok_name), value(&failed_name));
        if recorded + named + failed == 0 {
            continue;
        }
        let own: Vec<String> = plugin
            .metrics()
            .iter()
            .filter_map(|mine| {
                let v = value(&mine.name);
                (v > 0).then(|| format!("{} {v}", mine.name))
            })
            .collect();
        out.push(format!(
            "{m} frames: {recorded} recorded, {named} named, {failed} not named{}",
            if own.is_empty() {
                String::new()
            } else {
                format!(" ({})", own.join(", "))
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests;
