//! One CoreCLR process: its code ranges (owned as takeover ranges, and the walker's range
//! table), refreshed while it runs, and the naming of the frames the walker recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferroscope_unwind_api::{
    InterpretedFrame, InterpreterError, InterpreterProcess, MapWrite, MappedRange, MappingsChanged,
    OwnedRange, ProcessUpdate, RangeMode, RawFrame, SharedMemory,
};

use crate::Error;
use crate::debuginfo::{self, Bound};
use crate::ebpf::{DnRange, DotnetFrame, MAX_RANGES, PROCS_MAP, RANGE_JIT, RANGE_R2R, RANGE_STUB};
use crate::interpreter::{Counters, DotnetFile, NAME};
use crate::layout::Layout;
use crate::method::{self, Classification};
use crate::modules::{Mappings, Module, Modules, SharedModules, runtime_function_table};
use crate::names::NameStyle;
use crate::ranges::{CodeKind, CodeRange, code_ranges};

/// How often the code ranges are read again.
pub const REFRESH: Duration = Duration::from_millis(200);
/// Most methods named per process before the cache starts over.
const METHOD_CACHE_LIMIT: usize = 1 << 16;

/// A named method (one compiled version of it, or one ReadyToRun function).
#[derive(Debug)]
struct Method {
    function: Arc<str>,
    module: Option<Arc<Module>>,
    rid: u32,
    bounds: Vec<Bound>,
}

/// One .NET process.
pub struct DotnetProcess {
    pid: u32,
    memory: SharedMemory,
    layout: Layout,
    /// The addresses `g_dacTable` gives: the code range global and the stub managers.
    dac_table: u64,
    bias: u64,
    coreclr_start: u64,
    style: NameStyle,
    ranges: Vec<CodeRange>,
    /// The RangeSectionMap's address as the contract descriptor gives it (.NET 9+).
    code_range_map: Option<u64>,
    /// R2R image base → (its RUNTIME_FUNCTION table, count).
    r2r_tables: HashMap<u64, (u64, u32)>,
    generation: u32,
    modules: Modules,
    /// (code header, code start bits) → method.
    jit: HashMap<(u64, u32), Arc<Method>>,
    /// (image base, function index) → method.
    r2r: HashMap<(u64, u32), Arc<Method>>,
    counters: Arc<Counters>,
}

