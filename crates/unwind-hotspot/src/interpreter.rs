//! The HotSpot plug-in: detection of `libjvm.so`, the eBPF walker's data and owned ranges,
//! and naming of the frames it recorded.
//!
//! Naming happens when a trace is drained, a moment after the sample, while the JVM still
//! has the method: every method, nmethod and inlining chain is read once and cached under an
//! identity check (a `Method*` with its `ConstMethod*`, an nmethod with its compile ID), so a
//! class unloaded later keeps its names and a reused address is never named after what used
//! to be there.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferroscope_unwind_api::{
    AttachContext, EbpfProgram, ElfFile, FileData, InterpretedFrame, Interpreter, InterpreterError,
    InterpreterPlugin, InterpreterProcess, MapWrite, MappedRange, MappingsChanged, Metric,
    OwnedRange, ProcessMemory, ProcessUpdate, RangeMode, RawFrame, SharedMemory,
};

use crate::codecache::{CodeCache, read_code_cache};
use crate::ebpf::{PROCS_MAP, Payload, const_method_cookie, hs_proc};
use crate::layout::{Layout, major_version_address};
use crate::method::{MethodInfo, const_method_of, read_method};
use crate::nmethod::{NmethodInfo, read_nmethod};
use crate::vmstructs::{IntrospectionSymbols, VmStructs};
use crate::{Error, ebpf};

/// The plug-in's name: the `hotspot` cargo feature, `hotspot_enabled`.
pub const NAME: &str = "hotspot";

/// Most methods cached per process; the cache starts over when full.
const METHOD_CACHE: usize = 1 << 16;
/// Most nmethods cached per process.
const NMETHOD_CACHE: usize = 1 << 14;
/// Most compiled PCs (with their inlining chains) cached per process.
const COMPILED_CACHE: usize = 1 << 16;
/// Most stub names cached per process.
const STUB_CACHE: usize = 1 << 12;
/// How often a JVM still starting up is looked at again.
const NOT_READY_RETRY: Duration = Duration::from_millis(250);
/// How often the stub routines' addresses are read again (they are set once at start-up).
const STUBS_REFRESH: Duration = Duration::from_secs(5);

inventory::submit! {
    InterpreterPlugin { name: NAME, create: || Box::new(Hotspot::default()) }
}

/// Counters shared by every attached JVM.
#[derive(Debug, Default)]
struct Counters {
    attached: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    reused: AtomicU64,
}

/// HotSpot as an [`Interpreter`].
#[derive(Debug, Default)]
pub struct Hotspot {
    counters: Arc<Counters>,
}

/// What detection found in a `libjvm.so`.
#[derive(Debug, Clone)]
pub struct HotspotFile {
    /// Its introspection tables' variables.
    pub symbols: IntrospectionSymbols,
}

fn runtime_error(e: Error) -> InterpreterError {
    InterpreterError::Runtime {
        runtime: NAME,
        source: Box::new(e),
    }
}

/// Detects HotSpot in one ELF file: a `libjvm.so` (any directory: a JDK, a JRE, a jlink
/// image, a container's root) or any file exporting `gHotSpotVMStructs`, with all of the
/// introspection tables' variables. OpenJ9's `libjvm.so` has none: it is not HotSpot.
pub fn detect_file(file: &dyn ElfFile) -> Option<HotspotFile> {
    let named = file
        .path()
        .rsplit('/')
        .next()
        .is_some_and(|n| n == "libjvm.so");
    if !named && file.exported_symbol("gHotSpotVMStructs").is_none() {
        return None;
    }
    Some(HotspotFile {
        symbols: IntrospectionSymbols::from_elf(file)?,
    })
}

/// Reads a JVM's tables and its layout: what attaching does before anything else.
pub fn attach_layout(
    mem: &dyn ProcessMemory,
    symbols: &IntrospectionSymbols,
    bias: u64,
) -> Result<Layout, Error> {
    let vm = VmStructs::read(mem, symbols, bias)?;
    let at = major_version_address(&vm).ok_or_else(|| Error::MissingStructs {
        major: 0,
        missing: vec!["Abstract_VM_Version::_vm_major_version".into()],
    })?;
    let mut b = [0u8; 4];
    mem.read_exact_at(at, &mut b)
        .map_err(Error::read("Abstract_VM_Version::_vm_major_version", at))?;
    let major = u32::from_le_bytes(b);
    Layout::new(&vm, major)
}

