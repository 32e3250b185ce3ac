//! The PHP plug-in: detection, the eBPF walker's data and ranges, and naming of recorded
//! frames.
//!
//! The eBPF walker (`bpf/php.bpf.c`) does what [`walk`](crate::walk) does: it queues the
//! frames from `executor_globals.current_execute_data` outwards, one segment per call of the
//! VM loop, which the native unwinder splices in where it meets `execute_ex` (the splice
//! range this plug-in owns). The opcache JIT buffer (the executable part of opcache's shared
//! memory) is owned as a takeover range: the walker moves a PC found there into
//! `execute_ex`'s body, whose stack frame JIT code runs on in the hybrid VM, and the walk goes
//! on from there. Each recorded frame is the `zend_function`'s address with a
//! [`Payload`]: the line executing, the function's fingerprint and the call's flags.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferroscope_unwind_api::{
    AttachContext, EbpfProgram, ElfFile, FileData, InterpretedFrame, Interpreter, InterpreterError,
    InterpreterPlugin, InterpreterProcess, MapWrite, MappedRange, MappingsChanged, Metric,
    OwnedRange, ProcessUpdate, RangeMode, RawFrame, SharedMemory, SymbolRange,
};

use crate::Error;
use crate::ebpf::{FINGERPRINT_MASK, PROCS_MAP, Payload, PhpProc};
use crate::elf::{frame_body_address, powered_by_version, program_headers};
use crate::function::{FunctionKind, read_function, top_level_name};
use crate::layout::{Layout, VM_KIND_HYBRID, layout};
use crate::version::{PhpVersion, returned_constant, version_from_path};

/// The plug-in's name: the `php` cargo feature, `php_enabled`, `--no-interpreter php`.
pub const NAME: &str = "php";

/// Most functions cached per process; the cache starts over when full.
const FUNCTION_CACHE_LIMIT: usize = 8192;

inventory::submit! {
    InterpreterPlugin { name: NAME, create: || Box::new(Php::default()) }
}

