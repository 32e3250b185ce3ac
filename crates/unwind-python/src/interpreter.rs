//! The CPython plug-in: detection, the eBPF walker's data, and naming of recorded frames.
//!
//! The eBPF walker (`bpf/python.bpf.c`) follows the same reads as [`walk`](crate::walk): it
//! finds the sampled thread's `PyThreadState` by walking the interpreters' thread lists for
//! the one whose `thread_id` is the thread's `pthread_self()` (its FS base) and, 3.11+, whose
//! `native_thread_id` is its TID (cached per TID and checked so on every use; a cached state
//! without a frame is looked for again), then queues the thread's Python frames, one segment per C-level
//! call of the eval loop, which the native unwinder splices in where it meets
//! `_PyEval_EvalFrameDefault` (the ranges this plug-in registers). Each recorded frame is the
//! code object's address, with the raw instruction offset in the low 32 bits of its payload
//! and the low 24 bits of the code object's `co_firstlineno` (its fingerprint) above.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferroscope_unwind_api::{
    AttachContext, EbpfProgram, ElfFile, FileData, InterpretedFrame, Interpreter, InterpreterError,
    InterpreterPlugin, InterpreterProcess, MapWrite, MappedRange, MappingsChanged, Metric,
    OwnedRange, ProcessUpdate, RangeMode, RawFrame, SharedMemory,
};

use crate::debug_offsets::DebugOffsets;
use crate::ebpf::{FINGERPRINT_MASK, PROCS_MAP, PyProc, py_proc, split_payload};
use crate::eval_loop::{EvalLoop, find_eval_loop};
use crate::{
    CodeInfo, Error, FrameLayout, Layout, PyVersion, layout_for, read_code, threading_threads,
    version_from_hex, version_from_path,
};

/// The plug-in's name: the `python` cargo feature and `python_enabled`.
pub const NAME: &str = "python";

/// Most code objects cached per process; the cache starts over when full.
const CODE_CACHE_LIMIT: usize = 4096;
/// Most threads whose name (or lack of one) is cached per process; the cache starts over
/// when full.
const THREAD_CACHE_LIMIT: usize = 4096;
/// A thread without a name yet is looked for again this many times ...
const THREAD_NAME_TRIES: u8 = 8;
/// ... at most this often ...
const THREAD_NAME_RETRY: Duration = Duration::from_millis(50);
/// ... within this long of the first question (a `threading.Thread` is in `_active` with its
/// `_native_id` once it runs Python code; a thread not named by then never will be).
const THREAD_NAME_WINDOW: Duration = Duration::from_secs(10);
/// Least time between two reads of a process's threads (each reads every thread's name).
const THREAD_SCAN_INTERVAL: Duration = Duration::from_millis(100);

inventory::submit! {
    InterpreterPlugin { name: NAME, create: || Box::new(Python::default()) }
}

/// Counters shared by every attached process.
#[derive(Debug, Default)]
struct Counters {
    attached: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    thread_names_found: AtomicU64,
    thread_name_scans: AtomicU64,
    thread_name_errors: AtomicU64,
}

/// CPython as an [`Interpreter`].
#[derive(Debug, Default)]
pub struct Python {
    counters: Arc<Counters>,
}

/// What detection found in a CPython file (the executable or libpython).
#[derive(Debug, Clone)]
pub struct PythonFile {
    /// The version (micro 0 when it came from the file name).
    pub version: PyVersion,
    /// Its layout: a built-in table (3.6-3.12) or read from its `_Py_DebugOffsets` (3.13+).
    pub layout: Layout,
    /// Virtual address of `_PyRuntime` (3.7+) or of `interp_head` (3.6).
    pub runtime: u64,
    /// The eval loop's parts.
    pub eval: EvalLoop,
    /// 3.6-3.10: where in the eval loop's entry part the thread state does not point at the
    /// frame its call runs (file addresses; see [`frame_binding`](crate::frame_binding)).
    pub unbound: Vec<crate::frame_binding::Range>,
}

fn runtime_error(e: Error) -> InterpreterError {
    InterpreterError::Runtime {
        runtime: NAME,
        source: Box::new(e),
    }
}

/// Most bytes of `_PyRuntime` read for its `_Py_DebugOffsets`.
const DEBUG_OFFSETS_READ: usize = 4096;

