//! The session's side of the seam, with test plug-ins on this test process itself: two
//! runtimes in one process, ranges owned and released, map writes, naming one recorded frame
//! as several, detaching on removal.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferroscope_ebpf_programs::Counters;
use ferroscope_unwind_api::{
    ElfFile, InterpreterError, InterpreterPlugin, MapWrite, MappedRange, OwnedRange, RangeMode,
};

use super::*;
use crate::process::{FakeMaps, ProcessManagerConfig};

/// A plug-in that recognises this test binary (by its file name) and owns one range of it
/// (splice) and, optionally, an anonymous range (takeover).
struct TestRuntime {
    name: &'static str,
    splice: bool,
    anonymous: Option<(u64, u64)>,
    inlined: bool,
}

struct TestProcess {
    pid: u32,
    ranges: Vec<OwnedRange>,
    inlined: bool,
    refreshes: usize,
}

fn this_binary() -> String {
    std::env::current_exe()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

impl Interpreter for TestRuntime {
    fn name(&self) -> &'static str {
        self.name
    }
    fn metric_name(&self) -> &'static str {
        match self.name {
            "interp" => "Interp",
            "jit" => "Jit",
            _ => "Test",
        }
    }
    fn ebpf(&self) -> Option<ferroscope_unwind_api::EbpfProgram> {
        None
    }
    fn detect(&self, file: &dyn ElfFile) -> Result<Option<FileData>, InterpreterError> {
        Ok(file
            .path()
            .ends_with(&this_binary())
            .then(|| Arc::new(()) as FileData))
    }
    fn attach(
        &self,
        _data: &FileData,
        context: &AttachContext<'_>,
    ) -> Result<Box<dyn InterpreterProcess>, InterpreterError> {
        let here = this_binary_code();
        let mut ranges = Vec::new();
        if self.splice {
            assert!(
                context
                    .mappings
                    .iter()
                    .any(|m| m.start <= here && here < m.end && m.executable),
                "the context has the process's mappings"
            );
            ranges.push(OwnedRange {
                start: here & !0xfff,
                end: (here & !0xfff) + 0x1000,
                mode: RangeMode::Splice,
                frame_pointer: false,
            });
        }
        if let Some((start, end)) = self.anonymous {
            ranges.push(OwnedRange {
                start,
                end,
                mode: RangeMode::Takeover,
                frame_pointer: true,
            });
        }
        Ok(Box::new(TestProcess {
            pid: context.pid,
            ranges,
            inlined: self.inlined,
            refreshes: 0,
        }))
    }
}

impl InterpreterProcess for TestProcess {
    fn start(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        Ok(ProcessUpdate {
            map_writes: vec![MapWrite {
                map: "procs",
                key: self.pid.to_ne_bytes().to_vec(),
                value: Some(vec![7; 4]),
            }],
            ranges: Some(self.ranges.clone()),
        })
    }
    fn mappings_changed(&mut self, _mappings: &[MappedRange]) -> MappingsChanged {
        MappingsChanged::Keep(ProcessUpdate::default())
    }
    fn thread_name(&mut self, tid: u32) -> Option<String> {
        (tid == self.pid).then(|| format!("main-of-{}", self.pid))
    }
    fn refresh_interval(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::ZERO)
    }
    fn refresh(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        // The JIT heap is freed at the first refresh.
        self.refreshes += 1;
        self.ranges.retain(|r| r.mode != RangeMode::Takeover);
        Ok(ProcessUpdate {
            map_writes: Vec::new(),
            ranges: (self.refreshes == 1).then(|| self.ranges.clone()),
        })
    }
    fn symbolize(
        &mut self,
        frame: &RawFrame,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<(), InterpreterError> {
        if frame.address == 0 {
            return Err(InterpreterError::Runtime {
                runtime: "test",
                source: "no such function".into(),
            });
        }
        let name = |n: String, line| InterpretedFrame {
            function: Arc::from(n),
            file: Arc::from("test.src"),
            line,
            start_line: 1,
        };
        if self.inlined {
            out.push(name(format!("inlined_into_{:x}", frame.address), 20));
        }
        out.push(name(format!("fn_{:x}", frame.address), frame.aux as u32));
        Ok(())
    }
}

fn this_binary_code() -> u64 {
    this_binary_code as fn() -> u64 as usize as u64
}

