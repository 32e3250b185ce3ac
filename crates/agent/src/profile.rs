//! Turning counted traces into a symbolized pprof profile.

use std::collections::HashMap;

use ferroscope_pprof::proto::Profile;
use ferroscope_pprof::{Label, LineSpec, LocationId, LocationSpec, MappingSpec, ProfileBuilder};
use ferroscope_symbolize::Symbolizer;
use ferroscope_unwind_api::{Frame, Trace, lookup_address};

use crate::interp::NameLookup;

/// What a profile's samples measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProfileType {
    /// On-CPU samples: `cpu/nanoseconds`, each sample the period (1e9 / rate ns).
    Cpu,
    /// Time off CPU: `offcpu/nanoseconds`, the counted value is nanoseconds.
    OffCpu,
    /// Hits of uprobes and uretprobes: `uprobe/count`.
    Probe,
    /// Hits of kprobes and kretprobes: `kprobe/count`.
    KernelProbe,
}

impl ProfileType {
    /// Every type.
    pub const ALL: [ProfileType; 4] = [
        ProfileType::Cpu,
        ProfileType::OffCpu,
        ProfileType::Probe,
        ProfileType::KernelProbe,
    ];

    /// The series name pushed to Pyroscope (`__name__`).
    pub fn series_name(self) -> &'static str {
        match self {
            ProfileType::Cpu => "process_cpu",
            ProfileType::OffCpu => "offcpu",
            ProfileType::Probe => "uprobe",
            ProfileType::KernelProbe => "kprobe",
        }
    }

    /// What `record` adds to its output's file name for this type (the CPU profile keeps
    /// the name as given).
    pub fn file_infix(self) -> Option<&'static str> {
        match self {
            ProfileType::Cpu => None,
            ProfileType::OffCpu => Some("offcpu"),
            ProfileType::Probe => Some("uprobe"),
            ProfileType::KernelProbe => Some("kprobe"),
        }
    }

    fn builder(self, sample_rate_hz: u32) -> ProfileBuilder {
        match self {
            ProfileType::Cpu => ProfileBuilder::cpu(sample_rate_hz),
            ProfileType::OffCpu => ProfileBuilder::new(("offcpu", "nanoseconds"), None, 0),
            ProfileType::Probe => ProfileBuilder::new(("uprobe", "count"), None, 0),
            ProfileType::KernelProbe => ProfileBuilder::new(("kprobe", "count"), None, 0),
        }
    }
}

/// How to build the profile.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// The rate samples were taken at; sets the period (1e9 / rate ns).
    pub sample_rate_hz: u32,
    /// Profile start, nanoseconds since the Unix epoch.
    pub time_nanos: i64,
    /// How long the profile covers.
    pub duration_nanos: i64,
    /// Add the process's comm as the root frame of each stack (useful when several
    /// processes share one profile).
    pub comm_root_frame: bool,
    /// Which labels each sample carries.
    pub labels: SampleLabels,
}

/// Which pprof labels each sample carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleLabels {
    /// `pid`: the process ID.
    pub pid: bool,
    /// `tid`: the thread ID.
    pub tid: bool,
    /// `comm`: the thread's command name.
    pub comm: bool,
    /// `thread_name`: the runtime's name for the thread (Python's `threading` name) where
    /// it has one, else the thread's command name.
    pub thread_name: bool,
}

impl SampleLabels {
    /// Every label (what `ferroscope record` writes).
    pub const ALL: SampleLabels = SampleLabels {
        pid: true,
        tid: true,
        comm: true,
        thread_name: true,
    };
}

/// Builds one CPU profile from counted traces, symbolizing each distinct frame once.
///
/// Samples carry the labels chosen in `options.labels` (`pid`, `tid`, `comm`,
/// `thread_name`). A sample's
/// value is the number of samples times the period, in nanoseconds of CPU time.
///
/// Runtime frames are named ([`crate::interp::Interpreters::resolve`]); `names` gives their
/// functions, files and lines.
pub fn build_cpu_profile<'a>(
    traces: impl IntoIterator<Item = (&'a Trace, u64)>,
    symbolizer: &mut Symbolizer,
    names: &dyn NameLookup,
    options: &ProfileOptions,
) -> Profile {
    build_profile(ProfileType::Cpu, traces, symbolizer, names, options)
}