impl DotnetProcess {
    /// A process that maps `file` at `bias`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        pid: u32,
        memory: SharedMemory,
        file: &DotnetFile,
        bias: u64,
        mappings: &[MappedRange],
        shared: Arc<SharedModules>,
        style: NameStyle,
        counters: Arc<Counters>,
    ) -> DotnetProcess {
        let mut layout = file.layout.clone();
        let mut code_range_map = None;
        if let Some(at) = file.contract {
            // The runtime describes itself: its descriptor's offsets replace the defaults.
            match crate::contract::read(&*memory, at.wrapping_add(bias)) {
                Ok(d) => code_range_map = crate::contract::apply(&d, &mut layout),
                Err(e) => {
                    tracing::debug!(pid, "the runtime's contract descriptor is not used: {e}")
                }
            }
        }
        DotnetProcess {
            pid,
            memory,
            layout,
            code_range_map,
            dac_table: file.dac_table.wrapping_add(bias),
            bias,
            coreclr_start: bias,
            style,
            ranges: Vec::new(),
            r2r_tables: HashMap::new(),
            generation: 0,
            modules: Modules::new(shared, Mappings::new(pid, mappings)),
            jit: HashMap::new(),
            r2r: HashMap::new(),
            counters,
        }
    }

    /// The address of the global in `g_dacTable` slot `slot` (0: not set yet).
    fn dac_slot(&self, slot: u32) -> Result<u64, Error> {
        let mem = &*self.memory;
        if self.layout.dac_rvas {
            let at = self.dac_table + 4 * u64::from(slot);
            let mut b = [0u8; 4];
            mem.read_exact_at(at, &mut b)
                .map_err(Error::read("g_dacTable", at))?;
            let rva = u32::from_le_bytes(b);
            Ok(if rva == 0 {
                0
            } else {
                self.bias + u64::from(rva)
            })
        } else {
            let at = self.dac_table + 8 * u64::from(slot);
            mem.read_u64(at).map_err(Error::read("g_dacTable", at))
        }
    }

    /// The code ranges now (empty until the runtime has set up its tables).
    fn read_ranges(&self) -> Result<Vec<CodeRange>, Error> {
        let global = match self.code_range_map {
            Some(at) => at,
            None => self.dac_slot(self.layout.slot_code_ranges)?,
        };
        if global == 0 {
            return Ok(Vec::new());
        }
        let mut managers = Vec::new();
        for &(slot, kind) in self.layout.slot_stub_managers {
            let g = self.dac_slot(slot)?;
            if g != 0
                && let Ok(m) = self.memory.read_u64(g)
            {
                managers.push((m, kind));
            }
        }
        code_ranges(&*self.memory, &self.layout, global, &managers)
    }

    /// The walker's range table and the owned ranges for `ranges`.
    fn table(&mut self, ranges: &[CodeRange]) -> (Vec<DnRange>, Vec<OwnedRange>) {
        let mut table: Vec<DnRange> = Vec::new();
        for r in ranges {
            let d = match r.kind {
                CodeKind::Jit {
                    map_base,
                    v2,
                    hdr_map,
                    unwind_base,
                } => DnRange {
                    start: r.start,
                    end: r.end,
                    base: map_base,
                    table: hdr_map,
                    unwind_base,
                    kind: RANGE_JIT,
                    count: if v2 { 2 } else { 1 },
                },
                CodeKind::ReadyToRun { .. } => {
                    let t = match self.r2r_tables.get(&r.start) {
                        Some(&t) => t,
                        None => match runtime_function_table(&*self.memory, r.start) {
                            Ok(t) => {
                                self.r2r_tables.insert(r.start, t);
                                t
                            }
                            Err(e) => {
                                tracing::debug!(
                                    pid = self.pid,
                                    start = r.start,
                                    "a ReadyToRun image without functions: {e}"
                                );
                                continue;
                            }
                        },
                    };
                    DnRange {
                        start: r.start,
                        end: r.end,
                        base: r.start,
                        table: t.0,
                        unwind_base: r.start,
                        kind: RANGE_R2R,
                        count: t.1,
                    }
                }
                CodeKind::Stub { kind } => DnRange {
                    start: r.start,
                    end: r.end,
                    base: r.start,
                    table: 0,
                    unwind_base: 0,
                    kind: RANGE_STUB,
                    count: u32::from(kind),
                },
            };
            // Adjacent stub blocks of one kind share an entry.
            match table.last_mut() {
                Some(last)
                    if last.kind == RANGE_STUB
                        && d.kind == RANGE_STUB
                        && last.count == d.count
                        && last.end == d.start =>
                {
                    last.end = d.end;
                }
                _ => table.push(d),
            }
        }
        if table.len() > MAX_RANGES {
            // Keep code heaps and images; drop the stub blocks that do not fit.
            let mut keep: Vec<DnRange> = table
                .iter()
                .filter(|r| r.kind != RANGE_STUB)
                .copied()
                .collect();
            let room = MAX_RANGES.saturating_sub(keep.len());
            keep.extend(table.iter().filter(|r| r.kind == RANGE_STUB).take(room));
            keep.truncate(MAX_RANGES);
            keep.sort_by_key(|r| r.start);
            tracing::debug!(
                pid = self.pid,
                ranges = table.len(),
                "more .NET code ranges than the walker's table holds; stub blocks left out"
            );
            table = keep;
        }
        let owned = table
            .iter()
            .map(|r| OwnedRange {
                start: r.start,
                end: r.end,
                mode: RangeMode::Takeover,
                frame_pointer: true,
            })
            .collect();
        (table, owned)
    }

    /// The update that makes the kernel side match the code ranges now (empty when nothing
    /// changed).
    fn update(&mut self, force: bool) -> Result<ProcessUpdate, Error> {
        let ranges = self.read_ranges()?;
        if ranges == self.ranges && !force {
            return Ok(ProcessUpdate::default());
        }
        // A new generation: the walker's cached rules (and "not managed" answers) of the
        // old ranges are not used any more.
        self.generation = self.generation.wrapping_add(1);
        let removed = self.ranges.iter().any(|r| !ranges.contains(r));
        if removed {
            let still: Vec<u64> = ranges.iter().map(|r| r.start).collect();
            self.r2r_tables.retain(|base, _| still.contains(base));
            self.modules.retain_images(|base| still.contains(&base));
        }
        let (table, owned) = self.table(&ranges);
        self.ranges = ranges;
        Ok(ProcessUpdate {
            map_writes: vec![MapWrite {
                map: PROCS_MAP,
                key: self.pid.to_ne_bytes().to_vec(),
                value: Some(crate::ebpf::dn_proc_bytes(&table, self.generation)),
            }],
            ranges: Some(owned),
        })
    }

    /// Names a JIT method from its code header.
    fn jit_method(&mut self, code_header: u64) -> Result<Method, Error> {
        let mem = &*self.memory;
        let l = &self.layout;
        let ch = method::code_header(mem, l, code_header)?;
        let md = method::method_desc(mem, l, ch.method_desc)?;
        let bounds = if ch.debug_info != 0 {
            read_bounds(mem, l, ch.debug_info).unwrap_or_default()
        } else {
            Vec::new()
        };
        if md.classification == Classification::Dynamic {
            let name = dynamic_name(mem, l, md.address);
            return Ok(Method {
                function: Arc::from(name),
                module: None,
                rid: 0,
                bounds,
            });
        }
        let mt = method::method_table(mem, l, md.method_table)?;
        let module = self.modules.module(mem, l, mt.module)?;
        let (type_args, method_args) = if self.style == NameStyle::Full {
            self.type_arguments(&module, &md, &mt)
        } else {
            (Vec::new(), Vec::new())
        };
        let function = module
            .names
            .qualified(md.rid, self.style, &type_args, &method_args)
            .ok_or_else(|| Error::format("metadata", "the method's row or its type is missing"))?;
        Ok(Method {
            function: Arc::from(function),
            module: Some(module),
            rid: md.rid,
            bounds,
        })
    }

    /// The names of the type arguments of a method's type and of the method itself.
    fn type_arguments(
        &mut self,
        module: &Module,
        md: &method::MethodDesc,
        mt: &method::MethodTable,
    ) -> (Vec<String>, Vec<String>) {
        let mem = Arc::clone(&self.memory);
        let l = self.layout.clone();
        let owner = module.names.owner_of(md.rid).unwrap_or(0);
        let type_args = if mt.is_generic_instantiation() {
            let n = module.names.type_arity(owner);
            let handles =
                method::type_args(&*mem, mt, dictionaries(&*mem, mt), n).unwrap_or_default();
            handles.iter().map(|&h| self.type_name(h, 0)).collect()
        } else {
            Vec::new()
        };
        let method_args = if md.classification == Classification::Instantiated {
            method::method_type_args(&*mem, &l, md.address)
                .unwrap_or_default()
                .iter()
                .map(|&h| self.type_name(h, 0))
                .collect()
        } else {
            Vec::new()
        };
        (type_args, method_args)
    }

    /// The name of the type of `MethodTable` `mt` (with its arguments when generic).
    fn type_name(&mut self, mt: u64, depth: u32) -> String {
        let mem = Arc::clone(&self.memory);
        let l = self.layout.clone();
        let named = (|| -> Option<String> {
            let t = method::method_table(&*mem, &l, mt).ok()?;
            if t.is_array() {
                return Some("[]".to_owned());
            }
            let module = self.modules.module(&*mem, &l, t.module).ok()?;
            let mut name = module.names.type_name(t.type_rid)?;
            if t.is_generic_instantiation() && depth < 4 {
                let n = module.names.type_arity(t.type_rid);
                let handles = method::type_args(&*mem, &t, dictionaries(&*mem, &t), n).ok()?;
                let args: Vec<String> = handles
                    .iter()
                    .map(|&h| self.type_name(h, depth + 1))
                    .collect();
                name.push('<');
                name.push_str(&args.join(","));
                name.push('>');
            }
            Some(name)
        })();
        named.unwrap_or_else(|| "?".to_owned())
    }

    /// Names a ReadyToRun function.
    fn r2r_method(&mut self, image: u64, rva: u32) -> Result<(u32, Arc<Method>), Error> {
        let module = self
            .ranges
            .iter()
            .find_map(|r| match r.kind {
                CodeKind::ReadyToRun { module } if r.start == image => Some(module),
                _ => None,
            })
            .ok_or_else(|| {
                Error::format("ReadyToRun frame", "its image is no longer a code range")
            })?;
        let mem = Arc::clone(&self.memory);
        let img = self.modules.image(&*mem, &self.layout, image, module)?;
        let index = crate::r2r::function_at(&img.functions, rva)
            .ok_or_else(|| Error::format("ReadyToRun frame", "no function holds its address"))?
            as u32;
        let key = (image, index);
        if let Some(m) = self.r2r.get(&key) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((index, Arc::clone(m)));
        }
        self.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
        let entry = crate::r2r::method_of(&img.methods, index)
            .ok_or_else(|| Error::format("ReadyToRun frame", "no method owns its function"))?;
        let function = img
            .module
            .names
            .qualified(entry.method, self.style.min_plain_for_r2r(), &[], &[])
            .ok_or_else(|| Error::format("metadata", "the method's row or its type is missing"))?;
        let m = Arc::new(Method {
            function: Arc::from(function),
            module: Some(Arc::clone(&img.module)),
            rid: entry.method,
            bounds: Vec::new(),
        });
        if self.r2r.len() >= METHOD_CACHE_LIMIT {
            self.r2r.clear();
        }
        self.r2r.insert(key, Arc::clone(&m));
        Ok((index, m))
    }

    fn push(&self, m: &Method, il: Option<u32>, out: &mut Vec<InterpretedFrame>) {
        let (file, line, start_line) = match (&m.module, il) {
            (Some(module), il) => match (&module.pdb, il) {
                (Some(pdb), Some(il)) => match pdb.line(m.rid, il) {
                    Some(l) => (Arc::from(l.file.as_str()), l.line, l.start_line),
                    None => (Arc::clone(&module.file), il, 0),
                },
                // No PDB: the IL offset where a line would be.
                _ => (Arc::clone(&module.file), il.unwrap_or(0), 0),
            },
            (None, il) => (Arc::from(""), il.unwrap_or(0), 0),
        };
        out.push(InterpretedFrame {
            function: Arc::clone(&m.function),
            file,
            line,
            start_line,
        });
    }
}

