//! The Perl plug-in: detection, the eBPF walker's data, and naming of recorded frames.
//!
//! The eBPF walker (`bpf/perl.bpf.c`) does what [`walk`](crate::walk) does: it finds the
//! sampled thread's interpreter (a thread-local variable of the executable, or the value of
//! a pthread key), walks its context stack across runlevels, and queues the frames of each
//! runops call as one segment, which the native unwinder splices in where it meets
//! `Perl_runops_standard` (the ranges this plug-in registers). Each recorded frame is the
//! statement (COP) it executes, with its kind and its CV, name or source SV in the payload.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferroscope_unwind_api::{
    AttachContext, EbpfProgram, ElfFile, FileData, InterpretedFrame, Interpreter, InterpreterError,
    InterpreterPlugin, InterpreterProcess, MapWrite, MappedRange, MappingsChanged, Metric,
    OwnedRange, ProcessUpdate, RangeMode, RawFrame, SharedMemory, SymbolRange,
};

use crate::ebpf::{
    FrameKind, INTERP_GLOBALS, INTERP_POINTER, INTERP_TLS, INTERP_TSD, PROCS_MAP, PerlProc,
    is_compiling, split_payload,
};
use crate::names::Reader;
use crate::{Error, Layout, PerlVersion, layout_for};

/// The plug-in's name: the `perl` cargo feature and `perl_enabled`.
pub const NAME: &str = "perl";

/// Most named frames cached per process; the cache starts over when full.
const NAME_CACHE_LIMIT: usize = 16384;

inventory::submit! {
    InterpreterPlugin { name: NAME, create: || Box::new(Perl::default()) }
}

/// Counters shared by every attached process.
#[derive(Debug, Default)]
struct Counters {
    attached: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    without_line: AtomicU64,
}

/// Perl 5 as an [`Interpreter`].
#[derive(Debug, Default)]
pub struct Perl {
    counters: Arc<Counters>,
}

/// How a thread of a process finds its interpreter (file addresses, before the load bias).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterpreterAt {
    /// `PL_current_context`, a thread-local variable of the executable (threaded 5.36+ with
    /// libperl linked in): the interpreter is at this offset from the thread pointer.
    ThreadLocal {
        /// Offset from the thread pointer (negative: static TLS lies below it on x86-64).
        offset: i64,
    },
    /// The value of the pthread key stored in `PL_thr_key` (threaded, libperl a shared
    /// library or a Perl before 5.36).
    PthreadKey {
        /// Address of `PL_thr_key`.
        key: u64,
    },
    /// `PL_curinterp` (several interpreters, no threads).
    Pointer {
        /// Address of `PL_curinterp`.
        curinterp: u64,
    },
    /// An unthreaded Perl's globals.
    Globals {
        /// Address of `PL_curcop`.
        curcop: u64,
        /// Address of `PL_curstackinfo`.
        curstackinfo: u64,
        /// Address of `PL_op`.
        op: u64,
    },
}

/// What detection found in a Perl file (the `perl` executable, or `libperl.so`).
#[derive(Debug, Clone)]
pub struct PerlFile {
    /// The version.
    pub version: PerlVersion,
    /// Its layout.
    pub layout: &'static Layout,
    /// Built with ithreads (`PL_thr_key`): a statement's file is a C string.
    pub threaded: bool,
    /// Where a thread's interpreter is.
    pub interpreter: InterpreterAt,
    /// `PL_curinterp`: the first interpreter (the main thread's), when the file has one.
    pub curinterp: Option<u64>,
    /// `Perl_runops_standard`, and `Perl_runops_debug` when the file has it.
    pub runops: Vec<SymbolRange>,
}

fn runtime_error(e: Error) -> InterpreterError {
    InterpreterError::Runtime {
        runtime: NAME,
        source: Box::new(e),
    }
}

/// Whether a file is a shared library, from its name (`libperl.so.5.36`): its thread-local
/// variables are not at a fixed offset from the thread pointer known from the file alone.
fn is_shared_library(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("lib") || name.contains(".so")
}

