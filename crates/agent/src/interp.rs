//! Interpreter plug-ins in a session: detection per file, one instance per process, and
//! naming of the frames the eBPF walkers recorded.
//!
//! The agent never names a runtime. Every plug-in linked into the binary (see
//! [`ferroscope_unwind_api::plugins`]) and not turned off in the configuration is asked
//! once per distinct file whether the file is its runtime; a process that maps a detected
//! file gets an instance of the plug-in, whose eBPF data goes into `fs_interp_procs`.
//!
//! Interpreted frames are named when their trace is drained, while the process still
//! lives (a short script may be gone by the time a profile is built): the instance turns
//! the raw frame (for CPython, a code object's address and an instruction offset) into a
//! function, file and line, which [`FrameNames`] interns. From then on an interpreted
//! frame's `address` is its [`FrameNames`] ID and its `aux` the line.

use std::collections::HashMap;
use std::sync::Arc;

use ferroscope_unwind_api::{
    AttachTarget, ElfFile, FileData, Frame, FrameKind, InterpretedFrame, Interpreter,
    InterpreterProcess, MappedRange, SymbolRange, Trace, plugins,
};

use crate::process::{FileId, UnwindBackend};

/// The interned name of an interpreted frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FrameName {
    /// The runtime's frame kind.
    pub kind: u8,
    /// Function name.
    pub function: Arc<str>,
    /// Source file.
    pub file: Arc<str>,
    /// First line of the function (0 when unknown).
    pub start_line: u32,
}

/// Interned names of interpreted frames: an ID per distinct (runtime, function, file,
/// first line).
#[derive(Debug, Default)]
pub struct FrameNames {
    ids: HashMap<FrameName, u64>,
    names: Vec<FrameName>,
}

/// More distinct names than this and the table starts over at the next round boundary.
const MAX_NAMES: usize = 1 << 20;

impl FrameNames {
    /// The ID of a name, adding it if new.
    pub fn intern(&mut self, name: FrameName) -> u64 {
        if let Some(&id) = self.ids.get(&name) {
            return id;
        }
        let id = self.names.len() as u64;
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    /// The name with this ID.
    pub fn get(&self, id: u64) -> Option<&FrameName> {
        self.names.get(usize::try_from(id).ok()?)
    }

    /// Distinct names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name was interned.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Forgets every name when there are too many; call only when no trace refers to them
    /// (after a round's profiles were built).
    pub fn trim(&mut self) {
        if self.names.len() > MAX_NAMES {
            self.ids.clear();
            self.names.clear();
        }
    }
}

struct Attached {
    plugin: usize,
    file: FileId,
    process: Box<dyn InterpreterProcess>,
}

/// The session's interpreter plug-ins and the processes they follow.
pub struct Interpreters {
    plugins: Vec<Box<dyn Interpreter>>,
    detected: HashMap<FileId, Option<(usize, FileData)>>,
    attached: HashMap<u32, Attached>,
    names: FrameNames,
    symbolized: u64,
    failed: u64,
}

impl std::fmt::Debug for Interpreters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interpreters")
            .field("plugins", &self.names())
            .field("attached", &self.attached.len())
            .finish_non_exhaustive()
    }
}

const DETECTED_LIMIT: usize = 65536;

impl Interpreters {
    /// Every linked plug-in except those named in `disabled`.
    pub fn new(disabled: &[String]) -> Self {
        let plugins = plugins()
            .filter(|p| !disabled.iter().any(|d| d == p.name))
            .map(|p| (p.create)())
            .collect();
        Interpreters {
            plugins,
            detected: HashMap::new(),
            attached: HashMap::new(),
            names: FrameNames::default(),
            symbolized: 0,
            failed: 0,
        }
    }

    /// The enabled runtimes' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// Whether a file of this identity was already looked at.
    pub(crate) fn knows_file(&self, file: FileId) -> bool {
        self.plugins.is_empty() || self.detected.contains_key(&file)
    }