/// Counters shared by every attached process.
#[derive(Debug, Default)]
struct Counters {
    attached: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

/// PHP as an [`Interpreter`].
#[derive(Debug, Default)]
pub struct Php {
    counters: Arc<Counters>,
}

/// What detection found in a PHP file (the CLI, FPM or CGI executable, or `libphp*.so`).
#[derive(Debug, Clone)]
pub struct PhpFile {
    /// The version (release 0 when it came from the file name).
    pub version: PhpVersion,
    /// Its layout.
    pub layout: &'static Layout,
    /// Virtual address of `executor_globals`.
    pub executor_globals: u64,
    /// `execute_ex`, the VM loop.
    pub execute_ex: SymbolRange,
    /// Virtual address in `execute_ex`'s body where the walk resumes from JIT code; `None`
    /// when the VM is not the hybrid one or its call frame information was not found.
    pub jit_resume: Option<u64>,
}

fn runtime_error(e: Error) -> InterpreterError {
    InterpreterError::Runtime {
        runtime: NAME,
        source: Box::new(e),
    }
}

/// Reads the first bytes of a function's code.
fn code_of(file: &dyn ElfFile, name: &str) -> Option<[u8; 16]> {
    let s = file.exported_symbol(name)?;
    let mut b = [0u8; 16];
    file.read_vaddr(s.address, &mut b).then_some(b)
}

/// Detects PHP in one ELF file: a file that exports the VM loop `execute_ex` and
/// `executor_globals` (an NTS build; a ZTS build, with `executor_globals_offset` instead,
/// is an [`Error::ThreadSafeBuild`]). The version comes from `php_version_id()` (8.3+),
/// else from the `X-Powered-By: PHP/x.y.z` string in the read-only data, else from the file
/// name.
pub fn detect_file(file: &dyn ElfFile) -> Result<Option<PhpFile>, Error> {
    let Some(execute_ex) = file.exported_symbol("execute_ex") else {
        return Ok(None);
    };
    let path = file.path().to_owned();
    let Some(eg) = file.exported_symbol("executor_globals") else {
        if file.exported_symbol("executor_globals_offset").is_some()
            || file.exported_symbol("executor_globals_id").is_some()
        {
            return Err(Error::ThreadSafeBuild { path });
        }
        return Ok(None);
    };
    let segments = program_headers(file).unwrap_or_default();
    let version = code_of(file, "php_version_id")
        .and_then(|c| returned_constant(&c))
        .and_then(PhpVersion::from_id)
        .or_else(|| powered_by_version(file, &segments))
        .or_else(|| version_from_path(&path))
        .ok_or_else(|| Error::UnknownVersion { path: path.clone() })?;
    let layout = layout(version).ok_or_else(|| Error::UnsupportedVersion {
        version,
        path: path.clone(),
    })?;
    let vm_kind = code_of(file, "zend_vm_kind").and_then(|c| returned_constant(&c));
    let jit_resume = if vm_kind == Some(VM_KIND_HYBRID) {
        let at = frame_body_address(file, &segments, execute_ex);
        if at.is_none() {
            tracing::debug!(
                path,
                "no call frame information for execute_ex: PHP frames under opcache JIT code \
                 will not be unwound"
            );
        }
        at
    } else {
        tracing::debug!(
            path,
            ?vm_kind,
            "not the hybrid VM: PHP frames under opcache JIT code will not be unwound"
        );
        None
    };
    Ok(Some(PhpFile {
        version,
        layout,
        executor_globals: eg.address,
        execute_ex,
        jit_resume,
    }))
}

/// Whether a mapping's path is opcache's shared memory, whose executable part is the JIT
/// buffer: anonymous shared memory (`/dev/zero (deleted)`, the default `mmap` model), System
/// V (`/SYSV...`) or POSIX (`/dev/shm/...`) shared memory.
fn is_opcache_memory(path: &str) -> bool {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    path == "/dev/zero" || path.starts_with("/SYSV") || path.starts_with("/dev/shm/")
}

/// The JIT code ranges of a process: its executable mappings of opcache's shared memory,
/// owned as takeover ranges.
pub fn jit_ranges(mappings: &[MappedRange]) -> Vec<OwnedRange> {
    mappings
        .iter()
        .filter(|m| m.executable && is_opcache_memory(&m.path))
        .map(|m| OwnedRange {
            start: m.start,
            end: m.end,
            mode: RangeMode::Takeover,
            frame_pointer: false,
        })
        .collect()
}

impl Interpreter for Php {
    fn name(&self) -> &'static str {
        NAME
    }

