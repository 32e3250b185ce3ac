//! Naming the frames the walker recorded, with bounded caches that check what they hold is
//! still what the sample saw: functions by (SFI, cookie), scripts by (address, source, name),
//! code objects by their header words (re-checked every [`CODE_RECHECK`]), and whole frames
//! by their recorded words.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroscope_unwind_api::{InterpretedFrame, ProcessMemory, RawFrame};

use crate::code::{CodeKind, CodeObject, OptimizedData, baseline_data, find_code, optimized_data};
use crate::ebpf::{V8Frame, sfi_cookie};
use crate::heap::{Heap, is_heap_object};
use crate::positions::{BytecodeSizes, SourcePosition, baseline_bytecode_offset, position_at};
use crate::script::{ScriptInfo, ScriptKey, read_script, script_key};
use crate::sfi::{FunctionInfo, Scripts, bytecode_array_of, read_function};
use crate::{Builtins, Error, Layout};

/// A found code object is checked again (its header read) when older than this.
pub const CODE_RECHECK: Duration = Duration::from_secs(2);
const FUNCTIONS_LIMIT: usize = 16384;
const SCRIPTS_LIMIT: usize = 1024;
const CODES_LIMIT: usize = 16384;
const FRAMES_LIMIT: usize = 1 << 16;
/// Deepest inlining followed (V8 inlines a few levels).
const MAX_INLINING_DEPTH: usize = 64;

/// What naming needs to know about the process's binary.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Its layout.
    pub layout: Arc<Layout>,
    /// Its builtins, when known.
    pub builtins: Option<Arc<Builtins>>,
    /// `kBytecodeSizes`, when found.
    pub bytecode_sizes: Option<Arc<BytecodeSizes>>,
    /// Process address of the file's virtual address 0.
    pub bias: u64,
    /// The process range of the builtins' copy, when V8 runs one.
    pub remap: Option<(u64, u64)>,
}

struct Function {
    cookie: u32,
    info: Arc<FunctionInfo>,
}

struct Code {
    object: CodeObject,
    checked: Instant,
    generation: u64,
    optimized: Option<Arc<OptimizedData>>,
    baseline: Option<Arc<(Vec<u8>, u64)>>,
}

/// What a cached frame's names depend on.
#[derive(Clone, Copy)]
enum Dependency {
    /// Nothing that can change (a builtin).
    None,
    /// A function: valid while the function cache holds this SFI with this cookie.
    Function { sfi: u64, cookie: u32 },
    /// A code object: valid while it is cached with this generation.
    Code { start: u64, generation: u64 },
}

struct Frames {
    frames: Arc<[InterpretedFrame]>,
    depends: Dependency,
}

/// Cache statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamingStats {
    /// Frames named from the frame cache.
    pub hits: u64,
    /// Frames that had to be read.
    pub misses: u64,
}

/// Names one process's recorded V8 frames.
pub struct Namer {
    binary: Binary,
    types: HashMap<u64, u16>,
    functions: HashMap<u64, Function>,
    scripts: HashMap<ScriptKey, Arc<ScriptInfo>>,
    codes: BTreeMap<u64, Code>,
    frames: HashMap<(u64, u64), Frames>,
    code_map: u64,
    generation: u64,
    /// The SharedFunctionInfo map seen (for the eBPF walker's check).
    pub sfi_map: u64,
    /// The BytecodeArray map seen.
    pub bytecode_array_map: u64,
    stats: NamingStats,
}

impl std::fmt::Debug for Namer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namer")
            .field("version", &self.binary.layout.version)
            .field("functions", &self.functions.len())
            .field("codes", &self.codes.len())
            .field("frames", &self.frames.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

struct ScriptCache<'a>(&'a mut HashMap<ScriptKey, Arc<ScriptInfo>>);

impl Scripts for ScriptCache<'_> {
    fn script(&mut self, heap: &mut Heap<'_>, obj: u64) -> Result<Arc<ScriptInfo>, Error> {
        let key = script_key(heap, obj)?;
        if let Some(s) = self.0.get(&key) {
            return Ok(Arc::clone(s));
        }
        let s = Arc::new(read_script(heap, key)?);
        if self.0.len() >= SCRIPTS_LIMIT {
            self.0.clear();
        }
        self.0.insert(key, Arc::clone(&s));
        Ok(s)
    }
}

