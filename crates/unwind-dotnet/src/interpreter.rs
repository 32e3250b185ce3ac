//! The .NET plug-in: detection of CoreCLR, per-process attach, and its metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferroscope_unwind_api::{
    AttachContext, EbpfProgram, ElfFile, FileData, Interpreter, InterpreterError,
    InterpreterPlugin, InterpreterProcess, Metric, NameDetail,
};

use crate::Error;
use crate::layout::{Layout, layout};
use crate::modules::SharedModules;
use crate::names::NameStyle;
use crate::process::DotnetProcess;
use crate::version::{DotnetVersion, version_from_path};

/// The plug-in's name: the `dotnet` cargo feature, `dotnet_enabled`,
/// `--no-interpreter dotnet`.
pub const NAME: &str = "dotnet";

inventory::submit! {
    InterpreterPlugin { name: NAME, create: || Box::new(Dotnet::default()) }
}

/// Counters shared by every attached process.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub attached: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub r2r_named: AtomicU64,
}

/// CoreCLR as an [`Interpreter`].
#[derive(Debug, Default)]
pub struct Dotnet {
    counters: Arc<Counters>,
    modules: Arc<SharedModules>,
    style: NameStyle,
}

impl Dotnet {
    /// The plug-in naming generic methods as `style` says.
    pub fn with_style(style: NameStyle) -> Dotnet {
        Dotnet {
            style,
            ..Dotnet::default()
        }
    }
}

/// What detection found in a `libcoreclr.so`.
#[derive(Debug, Clone)]
pub struct DotnetFile {
    /// The runtime's version.
    pub version: DotnetVersion,
    /// Its offsets.
    pub layout: Layout,
    /// The virtual address of `g_dacTable`.
    pub dac_table: u64,
    /// The virtual address of `DotNetRuntimeContractDescriptor` (.NET 9+).
    pub contract: Option<u64>,
}

/// Detects CoreCLR: a `libcoreclr.so` in a version directory, exporting `g_dacTable`.
pub fn detect_file(file: &dyn ElfFile) -> Result<Option<DotnetFile>, Error> {
    let path = file.path();
    if !path.ends_with("/libcoreclr.so") && !path.ends_with("/libcoreclr.so (deleted)") {
        return Ok(None);
    }
    let Some(version) = version_from_path(path) else {
        tracing::debug!(
            path,
            "libcoreclr.so outside a version directory: its version is unknown"
        );
        return Ok(None);
    };
    let layout = layout(version.major).ok_or(Error::UnsupportedVersion { version })?;
    let dac = file
        .exported_symbol("g_dacTable")
        .or_else(|| file.symbol("g_dacTable"))
        .ok_or_else(|| {
            Error::format(
                "libcoreclr.so",
                "no g_dacTable symbol, so its code ranges cannot be found",
            )
        })?;
    let contract = file
        .exported_symbol("DotNetRuntimeContractDescriptor")
        .map(|s| s.address);
    Ok(Some(DotnetFile {
        version,
        layout,
        dac_table: dac.address,
        contract,
    }))
}

impl Interpreter for Dotnet {
    fn name(&self) -> &'static str {
        NAME
    }

    fn metric_name(&self) -> &'static str {
        "Dotnet"
    }

    fn ebpf(&self) -> Option<EbpfProgram> {
        Some(crate::ebpf::program())
    }

    fn detect(&self, file: &dyn ElfFile) -> Result<Option<FileData>, InterpreterError> {
        detect_file(file)
            .map(|f| f.map(|f| Arc::new(f) as FileData))
            .map_err(|e| InterpreterError::Runtime {
                runtime: NAME,
                source: Box::new(e),
            })
    }

    fn attach(
        &self,
        data: &FileData,
        context: &AttachContext<'_>,
    ) -> Result<Box<dyn InterpreterProcess>, InterpreterError> {
        let file = data
            .downcast_ref::<DotnetFile>()
            .ok_or_else(|| InterpreterError::Runtime {
                runtime: NAME,
                source: "file data of another plug-in".into(),
            })?;
        self.counters.attached.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pid = context.pid, version = %file.version, ".NET process attached");
        Ok(Box::new(DotnetProcess::new(
            context.pid,
            context.memory.clone(),
            file,
            context.bias,
            context.mappings,
            Arc::clone(&self.modules),
            self.style,
            Arc::clone(&self.counters),
        )))
    }

    fn set_name_detail(&mut self, detail: NameDetail) {
        self.style = match detail {
            NameDetail::Simplified => NameStyle::Plain,
            NameDetail::Templates => NameStyle::Parameters,
            NameDetail::Full => NameStyle::Full,
        };
    }

    fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        vec![
            Metric::counter(
                "DotnetProcessesAttached_total",
                c.attached.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "DotnetMethodCacheHits_total",
                c.cache_hits.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "DotnetMethodCacheMisses_total",
                c.cache_misses.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "DotnetReadyToRunFramesNamed_total",
                c.r2r_named.load(Ordering::Relaxed),
            ),
            Metric::gauge("DotnetAssembliesParsed", self.modules.parsed() as u64),
        ]
    }
}
