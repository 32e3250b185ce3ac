//! The CRuby plug-in: detection, the eBPF walker's data and ranges, and naming of the frames
//! it recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferroscope_unwind_api::{
    AttachContext, EbpfProgram, ElfFile, FileData, InterpretedFrame, Interpreter, InterpreterError,
    InterpreterPlugin, InterpreterProcess, MapWrite, MappedRange, MappingsChanged, Metric,
    OwnedRange, ProcessMemory, ProcessUpdate, RangeMode, RawFrame, SharedMemory,
};

use crate::code::TlsAccess;
use crate::detect::{EcSource, RubyFile};
use crate::ebpf::{
    PROCS_MAP, Payload, RB_EC_GLOBAL, RB_EC_TLS_DTV, RB_EC_TLS_STATIC, RbProc, rebuild_pointer,
};
use crate::iseq::{IseqInfo, read_iseq};
use crate::layout::Layout;
use crate::names::{self, METHOD_CFUNC};
use crate::objects::Symbols;
use crate::{Error, Result};

/// The plug-in's name: the `ruby` cargo feature and `ruby_enabled`.
pub const NAME: &str = "ruby";

/// Most named frames cached per process; the cache starts over when full.
const CACHE_LIMIT: usize = 8192;
/// Most class names cached per process.
const OWNER_LIMIT: usize = 4096;

inventory::submit! {
    InterpreterPlugin { name: NAME, create: || Box::new(Ruby::default()) }
}

/// Counters shared by every attached process.
#[derive(Debug, Default)]
struct Counters {
    attached: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

/// CRuby as an [`Interpreter`].
#[derive(Debug, Default)]
pub struct Ruby {
    counters: Arc<Counters>,
}

fn runtime_error(e: Error) -> InterpreterError {
    InterpreterError::Runtime {
        runtime: NAME,
        source: Box::new(e),
    }
}

/// The walker's data for a process that maps `file` at `bias`, reading what the dynamic
/// linker resolved (the TLS module ID and offsets in the GOT) from its memory.
pub fn ebpf_proc(file: &RubyFile, bias: u64, mem: &dyn ProcessMemory) -> Result<RbProc> {
    let l = &file.layout;
    let read = |vaddr: u64, what: &'static str| {
        let at = vaddr.wrapping_add(bias);
        mem.read_u64(at).map_err(Error::read(what, at))
    };
    let proc = match file.ec {
        EcSource::Global(v) => RbProc::new(l, RB_EC_GLOBAL, v.wrapping_add(bias), 0, 0),
        EcSource::Tls(TlsAccess::Dynamic { got, disp }) => {
            let module = read(got, "TLS module ID")?;
            let offset = read(got + 8, "TLS offset")?;
            if module == 0 || module > 4096 {
                return Err(Error::invalid(
                    "TLS module ID",
                    got.wrapping_add(bias),
                    format!("{module}"),
                ));
            }
            RbProc::new(l, RB_EC_TLS_DTV, 0, module as u32, offset as i64 + disp)
        }
        EcSource::Tls(TlsAccess::Descriptor { desc, disp }) => {
            let offset = read(desc + 8, "TLS descriptor")? as i64;
            RbProc::new(l, RB_EC_TLS_STATIC, 0, 0, offset + disp)
        }
        EcSource::Tls(TlsAccess::InitialExec { got, disp }) => {
            let offset = read(got, "TLS GOT entry")? as i64;
            RbProc::new(l, RB_EC_TLS_STATIC, 0, 0, offset + disp)
        }
        EcSource::Tls(TlsAccess::LocalExec { offset }) => {
            RbProc::new(l, RB_EC_TLS_STATIC, 0, 0, offset)
        }
    };
    Ok(proc)
}