    fn metric_name(&self) -> &'static str {
        "PHP"
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
            .downcast_ref::<PhpFile>()
            .ok_or_else(|| InterpreterError::Runtime {
                runtime: NAME,
                source: "file data of another plug-in".into(),
            })?;
        self.counters.attached.fetch_add(1, Ordering::Relaxed);
        let bias = context.bias;
        let eg = file.executor_globals.wrapping_add(bias);
        let ebpf = PhpProc::new(
            file.layout,
            eg.wrapping_add(u64::from(file.layout.eg_current_execute_data)),
            file.jit_resume.map_or(0, |a| a.wrapping_add(bias)),
        );
        tracing::debug!(
            pid = context.pid,
            version = %file.version,
            jit = file.jit_resume.is_some(),
            "PHP process attached"
        );
        let vm_loop = OwnedRange {
            start: file.execute_ex.address.wrapping_add(bias),
            end: file
                .execute_ex
                .address
                .wrapping_add(file.execute_ex.size.max(1))
                .wrapping_add(bias),
            mode: RangeMode::Splice,
            frame_pointer: false,
        };
        Ok(Box::new(PhpProcess {
            pid: context.pid,
            memory: context.memory.clone(),
            layout: file.layout,
            ebpf,
            vm_loop,
            jit: jit_ranges(context.mappings),
            functions: HashMap::new(),
            names: TopLevelNames::default(),
            counters: Arc::clone(&self.counters),
        }))
    }

    fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        vec![
            Metric::counter(
                "PHPProcessesAttached_total",
                c.attached.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "PHPFunctionCacheHits_total",
                c.cache_hits.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "PHPFunctionCacheMisses_total",
                c.cache_misses.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// A named function, shared by every frame that runs it.
#[derive(Debug)]
struct Named {
    kind: FunctionKind,
    /// Its display name; `None` for top-level code (named by the frame's flags).
    function: Option<Arc<str>>,
    file: Arc<str>,
    line_start: u32,
}

/// The names of top-level code, made once per process.
#[derive(Debug)]
struct TopLevelNames {
    main: Arc<str>,
    include: Arc<str>,
    eval: Arc<str>,
}

impl Default for TopLevelNames {
    fn default() -> Self {
        TopLevelNames {
            main: Arc::from("<main>"),
            include: Arc::from("<include>"),
            eval: Arc::from("<eval>"),
        }
    }
}

/// One PHP process.
struct PhpProcess {
    pid: u32,
    memory: SharedMemory,
    layout: &'static Layout,
    ebpf: PhpProc,
    vm_loop: OwnedRange,
    jit: Vec<OwnedRange>,
    /// Functions by (address, fingerprint).
    functions: HashMap<(u64, u32), Arc<Named>>,
    names: TopLevelNames,
    counters: Arc<Counters>,
}

impl PhpProcess {
    fn ranges(&self) -> Vec<OwnedRange> {
        std::iter::once(self.vm_loop)
            .chain(self.jit.iter().copied())
            .collect()
    }

    fn function(&mut self, addr: u64, fingerprint: u32) -> Result<Arc<Named>, Error> {
        if let Some(f) = self.functions.get(&(addr, fingerprint)) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Arc::clone(f));
        }
        self.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
        let info = read_function(&*self.memory, self.layout, addr)?;
        if info.fingerprint & FINGERPRINT_MASK != fingerprint {
            // The function was freed and its memory reused since the sample (a closure's
            // copy of its function lives as long as the closure).
            return Err(Error::invalid(
                "zend_function",
                addr,
                format!(
                    "its fingerprint is {:#x} now but was {fingerprint:#x} when sampled (the \
                     address was reused)",
                    info.fingerprint
                ),
            ));
        }
        if self.functions.len() >= FUNCTION_CACHE_LIMIT {
            self.functions.clear();
        }
        let named = Arc::new(Named {
            kind: info.kind,
            function: info.name.is_some().then(|| Arc::from(info.display_name(0))),
            file: Arc::from(info.file_name()),
            line_start: info.line_start,
        });
        self.functions
            .insert((addr, fingerprint), Arc::clone(&named));
        Ok(named)
    }
}

impl InterpreterProcess for PhpProcess {
    fn start(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        Ok(ProcessUpdate {
            map_writes: vec![MapWrite {
                map: PROCS_MAP,
                key: self.pid.to_ne_bytes().to_vec(),
                value: Some(self.ebpf.to_bytes()),
            }],
            ranges: Some(self.ranges()),
        })
    }

    fn mappings_changed(&mut self, mappings: &[MappedRange]) -> MappingsChanged {
        let r = self.vm_loop;
        if !mappings
            .iter()
            .any(|m| m.start <= r.start && r.start < m.end)
        {
            return MappingsChanged::Detach;
        }
        // The JIT buffer turns writable while opcache compiles into it: keep a range that
        // is still opcache's memory even when not executable at this moment.
        let mut jit = jit_ranges(mappings);
        for old in &self.jit {
            let still = mappings
                .iter()
                .any(|m| is_opcache_memory(&m.path) && m.start <= old.start && old.end <= m.end);
            if still && !jit.iter().any(|j| j.start < old.end && old.start < j.end) {
                jit.push(*old);
            }
        }
        jit.sort_by_key(|r| r.start);
        if jit == self.jit {
            return MappingsChanged::Keep(ProcessUpdate::default());
        }
        tracing::debug!(
            pid = self.pid,
            ranges = jit.len(),
            "PHP JIT code ranges changed"
        );
        self.jit = jit;
        MappingsChanged::Keep(ProcessUpdate {
            map_writes: Vec::new(),
            ranges: Some(self.ranges()),
        })
    }

