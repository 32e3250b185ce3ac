//! The plug-in against a live .NET 8.0.4 process (`fixtures/dotnet/Shop.cs` compiled with
//! mcs): its code ranges, the host-side nibble-map search and the names of every method the
//! runtime JIT-compiled, compared with the names the runtime itself writes to its perf map
//! (`DOTNET_PerfMapEnabled=1`).
//!
//! With `FERROSCOPE_REQUIRE=1` they fail without root, mcs or the runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ferroscope_test_harness::{self as harness, Guard, runtimes};
use ferroscope_unwind_api::{
    AttachContext, ElfFile, InterpretedFrame, Interpreter, InterpreterProcess, NameDetail,
    ProcessMemory, RawFrame, RemoteMemory, SymbolRange,
};
use ferroscope_unwind_dotnet::ebpf::{DotnetFrame, RANGE_JIT, RANGE_R2R, RANGE_STUB};
use ferroscope_unwind_dotnet::ranges::method_start;
use ferroscope_unwind_dotnet::{Dotnet, parse_maps};
use object::{Object, ObjectSegment, ObjectSymbol};

/// An ELF file on disk as the agent shows it to plug-ins.
struct Elf {
    path: String,
    data: Vec<u8>,
}

impl ElfFile for Elf {
    fn path(&self) -> &str {
        &self.path
    }

    fn symbol(&self, name: &str) -> Option<SymbolRange> {
        let f = object::File::parse(&*self.data).ok()?;
        f.symbols()
            .chain(f.dynamic_symbols())
            .find(|s| s.name() == Ok(name))
            .map(|s| SymbolRange {
                address: s.address(),
                size: s.size(),
            })
    }

    fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
        let f = object::File::parse(&*self.data).ok()?;
        f.dynamic_symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| SymbolRange {
                address: s.address(),
                size: s.size(),
            })
    }

    fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool {
        let Ok(f) = object::File::parse(&*self.data) else {
            return false;
        };
        f.segments().any(|s| {
            let Ok(Some(d)) = s.data_range(vaddr, buf.len() as u64) else {
                return false;
            };
            buf.copy_from_slice(d);
            true
        })
    }
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(path)
}

/// The workload in `mode`, with the runtime's perf map written to `dir`.
fn start(dir: &Path, mode: &str) -> Option<(Guard, PathBuf)> {
    if !harness::root("reading another process's memory") {
        return None;
    }
    let runtime = runtimes::dotnet()?;
    let mcs = runtimes::mcs()?;
    let dll = dir.join("Shop.dll");
    harness::run_ok(
        Command::new(&mcs)
            .args(["-optimize+", "-target:exe"])
            .arg(format!("-out:{}", dll.display()))
            .arg(fixture("dotnet/Shop.cs")),
        Duration::from_secs(120),
    );
    std::fs::write(
        dir.join("Shop.runtimeconfig.json"),
        r#"{"runtimeOptions":{"tfm":"net8.0","framework":{"name":"Microsoft.NETCore.App","version":"8.0.0"}}}"#,
    )
    .unwrap();
    let mut cmd = Command::new(&runtime.exe);
    cmd.arg(&dll)
        .arg(mode)
        .stdin(Stdio::piped())
        .env("DOTNET_PerfMapEnabled", "1")
        .env("DOTNET_PerfMapJitDumpPath", dir);
    let mut g = Guard::spawn(&mut cmd, Duration::from_secs(120));
    g.wait_for_line("ready", Duration::from_secs(60));
    // Long enough for tier-1 code and on-stack replacement of the loops.
    std::thread::sleep(Duration::from_secs(2));
    Some((g, runtime.exe))
}

/// The plug-in attached to `pid` (naming with `detail`).
fn attach(pid: u32, detail: NameDetail) -> Box<dyn InterpreterProcess> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mappings = parse_maps(&maps);
    let coreclr = mappings
        .iter()
        .find(|m| m.path.ends_with("/libcoreclr.so"))
        .expect("libcoreclr.so is mapped");
    let path = coreclr.path.clone();
    let base = mappings
        .iter()
        .filter(|m| m.path == path)
        .map(|m| m.start)
        .min()
        .unwrap();
    let elf = Elf {
        path: path.clone(),
        data: std::fs::read(&path).unwrap(),
    };
    let mut plugin = Dotnet::default();
    plugin.set_name_detail(detail);
    let data = plugin
        .detect(&elf)
        .unwrap()
        .expect("libcoreclr.so of 8.0.4 is detected");
    // libcoreclr.so's first segment is at virtual address 0.
    let context = AttachContext {
        pid,
        path: &path,
        bias: base,
        mappings: &mappings,
        memory: Arc::new(RemoteMemory::new(pid)),
    };
    plugin.attach(&data, &context).unwrap()
}

