//! The CPython plug-in: detection, the eBPF walker's data, and naming of recorded frames.
//!
//! The eBPF walker (`py_step` in `crates/ebpf-programs/bpf/sampler.bpf.c`) follows the same
//! reads as [`walk`](crate::walk): it finds the sampled thread's `PyThreadState` by walking
//! the interpreters' thread lists for the one whose `thread_id` is the thread's
//! `pthread_self()` (its FS base; cached per TID and checked on every use), then, wherever
//! the native unwinder meets `_PyEval_EvalFrameDefault`, emits that C call's Python frames.
//! Each recorded frame is the code object's address, with the raw instruction offset in the
//! low 32 bits of `aux` and the code object's `co_firstlineno` (its fingerprint) in the high
//! 32 bits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferroscope_ebpf_programs::abi::{
    FRAME_PYTHON, InterpKind, InterpProc, NO_FIELD, PY_ENTRY_FLAG, PY_ENTRY_ONE, PY_ENTRY_SHIM,
    PY_FRAMES_INTERPRETER, PY_FRAMES_OBJECT, PyProc,
};
use ferroscope_unwind_api::{
    AttachTarget, ElfFile, FileData, Frame, InterpretedFrame, Interpreter, InterpreterError,
    InterpreterPlugin, InterpreterProcess, MappedRange, RemoteMemory, SymbolRange,
};

use crate::{
    CodeInfo, Entry, Error, FrameLayout, Layout, PyVersion, layout_for, read_code,
    version_from_hex, version_from_path,
};

/// The plug-in's name: the `python` cargo feature and `python_enabled`.
pub const NAME: &str = "python";

/// Most code objects cached per process; the cache starts over when full.
const CODE_CACHE_LIMIT: usize = 4096;

inventory::submit! {
    InterpreterPlugin { name: NAME, create: || Box::new(Python::default()) }
}

/// Counters shared by every attached process.
#[derive(Debug, Default)]
struct Counters {
    attached: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
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
    /// Its layout.
    pub layout: &'static Layout,
    /// Virtual address of `_PyRuntime` (3.7+) or of `interp_head` (3.6).
    pub runtime: u64,
    /// `_PyEval_EvalFrameDefault`, and its cold part when the compiler split it.
    pub eval: [Option<SymbolRange>; 2],
}

fn runtime_error(e: Error) -> InterpreterError {
    InterpreterError::Runtime {
        runtime: NAME,
        source: Box::new(e),
    }
}

/// Detects CPython in one ELF file: a file named like `python3.N` or `libpython3.N...`, or one
/// exporting `Py_Version` / `_PyRuntime`, that also has `_PyEval_EvalFrameDefault` (so the
/// small `python3.N` launcher of a shared-library build is not taken for the runtime).
pub fn detect_file(file: &dyn ElfFile) -> Result<Option<PythonFile>, Error> {
    let by_path = version_from_path(file.path());
    // Only `.dynsym` until the file looks like CPython: every file of every process is asked.
    let by_symbol = file.exported_symbol("Py_Version").and_then(|s| {
        let mut b = [0u8; 4];
        file.read_vaddr(s.address, &mut b)
            .then(|| version_from_hex(u32::from_le_bytes(b)))
    });
    let has_runtime = file.exported_symbol("_PyRuntime").is_some();
    if by_path.is_none() && by_symbol.is_none() && !has_runtime {
        return Ok(None);
    }
    let Some(eval) = file.symbol("_PyEval_EvalFrameDefault") else {
        return Ok(None);
    };
    let Some(version) = by_symbol.or(by_path) else {
        tracing::debug!(
            path = file.path(),
            "CPython found but not its version (no Py_Version symbol and no version in the file name)"
        );
        return Ok(None);
    };
    let layout = layout_for(version)?;
    let runtime_symbol = if layout.runtime_interpreters_head.is_some() {
        "_PyRuntime"
    } else {
        "interp_head"
    };
    let Some(runtime) = file.symbol(runtime_symbol) else {
        return Err(Error::invalid(
            "ELF file",
            0,
            format!(
                "CPython {version} without a `{runtime_symbol}` symbol (stripped?); its Python \
                 frames cannot be found"
            ),
        ));
    };
    let cold = file.symbol("_PyEval_EvalFrameDefault.cold");
    Ok(Some(PythonFile {
        version,
        layout,
        runtime: runtime.address,
        eval: [Some(eval), cold],
    }))
}