impl Interpreter for Hotspot {
    fn name(&self) -> &'static str {
        NAME
    }

    fn metric_name(&self) -> &'static str {
        "Hotspot"
    }

    fn ebpf(&self) -> Option<EbpfProgram> {
        Some(ebpf::program())
    }

    fn detect(&self, file: &dyn ElfFile) -> Result<Option<FileData>, InterpreterError> {
        Ok(detect_file(file).map(|f| Arc::new(f) as FileData))
    }

    fn attach(
        &self,
        data: &FileData,
        context: &AttachContext<'_>,
    ) -> Result<Box<dyn InterpreterProcess>, InterpreterError> {
        let file = data
            .downcast_ref::<HotspotFile>()
            .ok_or_else(|| InterpreterError::Runtime {
                runtime: NAME,
                source: "file data of another plug-in".into(),
            })?;
        let layout =
            attach_layout(&*context.memory, &file.symbols, context.bias).map_err(runtime_error)?;
        self.counters.attached.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            pid = context.pid,
            jdk = layout.major,
            "HotSpot JVM attached"
        );
        Ok(Box::new(HotspotProcess {
            pid: context.pid,
            memory: Arc::clone(&context.memory),
            layout: Arc::new(layout),
            code: None,
            routines: Vec::new(),
            call_stub_return: 0,
            methods: HashMap::new(),
            nmethods: HashMap::new(),
            compiled: HashMap::new(),
            stubs: HashMap::new(),
            empty: Arc::from(""),
            counters: Arc::clone(&self.counters),
        }))
    }

    fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        vec![
            Metric::counter(
                "HotspotProcessesAttached_total",
                c.attached.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "HotspotNamingCacheHits_total",
                c.hits.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "HotspotNamingCacheMisses_total",
                c.misses.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "HotspotAddressReused_total",
                c.reused.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// A named method, shared by every frame that runs it.
#[derive(Debug)]
struct Method {
    info: MethodInfo,
    function: Arc<str>,
    file: Arc<str>,
}

impl Method {
    fn frame(&self, bci: Option<u32>) -> InterpretedFrame {
        InterpretedFrame {
            function: Arc::clone(&self.function),
            file: Arc::clone(&self.file),
            line: self.info.line(bci),
            start_line: self.info.first_line,
        }
    }
}

/// One JVM.
struct HotspotProcess {
    pid: u32,
    memory: SharedMemory,
    layout: Arc<Layout>,
    /// Its code cache, once the JVM has set it up.
    code: Option<CodeCache>,
    /// Stub routines' entry points, sorted, with their names.
    routines: Vec<(u64, Arc<str>)>,
    call_stub_return: u64,
    /// By (Method*, ConstMethod* cookie).
    methods: HashMap<(u64, u32), Arc<Method>>,
    /// By (address, compile ID).
    nmethods: HashMap<(u64, u32), Arc<NmethodInfo>>,
    /// By (nmethod, compile ID, PC offset): the frames, innermost first.
    compiled: HashMap<(u64, u32, u32), Arc<[InterpretedFrame]>>,
    /// By (blob, PC offset).
    stubs: HashMap<(u64, u32), Arc<str>>,
    empty: Arc<str>,
    counters: Arc<Counters>,
}

fn bounded_insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, limit: usize, k: K, v: V) {
    if map.len() >= limit {
        map.clear();
    }
    map.insert(k, v);
}

impl HotspotProcess {
    /// Reads the code cache if not known yet; the update that tells the kernel side.
    fn load_code(&mut self) -> Result<ProcessUpdate, Error> {
        if self.code.is_some() {
            return Ok(ProcessUpdate::default());
        }
        let code = read_code_cache(&*self.memory, &self.layout)?;
        let proc = hs_proc(&self.layout, &code);
        let ranges = code
            .heaps
            .iter()
            .map(|h| OwnedRange {
                start: h.low,
                end: h.high,
                mode: RangeMode::Takeover,
                frame_pointer: false,
            })
            .collect();
        tracing::debug!(
            pid = self.pid,
            heaps = code.heaps.len(),
            interpreter = format_args!("{:#x}-{:#x}", code.interpreter.0, code.interpreter.1),
            "JVM code cache found"
        );
        self.code = Some(code);
        self.read_routines();
        Ok(ProcessUpdate {
            map_writes: vec![MapWrite {
                map: PROCS_MAP,
                key: self.pid.to_ne_bytes().to_vec(),
                value: Some(proc.to_bytes()),
            }],
            ranges: Some(ranges),
        })
    }

    /// The stub routines' entry points (`StubRoutines::_*` statics that point into the code
    /// cache), for naming PCs in the stub routines' blobs.
    fn read_routines(&mut self) {
        let Some(code) = &self.code else { return };
        let mem = &*self.memory;
        let mut routines: Vec<(u64, Arc<str>)> = self
            .layout
            .stub_routines
            .iter()
            .filter_map(|(name, at)| {
                let entry = mem.read_u64(*at).ok()?;
                (code.contains(entry) && !(code.interpreter.0..code.interpreter.1).contains(&entry))
                    .then(|| (entry, Arc::from(format!("StubRoutines::{name}"))))
            })
            .collect();
        routines.sort_unstable_by_key(|r| r.0);
        routines.dedup_by_key(|r| r.0);
        self.routines = routines;
        self.call_stub_return = self
            .layout
            .call_stub_return
            .and_then(|at| mem.read_u64(at).ok())
            .unwrap_or(0);
    }

    fn method(&mut self, addr: u64, cookie: Option<u32>) -> Result<Arc<Method>, Error> {
        let cookie = match cookie {
            Some(c) => c,
            None => const_method_cookie(const_method_of(&*self.memory, &self.layout, addr)?),
        };
        if let Some(m) = self.methods.get(&(addr, cookie)) {
            return Ok(Arc::clone(m));
        }
        let info = read_method(&*self.memory, &self.layout, addr)?;
        if const_method_cookie(info.const_method) != cookie {
            self.counters.reused.fetch_add(1, Ordering::Relaxed);
            return Err(Error::invalid(
                "Method",
                addr,
                "its ConstMethod is not the one sampled (the class was unloaded and the \
                 memory reused before the frame was named)",
            ));
        }
        let m = Arc::new(Method {
            function: Arc::from(info.qualified_name()),
            file: Arc::from(info.file.as_str()),
            info,
        });
        bounded_insert(
            &mut self.methods,
            METHOD_CACHE,
            (addr, cookie),
            Arc::clone(&m),
        );
        Ok(m)
    }

    fn nmethod(&mut self, addr: u64, compile_id: u32) -> Result<Arc<NmethodInfo>, Error> {
        // Compile IDs are unique per JVM: the key names one compilation.
        if let Some(n) = self.nmethods.get(&(addr, compile_id)) {
            return Ok(Arc::clone(n));
        }
        let info = read_nmethod(&*self.memory, &self.layout, addr)?;
        if info.compile_id & ebpf::COMPILE_ID_MASK != compile_id {
            self.counters.reused.fetch_add(1, Ordering::Relaxed);
            return Err(Error::invalid(
                "nmethod",
                addr,
                format!(
                    "its compile ID is {} now but was {compile_id} when sampled (it was freed \
                     and its memory reused before the frame was named)",
                    info.compile_id
                ),
            ));
        }
        let n = Arc::new(info);
        bounded_insert(
            &mut self.nmethods,
            NMETHOD_CACHE,
            (addr, compile_id),
            Arc::clone(&n),
        );
        Ok(n)
    }

    fn compiled_frames(
        &mut self,
        addr: u64,
        pc_offset: u32,
        compile_id: u32,
    ) -> Result<Arc<[InterpretedFrame]>, Error> {
        let nm = self.nmethod(addr, compile_id)?;
        let scopes = nm.frames_at(&*self.memory, &self.layout, u64::from(pc_offset))?;
        let mut frames = Vec::with_capacity(scopes.len());
        for (method, bci) in scopes {
            frames.push(self.method(method, None)?.frame(bci));
        }
        Ok(Arc::from(frames))
    }

    fn stub_name(&mut self, blob: u64, pc_offset: u32) -> Result<Arc<str>, Error> {
        let Some(code) = &self.code else {
            return Err(Error::NotReady("the code cache"));
        };
        if blob == code.interpreter.0 {
            return Ok(Arc::from("Interpreter"));
        }
        let pc = blob.wrapping_add(u64::from(pc_offset));
        if pc == self.call_stub_return {
            return Ok(Arc::from("StubRoutines::call_stub"));
        }
        let at = blob.wrapping_add(self.layout.blob_name);
        let name_ptr = self
            .memory
            .read_u64(at)
            .map_err(Error::read("CodeBlob::_name", at))?;
        let name = self
            .memory
            .read_c_string(name_ptr, 128)
            .map_err(Error::read("CodeBlob name", name_ptr))?;
        let size_at = blob.wrapping_add(self.layout.blob_size);
        let mut b = [0u8; 4];
        let size = match self.memory.read_exact_at(size_at, &mut b) {
            Ok(()) => u64::from(u32::from_le_bytes(b)),
            Err(_) => 0,
        };
        if name.starts_with("StubRoutines") {
            let i = self.routines.partition_point(|r| r.0 <= pc);
            if let Some((start, routine)) = i.checked_sub(1).map(|i| &self.routines[i])
                && *start >= blob
                && *start < blob.wrapping_add(size.max(1))
            {
                return Ok(Arc::clone(routine));
            }
        }
        Ok(match name.as_str() {
            "vtable chunks" => Arc::from("vtable stub"),
            "" => Arc::from("[stub]"),
            other => Arc::from(other),
        })
    }
}

impl InterpreterProcess for HotspotProcess {
    fn start(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        match self.load_code() {
            Ok(update) => Ok(update),
            Err(Error::NotReady(what)) => {
                tracing::debug!(pid = self.pid, "JVM not ready: {what}");
                Ok(ProcessUpdate::default())
            }
            Err(e) => Err(runtime_error(e)),
        }
    }

    fn mappings_changed(&mut self, _mappings: &[MappedRange]) -> MappingsChanged {
        // libjvm stays mapped for the process's life, and the code heaps are reserved once.
        MappingsChanged::Keep(ProcessUpdate::default())
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(if self.code.is_some() {
            STUBS_REFRESH
        } else {
            NOT_READY_RETRY
        })
    }

    fn refresh(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        if self.code.is_some() {
            self.read_routines();
            return Ok(ProcessUpdate::default());
        }
        match self.load_code() {
            Ok(update) => Ok(update),
            Err(Error::NotReady(_)) => Ok(ProcessUpdate::default()),
            Err(e) => Err(runtime_error(e)),
        }
    }

    fn symbolize(
        &mut self,
        frame: &RawFrame,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<(), InterpreterError> {
        let payload = Payload::decode(frame.aux).ok_or_else(|| {
            runtime_error(Error::invalid(
                "recorded frame",
                frame.address,
                "unknown frame type",
            ))
        })?;
        match payload {
            Payload::Interpreted { bci, cookie } => {
                let hit = self.methods.contains_key(&(frame.address, cookie));
                let m = self
                    .method(frame.address, Some(cookie))
                    .map_err(runtime_error);
                self.count(hit);
                out.push(m?.frame(bci));
            }
            Payload::Compiled {
                pc_offset,
                compile_id,
                ..
            } => {
                let key = (frame.address, compile_id, pc_offset);
                if let Some(frames) = self.compiled.get(&key) {
                    out.extend(frames.iter().cloned());
                    self.count(true);
                    return Ok(());
                }
                self.count(false);
                let frames = self
                    .compiled_frames(frame.address, pc_offset, compile_id)
                    .map_err(runtime_error)?;
                out.extend(frames.iter().cloned());
                bounded_insert(&mut self.compiled, COMPILED_CACHE, key, frames);
            }
            Payload::Stub { pc_offset } => {
                let key = (frame.address, pc_offset);
                let name = match self.stubs.get(&key) {
                    Some(n) => {
                        self.count(true);
                        Arc::clone(n)
                    }
                    None => {
                        self.count(false);
                        let n = self
                            .stub_name(frame.address, pc_offset)
                            .map_err(runtime_error)?;
                        bounded_insert(&mut self.stubs, STUB_CACHE, key, Arc::clone(&n));
                        n
                    }
                };
                out.push(InterpretedFrame {
                    function: name,
                    file: Arc::clone(&self.empty),
                    line: 0,
                    start_line: 0,
                });
            }
        }
        Ok(())
    }
}

impl HotspotProcess {
    fn count(&self, hit: bool) {
        let c = if hit {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
