//! The process-aware symbolizer against real processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferroscope_test_harness::{self as harness, Guard};

use ferroscope_symbolize::kernel::KernelSymbols;
use ferroscope_symbolize::maps::{MapPath, read_maps};
use ferroscope_symbolize::{Error, Symbolizer};

const PROGRAM: &str = r#"
#include <stdio.h>
#include <unistd.h>

__attribute__((noinline)) int helper_function_for_ferroscope(int x) { return x * 3; }

__attribute__((noinline)) void leaf_function_for_ferroscope(void) {
    for (;;) pause();
}

int main(void) {
    printf("%p %p %p\n", (void *)leaf_function_for_ferroscope,
           (void *)helper_function_for_ferroscope, (void *)getpid);
    fflush(stdout);
    leaf_function_for_ferroscope();
    return helper_function_for_ferroscope(1);
}
"#;

/// Compiles [`PROGRAM`] into `dir`, returning the path of the binary.
fn compile(dir: &Path) -> PathBuf {
    let src = dir.join("prog.c");
    std::fs::write(&src, PROGRAM).expect("writing C source");
    let bin = dir.join("prog");
    harness::run_ok(
        Command::new("gcc")
            .args(["-O0", "-fno-omit-frame-pointer", "-o"])
            .arg(&bin)
            .arg(&src),
        Duration::from_secs(120),
    );
    bin
}

struct Running {
    child: Guard,
    leaf: u64,
    helper: u64,
    getpid: u64,
}

impl Running {
    fn start(bin: &Path) -> Running {
        let mut child = Guard::spawn(&mut Command::new(bin), Duration::from_secs(300));
        let line = child
            .next_line(Duration::from_secs(30))
            .expect("the test program printed its addresses");
        let addrs: Vec<u64> = line
            .split_whitespace()
            .map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).expect("address"))
            .collect();
        assert_eq!(addrs.len(), 3, "unexpected output {line:?}");
        Running {
            child,
            leaf: addrs[0],
            helper: addrs[1],
            getpid: addrs[2],
        }
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }

    fn kill(self) {
        // The guard kills the process group and reaps the program.
        drop(self.child);
    }
}

#[test]
fn symbolizes_a_process_after_it_exited() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = compile(dir.path());
    let prog = Running::start(&bin);
    let pid = prog.pid();
    let (leaf, helper, getpid) = (prog.leaf, prog.helper, prog.getpid);

    let mut s = Symbolizer::new();
    s.observe_process(pid).unwrap_or_else(|e| panic!("{e}"));
    prog.kill();
    assert!(matches!(read_maps(pid), Err(Error::ProcessExited { .. })));

    let f = s.symbolize_user(pid, leaf + 4);
    assert_eq!(
        f.function.as_deref(),
        Some("leaf_function_for_ferroscope"),
        "{f:?}"
    );
    let module = f.module.as_ref().expect("module");
    assert_eq!(module.basename(), "prog");
    assert_eq!(module.path, bin);
    assert!(
        module.build_id.as_ref().is_some_and(|id| id.len() == 40),
        "{module:?}"
    );
    assert_eq!(
        f.elf_addr,
        Some(module.vaddr_start + (leaf + 4 - module.map_start))
    );

    let f = s.symbolize_user(pid, helper);
    assert_eq!(f.display_name(), "helper_function_for_ferroscope");

    let f = s.symbolize_user(pid, getpid);
    assert!(
        f.function.as_deref().is_some_and(|n| n.ends_with("getpid")),
        "{f:?}"
    );
    assert!(
        f.module
            .as_ref()
            .is_some_and(|m| m.basename().starts_with("libc")),
        "{f:?}"
    );

    // An address in no mapping: unknown, and the maps of the dead process cannot be re-read.
    let f = s.symbolize_user(pid, 0x10);
    assert_eq!(
        (f.display_name(), f.module, f.function),
        ("[unknown]".to_owned(), None, None)
    );

    let stats = s.stats();
    assert_eq!(stats.processes_observed, 1);
    assert!(stats.files_parsed >= 3, "{stats:?}"); // prog, libc, ld.so (and the vDSO)
    assert_eq!(stats.unresolved_frames, 1);

    // A second instance of the same program parses nothing new.
    let prog = Running::start(&bin);
    let pid2 = prog.pid();
    s.observe_process(pid2).unwrap_or_else(|e| panic!("{e}"));
    let leaf2 = prog.leaf;
    prog.kill();
    let after = s.stats();
    assert_eq!(after.files_parsed, stats.files_parsed, "{after:?}");
    assert!(after.cache_hits >= stats.cache_hits + 3, "{after:?}");
    assert_eq!(
        s.symbolize_user(pid2, leaf2).function.as_deref(),
        Some("leaf_function_for_ferroscope")
    );

    s.forget_process(pid);
    assert_eq!(s.symbolize_user(pid, leaf).function, None);
}

#[test]
fn stripped_binary_falls_back_to_module_plus_offset() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = compile(dir.path());
    let stripped = dir.path().join("prog-stripped");
    harness::run_ok(
        Command::new("strip").arg("-o").arg(&stripped).arg(&bin),
        Duration::from_secs(60),
    );

    // ELF address of the helper, from the unstripped copy (strip keeps the layout).
    let nm = harness::run_ok(Command::new("nm").arg(&bin), Duration::from_secs(60));
    let helper_vaddr = nm
        .lines()
        .find(|l| l.ends_with(" helper_function_for_ferroscope"))
        .and_then(|l| u64::from_str_radix(l.split(' ').next()?, 16).ok())
        .expect("helper in nm output");

    let prog = Running::start(&stripped);
    let mut s = Symbolizer::new();
    let f = s.symbolize_user(prog.pid(), prog.helper);
    prog.kill();
    assert_eq!(f.function, None);
    assert_eq!(f.elf_addr, Some(helper_vaddr));
    assert_eq!(f.display_name(), format!("prog-stripped+{helper_vaddr:#x}"));
    assert_eq!(
        s.stats().processes_observed,
        1,
        "never-observed pid is observed on first use"
    );
}

