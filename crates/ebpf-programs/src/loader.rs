//! Loading the program set: the native sampler and unwinder, then each runtime's program in
//! its own object, joined through the shared maps and the `fs_progs` tail-call table.
//!
//! Every program is verified on its own. A runtime program the kernel rejects is reported
//! and left out (its slot stays empty, so its runtime is off); the native programs and the
//! other runtimes are unaffected. Each object exists in two builds (`bpf_loop`, for 5.17+,
//! and legacy, for 5.10+); the loader picks the one the kernel supports and falls back to
//! the legacy build when the other is rejected.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aya::maps::{MapData, PerCpuArray, ProgramArray};
use aya::programs::{PerfEvent, ProgramError, RawTracePoint};
use aya::{Ebpf, EbpfLoader};

use crate::Error;
use crate::diagnose::explain_rejection;
use crate::unwind_maps::RawMap;

/// Maps every program of the set shares (declared in `ferroscope/state.h`).
pub(crate) const SHARED_MAPS: [&str; 9] = [
    "fs_traces",
    "fs_trace_scratch",
    "fs_unwind_state",
    "fs_progs",
    "fs_counters",
    "fs_runtime_counters",
    "fs_pid_mappings",
    "fs_pid_events",
    "fs_reported_pids",
];

/// A runtime's eBPF program as the loader takes it (from its plug-in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeObject {
    /// The runtime's name (`python`).
    pub name: &'static str,
    /// The program's function name in the objects.
    pub program: &'static str,
    /// The `bpf_loop` build.
    pub object: &'static [u8],
    /// The legacy build.
    pub legacy_object: &'static [u8],
    /// Maps keyed by PID, sized for the session's process limit.
    pub pid_maps: &'static [&'static str],
}

/// Which build of the objects was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Build {
    /// Loops through `bpf_loop` (Linux 5.17+).
    Loop,
    /// Bounded loops and more tail calls (Linux 5.10+).
    Legacy,
}

impl Build {
    /// How `check` and the logs name it.
    pub fn describe(self) -> &'static str {
        match self {
            Build::Loop => "bpf_loop",
            Build::Legacy => "legacy (no bpf_loop)",
        }
    }
}

/// What the kernel said about one program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Loaded; the verifier's count of processed instructions when the kernel reports it
    /// (5.16+).
    Loaded {
        /// `verified_insns` of the program's info.
        verified_instructions: Option<u32>,
    },
    /// Rejected: why, in one line (naming the kernel feature that is missing when the log
    /// says), and the end of the verifier's log.
    Rejected {
        /// One line.
        reason: String,
        /// The last lines of the verifier log.
        log_tail: String,
    },
}

/// One program's load report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramReport {
    /// `native` for the sampler's own programs, else the runtime's name.
    pub owner: String,
    /// The program's function name.
    pub program: String,
    /// Its slot in `fs_progs` (the native unwinder is 0; `None` for programs not reached by
    /// tail call).
    pub slot: Option<u32>,
    /// The build that was loaded (or last tried).
    pub build: Build,
    /// The kernel's verdict.
    pub verdict: Verdict,
}

impl ProgramReport {
    /// Whether it loaded.
    pub fn loaded(&self) -> bool {
        matches!(self.verdict, Verdict::Loaded { .. })
    }
}

/// The build this kernel should load first: `bpf_loop` from 5.17, unless
/// `FERROSCOPE_BPF_BUILD=legacy` (or `loop`) says otherwise.
pub fn preferred_build() -> Build {
    match std::env::var("FERROSCOPE_BPF_BUILD").as_deref() {
        Ok("legacy") => return Build::Legacy,
        Ok("loop") => return Build::Loop,
        _ => {}
    }
    match kernel_version() {
        Some(v) if v >= (5, 17) => Build::Loop,
        _ => Build::Legacy,
    }
}

/// The running kernel's (major, minor).
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A private directory in a bpffs where the shared maps are pinned while the objects load,
/// removed (with a private mount, unmounted) when dropped. The maps outlive it: every
/// loaded object holds them open.
pub(crate) struct PinDir {
    dir: PathBuf,
    mounted: bool,
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid statfs to write.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

impl PinDir {
    pub(crate) fn create() -> Result<PinDir, Error> {
        let unique = format!(
            "ferroscope-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let system = Path::new("/sys/fs/bpf");
        if is_bpffs(system) {
            let dir = system.join(&unique);
            std::fs::create_dir(&dir).map_err(|e| Error::PinDir {
                path: dir.clone(),
                source: e,
            })?;
            return Ok(PinDir {
                dir,
                mounted: false,
            });
        }
        // No bpffs mounted: a private instance on a temporary directory.
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir(&dir).map_err(|e| Error::PinDir {
            path: dir.clone(),
            source: e,
        })?;
        let target = std::ffi::CString::new(dir.to_string_lossy().as_bytes()).map_err(|_| {
            Error::PinDir {
                path: dir.clone(),
                source: std::io::Error::other("NUL in the path"),
            }
        })?;
        // SAFETY: NUL-terminated strings for source, target and type; no data.
        let r = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            return Err(Error::PinDir {
                path: dir,
                source: e,
            });
        }
        Ok(PinDir { dir, mounted: true })
    }