/// The ranges the walker owns: `rb_vm_exec` (splice) and the process's anonymous executable
/// mappings (YJIT's code: takeover, unwound with the frame pointer from 3.2).
pub fn owned_ranges(file: &RubyFile, bias: u64, mappings: &[MappedRange]) -> Vec<OwnedRange> {
    let mut out = vec![OwnedRange {
        start: file.vm_exec.0.wrapping_add(bias),
        end: file.vm_exec.1.wrapping_add(bias),
        mode: RangeMode::Splice,
        frame_pointer: false,
    }];
    if file.version.at_least(3, 1) {
        let mut jit: Vec<(u64, u64)> = mappings
            .iter()
            .filter(|m| m.executable && m.path.is_empty())
            .map(|m| (m.start, m.end))
            .collect();
        jit.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in jit {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        out.extend(merged.into_iter().map(|(start, end)| OwnedRange {
            start,
            end,
            mode: RangeMode::Takeover,
            frame_pointer: file.layout.jit_cfa == 0,
        }));
    }
    out
}

impl Interpreter for Ruby {
    fn name(&self) -> &'static str {
        NAME
    }

    fn metric_name(&self) -> &'static str {
        "Ruby"
    }

    fn ebpf(&self) -> Option<EbpfProgram> {
        Some(crate::ebpf::program())
    }

    fn detect(&self, file: &dyn ElfFile) -> Result<Option<FileData>, InterpreterError> {
        let found = crate::detect::detect(file).map_err(runtime_error)?;
        if let Some(f) = &found {
            tracing::debug!(
                path = file.path(),
                version = %f.version,
                vm_exec = format_args!("{:#x}..{:#x}", f.vm_exec.0, f.vm_exec.1),
                from = f.vm_exec_from,
                ec = ?f.ec,
                symbols = ?f.symbols,
                "Ruby found"
            );
        }
        Ok(found.map(|f| Arc::new(f) as FileData))
    }

    fn attach(
        &self,
        data: &FileData,
        context: &AttachContext<'_>,
    ) -> Result<Box<dyn InterpreterProcess>, InterpreterError> {
        let file = data
            .downcast_ref::<RubyFile>()
            .ok_or_else(|| InterpreterError::Runtime {
                runtime: NAME,
                source: "file data of another plug-in".into(),
            })?;
        let ebpf = ebpf_proc(file, context.bias, &*context.memory).map_err(runtime_error)?;
        self.counters.attached.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pid = context.pid, version = %file.version, ?ebpf, "Ruby process attached");
        Ok(Box::new(RubyProcess {
            pid: context.pid,
            memory: context.memory.clone(),
            file: file.clone(),
            bias: context.bias,
            ebpf,
            ranges: owned_ranges(file, context.bias, context.mappings),
            symbols: file.symbols.map(|(g, last_op_id)| Symbols {
                global: g.wrapping_add(context.bias),
                last_op_id,
            }),
            frames: HashMap::new(),
            owners: HashMap::new(),
            counters: Arc::clone(&self.counters),
        }))
    }

    fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        vec![
            Metric::counter(
                "RubyProcessesAttached_total",
                c.attached.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "RubyFrameCacheHits_total",
                c.cache_hits.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "RubyFrameCacheMisses_total",
                c.cache_misses.load(Ordering::Relaxed),
            ),
        ]
    }

    fn symbolization_metric_names(&self) -> (String, String) {
        (
            "RubySymbolizationSuccess_total".into(),
            "RubySymbolizationFailure_total".into(),
        )
    }
}

/// A named frame, shared by every sample that has it.
#[derive(Debug)]
struct Named {
    function: Arc<str>,
    file: Arc<str>,
    /// The iseq (iseq frames), for the line of each sample.
    iseq: Option<IseqInfo>,
}

/// One Ruby process.
struct RubyProcess {
    pid: u32,
    memory: SharedMemory,
    file: RubyFile,
    bias: u64,
    ebpf: RbProc,
    ranges: Vec<OwnedRange>,
    symbols: Option<Symbols>,
    /// Named frames by (address, payload key).
    frames: HashMap<(u64, u64), Arc<Named>>,
    /// Class paths by method entry.
    owners: HashMap<u64, Option<(String, bool)>>,
    counters: Arc<Counters>,
}

impl RubyProcess {
    fn layout(&self) -> &Layout {
        &self.file.layout
    }

    fn owner_of(&mut self, me: &names::MethodEntry) -> Option<(String, bool)> {
        if let Some(o) = self.owners.get(&me.addr) {
            return o.clone();
        }
        let o = names::owner(&*self.memory, &self.file.layout, self.symbols.as_ref(), me)
            .unwrap_or_else(|e| {
                tracing::trace!(pid = self.pid, "class of a method entry not read: {e}");
                None
            });
        if self.owners.len() >= OWNER_LIMIT {
            self.owners.clear();
        }
        self.owners.insert(me.addr, o.clone());
        o
    }