fn read_u8(file: &dyn ElfFile, name: &str) -> Option<u8> {
    let s = file.exported_symbol(name)?;
    let mut b = [0u8; 1];
    file.read_vaddr(s.address, &mut b).then_some(b[0])
}

/// Detects Perl in one ELF file: a file exporting `Perl_runops_standard` and Perl's version
/// bytes (`/usr/bin/perl` with libperl linked in, `libperl.so.*`; a `perl` that links
/// libperl.so has no runops loop of its own and is not taken).
pub fn detect_file(file: &dyn ElfFile) -> Result<Option<PerlFile>, Error> {
    let Some(runops) = file.exported_symbol("Perl_runops_standard") else {
        return Ok(None);
    };
    let (Some(revision), Some(version), subversion) = (
        read_u8(file, "PL_revision"),
        read_u8(file, "PL_version"),
        read_u8(file, "PL_subversion"),
    ) else {
        tracing::debug!(
            path = file.path(),
            "Perl's runops loop found but not its version (PL_revision, PL_version)"
        );
        return Ok(None);
    };
    let version = PerlVersion::from_bytes(revision, version, subversion.unwrap_or(0));
    let layout = layout_for(version).ok_or(Error::UnsupportedVersion { version })?;
    let thr_key = file.exported_symbol("PL_thr_key");
    let curinterp = file.exported_symbol("PL_curinterp").map(|s| s.address);
    let context = file.exported_symbol("PL_current_context");
    let tls = file.tls_template();
    let interpreter = match (thr_key, context, tls) {
        (Some(_), Some(ctx), Some(tls)) if !is_shared_library(file.path()) => {
            InterpreterAt::ThreadLocal {
                offset: tls.executable_variable(ctx.address),
            }
        }
        (Some(key), _, _) => InterpreterAt::PthreadKey { key: key.address },
        (None, _, _) => match curinterp {
            Some(curinterp) => InterpreterAt::Pointer { curinterp },
            None => {
                let global = |name: &str| {
                    file.symbol(name).map(|s| s.address).ok_or_else(|| {
                        Error::invalid(
                            "ELF file",
                            0,
                            format!(
                                "Perl {version} without threads and without a `{name}` \
                                 symbol; its Perl frames cannot be found"
                            ),
                        )
                    })
                };
                InterpreterAt::Globals {
                    curcop: global("PL_curcop")?,
                    curstackinfo: global("PL_curstackinfo")?,
                    op: global("PL_op")?,
                }
            }
        },
    };
    let mut runops = vec![runops];
    runops.extend(file.exported_symbol("Perl_runops_debug"));
    Ok(Some(PerlFile {
        version,
        layout,
        threaded: thr_key.is_some(),
        interpreter,
        curinterp,
        runops,
    }))
}

/// The eBPF walker's data for a process that maps `file` at `bias`.
pub fn ebpf_proc(file: &PerlFile, bias: u64) -> PerlProc {
    let mut p = PerlProc::from_layout(file.layout);
    match file.interpreter {
        InterpreterAt::ThreadLocal { offset } => {
            p.interp_kind = INTERP_TLS;
            p.interp_at = offset as u64;
        }
        InterpreterAt::PthreadKey { key } => {
            p.interp_kind = INTERP_TSD;
            p.interp_at = key.wrapping_add(bias);
        }
        InterpreterAt::Pointer { curinterp } => {
            p.interp_kind = INTERP_POINTER;
            p.interp_at = curinterp.wrapping_add(bias);
        }
        InterpreterAt::Globals {
            curcop,
            curstackinfo,
            op,
        } => {
            p.interp_kind = INTERP_GLOBALS;
            p.curcop = curcop.wrapping_add(bias);
            p.curstackinfo = curstackinfo.wrapping_add(bias);
            p.op = op.wrapping_add(bias);
        }
    }
    p
}