#[test]
fn symbolizes_own_vdso() {
    let maps = read_maps(std::process::id()).expect("own maps");
    let Some(vdso) = maps
        .iter()
        .find(|m| m.path == MapPath::Special("[vdso]".into()))
    else {
        harness::skip("this kernel maps no vDSO into processes");
        return;
    };
    let mut s = Symbolizer::new();
    let pid = std::process::id();
    let names: Vec<String> = (vdso.start..vdso.end)
        .step_by(16)
        .filter_map(|a| s.symbolize_user(pid, a).function)
        .collect();
    assert!(
        names.iter().any(|n| n.contains("clock_gettime")),
        "vDSO functions: {names:?}"
    );
    let f = s.symbolize_user(pid, vdso.start);
    assert_eq!(f.module.as_ref().map(|m| m.basename()), Some("[vdso]"));
}

#[test]
fn unknown_addresses_reread_maps_at_most_once_per_interval() {
    let pid = std::process::id();
    let mut s = Symbolizer::new().with_reread_interval(Duration::from_secs(3600));
    s.observe_process(pid).expect("observing self");
    // With a zero interval the first miss re-reads at once; with a long one, later misses do not.
    let mut s = s.with_reread_interval(Duration::ZERO);
    s.symbolize_user(pid, 0x10);
    assert_eq!(s.stats().maps_rereads, 1);
    let mut s = s.with_reread_interval(Duration::from_secs(3600));
    s.symbolize_user(pid, 0x10);
    s.symbolize_user(pid, 0x20);
    assert_eq!(s.stats().maps_rereads, 1);
    assert_eq!(s.stats().unresolved_frames, 3);
}

#[test]
fn processes_that_never_existed_do_not_panic() {
    let mut s = Symbolizer::new();
    let err = s.observe_process(u32::MAX - 1).unwrap_err();
    assert!(err.to_string().contains("has exited"), "{err}");
    let f = s.symbolize_user(u32::MAX - 1, 0x401000);
    assert_eq!(f.display_name(), "[unknown]");
}

#[test]
fn symbolizes_kernel_addresses() {
    let table = "\
ffffffff81000000 T _stext
ffffffff81001000 T schedule
ffffffffc0b00000 t bpf_prog_6deef7357e7b4530_sd_fw_egress\t[bpf]
ffffffffc0c00000 t nft_do_chain\t[nf_tables]
";
    let mut s = Symbolizer::new().with_kernel_symbols(KernelSymbols::from_kallsyms(table));
    let f = s.symbolize_kernel(0xffffffff81001010);
    assert_eq!(
        (f.function.as_deref(), f.module.as_str()),
        (Some("schedule"), "vmlinux")
    );
    let f = s.symbolize_kernel(0xffffffffc0b00010);
    assert_eq!(f.module, "bpf");
    assert_eq!(f.display_name(), "bpf_prog_6deef7357e7b4530_sd_fw_egress");
    let f = s.symbolize_kernel(0xffffffffc0c00001);
    assert_eq!(f.module, "nf_tables");
    let f = s.symbolize_kernel(0x1000);
    assert_eq!(
        (f.display_name(), f.function),
        ("[unknown]".to_owned(), None)
    );
}

#[test]
fn symbolizes_real_kernel_addresses() {
    let Ok(k) = KernelSymbols::load() else { return }; // Not root: covered by the kernel unit tests.
    let schedule = k.address_of("schedule").expect("schedule in kallsyms");
    let mut s = Symbolizer::new();
    let f = s.symbolize_kernel(schedule + 1);
    assert_eq!(
        (f.function.as_deref(), f.module.as_str()),
        (Some("schedule"), "vmlinux")
    );
}

#[test]
fn observe_is_lazy_and_the_cache_is_bounded_and_shared() {
    let pid = std::process::id();
    let mut s = Symbolizer::new().with_cache_capacity(2);
    s.observe_process(pid).expect("observing self");
    // Only the vDSO (read from memory now, it is tiny) is parsed at observation time.
    assert!(s.stats().files_parsed <= 1, "{:?}", s.stats());
    // Names in three files force three parses; the cache keeps two.
    let here = observe_is_lazy_and_the_cache_is_bounded_and_shared as *const () as usize as u64;
    let getpid = libc_getpid_address();
    for addr in [here, getpid] {
        let f = s.symbolize_user(pid, addr);
        assert!(f.function.is_some(), "{f:?}");
    }
    let first = s.stats();
    assert!(first.files_parsed >= 2, "{first:?}");
    assert!(s.cached_files() <= 2);
    // Re-observing the same process reuses its unchanged mappings without touching files.
    s.observe_process(pid).expect("observing self");
    s.symbolize_user(pid, here);
    assert_eq!(s.stats().files_parsed, first.files_parsed);
    // A fresh snapshot finds cached files by identity.
    s.forget_process(pid);
    s.observe_process(pid).expect("observing self");
    let f = s.symbolize_user(pid, getpid);
    assert!(
        f.function.as_deref().is_some_and(|n| n.contains("getpid")),
        "{f:?}"
    );
    assert!(s.cached_files() <= 2);
}

fn libc_getpid_address() -> u64 {
    unsafe extern "C" {
        fn getpid() -> i32;
    }
    getpid as *const () as usize as u64
}