/// Detects CPython in one ELF file: a file named like `python3.N` or `libpython3.N...`, or one
/// exporting `Py_Version` / `_PyRuntime`.
///
/// `Ok(None)`: not CPython, or only its launcher (the small `python3.N` of a shared-library
/// build, which has neither `_PyRuntime` nor the eval loop). An error: CPython, but its
/// Python frames cannot be read, and why (a version without a layout, a `_Py_DebugOffsets`
/// that does not read, no eval loop in its symbols, a free-threaded build, ...).
pub fn detect_file(file: &dyn ElfFile) -> Result<Option<PythonFile>, Error> {
    let path = file.path();
    let by_path = version_from_path(path);
    // Only `.dynsym` until the file looks like CPython: every file of every process is asked.
    let by_symbol = file.exported_symbol("Py_Version").and_then(|s| {
        let mut b = [0u8; 4];
        file.read_vaddr(s.address, &mut b)
            .then(|| version_from_hex(u32::from_le_bytes(b)))
    });
    let runtime_sym = file.exported_symbol("_PyRuntime");
    if by_path.is_none() && by_symbol.is_none() && runtime_sym.is_none() {
        return Ok(None);
    }
    let eval = find_eval_loop(file);
    // The runtime itself, not a launcher that links it.
    let is_runtime = by_symbol.is_some() || runtime_sym.is_some() || eval.is_some();
    if !is_runtime {
        return Ok(None);
    }
    let Some(version) = by_symbol.or(by_path) else {
        return Err(Error::Detection {
            path: path.to_owned(),
            reason: "it exports _PyRuntime but neither Py_Version (3.11+) nor a version in its \
                     file name (python3.N, libpython3.N.so) says which CPython it is"
                .to_owned(),
        });
    };
    let Some(eval) = eval else {
        return Err(Error::Detection {
            path: path.to_owned(),
            reason: format!(
                "CPython {version}, but its eval loop `_PyEval_EvalFrameDefault` is in none of its \
                 symbol tables (.dynsym, .symtab, an installed debug file), so its Python frames \
                 cannot be placed in the native stacks; install the debug file or use a build \
                 that exports it"
            ),
        });
    };
    let layout = match version.minor {
        _ if version.major != 3 => return Err(Error::UnsupportedVersion { version }),
        ..=12 => layout_for(version)?.clone(),
        _ => {
            let Some(runtime) = runtime_sym.or_else(|| file.symbol("_PyRuntime")) else {
                return Err(Error::Detection {
                    path: path.to_owned(),
                    reason: format!(
                        "CPython {version} without a `_PyRuntime` symbol, where its offsets \
                         (_Py_DebugOffsets) and its interpreters are"
                    ),
                });
            };
            let len = usize::try_from(runtime.size)
                .unwrap_or(usize::MAX)
                .clamp(schema_min_read(), DEBUG_OFFSETS_READ);
            let mut bytes = vec![0u8; len];
            if !file.read_vaddr(runtime.address, &mut bytes) {
                return Err(Error::Detection {
                    path: path.to_owned(),
                    reason: format!(
                        "CPython {version}: the first {len} bytes of _PyRuntime (at {:#x}) are not \
                         in the file, so its _Py_DebugOffsets cannot be read",
                        runtime.address
                    ),
                });
            }
            let offsets = DebugOffsets::parse(&bytes, version, runtime.size)
                .map_err(|problem| Error::debug_offsets(path, version, problem))?;
            Layout::from_debug_offsets(&offsets)
        }
    };
    let runtime_symbol = if layout.runtime_interpreters_head.is_some() {
        "_PyRuntime"
    } else {
        "interp_head"
    };
    let Some(runtime) = file.symbol(runtime_symbol) else {
        return Err(Error::Detection {
            path: path.to_owned(),
            reason: format!(
                "CPython {version} without a `{runtime_symbol}` symbol (stripped?), where its \
                 interpreters are; its Python frames cannot be found"
            ),
        });
    };
    tracing::debug!(
        path,
        %version,
        parts = ?eval.parts,
        from = ?eval.from,
        "CPython's eval loop found"
    );
    let unbound = eval
        .parts
        .first()
        .filter(|_| matches!(layout.frame, FrameLayout::Object { .. }))
        .and_then(|entry| {
            let mut code = vec![0u8; usize::try_from(entry.size).ok()?.min(1 << 20)];
            file.read_vaddr(entry.address, &mut code)
                .then(|| crate::frame_binding::unbound_ranges(&code, entry.address, &layout))
        })
        .unwrap_or_default();
    tracing::debug!(path, ranges = ?unbound, "eval loop ranges without the call's frame bound");
    Ok(Some(PythonFile {
        version,
        layout,
        runtime: runtime.address,
        eval,
        unbound,
    }))
}

/// Bytes any schema needs (the shortest table).
fn schema_min_read() -> usize {
    crate::debug_offsets::SCHEMAS
        .iter()
        .map(|(_, s)| crate::debug_offsets::schema_len(s))
        .max()
        .unwrap_or(0)
}