/// The process ranges of the runops loops (splice ranges) for `file` mapped at `bias`.
pub fn runops_ranges(file: &PerlFile, bias: u64) -> Vec<OwnedRange> {
    file.runops
        .iter()
        .map(|r| OwnedRange {
            start: r.address.wrapping_add(bias),
            end: r.address.wrapping_add(r.size.max(1)).wrapping_add(bias),
            mode: RangeMode::Splice,
            frame_pointer: false,
        })
        .collect()
}

/// Names one frame the walker recorded: `Package::sub` (anonymous subs
/// `Package::__ANON__[file:line]`, the line of their first statement), `(eval N)`,
/// `require Module.pm`, `do file.pl`, `main` for the main program; the file and line of the
/// statement it executes.
pub fn name_frame(
    reader: &Reader<'_>,
    kind: FrameKind,
    cop: u64,
    ptr: u64,
) -> Result<InterpretedFrame, Error> {
    let mut stmt = reader.statement(cop)?;
    if stmt.file.is_empty() && kind == FrameKind::Eval {
        // PL_compiling between two compilations (constant folding ran ops of an eval being
        // compiled when it was sampled): the eval's own file name is gone.
        stmt.file = "(eval)".to_owned();
    }
    let mut start_line = 0;
    let function = match kind {
        FrameKind::Sub | FrameKind::Format => {
            let sub = reader.sub_name(ptr)?;
            start_line = sub.start_line;
            let mut name = sub.qualified();
            if sub.anonymous && sub.start_line > 0 {
                name = format!("{name}[{}:{}]", stmt.file, sub.start_line);
            }
            if kind == FrameKind::Format {
                name = format!("format {name}");
            }
            name
        }
        FrameKind::Eval => {
            if stmt.file.starts_with("(eval ") && stmt.file.ends_with(')') {
                stmt.file.clone()
            } else {
                "(eval)".to_owned()
            }
        }
        FrameKind::Require | FrameKind::DoFile => {
            // The name it was given when the SV is still that (it lives while the file runs),
            // else the file it found.
            let given = reader
                .pv(ptr)
                .ok()
                .filter(|n| !n.is_empty() && stmt.file.ends_with(n.as_str()));
            let word = if kind == FrameKind::Require {
                "require"
            } else {
                "do"
            };
            format!("{word} {}", given.as_deref().unwrap_or(&stmt.file))
        }
        FrameKind::Main => "main".to_owned(),
    };
    Ok(InterpretedFrame {
        function: Arc::from(function),
        file: Arc::from(stmt.file),
        line: stmt.line,
        start_line,
    })
}

/// A string eval whose statement could not be read: its statements are freed with its code
/// when it returns, often before the frame is named. It is still an eval: `(eval)`, in file
/// `(eval)` (Perl names an eval's file `(eval N)`), without a line. `None` for the other kinds
/// (a sub's statements live as long as its code: an unreadable one means the frame cannot be
/// trusted).
fn name_without_statement(kind: FrameKind) -> Option<InterpretedFrame> {
    (kind == FrameKind::Eval).then(|| InterpretedFrame {
        function: Arc::from("(eval)"),
        file: Arc::from("(eval)"),
        line: 0,
        start_line: 0,
    })
}