/// The eBPF walker's data for a process that maps `file` at `bias`.
pub fn ebpf_proc(file: &PythonFile, bias: u64) -> InterpProc {
    let l = file.layout;
    let field = |v: Option<u32>| v.map_or(NO_FIELD, |v| v as u16);
    let mut py = PyProc {
        interp_head: file
            .runtime
            .wrapping_add(bias)
            .wrapping_add(u64::from(l.runtime_interpreters_head.unwrap_or(0))),
        code_mask: u64::MAX,
        interp_next: l.interp_next as u16,
        interp_threads_head: l.interp_threads_head as u16,
        tstate_next: l.tstate_next as u16,
        tstate_thread_id: l.tstate_thread_id as u16,
        tstate_frame: l.tstate_frame as u16,
        cframe_current_frame: field(l.cframe_current_frame),
        frame_read_len: l.frame_read_len as u16,
        code_firstlineno: l.co_firstlineno as u16,
        code_adaptive: l.co_code_adaptive.unwrap_or(0) as u16,
        ..PyProc::default()
    };
    match l.frame {
        FrameLayout::Object {
            f_back,
            f_code,
            f_lasti,
            ..
        } => {
            py.frame_model = PY_FRAMES_OBJECT;
            py.frame_code = f_code as u16;
            py.frame_previous = f_back as u16;
            py.frame_instr = f_lasti as u16;
            py.frame_entry = NO_FIELD;
            py.entry_kind = PY_ENTRY_ONE;
        }
        FrameLayout::Interpreter {
            executable,
            previous,
            instr_ptr,
            entry,
            executable_tag_mask,
            ..
        } => {
            py.frame_model = PY_FRAMES_INTERPRETER;
            py.frame_code = executable as u16;
            py.frame_previous = previous as u16;
            py.frame_instr = instr_ptr as u16;
            py.code_mask = !executable_tag_mask;
            match entry {
                Entry::IsEntry { offset } => {
                    py.frame_entry = offset as u16;
                    py.entry_kind = PY_ENTRY_FLAG;
                }
                Entry::Owner { offset, cstack } => {
                    py.frame_entry = offset as u16;
                    py.entry_kind = PY_ENTRY_SHIM;
                    py.owner_cstack = cstack;
                }
            }
        }
    }
    let mut proc = InterpProc {
        kind: InterpKind::Python as u32,
        py,
        ..InterpProc::default()
    };
    for (i, range) in file.eval.iter().enumerate() {
        if let Some(r) = range {
            proc.loop_start[i] = r.address.wrapping_add(bias);
            proc.loop_end[i] = r.address.wrapping_add(r.size.max(1)).wrapping_add(bias);
        }
    }
    proc
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

    fn frame_kind(&self) -> u8 {
        FRAME_PYTHON
    }

    fn detect(&self, file: &dyn ElfFile) -> Result<Option<FileData>, InterpreterError> {
        Ok(detect_file(file)
            .map_err(runtime_error)?
            .map(|f| Arc::new(f) as FileData))
    }

    fn attach(
        &self,
        data: &FileData,
        target: AttachTarget,
    ) -> Result<Box<dyn InterpreterProcess>, InterpreterError> {
        let file = data
            .downcast_ref::<PythonFile>()
            .ok_or_else(|| InterpreterError::Runtime {
                runtime: NAME,
                source: "file data of another plug-in".into(),
            })?;
        self.counters.attached.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pid = target.pid, version = %file.version, "CPython process attached");
        Ok(Box::new(PythonProcess {
            memory: RemoteMemory::new(target.pid),
            layout: file.layout,
            ebpf: ebpf_proc(file, target.bias),
            runtime_range: file.eval[0].map(|r| r.address.wrapping_add(target.bias)),
            codes: HashMap::new(),
            counters: Arc::clone(&self.counters),
        }))
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            (
                "PythonProcessesAttached_total",
                c.attached.load(Ordering::Relaxed),
            ),
            (
                "PythonSymbolizationSuccesses_total",
                c.successes.load(Ordering::Relaxed),
            ),
            (
                "PythonSymbolizationFailures_total",
                c.failures.load(Ordering::Relaxed),
            ),
            (
                "PythonCodeObjectCacheHits_total",
                c.cache_hits.load(Ordering::Relaxed),
            ),
            (
                "PythonCodeObjectCacheMisses_total",
                c.cache_misses.load(Ordering::Relaxed),
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
    memory: RemoteMemory,
    layout: &'static Layout,
    ebpf: InterpProc,
    runtime_range: Option<u64>,
    /// Code objects by (address, fingerprint).
    codes: HashMap<(u64, u32), Arc<Code>>,
    counters: Arc<Counters>,
}

impl PythonProcess {
    fn code(&mut self, addr: u64, fingerprint: u32) -> Result<Arc<Code>, Error> {
        if let Some(c) = self.codes.get(&(addr, fingerprint)) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Arc::clone(c));
        }
        self.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
        let info = read_code(&self.memory, self.layout, addr)?;
        if info.first_line != fingerprint {
            // The code object was freed and its memory reused since the sample.
            return Err(Error::invalid(
                "code object",
                addr,
                format!(
                    "its first line is {} now but was {fingerprint} when sampled (the address was reused)",
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

impl InterpreterProcess for PythonProcess {
    fn ebpf_data(&self) -> Vec<u8> {
        self.ebpf.to_bytes()
    }

    fn sync_mappings(&mut self, mappings: &[MappedRange]) -> bool {
        // Still attached while the eval loop's code is mapped.
        self.runtime_range
            .is_none_or(|pc| mappings.iter().any(|m| m.start <= pc && pc < m.end))
    }

    fn symbolize(&mut self, frame: &Frame) -> Result<InterpretedFrame, InterpreterError> {
        let raw = frame.aux as u32;
        let fingerprint = (frame.aux >> 32) as u32;
        match self.code(frame.address, fingerprint) {
            Ok(code) => {
                self.counters.successes.fetch_add(1, Ordering::Relaxed);
                let offset = byte_offset(self.layout, raw);
                Ok(InterpretedFrame {
                    function: Arc::clone(&code.function),
                    file: Arc::clone(&code.file),
                    line: code
                        .info
                        .line_for_offset(offset)
                        .unwrap_or(code.info.first_line),
                    start_line: code.info.first_line,
                })
            }
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                Err(runtime_error(e))
            }
        }
    }
}