/// The eBPF walker's data for a process that maps `file` at `bias`.
pub fn ebpf_proc(file: &PythonFile, bias: u64) -> PyProc {
    let l = &file.layout;
    let interp_head = file
        .runtime
        .wrapping_add(bias)
        .wrapping_add(u64::from(l.runtime_interpreters_head.unwrap_or(0)));
    let mut p = py_proc(l, interp_head);
    if let Some(entry) = file.eval.parts.first()
        && !file.unbound.is_empty()
    {
        p.eval_base = entry.address.wrapping_add(bias);
        for (slot, &(start, end)) in p.unbound.iter_mut().zip(&file.unbound) {
            let off = |a: u64| u32::try_from(a.wrapping_sub(entry.address)).unwrap_or(0);
            *slot = (off(start), off(end));
        }
    }
    p
}

/// The process ranges of the eval loop (splice ranges) for `file` mapped at `bias`.
pub fn eval_ranges(file: &PythonFile, bias: u64) -> Vec<OwnedRange> {
    file.eval
        .parts
        .iter()
        .map(|r| OwnedRange {
            start: r.address.wrapping_add(bias),
            end: r.address.wrapping_add(r.size.max(1)).wrapping_add(bias),
            mode: RangeMode::Splice,
            frame_pointer: false,
        })
        .collect()
}

/// The byte offset in the code's bytecode of the instruction a recorded frame is at, from
/// the raw value the eBPF walker stored (see [`RawFrame`](crate::RawFrame) for the era
/// conventions; a frame that has not started gives 0).
pub fn byte_offset(layout: &Layout, raw: u32) -> u32 {
    let raw = (raw as i32).max(0) as u32;
    match layout.frame {
        FrameLayout::Object {
            lasti_in_code_units: true,
            ..
        } => raw.saturating_mul(2),
        _ => raw,
    }
}

impl Interpreter for Python {
    fn name(&self) -> &'static str {
        NAME
    }

    fn metric_name(&self) -> &'static str {
        "Python"
    }

    fn ebpf(&self) -> Option<EbpfProgram> {
        Some(crate::ebpf::program())
    }

    fn detect(&self, file: &dyn ElfFile) -> Result<Option<FileData>, InterpreterError> {
        Ok(detect_file(file)
            .map_err(runtime_error)?
            .map(|f| Arc::new(f) as FileData))
    }

    fn attach(
        &self,
        data: &FileData,
        context: &AttachContext<'_>,
    ) -> Result<Box<dyn InterpreterProcess>, InterpreterError> {
        let file = data
            .downcast_ref::<PythonFile>()
            .ok_or_else(|| InterpreterError::Runtime {
                runtime: NAME,
                source: "file data of another plug-in".into(),
            })?;
        self.counters.attached.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pid = context.pid, version = %file.version, "CPython process attached");
        Ok(Box::new(PythonProcess {
            pid: context.pid,
            memory: context.memory.clone(),
            layout: file.layout.clone(),
            ebpf: ebpf_proc(file, context.bias),
            ranges: eval_ranges(file, context.bias),
            codes: HashMap::new(),
            names: HashMap::new(),
            last_scan: None,
            counters: Arc::clone(&self.counters),
        }))
    }

    fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        vec![
            Metric::counter(
                "PythonProcessesAttached_total",
                c.attached.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "PythonCodeObjectCacheHits_total",
                c.cache_hits.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "PythonCodeObjectCacheMisses_total",
                c.cache_misses.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "PythonThreadNamesFound_total",
                c.thread_names_found.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "PythonThreadNameScans_total",
                c.thread_name_scans.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "PythonThreadNameErrors_total",
                c.thread_name_errors.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// A named code object, shared by every frame that runs it.
#[derive(Debug)]
struct Code {
    info: CodeInfo,
    function: Arc<str>,
    file: Arc<str>,
}

/// One CPython process.
struct PythonProcess {
    pid: u32,
    memory: SharedMemory,
    layout: Layout,
    ebpf: PyProc,
    ranges: Vec<OwnedRange>,
    /// Code objects by (address, fingerprint).
    codes: HashMap<(u64, u32), Arc<Code>>,
    /// `threading` names by OS thread ID.
    names: HashMap<u32, ThreadName>,
    /// When the threads were last read.
    last_scan: Option<Instant>,
    counters: Arc<Counters>,
}

/// What is known of one thread's name.
#[derive(Debug)]
enum ThreadName {
    /// Its `threading.Thread` name, for the thread's life.
    Found(String),
    /// Not found yet: when it was first asked for, last looked for, and how often.
    Missing {
        first: Instant,
        last: Instant,
        tries: u8,
    },
}

impl PythonProcess {
    fn code(&mut self, addr: u64, fingerprint: u32) -> Result<Arc<Code>, Error> {
        if let Some(c) = self.codes.get(&(addr, fingerprint)) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Arc::clone(c));
        }
        self.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
        let info = read_code(&*self.memory, &self.layout, addr)?;
        if info.first_line & FINGERPRINT_MASK != fingerprint {
            // The code object was freed and its memory reused since the sample.
            return Err(Error::invalid(
                "code object",
                addr,
                format!(
                    "its first line is {} now but was {fingerprint} (24 bits) when sampled (the address was reused)",
                    info.first_line
                ),
            ));
        }
        if self.codes.len() >= CODE_CACHE_LIMIT {
            self.codes.clear();
        }
        let code = Arc::new(Code {
            function: Arc::from(info.qualname.as_str()),
            file: Arc::from(info.filename.as_str()),
            info,
        });
        self.codes.insert((addr, fingerprint), Arc::clone(&code));
        Ok(code)
    }
}