/// Builds one profile of `kind` from counted traces (see [`build_cpu_profile`]): for
/// [`ProfileType::Cpu`] the count is samples, for [`ProfileType::OffCpu`] nanoseconds off
/// CPU, for [`ProfileType::Probe`] and [`ProfileType::KernelProbe`] hits.
pub fn build_profile<'a>(
    kind: ProfileType,
    traces: impl IntoIterator<Item = (&'a Trace, u64)>,
    symbolizer: &mut Symbolizer,
    names: &dyn NameLookup,
    options: &ProfileOptions,
) -> Profile {
    let mut b = kind.builder(options.sample_rate_hz);
    b.set_time_nanos(options.time_nanos);
    b.set_duration_nanos(options.duration_nanos);
    let period = if kind == ProfileType::Cpu {
        b.period()
    } else {
        1
    };
    let mut user_locations: HashMap<(u32, u64), LocationId> = HashMap::new();
    let mut kernel_locations: HashMap<u64, LocationId> = HashMap::new();
    let mut comm_locations: HashMap<String, LocationId> = HashMap::new();
    let mut interpreted_locations: HashMap<u64, LocationId> = HashMap::new();
    let mut locations = Vec::new();

    let mut tracer_frames: HashMap<u64, bool> = HashMap::new();
    for (trace, count) in traces {
        locations.clear();
        // An off-CPU stack is taken in the sched_switch tracepoint: its leaf frames are the
        // tracepoint's and the eBPF program's, not the thread's. A kernel probe's starts at
        // the probed function, but a kernel may add its own probe handler's frames.
        let skip = if matches!(kind, ProfileType::OffCpu | ProfileType::KernelProbe) {
            trace
                .frames
                .iter()
                .take_while(|f| match **f {
                    Frame::Kernel { address, .. } => *tracer_frames
                        .entry(address)
                        .or_insert_with(|| is_tracer_frame(symbolizer, address)),
                    _ => false,
                })
                .count()
        } else {
            0
        };
        for frame in &trace.frames[skip..] {
            let id = match *frame {
                Frame::UnwindError(_) => {
                    let name = match crate::aggregate::unwind_error_of(frame) {
                        Some(error) => format!("[unwind error: {}]", error.describe()),
                        None => "[unwind error]".to_owned(),
                    };
                    *comm_locations
                        .entry(name)
                        .or_insert_with_key(|name| named_location(&mut b, name))
                }
                Frame::Kernel { address, exact } => *kernel_locations
                    .entry(lookup_address(address, exact))
                    .or_insert_with(|| {
                        kernel_location(&mut b, symbolizer, lookup_address(address, exact))
                    }),
                Frame::Native { address, exact } => {
                    let addr = lookup_address(address, exact);
                    *user_locations
                        .entry((trace.pid, addr))
                        .or_insert_with(|| user_location(&mut b, symbolizer, trace.pid, addr))
                }
                Frame::Named(id) => *interpreted_locations
                    .entry(id)
                    .or_insert_with(|| interpreted_location(&mut b, names, id)),
            };
            locations.push(id);
        }
        if locations.is_empty() {
            locations.push(named_location(&mut b, "[no stack]"));
        }
        if options.comm_root_frame {
            let id = *comm_locations
                .entry(trace.comm.clone())
                .or_insert_with(|| named_location(&mut b, &trace.comm));
            locations.push(id);
        }
        let pid = trace.pid.to_string();
        let tid = trace.tid.to_string();
        let mut labels = Vec::with_capacity(4);
        if options.labels.pid {
            labels.push(Label::Str("pid", &pid));
        }
        if options.labels.tid {
            labels.push(Label::Str("tid", &tid));
        }
        if options.labels.comm {
            labels.push(Label::Str("comm", &trace.comm));
        }
        if options.labels.thread_name {
            let name = trace.thread_name.as_deref().unwrap_or(&trace.comm);
            labels.push(Label::Str("thread_name", name));
        }
        b.add_sample(&locations, &[count as i64 * period], &labels);
    }
    b.build()
}