impl NameStyle {
    /// ReadyToRun frames carry no instantiation the runtime describes: their arguments are
    /// the parameters' names at most.
    fn min_plain_for_r2r(self) -> NameStyle {
        match self {
            NameStyle::Full => NameStyle::Parameters,
            s => s,
        }
    }
}

/// How many generic dictionaries a MethodTable's `m_pPerInstInfo` holds (the
/// `GenericsDictInfo` right before it: `m_wNumDicts`, `m_wNumTyArgs`).
fn dictionaries(mem: &dyn ferroscope_unwind_api::ProcessMemory, mt: &method::MethodTable) -> usize {
    if mt.per_inst_info == 0 {
        return 0;
    }
    let mut b = [0u8; 2];
    match mem.read_exact_at(mt.per_inst_info.wrapping_sub(4), &mut b) {
        Ok(()) => usize::from(u16::from_le_bytes(b)).clamp(1, 64),
        Err(_) => 1,
    }
}

/// The bounds of a method's debug info.
fn read_bounds(
    mem: &dyn ferroscope_unwind_api::ProcessMemory,
    l: &Layout,
    at: u64,
) -> Result<Vec<Bound>, Error> {
    let mut head = vec![0u8; 512];
    mem.read_exact_at(at, &mut head)
        .or_else(|_| mem.read_exact_at(at, &mut head[..64]))
        .map_err(Error::read("debug info", at))?;
    let (off, size) = debuginfo::bounds_location(
        &head,
        l.debug_flags_byte,
        (l.patchpoint_size, l.patchpoint_locals),
    )?;
    let mut blob = vec![0u8; size];
    mem.read_exact_at(at + off as u64, &mut blob)
        .map_err(Error::read("debug info bounds", at))?;
    debuginfo::decode_bounds(&blob)
}