/// The runtime's perf map: (start, size, name) of each JIT-compiled method.
fn perf_map(dir: &Path, pid: u32) -> Vec<(u64, u64, String)> {
    let text = std::fs::read(dir.join(format!("perf-{pid}.map"))).unwrap();
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let start = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
            let size = u64::from_str_radix(it.next()?, 16).ok()?;
            Some((start, size, it.next()?.to_owned()))
        })
        .collect()
}

/// The method name of a perf map entry as ferroscope writes it: `int64 [Shop]
/// Shop.Box`1[System.Int32]::Apply(!!0)[QuickJitted]` → `Shop.Box.Apply` (`full`: with the
/// type's arguments, `Shop.Box<System.Int32>.Apply`); `None` for stubs and dynamic code.
fn expected(entry: &str, full: bool) -> Option<String> {
    let after_module = &entry[entry.find("] ")? + 2..];
    let name = &after_module[..after_module.find('(')?];
    let (ty, method) = name.rsplit_once("::")?;
    if method.contains('<') && !method.starts_with('<') || ty.contains("IL_STUB") {
        return None;
    }
    let mut out = String::new();
    let mut chars = ty.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' => {
                while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
                    chars.next();
                }
            }
            '[' if full => out.push('<'),
            ']' if full => out.push('>'),
            '[' => {
                let mut depth = 1;
                for c in chars.by_ref() {
                    match c {
                        '[' => depth += 1,
                        ']' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    Some(format!("{out}.{method}"))
}

/// Whether our name is the perf map's: the 8.0.4 runtime's perf map drops the last letter of
/// some methods' names (`Enumerable::Su` for `Enumerable.Sum`, generic or not).
fn same_name(ours: &str, perf_map: &str) -> bool {
    ours == perf_map || (ours.len() == perf_map.len() + 1 && ours.starts_with(perf_map))
}

fn name_of(
    p: &mut Box<dyn InterpreterProcess>,
    header: u64,
    start: u64,
    pc: u64,
) -> InterpretedFrame {
    let frame = DotnetFrame::Jit {
        code_header: header,
        start_bits: ((start >> 2) & 0xfff_ffff) as u32,
        offset: (pc - start) as u32,
        leaf: true,
    };
    let mut out = Vec::new();
    p.symbolize(
        &RawFrame {
            runtime: 1,
            address: header,
            aux: frame.payload(),
        },
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn jit_methods_are_found_and_named_as_the_runtime_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let Some((app, _)) = start(dir.path(), "join") else {
        return;
    };
    let pid = app.pid();
    let mut process = attach(pid, NameDetail::Simplified);
    let update = process.start().unwrap();

    // The range table: the kinds CoreCLR 8 has, sorted and disjoint, and owned.
    let table = &update.map_writes[0];
    assert_eq!(table.map, "dn_procs");
    let bytes = table.value.as_ref().unwrap();
    let count = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    let mut kinds = HashMap::new();
    let mut ranges = Vec::new();
    for i in 0..count {
        let r = &bytes[16 + 48 * i..16 + 48 * (i + 1)];
        let word = |at: usize| u64::from_le_bytes(r[at..at + 8].try_into().unwrap());
        let kind = u32::from_le_bytes(r[40..44].try_into().unwrap());
        *kinds.entry(kind).or_insert(0) += 1;
        ranges.push((word(0), word(8), word(16), word(24), kind));
    }
    assert!(
        kinds.get(&RANGE_JIT).copied().unwrap_or(0) >= 1,
        "{kinds:?}"
    );
    assert!(
        kinds.get(&RANGE_R2R).copied().unwrap_or(0) >= 3,
        "CoreLib, System.Runtime...: {kinds:?}"
    );
    assert!(
        kinds.get(&RANGE_STUB).copied().unwrap_or(0) >= 1,
        "{kinds:?}"
    );
    assert!(
        ranges.windows(2).all(|w| w[0].1 <= w[1].0),
        "sorted, disjoint"
    );
    assert_eq!(
        update.ranges.as_ref().unwrap().len(),
        count,
        "every range is owned"
    );

    let mem = RemoteMemory::new(pid);
    let entries = perf_map(dir.path(), pid);
    let (mut named, mut checked) = (0, 0);
    let mut mismatches = Vec::new();
    for (start, size, entry) in &entries {
        let Some(&(_, _, map_base, hdr_map, _)) = ranges
            .iter()
            .find(|r| r.4 == RANGE_JIT && r.0 <= *start && start < &r.1)
        else {
            continue;
        };
        if entry.starts_with("stub<") {
            continue;
        }
        // Every instruction of the method finds its start (first, middle, last).
        for pc in [*start, start + size / 2, start + size - 1] {
            let found = method_start(&mem, map_base, hdr_map, pc, 1 << 12).unwrap();
            assert_eq!(found, Some(*start), "{entry} at {pc:#x}");
        }
        checked += 1;
        let header = mem.read_u64(start - 8).unwrap();
        let Some(want) = expected(entry, false) else {
            continue;
        };
        let got = name_of(&mut process, header, *start, start + size / 2);
        if same_name(&got.function, &want) {
            named += 1;
        } else {
            mismatches.push(format!("{entry}: got {}", got.function));
        }
    }
    assert!(checked > 40, "only {checked} JIT methods in the perf map");
    assert!(
        mismatches.is_empty(),
        "{named} named as the runtime does, {} not:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    drop(app);
}

#[test]
fn full_names_carry_the_type_arguments_the_code_runs_with() {
    let dir = tempfile::tempdir().unwrap();
    let Some((app, _)) = start(dir.path(), "mixed") else {
        return;
    };
    let pid = app.pid();
    let mut process = attach(pid, NameDetail::Full);
    process.start().unwrap();
    let mem = RemoteMemory::new(pid);
    let entries = perf_map(dir.path(), pid);
    let apply = entries
        .iter()
        .find(|(_, _, e)| e.contains("Shop.Box`1[System.Int32]::Apply"))
        .expect("Box<int>.Apply<long> was compiled");
    let header = mem.read_u64(apply.0 - 8).unwrap();
    let got = name_of(&mut process, header, apply.0, apply.0 + 4);
    assert_eq!(&*got.function, "Shop.Box<System.Int32>.Apply<System.Int64>");
    assert_eq!(&*got.file, "Shop.dll");
    // A DynamicMethod (LCG): its code is in a heap of its own, its name in its method desc.
    let dynamic = entries
        .iter()
        .find(|(_, _, e)| e.contains("dynamicClass::Shop.Dyn.Burn"))
        .expect("the DynamicMethod was compiled");
    let header = mem.read_u64(dynamic.0 - 8).unwrap();
    let got = name_of(&mut process, header, dynamic.0, dynamic.0 + 1);
    assert_eq!(&*got.function, "[dynamic method Shop.Dyn.Burn]");
    // Generic types of the framework, as the runtime names their instantiations.
    let mut compared = 0;
    for (start, _, entry) in entries
        .iter()
        .filter(|(_, _, e)| e.contains('`') && !e.contains("stub<"))
    {
        let Some(want) = expected(entry, true) else {
            continue;
        };
        if entry.contains("Apply") || entry.contains("!!") {
            continue; // generic methods: see above
        }
        let header = mem.read_u64(start - 8).unwrap();
        if header < 0x1000 {
            continue;
        }
        let got = name_of(&mut process, header, *start, *start);
        assert!(
            same_name(&got.function, &want),
            "{entry}: got {}",
            got.function
        );
        compared += 1;
    }
    assert!(
        compared > 5,
        "only {compared} generic framework methods compared"
    );
    drop(app);
}

/// .NET Core 3.1 (the only pre-6 CoreCLR installable here) is recognised and refused by
/// version, with a reason, rather than read with a layout that is not its own.
#[test]
fn core_3_1_is_refused_as_an_unsupported_version() {
    let Some(runtime) = runtimes::dotnetcore31() else {
        return;
    };
    let lib = runtime
        .exe
        .parent()
        .unwrap()
        .join("shared/Microsoft.NETCore.App/3.1.23/libcoreclr.so");
    let elf = Elf {
        path: lib.display().to_string(),
        data: std::fs::read(&lib).unwrap(),
    };
    assert!(
        elf.symbol("g_dacTable").is_some(),
        "3.1 has g_dacTable (in .symtab)"
    );
    let err = match Dotnet::default().detect(&elf) {
        Err(e) => e,
        Ok(d) => panic!("3.1.23 detected as supported: {}", d.is_some()),
    };
    let text = format!(
        "{err} {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(text.contains("3.1.23 is not supported"), "{text}");
}
