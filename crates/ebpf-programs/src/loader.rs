//! Loading the program set: the native sampler and unwinder, then each runtime's program in
//! its own object, joined through the shared maps and the `fs_progs` tail-call table; and the
//! same again for each other entry that is on (off-CPU, probes: see
//! [`ferroscope_ebpf_abi::Entry`]), with that entry's table, sharing the first set's maps.
//!
//! Every program is verified on its own. A runtime program the kernel rejects is reported
//! and left out (its slot stays empty, so its runtime is off); the native programs and the
//! other runtimes are unaffected. Each object exists in two builds (`bpf_loop`, for 5.17+,
//! and legacy, for 5.10+); the loader picks the one the kernel supports and falls back to
//! the legacy build when the other is rejected.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aya::maps::{MapData, PerCpuArray, ProgramArray};
use aya::programs::{KProbe, PerfEvent, ProgramError, RawTracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use ferroscope_ebpf_abi::{Entry, ObjectSet};

use crate::Error;
use crate::diagnose::explain_rejection;
use crate::unwind_maps::RawMap;

/// Maps every program of the set shares (declared in `ferroscope/state.h`).
pub(crate) const SHARED_MAPS: [&str; 11] = [
    "fs_traces",
    "fs_trace_scratch",
    "fs_unwind_state",
    "fs_progs",
    "fs_progs_switch",
    "fs_progs_probe",
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
    /// Every build: per entry, `bpf_loop` and legacy.
    pub objects: ObjectSet,
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
    /// The entry the object was built for (the CPU sampler's, or off-CPU, or probes).
    pub entry: Entry,
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
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
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

/// The program types of the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    PerfEvent,
    RawTracePoint,
    UProbe,
    KProbe,
}

impl Kind {
    /// The type of the programs reached by tail call from `entry`.
    pub(crate) fn of(entry: Entry) -> Kind {
        match entry {
            Entry::Cpu => Kind::PerfEvent,
            Entry::Switch => Kind::RawTracePoint,
            Entry::Probe => Kind::UProbe,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::PerfEvent => "perf_event",
            Kind::RawTracePoint => "raw tracepoint",
            Kind::UProbe => "uprobe",
            Kind::KProbe => "kprobe",
        }
    }
}

/// Loads program `name` of `ebpf` as a `kind` program; `None` when the object has no such
/// program.
fn load_as(ebpf: &mut Ebpf, name: &str, kind: Kind) -> Option<Result<(), ProgramError>> {
    let p = ebpf.program_mut(name)?;
    Some(match kind {
        Kind::PerfEvent => <&mut PerfEvent>::try_from(p).ok()?.load(),
        Kind::RawTracePoint => <&mut RawTracePoint>::try_from(p).ok()?.load(),
        Kind::UProbe => <&mut UProbe>::try_from(p).ok()?.load(),
        Kind::KProbe => <&mut KProbe>::try_from(p).ok()?.load(),
    })
}

/// Loads one program of an object and reports it.
pub(crate) fn load_program(
    ebpf: &mut Ebpf,
    owner: &str,
    name: &str,
    slot: Option<u32>,
    build: Build,
    kind: Kind,
) -> ProgramReport {
    let verdict = match load_as(ebpf, name, kind) {
        None => Verdict::Rejected {
            reason: format!(
                "the object has no {} program `{name}`; rebuild ferroscope",
                kind.describe()
            ),
            log_tail: String::new(),
        },
        Some(Ok(())) => loaded_verdict(ebpf.program(name).map_or_else(
            || Err(ProgramError::NotLoaded),
            aya::programs::Program::info,
        )),
        Some(Err(e)) => rejection(&e),
    };
    ProgramReport {
        owner: owner.to_owned(),
        program: name.to_owned(),
        slot,
        build,
        entry: Entry::Cpu,
        verdict,
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
    load_program(ebpf, owner, name, slot, build, Kind::PerfEvent)
}

/// Loads one raw tracepoint program of the native object and reports it.
pub(crate) fn load_raw_tracepoint(ebpf: &mut Ebpf, name: &str, build: Build) -> ProgramReport {
    load_program(ebpf, "native", name, None, build, Kind::RawTracePoint)
}

/// Pins every map of `ebpf` that is not pinned yet (except the sections of globals) into
/// `dir` as `prefix` + its name, and adds it to `pins`: the objects of the other entries then
/// share it.
pub(crate) fn pin_maps(
    ebpf: &Ebpf,
    dir: &PinDir,
    prefix: &str,
    pins: &mut HashMap<String, PathBuf>,
) -> Result<(), Error> {
    for (name, map) in ebpf.maps() {
        if name.starts_with('.') || pins.contains_key(name) {
            continue;
        }
        let path = dir.path_of(&format!("{prefix}{name}"));
        map.pin(&path).map_err(|e| Error::Map {
            map: name.to_owned(),
            action: "pin (to share it with the off-CPU and probe programs)",
            source: std::io::Error::other(e.to_string()),
        })?;
        pins.insert(name.to_owned(), path);
    }
    Ok(())
}

/// The file descriptor of a loaded program, to put in a tail-call table.
pub(crate) fn program_fd(ebpf: &Ebpf, name: &str) -> Result<aya::programs::ProgramFd, String> {
    let p = ebpf
        .program(name)
        .ok_or_else(|| format!("the object has no program `{name}`"))?;
    p.fd()
        .map_err(|e| e.to_string())?
        .try_clone()
        .map_err(|e| e.to_string())
}

/// A loader for an object of the set: its shared maps pinned at `pins` (when there is a pin
/// directory) and sized as the native object's.
pub(crate) fn loader_with_pins<'a>(pins: Option<&'a HashMap<String, PathBuf>>) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    if let Some(pins) = pins {
        for (name, path) in pins {
            loader.map_pin_path(name.as_str(), path.as_path());
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

/// Loads a runtime's object for `entry` at `slot` and puts its program in that entry's
/// tail-call table. The report says what happened; `None` in the first place means it is not
/// usable. The CPU entry's object falls back to the legacy build; another entry's is loaded
/// in the build its CPU object was. With `share`, the runtime's own maps are pinned there
/// (and listed), for its objects of the other entries.
#[allow(clippy::too_many_arguments)]
pub(crate) fn load_runtime(
    runtime: &RuntimeObject,
    entry: Entry,
    slot: u32,
    first_build: Build,
    pins: &HashMap<String, PathBuf>,
    max_pids: u32,
    progs: &mut ProgramArray<MapData>,
    mut share: Option<(&PinDir, &mut HashMap<String, PathBuf>)>,
) -> (Option<LoadedRuntime>, ProgramReport) {
    let builds: &[Build] = match (entry, first_build) {
        (Entry::Cpu, Build::Loop) => &[Build::Loop, Build::Legacy],
        (_, Build::Loop) => &[Build::Loop],
        (_, Build::Legacy) => &[Build::Legacy],
    };
    let kind = Kind::of(entry);
    let mut last = None;
    for &build in builds {
        let objects = runtime.objects.get(entry);
        let bytes = match build {
            Build::Loop => objects.modern,
            Build::Legacy => objects.legacy,
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
                    entry,
                    verdict: Verdict::Rejected {
                        reason: format!("the object could not be loaded: {e}"),
                        log_tail: String::new(),
                    },
                });
                continue;
            }
        };
        let report = ProgramReport {
            entry,
            ..load_program(
                &mut ebpf,
                runtime.name,
                runtime.program,
                Some(slot),
                build,
                kind,
            )
        };
        if !report.loaded() {
            last = Some(report);
            continue;
        }
        let set = program_fd(&ebpf, runtime.program)
            .and_then(|fd| progs.set(slot, &fd, 0).map_err(|e| e.to_string()));
        let set = set.and_then(|()| match share.as_mut() {
            Some((dir, own)) => {
                let mut all = pins.clone();
                pin_maps(&ebpf, dir, &format!("rt{slot}-"), &mut all).map_err(|e| e.to_string())?;
                own.extend(all.into_iter().filter(|(k, _)| !pins.contains_key(k)));
                Ok(())
            }
            None => Ok(()),
        });
        if let Err(e) = set {
            last = Some(ProgramReport {
                verdict: Verdict::Rejected {
                    reason: format!(
                        "could not put the program in the tail-call table or share its maps: {e}"
                    ),
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