    /// Asks every plug-in about a file (once per identity; `data` is the file's bytes).
    pub(crate) fn detect_file(&mut self, file: FileId, path: &str, data: &[u8]) {
        if self.detected.contains_key(&file) || self.plugins.is_empty() {
            return;
        }
        let elf = MappedElf::new(path, data);
        let mut found = None;
        if let Some(elf) = &elf {
            for (i, p) in self.plugins.iter().enumerate() {
                match p.detect(elf) {
                    Ok(Some(d)) => {
                        tracing::debug!(path, runtime = p.name(), "interpreter detected");
                        found = Some((i, d));
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(path, runtime = p.name(), "detection failed: {e}"),
                }
            }
        }
        if self.detected.len() >= DETECTED_LIMIT {
            self.detected.clear();
        }
        self.detected.insert(file, found);
    }

    /// A process maps `file` at `bias`: attaches the plug-in that detected it, unless the
    /// process already has one.
    pub(crate) fn file_mapped(
        &mut self,
        maps: &mut dyn UnwindBackend,
        pid: u32,
        file: FileId,
        bias: u64,
    ) {
        if self.attached.contains_key(&pid) {
            return;
        }
        let Some(Some((plugin, data))) = self.detected.get(&file) else {
            return;
        };
        let plugin = *plugin;
        let p = &self.plugins[plugin];
        match p.attach(data, AttachTarget { pid, bias }) {
            Ok(process) => {
                if let Err(e) = maps.set_interpreter(pid, &process.ebpf_data()) {
                    tracing::warn!(
                        pid,
                        runtime = p.name(),
                        "cannot load the interpreter's data into eBPF: {e}"
                    );
                    process.detach();
                    return;
                }
                tracing::debug!(pid, runtime = p.name(), "interpreter attached");
                self.attached.insert(
                    pid,
                    Attached {
                        plugin,
                        file,
                        process,
                    },
                );
            }
            Err(e) => tracing::debug!(pid, runtime = p.name(), "cannot attach to the process: {e}"),
        }
    }

    /// The process's mappings after a rescan: detaches a runtime that is gone from it.
    pub(crate) fn mappings_changed(
        &mut self,
        maps: &mut dyn UnwindBackend,
        pid: u32,
        mappings: &[MappedRange],
        files: &[FileId],
    ) {
        let Some(a) = self.attached.get_mut(&pid) else {
            return;
        };
        if files.contains(&a.file) && a.process.sync_mappings(mappings) {
            return;
        }
        self.remove(maps, pid);
    }

    /// Detaches from an exited (or unloaded) process.
    pub(crate) fn remove(&mut self, maps: &mut dyn UnwindBackend, pid: u32) {
        if let Some(a) = self.attached.remove(&pid) {
            let _ = maps.remove_interpreter(pid);
            a.process.detach();
        }
    }

    /// Processes with an interpreter attached.
    pub fn attached(&self) -> usize {
        self.attached.len()
    }

    /// Names the trace's raw interpreted frames (as [`crate::aggregate::TraceAggregator::trace_of`]
    /// made them): afterwards each has its [`FrameNames`] ID as address and its line as aux.
    pub fn resolve(&mut self, trace: &mut Trace) {
        let mut attached = self.attached.get_mut(&trace.pid);
        for frame in &mut trace.frames {
            let FrameKind::Interpreted(kind) = frame.kind else {
                continue;
            };
            let named = match attached.as_deref_mut() {
                Some(a) => a.process.symbolize(frame),
                None => Err(ferroscope_unwind_api::InterpreterError::Runtime {
                    runtime: "interpreter",
                    source: "the process has no interpreter attached any more".into(),
                }),
            };
            let name = match named {
                Ok(f) => {
                    self.symbolized += 1;
                    let line = f.line;
                    *frame = Frame::interpreted(
                        kind,
                        self.names.intern(name_of(kind, f)),
                        u64::from(line),
                        frame.is_leaf,
                    );
                    continue;
                }
                Err(e) => {
                    self.failed += 1;
                    tracing::trace!(pid = trace.pid, "interpreted frame not named: {e}");
                    let runtime = attached
                        .as_deref()
                        .map_or("interpreter", |a| self.plugins[a.plugin].name());
                    FrameName {
                        kind,
                        function: Arc::from(format!("[unknown {runtime} frame]")),
                        file: Arc::from(""),
                        start_line: 0,
                    }
                }
            };
            *frame = Frame::interpreted(kind, self.names.intern(name), 0, frame.is_leaf);
        }
    }

    /// The interned names of resolved frames.
    pub fn frame_names(&self) -> &FrameNames {
        &self.names
    }

    /// Forgets interned names when there are too many (see [`FrameNames::trim`]).
    pub fn trim_names(&mut self) {
        self.names.trim();
    }

    /// Every plug-in's metrics and the session's naming counters.
    pub fn metrics(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> =
            self.plugins.iter().flat_map(|p| p.metrics()).collect();
        out.push(("InterpreterProcesses", self.attached.len() as u64));
        out.push(("InterpreterFramesNamed_total", self.symbolized));
        out.push(("InterpreterFramesUnnamed_total", self.failed));
        out
    }

    /// The metric names [`Interpreters::metrics`] reports, for every linked plug-in.
    pub fn metric_names() -> Vec<&'static str> {
        let mut names: Vec<&'static str> = plugins()
            .flat_map(|p| (p.create)().metrics())
            .map(|(n, _)| n)
            .collect();
        names.extend([
            "InterpreterProcesses",
            "InterpreterFramesNamed_total",
            "InterpreterFramesUnnamed_total",
        ]);
        names
    }
}