/// A location of one frame with a name only (a process's comm, an unwind error).
///
/// Names we make up, and runtime frames' names, have no `system_name`: `go tool pprof`
/// (and readers built on it) demangle a function whose system name equals its name, and
/// take a name with `<...>`, `(...)` or `[...]` in it for demangled C++, cutting the
/// brackets out: `<module>` showed as `<unknown>`. A system name that differs (empty)
/// tells them the name is final.
fn named_location(b: &mut ProfileBuilder, name: &str) -> LocationId {
    let lines = [LineSpec {
        function: name,
        system_name: "",
        filename: "",
        start_line: 0,
        line: 0,
    }];
    b.add_location(&LocationSpec {
        mapping: None,
        address: 0,
        lines: &lines,
    })
}

/// A runtime frame named by [`crate::interp::Interpreters::resolve`]: one location with a
/// line per named frame (innermost first, as pprof orders inlined frames).
fn interpreted_location(b: &mut ProfileBuilder, names: &dyn NameLookup, id: u64) -> LocationId {
    let Some(named) = names.lines(id) else {
        return named_location(b, "[unnamed runtime frame]");
    };
    let lines: Vec<LineSpec<'_>> = named
        .iter()
        .map(|n| LineSpec {
            function: &n.function,
            // Final as written (see named_location).
            system_name: "",
            filename: &n.file,
            start_line: i64::from(n.start_line),
            line: i64::from(n.line),
        })
        .collect();
    b.add_location(&LocationSpec {
        mapping: None,
        address: 0,
        lines: &lines,
    })
}

/// Whether the kernel function at `addr` belongs to the tracing machinery (an eBPF program,
/// the tracepoint's caller).
fn is_tracer_frame(symbolizer: &mut Symbolizer, addr: u64) -> bool {
    let k = symbolizer.symbolize_kernel(addr);
    let Some(name) = k.function.as_deref() else {
        // eBPF programs are in no module kallsyms names.
        return k.module == "bpf";
    };
    [
        "bpf_prog_",
        "bpf_trace_run",
        "__traceiter_",
        "__bpf_trace_",
        "trace_call_bpf",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

fn kernel_location(b: &mut ProfileBuilder, symbolizer: &mut Symbolizer, addr: u64) -> LocationId {
    let k = symbolizer.symbolize_kernel(addr);
    let mapping = b.add_mapping(&MappingSpec {
        start: 0,
        limit: 0,
        offset: 0,
        filename: &k.module,
        build_id: "",
        has_functions: true,
    });
    let name = k
        .function
        .clone()
        .unwrap_or_else(|| format!("{}+{addr:#x}", k.module));
    let lines = [LineSpec {
        function: &name,
        system_name: &name,
        filename: "",
        start_line: 0,
        line: 0,
    }];
    b.add_location(&LocationSpec {
        mapping: Some(mapping),
        address: addr,
        lines: &lines,
    })
}

fn user_location(
    b: &mut ProfileBuilder,
    symbolizer: &mut Symbolizer,
    pid: u32,
    addr: u64,
) -> LocationId {
    let f = symbolizer.symbolize_user(pid, addr);
    let mapping = f.module.as_ref().map(|m| {
        b.add_mapping(&MappingSpec {
            start: m.vaddr_start,
            limit: m.vaddr_start + (m.map_end - m.map_start),
            offset: m.file_offset,
            filename: m.basename(),
            build_id: m.build_id.as_deref().unwrap_or(""),
            has_functions: f.function.is_some(),
        })
    });
    // pprof orders a location's lines innermost first, the caller (physical function) last:
    // the same order as `UserFrame::source_frames`.
    let frames = f.source_frames();
    let names: Vec<String> = frames
        .iter()
        .map(|s| s.function.clone().unwrap_or_else(|| f.display_name()))
        .collect();
    let lines: Vec<LineSpec<'_>> = frames
        .iter()
        .zip(&names)
        .map(|(s, name)| LineSpec {
            function: name,
            system_name: name,
            filename: s.file.as_deref().unwrap_or(""),
            start_line: 0,
            line: s.line.map_or(0, i64::from),
        })
        .collect();
    b.add_location(&LocationSpec {
        mapping,
        address: f.elf_addr.unwrap_or(addr),
        lines: &lines,
    })
}