/// A loaded process manager with this process, the runtimes at slots 1, 2..., and the
/// events of the load handed to them.
fn session(runtimes: Vec<TestRuntime>) -> (ProcessManager, Interpreters, FakeMaps, u32) {
    let pid = std::process::id();
    let mut maps = FakeMaps::new(1 << 22);
    let mut pm = ProcessManager::new(ProcessManagerConfig::default());
    let names: Vec<&'static str> = runtimes.iter().map(|r| r.name).collect();
    let mut interps = Interpreters::new(
        runtimes
            .into_iter()
            .map(|r| Box::new(r) as Box<dyn Interpreter>)
            .collect(),
    );
    interps.set_slots(names.iter().enumerate().map(|(i, n)| (*n, i as u32 + 1)));
    pm.scan(Some(&[pid]));
    pm.settle(&mut maps);
    let events = pm.take_events();
    interps.handle(events, &mut pm, &mut maps);
    (pm, interps, maps, pid)
}

#[test]
fn two_runtimes_in_one_process_own_their_ranges_and_name_their_frames() {
    let jit = (0x7e00_0000_0000, 0x7e00_0001_0000);
    let (mut pm, mut interps, mut maps, pid) = session(vec![
        TestRuntime {
            name: "interp",
            splice: true,
            anonymous: None,
            inlined: false,
        },
        TestRuntime {
            name: "jit",
            splice: false,
            anonymous: Some(jit),
            inlined: true,
        },
    ]);
    assert!(interps.is_attached(pid, "interp") && interps.is_attached(pid, "jit"));
    let here = this_binary_code();
    let m = maps.mapping(pid, here).expect("mapped");
    assert_eq!(m.owner, 1, "the splice range is the first runtime's");
    assert_ne!(m.file_id, 0, "and keeps its file, for native unwinding");
    let j = maps
        .mapping(pid, jit.0 + 0x100)
        .expect("the JIT range is mapped");
    assert_eq!((j.owner, j.file_id), (2, 0));
    assert_eq!(
        maps.runtime
            .get(&(1, "procs".to_owned(), pid.to_ne_bytes().to_vec())),
        Some(&vec![7; 4]),
        "the plug-in's map write went to its slot"
    );

    // A trace with a frame of each runtime, and one the plug-in cannot name.
    let trace = Trace {
        pid,
        tid: pid,
        comm: "t".into(),
        thread_name: None,
        frames: vec![
            RecordedFrame::Runtime(RawFrame {
                runtime: 2,
                address: 0xabc,
                aux: 0,
            }),
            RecordedFrame::native(here, false),
            RecordedFrame::Runtime(RawFrame {
                runtime: 1,
                address: 0x10,
                aux: 42,
            }),
            RecordedFrame::Runtime(RawFrame {
                runtime: 1,
                address: 0,
                aux: 0,
            }),
        ],
    };
    let other_thread = Trace {
        tid: pid + 1,
        frames: Vec::new(),
        ..trace.clone()
    };
    let named = interps.resolve(trace);
    assert_eq!(
        named.thread_name.as_deref(),
        Some(format!("main-of-{pid}").as_str()),
        "a plug-in's thread name is the trace's"
    );
    assert_eq!(interps.resolve(other_thread).thread_name, None);
    let lines = |f: &Frame| match f {
        Frame::Named(id) => interps
            .frame_names()
            .lock()
            .unwrap()
            .get(*id)
            .unwrap()
            .to_vec(),
        other => panic!("not named: {other:?}"),
    };
    let jit_frames = lines(&named.frames[0]);
    assert_eq!(
        jit_frames
            .iter()
            .map(|l| (&*l.function, l.line))
            .collect::<Vec<_>>(),
        [("inlined_into_abc", 20), ("fn_abc", 0)],
        "one recorded frame, two named ones, innermost first"
    );
    assert_eq!(named.frames[1], Frame::native(here, false));
    let interp = lines(&named.frames[2]);
    assert_eq!(
        (&*interp[0].function, interp[0].line, interp[0].runtime),
        ("fn_10", 42, 1)
    );
    assert_eq!(
        &*lines(&named.frames[3])[0].function,
        "[unknown interp frame]"
    );
    let metrics = interps.metrics(|_| None);
    let get = |n: &str| metrics.iter().find(|m| m.name == n).map(|m| m.value);
    assert_eq!(get("InterpSymbolizationSuccesses_total"), Some(1));
    assert_eq!(get("InterpSymbolizationFailures_total"), Some(1));
    assert_eq!(get("JitSymbolizationSuccesses_total"), Some(1));

    // The JIT heap is freed: its range is released, the other runtime's stays.
    interps.refresh(&mut pm, &mut maps);
    assert!(maps.mapping(pid, jit.0 + 0x100).is_none(), "released");
    assert_eq!(maps.mapping(pid, here).map(|m| m.owner), Some(1));

    // The process goes: every runtime is detached and its per-process keys deleted.
    pm.report(pid, ferroscope_ebpf_abi::PidEventKind::Exit);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    pm.settle(&mut maps);
    let events = pm.take_events();
    interps.handle(events, &mut pm, &mut maps);
    assert_eq!(interps.attached(), 0);
    let mut forgotten = maps.forgotten.clone();
    forgotten.sort_unstable();
    assert_eq!(forgotten, [(1, pid), (2, pid)]);
    assert!(maps.runtime.is_empty());
    assert!(maps.prefixes.is_empty());
    assert_eq!(pm.metrics(&Counters::default()).manager.owned_ranges, 0);
}