/// A dynamic method's name: `DynamicMethodDesc::m_pszMethodName` (IL stubs are named
/// `IL_STUB_*`).
fn dynamic_name(mem: &dyn ferroscope_unwind_api::ProcessMemory, l: &Layout, md: u64) -> String {
    let name = mem
        .read_u64(md.wrapping_add(u64::from(l.dmd_name)))
        .ok()
        .filter(|&p| p != 0)
        .and_then(|p| mem.read_c_string(p, 256).ok())
        .filter(|n| !n.is_empty() && n.chars().all(|c| !c.is_control()));
    match name {
        Some(n) if n.starts_with("IL_STUB") => format!("[stub: {n}]"),
        Some(n) => format!("[dynamic method {n}]"),
        None => "[stub: dynamic]".to_owned(),
    }
}

/// The name of a stub kind (the runtime's `StubCodeBlockKind`, and the stub managers').
pub fn stub_name(kind: u8) -> String {
    let k = match kind {
        1 => "jump",
        3 => "dynamic helper",
        4 => "precode",
        5 => "fixup precode",
        6 => "virtual dispatch",
        7 => "virtual resolve",
        8 => "virtual lookup",
        9 => "virtual vtable",
        crate::layout::STUB_LINK => "stub link",
        crate::layout::STUB_THUNK_HEAP => "thunk",
        _ => return format!("[stub: kind {kind}]"),
    };
    format!("[stub: {k}]")
}