fn frame(f: &FunctionInfo, position: Option<u32>) -> InterpretedFrame {
    let start = f.start_line();
    let line = match f.line_of(position) {
        0 => start,
        l => l,
    };
    InterpretedFrame {
        function: Arc::clone(&f.name),
        file: f.file(),
        line,
        start_line: start,
    }
}

fn named(function: String) -> InterpretedFrame {
    InterpretedFrame {
        function: Arc::from(function),
        file: Arc::from(""),
        line: 0,
        start_line: 0,
    }
}

impl Namer {
    /// A namer for a process running `binary`.
    pub fn new(binary: Binary) -> Self {
        Namer {
            binary,
            types: HashMap::new(),
            functions: HashMap::new(),
            scripts: HashMap::new(),
            codes: BTreeMap::new(),
            frames: HashMap::new(),
            code_map: 0,
            generation: 0,
            sfi_map: 0,
            bytecode_array_map: 0,
            stats: NamingStats::default(),
        }
    }

    /// The cache statistics so far.
    pub fn stats(&self) -> NamingStats {
        self.stats
    }

    /// Updates where the builtins' copy is.
    pub fn set_remap(&mut self, remap: Option<(u64, u64)>) {
        self.binary.remap = remap;
    }

    /// Names one recorded frame: appends its frames (innermost first) to `out`.
    pub fn name(
        &mut self,
        mem: &dyn ProcessMemory,
        raw: &RawFrame,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<(), Error> {
        let key = (raw.address, raw.aux);
        if let Some(f) = self.frames.get(&key) {
            let (frames, depends) = (Arc::clone(&f.frames), f.depends);
            if self.still_valid(depends) || self.recheck(mem, depends) {
                self.stats.hits += 1;
                out.extend(frames.iter().cloned());
                return Ok(());
            }
        }
        self.stats.misses += 1;
        let frame = V8Frame::decode(raw).ok_or_else(|| {
            Error::invalid(
                "recorded frame",
                raw.address,
                format!("kind {}", raw.aux & 7),
            )
        })?;
        let mut named = Vec::new();
        let depends = self.name_frame(mem, frame, &mut named)?;
        let frames: Arc<[InterpretedFrame]> = Arc::from(named);
        out.extend(frames.iter().cloned());
        if self.frames.len() >= FRAMES_LIMIT {
            self.frames.clear();
        }
        self.frames.insert(key, Frames { frames, depends });
        Ok(())
    }

    fn still_valid(&self, d: Dependency) -> bool {
        match d {
            Dependency::None => true,
            Dependency::Function { sfi, cookie } => {
                self.functions.get(&sfi).is_some_and(|f| f.cookie == cookie)
            }
            Dependency::Code { start, generation } => self
                .codes
                .get(&start)
                .is_some_and(|c| c.generation == generation && c.checked.elapsed() < CODE_RECHECK),
        }
    }

    /// A frame that depends on a code object whose check is due: the object's header read
    /// again (one 16-byte read); still the same object, the frame stays valid.
    fn recheck(&mut self, mem: &dyn ProcessMemory, d: Dependency) -> bool {
        let Dependency::Code { start, generation } = d else {
            return false;
        };
        let layout = Arc::clone(&self.binary.layout);
        let heap = Heap::new(mem, &layout, &mut self.types);
        match self.codes.get_mut(&start) {
            Some(c) if c.generation == generation && crate::code::still_there(&heap, &c.object) => {
                c.checked = Instant::now();
                true
            }
            _ => false,
        }
    }

    fn name_frame(
        &mut self,
        mem: &dyn ProcessMemory,
        recorded: V8Frame,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<Dependency, Error> {
        match recorded {
            V8Frame::Bytecode {
                sfi,
                raw_offset,
                cookie,
            } => {
                let (f, full) = self.function(mem, sfi, Some((cookie, 0xff_ffff)))?;
                let data = i64::from(self.binary.layout.bytecode_data) - 1;
                let offset = i64::from(raw_offset) - data;
                let position = position_at(
                    self.binary.layout.position_format(),
                    &f.bytecode_positions,
                    offset,
                )
                .and_then(SourcePosition::script_offset);
                tracing::trace!(function = %f.name, raw_offset, offset, ?position, "bytecode frame");
                out.push(frame_named(&f, position));
                Ok(Dependency::Function { sfi, cookie: full })
            }
            V8Frame::Compiled {
                pc,
                exact,
                sfi,
                cookie,
                builtin,
                from_stack,
            } => {
                if builtin {
                    let (f, full) = self.function(mem, sfi, Some((u32::from(cookie), 0x7f)))?;
                    out.push(named(self.builtin_name(pc, exact)));
                    if !f.builtin {
                        // A builtin without a frame of its own, on top of this function's.
                        out.push(frame(&f, None));
                    }
                    return Ok(Dependency::Function { sfi, cookie: full });
                }
                let jit = JitFrame {
                    pc,
                    exact,
                    sfi,
                    cookie,
                    from_stack,
                };
                self.name_jit(mem, jit, out)
            }
            V8Frame::Stub {
                pc,
                exact,
                frame_type,
            } => {
                if self.in_builtins(pc, exact) {
                    out.push(named(self.builtin_name(pc, exact)));
                } else {
                    let t = self.binary.layout.frame_type_name(frame_type);
                    out.push(named(match t {
                        Some("IrregexpFrame") => "RegExp".to_string(),
                        Some(t) if t.starts_with("Wasm") || t.contains("ToWasm") => {
                            "WebAssembly".to_string()
                        }
                        Some(t) => format!("V8:{}", t.trim_end_matches("Frame")),
                        None => format!("V8:frame type {frame_type}"),
                    }));
                }
                Ok(Dependency::None)
            }
        }
    }

    fn in_builtins(&self, pc: u64, exact: bool) -> bool {
        let at = if exact { pc } else { pc.wrapping_sub(1) };
        let in_file = self.binary.builtins.as_ref().is_some_and(|b| {
            let v = at.wrapping_sub(self.binary.bias);
            b.start <= v && v < b.end
        });
        in_file || self.binary.remap.is_some_and(|(s, e)| s <= at && at < e)
    }

    /// `Builtin:<name>` for a PC in the builtins (the file's, or their copy).
    fn builtin_name(&self, pc: u64, exact: bool) -> String {
        let at = if exact { pc } else { pc.wrapping_sub(1) };
        let name = self.binary.builtins.as_ref().and_then(|b| {
            let vaddr = match self.binary.remap {
                Some((s, e)) if s <= at && at < e => at - s + b.start,
                _ => at.wrapping_sub(self.binary.bias),
            };
            b.name_at(vaddr).cloned()
        });
        match name {
            Some(n) => format!("Builtin:{n}"),
            None => "Builtin:<unknown>".to_string(),
        }
    }

    /// The function of the SharedFunctionInfo `sfi` (tagged) as the process holds it now.
    pub fn function_info(
        &mut self,
        mem: &dyn ProcessMemory,
        sfi: u64,
    ) -> Result<Arc<FunctionInfo>, Error> {
        self.function(mem, sfi, None).map(|(f, _)| f)
    }

    /// The function of SFI `sfi`, checking the low bits of its cookie when the sample
    /// recorded them: (cookie, mask). Returns it with its full cookie.
    fn function(
        &mut self,
        mem: &dyn ProcessMemory,
        sfi: u64,
        recorded: Option<(u32, u32)>,
    ) -> Result<(Arc<FunctionInfo>, u32), Error> {
        if let Some(f) = self.functions.get(&sfi)
            && recorded.is_none_or(|(c, m)| f.cookie & m == c)
        {
            return Ok((Arc::clone(&f.info), f.cookie));
        }
        let layout = Arc::clone(&self.binary.layout);
        let mut heap = Heap::new(mem, &layout, &mut self.types);
        let nos = heap.field("name or scope info", sfi, layout.sfi_name_or_scope_info)?;
        let script = heap.field("script", sfi, layout.sfi_script)?;
        let cookie = sfi_cookie(nos, script);
        if let Some((c, m)) = recorded
            && cookie & m != c
        {
            return Err(Error::invalid(
                "SharedFunctionInfo",
                sfi,
                "it changed since the sample (the address was reused or the object moved)"
                    .to_string(),
            ));
        }
        let info = Arc::new(read_function(
            &mut heap,
            &mut ScriptCache(&mut self.scripts),
            sfi,
        )?);
        if self.sfi_map == 0 {
            self.sfi_map = heap.word("SFI map", sfi - 1).unwrap_or(0);
        }
        if self.functions.len() >= FUNCTIONS_LIMIT {
            self.functions.clear();
        }
        self.functions.insert(
            sfi,
            Function {
                cookie,
                info: Arc::clone(&info),
            },
        );
        Ok((info, cookie))
    }

    /// The code object holding `pc`, from the cache (checked every [`CODE_RECHECK`]) or found.
    fn code(&mut self, mem: &dyn ProcessMemory, pc: u64) -> Result<u64, Error> {
        let layout = Arc::clone(&self.binary.layout);
        if let Some((&start, c)) = self.codes.range(..=pc).next_back()
            && pc <= c.object.end
        {
            if c.checked.elapsed() < CODE_RECHECK {
                return Ok(start);
            }
            let heap = Heap::new(mem, &layout, &mut self.types);
            if crate::code::still_there(&heap, &c.object) {
                if let Some(c) = self.codes.get_mut(&start) {
                    c.checked = Instant::now();
                }
                return Ok(start);
            }
            self.codes.remove(&start);
        }
        let mut heap = Heap::new(mem, &layout, &mut self.types);
        let object = find_code(&mut heap, pc, &mut self.code_map)?;
        if self.codes.len() >= CODES_LIMIT {
            self.codes.clear();
        }
        // A new object may overlap older, dead ones.
        let overlapping: Vec<u64> = self
            .codes
            .range(..object.end)
            .filter(|(_, c)| c.object.end > object.start)
            .map(|(&s, _)| s)
            .collect();
        for s in overlapping {
            self.codes.remove(&s);
        }
        self.generation += 1;
        let start = object.start;
        self.codes.insert(
            start,
            Code {
                object,
                checked: Instant::now(),
                generation: self.generation,
                optimized: None,
                baseline: None,
            },
        );
        Ok(start)
    }

    fn name_jit(
        &mut self,
        mem: &dyn ProcessMemory,
        jit: JitFrame,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<Dependency, Error> {
        let JitFrame {
            pc,
            exact,
            sfi,
            cookie,
            from_stack,
        } = jit;
        let (f, _) = self.function(mem, sfi, Some((u32::from(cookie), 0x7f)))?;
        // A frame under a frameless builtin, at the word the stack pointer pointed at: a
        // return address only if it is in the frame's function's code.
        let unchecked = |f: &FunctionInfo, out: &mut Vec<InterpretedFrame>| {
            if !f.builtin {
                out.push(frame(f, None));
            }
            Ok(Dependency::None)
        };
        let start = match self.code(mem, pc) {
            Ok(s) => s,
            Err(e) => {
                tracing::trace!("no code object for a JIT PC: {e}");
                if from_stack {
                    return unchecked(&f, out);
                }
                out.push(frame(&f, None));
                return Ok(Dependency::None);
            }
        };
        let layout = Arc::clone(&self.binary.layout);
        let (object, generation) = match self.codes.get(&start) {
            Some(c) => (c.object.clone(), c.generation),
            None => unreachable_code(pc)?,
        };
        let depends = Dependency::Code { start, generation };
        let offset = pc - object.start;
        match object.kind {
            CodeKind::Maglev | CodeKind::Turbofan => {
                let data = match self.codes.get(&start).and_then(|c| c.optimized.clone()) {
                    Some(d) => d,
                    None => {
                        let mut heap = Heap::new(mem, &layout, &mut self.types);
                        let d = Arc::new(optimized_data(&mut heap, object.code)?);
                        if let Some(c) = self.codes.get_mut(&start) {
                            c.optimized = Some(Arc::clone(&d));
                        }
                        d
                    }
                };
                let own = data.sfi == sfi;
                if from_stack && !own {
                    return unchecked(&f, out);
                }
                // V8 looks return addresses up one byte back, inside their call.
                let at = if exact {
                    offset
                } else {
                    offset.saturating_sub(1)
                };
                self.inlined_frames(mem, &data, at as i64, out)?;
                if !own {
                    // The leaf ran the prologue or epilogue of a function this one called:
                    // that function's code, then this frame's function, position unknown.
                    out.push(frame(&f, None));
                }
                Ok(depends)
            }
            CodeKind::Baseline => {
                let data = match self.codes.get(&start).and_then(|c| c.baseline.clone()) {
                    Some(d) => d,
                    None => {
                        let mut heap = Heap::new(mem, &layout, &mut self.types);
                        let d = Arc::new(baseline_data(&mut heap, object.code)?);
                        if let Some(c) = self.codes.get_mut(&start) {
                            c.baseline = Some(Arc::clone(&d));
                        }
                        d
                    }
                };
                let (table, bytecode_array) = (&data.0, data.1);
                let mut heap = Heap::new(mem, &layout, &mut self.types);
                let own = heap
                    .field("function data", sfi, layout.sfi_function_data)
                    .ok()
                    .and_then(|d| bytecode_array_of(&mut heap, d))
                    == Some(bytecode_array);
                if self.bytecode_array_map == 0 {
                    self.bytecode_array_map =
                        heap.word("bytecode map", bytecode_array - 1).unwrap_or(0);
                }
                if from_stack && !own {
                    return unchecked(&f, out);
                }
                let position = if own {
                    self.baseline_position(mem, &f, table, bytecode_array, offset)
                } else {
                    None
                };
                out.push(frame_named(&f, position));
                Ok(depends)
            }
            CodeKind::Other(_) => {
                if from_stack {
                    return unchecked(&f, out);
                }
                out.push(frame(&f, None));
                Ok(depends)
            }
        }
    }

    /// The script position a Sparkplug PC offset runs.
    fn baseline_position(
        &mut self,
        mem: &dyn ProcessMemory,
        f: &FunctionInfo,
        table: &[u8],
        bytecode_array: u64,
        pc_offset: u64,
    ) -> Option<u32> {
        let sizes = self.binary.bytecode_sizes.clone()?;
        let layout = Arc::clone(&self.binary.layout);
        let heap = Heap::new(mem, &layout, &mut self.types);
        let len = f.bytecode_length.min(crate::heap::MAX_BYTE_ARRAY);
        let mut bytecode = vec![0u8; len];
        heap.read(
            "bytecode",
            bytecode_array - 1 + u64::from(layout.bytecode_data),
            &mut bytecode,
        )
        .ok()?;
        let offset = baseline_bytecode_offset(table, &bytecode, &sizes, pc_offset)?;
        position_at(layout.position_format(), &f.bytecode_positions, offset)
            .and_then(SourcePosition::script_offset)
    }

    /// The frames of optimized code at a code offset: each inlined function, innermost
    /// first, then the code's own function.
    fn inlined_frames(
        &mut self,
        mem: &dyn ProcessMemory,
        data: &OptimizedData,
        offset: i64,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<(), Error> {
        let format = self.binary.layout.position_format();
        let mut position =
            position_at(format, &data.positions, offset).unwrap_or(SourcePosition(0));
        for _ in 0..MAX_INLINING_DEPTH {
            let Some(id) = position.inlining_id() else {
                break;
            };
            let Some(&(caller, function_id)) = data.inlining.get(usize::from(id)) else {
                break;
            };
            let sfi = usize::try_from(function_id)
                .ok()
                .and_then(|i| data.inlined.get(i).copied())
                .unwrap_or(data.sfi);
            if is_heap_object(sfi) {
                let (f, _) = self.function(mem, sfi, None)?;
                out.push(frame_named(&f, position.script_offset()));
            }
            let next = SourcePosition(caller);
            if next.inlining_id().is_some_and(|n| n >= id) {
                break; // IDs decrease towards the outer function
            }
            position = next;
        }
        let (f, _) = self.function(mem, data.sfi, None)?;
        out.push(frame_named(&f, position.script_offset()));
        Ok(())
    }
}

/// A recorded JavaScript frame of JIT code ([`V8Frame::Compiled`] outside the builtins).
#[derive(Debug, Clone, Copy)]
struct JitFrame {
    pc: u64,
    exact: bool,
    sfi: u64,
    cookie: u8,
    from_stack: bool,
}

fn frame_named(f: &FunctionInfo, position: Option<u32>) -> InterpretedFrame {
    frame(f, position)
}

fn unreachable_code(pc: u64) -> Result<(CodeObject, u64), Error> {
    Err(Error::invalid(
        "code",
        pc,
        "the code object left the cache".to_string(),
    ))
}