    fn name_iseq(&mut self, iseq: u64, me32: u32) -> Result<Named> {
        let info = read_iseq(&*self.memory, self.layout(), iseq)?;
        let mut owner = None;
        if me32 != 0 && info.method_name.is_some() {
            for me in rebuild_pointer(me32, iseq) {
                if let Ok(Some(entry)) =
                    names::frame_method(&*self.memory, self.layout(), me, info.local_iseq)
                {
                    owner = self.owner_of(&entry);
                    break;
                }
            }
        }
        Ok(Named {
            function: Arc::from(names::full_label(&info, owner.as_ref())),
            file: Arc::from(info.path.as_str()),
            iseq: Some(info),
        })
    }

    fn name_cfunc(&mut self, cme: u64, def: u64) -> Result<Named> {
        let me = names::method_entry(&*self.memory, self.layout(), cme)?;
        if (me.def >> 3) & ((1 << 54) - 1) != def {
            return Err(Error::invalid(
                "method entry",
                cme,
                "its definition changed since the sample (the address was reused)",
            ));
        }
        if me.kind != METHOD_CFUNC {
            return Err(Error::invalid(
                "method entry",
                cme,
                format!("of type {}, not a C function", me.kind),
            ));
        }
        let symbols = self
            .symbols
            .ok_or_else(|| Error::invalid("method entry", cme, "the symbol table was not found"))?;
        let method = symbols.name(&*self.memory, self.layout(), me.original_id)?;
        let owner = self.owner_of(&me);
        Ok(Named {
            function: Arc::from(names::qualified(owner.as_ref(), &method)),
            file: Arc::from("<cfunc>"),
            iseq: None,
        })
    }

    fn named(&mut self, frame: &RawFrame) -> Result<(Arc<Named>, u32)> {
        let payload = Payload::split(frame.aux);
        let (key, pc22) = match payload {
            Payload::Iseq { pc22, me32 } => (u64::from(me32), Some(pc22)),
            Payload::Cfunc { def } => (def | 1 << 63, None),
        };
        let line_of = |n: &Named| -> Option<u32> {
            match (pc22, &n.iseq) {
                // YJIT leaves the pc of the frames its code pushed unset until a call needs
                // it: the method's first line.
                (Some(0), Some(info)) => Some(info.first_line),
                (Some(pc), Some(info)) => info.offset_of(pc).map(|off| info.line_at(off)),
                _ => Some(0),
            }
        };
        // A cached iseq is used only while the sampled pc lies in it (its identity check);
        // otherwise it is read again.
        if let Some(n) = self.frames.get(&(frame.address, key))
            && let Some(line) = line_of(n)
        {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((Arc::clone(n), line));
        }
        self.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
        let named = match payload {
            Payload::Iseq { me32, .. } => self.name_iseq(frame.address, me32)?,
            Payload::Cfunc { def } => self.name_cfunc(frame.address, def)?,
        };
        // The pc of a frame YJIT's code runs is stale (it is written before calls only):
        // when even the iseq just read does not hold it, the method's first line.
        let line =
            line_of(&named).unwrap_or_else(|| named.iseq.as_ref().map_or(0, |i| i.first_line));
        if self.frames.len() >= CACHE_LIMIT {
            self.frames.clear();
        }
        let named = Arc::new(named);
        self.frames.insert((frame.address, key), Arc::clone(&named));
        Ok((named, line))
    }
}

impl InterpreterProcess for RubyProcess {
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
        let vm = self.ranges[0].start;
        if !mappings.iter().any(|m| m.start <= vm && vm < m.end) {
            return MappingsChanged::Detach;
        }
        let ranges = owned_ranges(&self.file, self.bias, mappings);
        if ranges == self.ranges {
            return MappingsChanged::Keep(ProcessUpdate::default());
        }
        self.ranges = ranges.clone();
        MappingsChanged::Keep(ProcessUpdate {
            map_writes: Vec::new(),
            ranges: Some(ranges),
        })
    }

    fn symbolize(
        &mut self,
        frame: &RawFrame,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<(), InterpreterError> {
        let (named, line) = self.named(frame).map_err(|e| {
            tracing::trace!(
                pid = self.pid,
                address = format_args!("{:#x}", frame.address),
                aux = format_args!("{:#x}", frame.aux),
                "Ruby frame not named: {e}"
            );
            runtime_error(e)
        })?;
        let start_line = named.iseq.as_ref().map_or(0, |i| i.first_line);
        out.push(InterpretedFrame {
            function: Arc::clone(&named.function),
            file: Arc::clone(&named.file),
            line,
            start_line,
        });
        Ok(())
    }
}