#[test]
fn a_runtime_whose_program_did_not_load_is_off() {
    let pid = std::process::id();
    let mut maps = FakeMaps::new(1 << 22);
    let mut pm = ProcessManager::new(ProcessManagerConfig::default());
    let mut interps = Interpreters::new(vec![Box::new(TestRuntime {
        name: "rejected",
        splice: true,
        anonymous: None,
        inlined: false,
    })]);
    interps.set_slots([]);
    pm.scan(Some(&[pid]));
    pm.settle(&mut maps);
    let events = pm.take_events();
    interps.handle(events, &mut pm, &mut maps);
    assert!(!interps.is_attached(pid, "rejected"));
    let here = this_binary_code();
    assert_eq!(maps.mapping(pid, here).map(|m| m.owner), Some(0), "native");
    let loaded = interps
        .metrics(|_| None)
        .into_iter()
        .find(|m| m.name == "UnwindTestProgramLoaded")
        .map(|m| m.value);
    assert_eq!(loaded, Some(0));
}

static CREATED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
static CREATIONS: AtomicUsize = AtomicUsize::new(0);

fn create_alpha() -> Box<dyn Interpreter> {
    CREATIONS.fetch_add(1, Ordering::SeqCst);
    CREATED.lock().unwrap().push("alpha");
    Box::new(TestRuntime {
        name: "alpha",
        splice: false,
        anonymous: None,
        inlined: false,
    })
}

fn create_beta() -> Box<dyn Interpreter> {
    CREATIONS.fetch_add(1, Ordering::SeqCst);
    CREATED.lock().unwrap().push("beta");
    Box::new(TestRuntime {
        name: "beta",
        splice: false,
        anonymous: None,
        inlined: false,
    })
}

#[test]
fn disabled_plugins_are_not_created() {
    let registry = [
        InterpreterPlugin {
            name: "alpha",
            create: create_alpha,
        },
        InterpreterPlugin {
            name: "beta",
            create: create_beta,
        },
    ];
    let before = CREATIONS.load(Ordering::SeqCst);
    let interps = Interpreters::from_registry(&registry, &["alpha".to_owned()]);
    assert_eq!(interps.names(), ["beta"]);
    assert_eq!(
        CREATIONS.load(Ordering::SeqCst) - before,
        1,
        "alpha was never made"
    );
    assert!(!CREATED.lock().unwrap().contains(&"alpha"));
    let all = Interpreters::from_registry(&registry, &[]);
    assert_eq!(all.names(), ["alpha", "beta"]);
}

/// A plug-in that recognises this test binary as its runtime but cannot unwind it.
struct Unreadable;

impl Interpreter for Unreadable {
    fn name(&self) -> &'static str {
        "unreadable"
    }
    fn metric_name(&self) -> &'static str {
        "Unreadable"
    }
    fn ebpf(&self) -> Option<ferroscope_unwind_api::EbpfProgram> {
        None
    }
    fn detect(&self, file: &dyn ElfFile) -> Result<Option<FileData>, InterpreterError> {
        if !file.path().ends_with(&this_binary()) {
            return Ok(None);
        }
        Err(InterpreterError::Runtime {
            runtime: "unreadable",
            source: "no layout for this build; use another".into(),
        })
    }
    fn attach(
        &self,
        _data: &FileData,
        _context: &AttachContext<'_>,
    ) -> Result<Box<dyn InterpreterProcess>, InterpreterError> {
        unreachable!("never detected")
    }
}

#[test]
fn detection_failures_are_kept_with_their_reason_and_counted() {
    let pid = std::process::id();
    let mut maps = FakeMaps::new(1 << 22);
    let mut pm = ProcessManager::new(ProcessManagerConfig::default());
    let mut interps = Interpreters::new(vec![Box::new(Unreadable)]);
    interps.set_slots([("unreadable", 1)]);
    pm.scan(Some(&[pid]));
    pm.tick(&mut maps);
    let events = pm.take_events();
    interps.handle(events, &mut pm, &mut maps);
    assert!(!interps.is_attached(pid, "unreadable"));
    let failures = interps.detection_failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].runtime, "unreadable");
    assert!(failures[0].path.ends_with(&this_binary()));
    assert_eq!(
        failures[0].reason, "no layout for this build; use another",
        "the plug-in's own words, without its name in front"
    );
    let count = interps
        .metrics(|_| None)
        .into_iter()
        .find(|m| m.name == "UnreadableDetectionFailures_total")
        .map(|m| m.value);
    assert_eq!(count, Some(1));
}