impl PythonProcess {
    /// Reads every `threading.Thread` of the process and caches the name of each that has
    /// its OS thread ID (names found once are kept).
    fn scan_thread_names(&mut self, now: Instant) {
        if self
            .last_scan
            .is_some_and(|t| now.duration_since(t) < THREAD_SCAN_INTERVAL)
        {
            return;
        }
        self.last_scan = Some(now);
        self.counters
            .thread_name_scans
            .fetch_add(1, Ordering::Relaxed);
        let threads = match threading_threads(&*self.memory, &self.layout, self.ebpf.interp_head) {
            Ok(t) => t,
            Err(e) => {
                self.counters
                    .thread_name_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pid = self.pid, error = %e, "threading names did not read");
                return;
            }
        };
        for t in threads {
            let Some(tid) = t.native_id else { continue };
            if matches!(self.names.get(&tid), Some(ThreadName::Found(_))) {
                continue;
            }
            if self.names.len() >= THREAD_CACHE_LIMIT {
                self.names.clear();
            }
            self.counters
                .thread_names_found
                .fetch_add(1, Ordering::Relaxed);
            self.names.insert(tid, ThreadName::Found(t.name));
        }
    }
}

impl InterpreterProcess for PythonProcess {
    fn start(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        Ok(ProcessUpdate {
            map_writes: vec![MapWrite {
                map: PROCS_MAP,
                key: self.pid.to_ne_bytes().to_vec(),
                value: Some(self.ebpf.to_bytes()),
            }],
            ranges: Some(self.ranges.clone()),
        })
    }

    fn mappings_changed(&mut self, mappings: &[MappedRange]) -> MappingsChanged {
        // Still attached while the eval loop's code is mapped.
        let mapped = self.ranges.first().is_none_or(|r| {
            mappings
                .iter()
                .any(|m| m.start <= r.start && r.start < m.end)
        });
        if mapped {
            MappingsChanged::Keep(ProcessUpdate::default())
        } else {
            MappingsChanged::Detach
        }
    }

    fn symbolize(
        &mut self,
        frame: &RawFrame,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<(), InterpreterError> {
        let (raw, fingerprint) = split_payload(frame.aux);
        let code = self
            .code(frame.address, fingerprint)
            .map_err(runtime_error)?;
        let offset = byte_offset(&self.layout, raw);
        out.push(InterpretedFrame {
            function: Arc::clone(&code.function),
            file: Arc::clone(&code.file),
            line: code
                .info
                .line_for_offset(offset)
                .unwrap_or(code.info.first_line),
            start_line: code.info.first_line,
        });
        Ok(())
    }

    fn thread_name(&mut self, tid: u32) -> Option<String> {
        let now = Instant::now();
        match self.names.get(&tid) {
            Some(ThreadName::Found(name)) => return Some(name.clone()),
            Some(&ThreadName::Missing { first, last, tries })
                if tries >= THREAD_NAME_TRIES
                    || now.duration_since(first) > THREAD_NAME_WINDOW
                    || now.duration_since(last) < THREAD_NAME_RETRY =>
            {
                return None;
            }
            _ => {}
        }
        self.scan_thread_names(now);
        if let Some(ThreadName::Found(name)) = self.names.get(&tid) {
            return Some(name.clone());
        }
        let (first, tries) = match self.names.get(&tid) {
            Some(&ThreadName::Missing { first, tries, .. }) => (first, tries),
            _ => (now, 0),
        };
        if self.names.len() >= THREAD_CACHE_LIMIT {
            self.names.clear();
        }
        self.names.insert(
            tid,
            ThreadName::Missing {
                first,
                last: now,
                tries: tries + 1,
            },
        );
        None
    }
}