    fn symbolize(
        &mut self,
        frame: &RawFrame,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<(), InterpreterError> {
        let payload = Payload::unpack(frame.aux);
        let named = self
            .function(frame.address, payload.fingerprint)
            .map_err(runtime_error)?;
        let function = match &named.function {
            Some(f) => Arc::clone(f),
            None => match top_level_name(named.kind, payload.flags) {
                "<eval>" => Arc::clone(&self.names.eval),
                "<include>" => Arc::clone(&self.names.include),
                _ => Arc::clone(&self.names.main),
            },
        };
        let line = match named.kind {
            FunctionKind::Internal => 0,
            _ if payload.line != 0 => payload.line,
            _ => named.line_start,
        };
        out.push(InterpretedFrame {
            function,
            file: Arc::clone(&named.file),
            line,
            start_line: named.line_start,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with these exported symbols and no readable bytes.
    struct Symbols(&'static str, &'static [&'static str]);

    impl ElfFile for Symbols {
        fn path(&self) -> &str {
            self.0
        }
        fn symbol(&self, name: &str) -> Option<SymbolRange> {
            self.exported_symbol(name)
        }
        fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
            self.1.contains(&name).then_some(SymbolRange {
                address: 0x1000,
                size: 0x1000,
            })
        }
        fn read_vaddr(&self, _: u64, _: &mut [u8]) -> bool {
            false
        }
    }

    #[test]
    fn thread_safe_builds_and_unknown_versions_are_refused_with_the_reason() {
        let zts = Symbols(
            "/usr/sbin/php-fpm8.3",
            &["execute_ex", "executor_globals_offset"],
        );
        let e = detect_file(&zts).unwrap_err();
        assert!(matches!(e, Error::ThreadSafeBuild { .. }), "{e}");
        assert!(e.to_string().contains("thread-safe (ZTS)"), "{e}");

        // No version in the code, the data or the name.
        let php = Symbols("/opt/bin/php", &["execute_ex", "executor_globals"]);
        assert!(matches!(
            detect_file(&php).unwrap_err(),
            Error::UnknownVersion { .. }
        ));
        // The name says 8.1: detected (from the headers' layout), without JIT support
        // (no zend_vm_kind to read).
        let named = Symbols("/usr/bin/php8.1", &["execute_ex", "executor_globals"]);
        let f = detect_file(&named).unwrap().unwrap();
        assert_eq!((f.version.major, f.version.minor), (8, 1));
        assert_eq!(f.jit_resume, None);
        // Too old or too new.
        let old = Symbols("/usr/bin/php7.2", &["execute_ex", "executor_globals"]);
        assert!(matches!(
            detect_file(&old).unwrap_err(),
            Error::UnsupportedVersion { .. }
        ));
        // Not PHP: no VM loop, or a loop without executor globals.
        assert!(
            detect_file(&Symbols("/bin/sh", &["main"]))
                .unwrap()
                .is_none()
        );
        assert!(
            detect_file(&Symbols("/usr/lib/x.so", &["execute_ex"]))
                .unwrap()
                .is_none()
        );
    }

    fn mapping(start: u64, end: u64, path: &str, executable: bool) -> MappedRange {
        MappedRange {
            start,
            end,
            path: path.into(),
            executable,
        }
    }

    #[test]
    fn the_jit_buffer_is_opcaches_executable_shared_memory() {
        let maps = [
            mapping(0x1000, 0x9000, "/dev/zero", false),
            mapping(0x9000, 0xa000, "/dev/zero", true),
            mapping(0xa000, 0xb000, "", true),
            mapping(0xb000, 0xc000, "/usr/bin/php8.2", true),
            mapping(0xc000, 0xd000, "/SYSV00000000 (deleted)", true),
        ];
        let got: Vec<(u64, u64)> = jit_ranges(&maps).iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(got, [(0x9000, 0xa000), (0xc000, 0xd000)]);
        assert!(
            jit_ranges(&maps)
                .iter()
                .all(|r| r.mode == RangeMode::Takeover && !r.frame_pointer)
        );
    }
}