fn runtime_error(e: Error) -> InterpreterError {
    InterpreterError::Runtime {
        runtime: NAME,
        source: Box::new(e),
    }
}

impl InterpreterProcess for DotnetProcess {
    fn start(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        self.update(true).map_err(runtime_error)
    }

    fn mappings_changed(&mut self, mappings: &[MappedRange]) -> MappingsChanged {
        let mapped = mappings
            .iter()
            .any(|m| m.start <= self.coreclr_start && self.coreclr_start < m.end)
            || mappings.iter().any(|m| m.path.ends_with("/libcoreclr.so"));
        if !mapped {
            return MappingsChanged::Detach;
        }
        self.modules.mappings.update(mappings);
        match self.update(false) {
            Ok(u) => MappingsChanged::Keep(u),
            Err(e) => {
                tracing::debug!(pid = self.pid, "cannot read the .NET code ranges: {e}");
                MappingsChanged::Keep(ProcessUpdate::default())
            }
        }
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(REFRESH)
    }

    fn refresh(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        self.update(false).map_err(runtime_error)
    }

    fn symbolize(
        &mut self,
        frame: &RawFrame,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<(), InterpreterError> {
        let decoded = DotnetFrame::decode(frame.address, frame.aux).ok_or_else(|| {
            runtime_error(Error::format(
                "frame",
                "a frame kind the walker does not record",
            ))
        })?;
        match decoded {
            DotnetFrame::Jit {
                code_header,
                start_bits,
                offset,
                leaf,
            } => {
                let key = (code_header, start_bits);
                let m = match self.jit.get(&key) {
                    Some(m) => {
                        self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                        Arc::clone(m)
                    }
                    None => {
                        self.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
                        let m = Arc::new(self.jit_method(code_header).map_err(runtime_error)?);
                        if self.jit.len() >= METHOD_CACHE_LIMIT {
                            self.jit.clear();
                        }
                        self.jit.insert(key, Arc::clone(&m));
                        m
                    }
                };
                let il = if m.bounds.is_empty() {
                    None
                } else {
                    debuginfo::il_offset(&m.bounds, offset, leaf)
                };
                self.push(&m, il, out);
            }
            DotnetFrame::ReadyToRun { image, rva, .. } => {
                let (_, m) = self.r2r_method(image, rva).map_err(runtime_error)?;
                self.counters.r2r_named.fetch_add(1, Ordering::Relaxed);
                self.push(&m, None, out);
            }
            DotnetFrame::Stub { kind, .. } => {
                out.push(InterpretedFrame {
                    function: Arc::from(stub_name(kind)),
                    file: Arc::from(""),
                    line: 0,
                    start_line: 0,
                });
            }
        }
        Ok(())
    }
}