    pub(crate) fn path_of(&self, map: &str) -> PathBuf {
        self.dir.join(map)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        for name in SHARED_MAPS {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        if self.mounted
            && let Ok(c) = std::ffi::CString::new(self.dir.to_string_lossy().as_bytes())
        {
            // SAFETY: a NUL-terminated path of the mount made in `create`.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The verdict of a program that failed to load.
pub(crate) fn rejection(e: &ProgramError) -> Verdict {
    let (reason, log_tail) = match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            (explain_rejection(&log, io_error), tail)
        }
        other => (other.to_string(), String::new()),
    };
    Verdict::Rejected { reason, log_tail }
}

fn loaded_verdict(info: Result<aya::programs::ProgramInfo, ProgramError>) -> Verdict {
    Verdict::Loaded {
        verified_instructions: info.ok().and_then(|i| i.verified_instruction_count()),
    }
}

/// Loads one perf_event program of an object and reports it.
pub(crate) fn load_perf_event(
    ebpf: &mut Ebpf,
    owner: &str,
    name: &str,
    slot: Option<u32>,
    build: Build,
) -> ProgramReport {
    let verdict = match ebpf
        .program_mut(name)
        .and_then(|p| <&mut PerfEvent>::try_from(p).ok())
    {
        None => Verdict::Rejected {
            reason: format!("the object has no perf_event program `{name}`; rebuild ferroscope"),
            log_tail: String::new(),
        },
        Some(p) => match p.load() {
            Ok(()) => loaded_verdict(p.info()),
            Err(e) => rejection(&e),
        },
    };
    ProgramReport {
        owner: owner.to_owned(),
        program: name.to_owned(),
        slot,
        build,
        verdict,
    }
}

/// Loads one raw tracepoint program and reports it.
pub(crate) fn load_raw_tracepoint(ebpf: &mut Ebpf, name: &str, build: Build) -> ProgramReport {
    let verdict = match ebpf
        .program_mut(name)
        .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
    {
        None => Verdict::Rejected {
            reason: format!(
                "the object has no raw tracepoint program `{name}`; rebuild ferroscope"
            ),
            log_tail: String::new(),
        },
        Some(p) => match p.load() {
            Ok(()) => loaded_verdict(p.info()),
            Err(e) => rejection(&e),
        },
    };
    ProgramReport {
        owner: "native".into(),
        program: name.to_owned(),
        slot: None,
        build,
        verdict,
    }
}

/// A loader for an object of the set: its shared maps pinned at `pins` (when there is a pin
/// directory) and sized as the native object's.
pub(crate) fn loader_with_pins<'a>(
    pins: Option<&'a HashMap<&'static str, PathBuf>>,
) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    if let Some(pins) = pins {
        for (name, path) in pins {
            loader.map_pin_path(name, path.as_path());
        }
    }
    loader
}

/// A runtime's program once loaded: its slot, its own maps and counters.
pub(crate) struct LoadedRuntime {
    pub(crate) name: &'static str,
    pub(crate) slot: u32,
    pub(crate) maps: HashMap<String, RawMap>,
    pub(crate) counters: Option<PerCpuArray<MapData, u64>>,
    pub(crate) pid_maps: &'static [&'static str],
    pub(crate) _ebpf: Ebpf,
}

/// Loads a runtime's object at `slot` and puts its program in the tail-call table. The
/// report says what happened; `None` in the first place means it is not usable.
pub(crate) fn load_runtime(
    runtime: &RuntimeObject,
    slot: u32,
    first_build: Build,
    pins: &HashMap<&'static str, PathBuf>,
    max_pids: u32,
    progs: &mut ProgramArray<MapData>,
) -> (Option<LoadedRuntime>, ProgramReport) {
    let builds: &[Build] = match first_build {
        Build::Loop => &[Build::Loop, Build::Legacy],
        Build::Legacy => &[Build::Legacy],
    };
    let mut last = None;
    for &build in builds {
        let bytes = match build {
            Build::Loop => runtime.object,
            Build::Legacy => runtime.legacy_object,
        };
        let mut loader = loader_with_pins(Some(pins));
        loader.override_global("fs_rt_slot", &slot, true);
        for m in runtime.pid_maps {
            loader.map_max_entries(m, max_pids);
        }
        let mut ebpf = match loader.load(bytes) {
            Ok(e) => e,
            Err(e) => {
                last = Some(ProgramReport {
                    owner: runtime.name.into(),
                    program: runtime.program.into(),
                    slot: Some(slot),
                    build,
                    verdict: Verdict::Rejected {
                        reason: format!("the object could not be loaded: {e}"),
                        log_tail: String::new(),
                    },
                });
                continue;
            }
        };
        let report = load_perf_event(&mut ebpf, runtime.name, runtime.program, Some(slot), build);
        if !report.loaded() {
            last = Some(report);
            continue;
        }
        let fd = ebpf
            .program(runtime.program)
            .and_then(|p| <&PerfEvent>::try_from(p).ok())
            .and_then(|p| p.fd().ok().map(|fd| fd.try_clone()));
        let set = match fd {
            Some(Ok(fd)) => progs.set(slot, &fd, 0).map_err(|e| e.to_string()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the loaded program has no file descriptor".into()),
        };
        if let Err(e) = set {
            last = Some(ProgramReport {
                verdict: Verdict::Rejected {
                    reason: format!("could not put the program in the tail-call table: {e}"),
                    log_tail: String::new(),
                },
                ..report
            });
            continue;
        }
        let mut maps = HashMap::new();
        let names: Vec<String> = ebpf.maps().map(|(n, _)| n.to_owned()).collect();
        for name in names {
            if SHARED_MAPS.contains(&name.as_str())
                || name.starts_with('.')
                || name == "fs_rt_counters"
            {
                continue;
            }
            if let Ok(m) = RawMap::take(&mut ebpf, &name) {
                maps.insert(name, m);
            }
        }
        let counters = ebpf
            .take_map("fs_rt_counters")
            .and_then(|m| PerCpuArray::try_from(m).ok());
        return (
            Some(LoadedRuntime {
                name: runtime.name,
                slot,
                maps,
                counters,
                pid_maps: runtime.pid_maps,
                _ebpf: ebpf,
            }),
            report,
        );
    }
    (None, last.expect("at least one build was tried"))
}