/// The interpreter unwinders linked into this binary, sorted by name.
pub fn built_in() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = plugins().map(|p| p.name).collect();
    names.sort_unstable();
    names
}

fn name_of(kind: u8, f: InterpretedFrame) -> FrameName {
    FrameName {
        kind,
        function: f.function,
        file: f.file,
        start_line: f.start_line,
    }
}

/// An ELF file mapped in memory, as plug-ins see it: symbols looked up by name (an index of
/// `.dynsym` built on first use, then `.symtab` only when a name is not in `.dynsym`).
struct MappedElf<'a> {
    path: &'a str,
    file: object::File<'a>,
    dynsym: std::cell::OnceCell<HashMap<&'a str, SymbolRange>>,
    symtab: std::cell::OnceCell<HashMap<&'a str, SymbolRange>>,
}

impl<'a> MappedElf<'a> {
    fn new(path: &'a str, data: &'a [u8]) -> Option<Self> {
        let file = object::File::parse(data).ok()?;
        Some(MappedElf {
            path,
            file,
            dynsym: std::cell::OnceCell::new(),
            symtab: std::cell::OnceCell::new(),
        })
    }
}

fn index<'d: 'f, 'f>(
    symbols: impl Iterator<Item = object::Symbol<'d, 'f>>,
) -> HashMap<&'d str, SymbolRange> {
    use object::ObjectSymbol;
    symbols
        .filter(|s| s.is_definition())
        .filter_map(|s| {
            Some((
                s.name().ok()?,
                SymbolRange {
                    address: s.address(),
                    size: s.size(),
                },
            ))
        })
        .collect()
}

impl ElfFile for MappedElf<'_> {
    fn path(&self) -> &str {
        self.path
    }

    fn symbol(&self, name: &str) -> Option<SymbolRange> {
        use object::Object;
        if let Some(s) = self.exported_symbol(name) {
            return Some(s);
        }
        let symtab = self.symtab.get_or_init(|| index(self.file.symbols()));
        symtab.get(name).copied()
    }

    fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
        use object::Object;
        let dynsym = self
            .dynsym
            .get_or_init(|| index(self.file.dynamic_symbols()));
        dynsym.get(name).copied()
    }

    fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool {
        use object::{Object, ObjectSegment};
        for seg in self.file.segments() {
            let start = seg.address();
            let Ok(data) = seg.data() else { continue };
            if vaddr >= start && vaddr - start + buf.len() as u64 <= data.len() as u64 {
                let off = (vaddr - start) as usize;
                buf.copy_from_slice(&data[off..off + buf.len()]);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(function: &str) -> FrameName {
        FrameName {
            kind: 1,
            function: Arc::from(function),
            file: Arc::from("app.py"),
            start_line: 3,
        }
    }

    #[test]
    fn names_are_interned_once_and_trimmed_only_when_too_many() {
        let mut names = FrameNames::default();
        let a = names.intern(name("a"));
        let b = names.intern(name("b"));
        assert_ne!(a, b);
        assert_eq!(names.intern(name("a")), a);
        assert_eq!(names.get(b).map(|n| &*n.function), Some("b"));
        assert_eq!(names.len(), 2);
        names.trim();
        assert_eq!(names.len(), 2, "a small table is kept");
        assert!(names.get(99).is_none());
    }

    #[test]
    fn frames_of_a_process_without_an_interpreter_are_named_unknown() {
        let mut interpreters = Interpreters::new(&[]);
        let mut trace = Trace {
            pid: 424_242,
            tid: 424_242,
            comm: "python3".into(),
            frames: vec![
                Frame::native(0x1000, true),
                Frame::interpreted(1, 0x7f00_0000_1000, (7u64 << 32) | 12, false),
            ],
        };
        interpreters.resolve(&mut trace);
        assert_eq!(trace.frames[0], Frame::native(0x1000, true));
        let f = trace.frames[1];
        assert_eq!(f.kind, FrameKind::Interpreted(1));
        let n = interpreters.frame_names().get(f.address).unwrap();
        assert_eq!(&*n.function, "[unknown interpreter frame]");
        let m = interpreters.metrics();
        assert!(m.contains(&("InterpreterFramesUnnamed_total", 1)));
    }

    #[test]
    fn disabled_plugins_are_not_created() {
        let all = Interpreters::new(&[]).names();
        let none = Interpreters::new(&all.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(none.names().is_empty());
        assert!(
            none.knows_file(FileId(1)),
            "nothing to detect without plug-ins"
        );
    }
}