/// Names a frame being compiled (a string eval or `require`, payload with
/// [`COMPILING_BIT`](crate::ebpf::COMPILING_BIT)): its statement is `PL_compiling`, `line` the
/// line it was at when sampled. The file is `PL_compiling`'s now (`(eval N)`, the required
/// file), which a later compilation may have replaced: an eval compiled in a loop is then
/// named after a later eval's number (its line is right).
pub fn name_compiling(
    reader: &Reader<'_>,
    kind: FrameKind,
    cop: u64,
    line: u32,
) -> Result<InterpretedFrame, Error> {
    // Between two compilations PL_compiling has no file: the compilation sampled is over.
    let file = reader.statement(cop).map(|s| s.file).ok();
    let (function, file) = match (kind, file) {
        (FrameKind::Eval, Some(f)) if f.starts_with("(eval ") && f.ends_with(')') => (f.clone(), f),
        (FrameKind::Eval, _) => ("(eval)".to_owned(), "(eval)".to_owned()),
        (FrameKind::Require, Some(f)) => (format!("require {f}"), f),
        (FrameKind::DoFile, Some(f)) => (format!("do {f}"), f),
        (FrameKind::Require | FrameKind::DoFile, None) => {
            let word = if kind == FrameKind::Require {
                "require"
            } else {
                "do"
            };
            (
                format!("{word} (a file being compiled)"),
                "(unknown)".to_owned(),
            )
        }
        _ => {
            return Err(Error::invalid(
                "recorded frame",
                cop,
                format!("a {kind:?} frame cannot be being compiled"),
            ));
        }
    };
    Ok(InterpretedFrame {
        function: Arc::from(function),
        file: Arc::from(file),
        line,
        start_line: 0,
    })
}

impl Interpreter for Perl {
    fn name(&self) -> &'static str {
        NAME
    }

    fn metric_name(&self) -> &'static str {
        "Perl"
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
            .downcast_ref::<PerlFile>()
            .ok_or_else(|| InterpreterError::Runtime {
                runtime: NAME,
                source: "file data of another plug-in".into(),
            })?;
        self.counters.attached.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            pid = context.pid,
            version = %file.version,
            interpreter = ?file.interpreter,
            "Perl process attached"
        );
        Ok(Box::new(PerlProcess {
            pid: context.pid,
            memory: context.memory.clone(),
            layout: file.layout,
            threaded: file.threaded,
            ebpf: ebpf_proc(file, context.bias),
            ranges: runops_ranges(file, context.bias),
            names: HashMap::new(),
            counters: Arc::clone(&self.counters),
        }))
    }

    fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        vec![
            Metric::counter(
                "PerlProcessesAttached_total",
                c.attached.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "PerlNameCacheHits_total",
                c.cache_hits.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "PerlNameCacheMisses_total",
                c.cache_misses.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "PerlFramesWithoutLine_total",
                c.without_line.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// One Perl process.
struct PerlProcess {
    pid: u32,
    memory: SharedMemory,
    layout: &'static Layout,
    threaded: bool,
    ebpf: PerlProc,
    ranges: Vec<OwnedRange>,
    /// Named frames by (statement, payload): a statement belongs to one sub's code, and the
    /// payload holds the sub (or name) it ran in, so a reused address meets a new key.
    names: HashMap<(u64, u64), InterpretedFrame>,
    counters: Arc<Counters>,
}

impl InterpreterProcess for PerlProcess {
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
        // Still attached while the runops loop's code is mapped.
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
        let key = (frame.address, frame.aux);
        if let Some(named) = self.names.get(&key) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            out.push(named.clone());
            return Ok(());
        }
        self.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
        let (kind, ptr) = split_payload(frame.aux).ok_or_else(|| {
            runtime_error(Error::invalid(
                "recorded frame",
                frame.address,
                format!("payload {:#x} has no frame kind", frame.aux),
            ))
        })?;
        let reader = Reader::new(&*self.memory, self.layout, self.threaded);
        if is_compiling(frame.aux) {
            // PL_compiling: the same statement for every compilation. Not cached.
            let line = (ptr & u64::from(u32::MAX)) as u32;
            let named =
                name_compiling(&reader, kind, frame.address, line).map_err(runtime_error)?;
            out.push(named);
            return Ok(());
        }
        let named = match name_frame(&reader, kind, frame.address, ptr) {
            Ok(named) => named,
            Err(e) => {
                // Not cached: the address will hold other statements.
                let named = name_without_statement(kind).ok_or_else(|| runtime_error(e))?;
                self.counters.without_line.fetch_add(1, Ordering::Relaxed);
                out.push(named);
                return Ok(());
            }
        };
        if self.names.len() >= NAME_CACHE_LIMIT {
            self.names.clear();
        }
        self.names.insert(key, named.clone());
        out.push(named);
        Ok(())
    }
}
