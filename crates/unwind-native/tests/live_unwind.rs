//! The reference unwinder on real stacks: programs compiled for the test stop themselves
//! (SIGSTOP inside the innermost function); the test captures their registers with ptrace,
//! reads their memory through /proc/PID/mem, loads the modules of /proc/PID/maps and checks
//! that the unwound PCs name the expected call chain, down to `main` and
//! `__libc_start_call_main`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferroscope_test_harness::{self as harness, Guard};

use common::Symbols;
use ferroscope_unwind_native::{
    ExtractOptions, LoadedModule, Registers, StackDeltaTable, UnwindEnd, extract, unwind,
};
use object::{Object, ObjectSegment};

const C_CHAIN: &str = r#"
#include <signal.h>
volatile int sink;
__attribute__((noinline)) int c_func(int x) { raise(SIGSTOP); sink = x; return x + 1; }
__attribute__((noinline)) int b_func(int x) { int r = c_func(x * 2); sink = r; return r + 3; }
__attribute__((noinline)) int a_func(int x) { int r = b_func(x + 1); sink = r; return r * 2; }
int main(int argc, char **argv) { (void)argv; return a_func(argc) & 1; }
"#;

const C_RECURSION: &str = r#"
#include <signal.h>
volatile int sink;
__attribute__((noinline)) int rec(int n) {
    if (n == 0) { raise(SIGSTOP); return 0; }
    int r = rec(n - 1); sink = r; return r + 1;
}
int main(void) { return rec(100) & 1; }
"#;

const CXX_CHAIN: &str = r#"
#include <csignal>
#include <vector>
volatile int sink;
__attribute__((noinline)) int inner(int x) { std::raise(SIGSTOP); sink = x; return x; }
struct Widget {
    __attribute__((noinline)) virtual int work(int x) {
        std::vector<int> v(x, 1);
        int r = inner(static_cast<int>(v.size())); sink = r; return r;
    }
};
template <class F> __attribute__((noinline)) int apply(F f, int x) { int r = f(x); sink = r; return r; }
int main(int argc, char **) {
    Widget w; Widget *p = &w;
    return apply([p](int x) { return p->work(x); }, argc + 3) & 1;
}
"#;

struct Module {
    path: String,
    start: u64,
    end: u64,
    bias: u64,
    table: StackDeltaTable,
    symbols: Symbols,
}

struct Capture {
    regs: Registers,
    mem: std::fs::File,
    modules: Vec<Module>,
}

fn compile(compiler: &str, src: &str, ext: &str, dir: &Path) -> std::path::PathBuf {
    let src_path = dir.join(format!("prog.{ext}"));
    std::fs::write(&src_path, src).unwrap();
    let exe = dir.join("prog");
    harness::run_ok(
        Command::new(compiler)
            .args(["-O2", "-fomit-frame-pointer", "-o"])
            .arg(&exe)
            .arg(&src_path),
        Duration::from_secs(120),
    );
    exe
}

fn bias_of(data: &[u8], map_start: u64, map_offset: u64) -> u64 {
    let file = object::File::parse(data).unwrap();
    for seg in file.segments() {
        let (off, size) = seg.file_range();
        if off <= map_offset && map_offset < off + size.max(1) {
            return map_start.wrapping_sub(seg.address() - off + map_offset);
        }
    }
    panic!("no segment holds file offset {map_offset:#x}");
}

fn load_modules(pid: i32) -> Vec<Module> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    // path -> (lowest start, its offset, highest end)
    let mut ranges: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[5].starts_with('/') {
            continue;
        }
        let (s, e) = f[0].split_once('-').unwrap();
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        let off = u64::from_str_radix(f[2], 16).unwrap();
        let entry = ranges.entry(f[5].to_string()).or_insert((s, off, e));
        if s < entry.0 {
            (entry.0, entry.1) = (s, off);
        }
        entry.2 = entry.2.max(e);
    }
    ranges
        .into_iter()
        .filter_map(|(path, (start, off, end))| {
            let data = std::fs::read(&path).ok()?;
            let table = extract(&data, None, &ExtractOptions::default()).ok()?;
            let bias = bias_of(&data, start, off);
            Some(Module {
                symbols: Symbols::load(Path::new(&path)),
                path,
                start,
                end,
                bias,
                table,
            })
        })
        .collect()
}

fn waitpid(pid: i32, flags: i32) -> i32 {
    let mut status = 0;
    // SAFETY: plain syscall with a valid out-pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, flags) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    status
}

/// Runs `exe`, waits for it to stop itself, and captures its registers and modules. The
/// guard kills it after 60 s, which ends a wait for a stop that never comes.
fn capture(exe: &Path) -> (Capture, Guard) {
    let child = Guard::spawn(
        Command::new(exe).stdin(Stdio::null()),
        Duration::from_secs(60),
    );
    let pid = child.pid() as i32;
    let status = waitpid(pid, libc::WUNTRACED);
    assert!(
        libc::WIFSTOPPED(status),
        "child did not stop: status {status:#x}"
    );
    // SAFETY: ptrace on our own stopped child; null addr/data are valid for these requests.
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0),
            0,
            "PTRACE_SEIZE: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0), 0);
    }
    waitpid(pid, libc::__WALL);
    // SAFETY: zeroed POD register struct.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: the tracee is in a ptrace stop; `regs` is a valid out-buffer.
    let rc = unsafe { libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs as *mut _) };
    assert_eq!(rc, 0, "PTRACE_GETREGS: {}", std::io::Error::last_os_error());
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let regs = Registers {
        rip: regs.rip,
        rsp: regs.rsp,
        rbp: regs.rbp,
    };
    (
        Capture {
            regs,
            mem,
            modules: load_modules(pid),
        },
        child,
    )
}

/// Unwinds the capture and names every frame ("?" when unnamed).
fn unwind_and_name(c: &Capture) -> (Vec<String>, UnwindEnd) {
    let loaded: Vec<LoadedModule<'_>> = c
        .modules
        .iter()
        .map(|m| LoadedModule {
            start: m.start,
            end: m.end,
            bias: m.bias,
            table: &m.table,
        })
        .collect();
    let read = |addr: u64| {
        let mut buf = [0u8; 8];
        c.mem
            .read_exact_at(&mut buf, addr)
            .ok()
            .map(|_| u64::from_le_bytes(buf))
    };
    let (frames, end) = unwind(c.regs, &read, &loaded, 512);
    let names = frames
        .iter()
        .enumerate()
        .map(|(i, &pc)| {
            let lookup = if i == 0 { pc } else { pc - 1 };
            c.modules
                .iter()
                .find(|m| m.start <= lookup && lookup < m.end)
                .map(|m| {
                    // The kernel's return address into a signal trampoline is its first
                    // byte; `pc - 1` is the padding before it, so fall back to `pc`.
                    let name = m
                        .symbols
                        .lookup(lookup - m.bias)
                        .or_else(|| m.symbols.lookup(pc - m.bias));
                    name.map_or(format!("{}+?", m.path), str::to_string)
                })
                .unwrap_or_else(|| format!("{pc:#x}"))
        })
        .collect();
    (names, end)
}

fn run(compiler: &str, src: &str, ext: &str) -> (Vec<String>, UnwindEnd) {
    let dir = common::tempdir();
    let exe = compile(compiler, src, ext, dir.path());
    let (cap, child) = capture(&exe);
    let result = unwind_and_name(&cap);
    drop(child);
    result
}

/// `names` contains `expected` as consecutive frames (each matched by substring), followed
/// only by libc start-up and `_start`, and the walk ended normally.
fn assert_chain(names: &[String], end: UnwindEnd, expected: &[&str]) {
    let first = names.iter().position(|n| n.contains(expected[0]));
    let Some(first) = first else {
        panic!("{} not found in {names:#?} (end {end:?})", expected[0])
    };
    for (k, want) in expected.iter().enumerate() {
        let got = names
            .get(first + k)
            .map(String::as_str)
            .unwrap_or("<missing>");
        assert!(
            got.contains(want),
            "frame {}: expected {want}, got {got}\nall: {names:#?}\nend {end:?}",
            first + k
        );
    }
    assert_eq!(end, UnwindEnd::Stop, "frames: {names:#?}");
    assert_eq!(
        names.last().map(String::as_str),
        Some("_start"),
        "{names:#?}"
    );
}

#[test]
fn c_chain_without_frame_pointers() {
    let (names, end) = run("gcc", C_CHAIN, "c");
    assert_chain(
        &names,
        end,
        &[
            "c_func",
            "b_func",
            "a_func",
            "main",
            "__libc_start_call_main",
            "__libc_start_main",
        ],
    );
}

#[test]
fn cxx_chain_without_frame_pointers() {
    let (names, end) = run("g++", CXX_CHAIN, "cc");
    // inner(int), Widget::work(int), apply<main::{lambda}>(...) (the lambda is inlined), main.
    assert_chain(
        &names,
        end,
        &[
            "_Z5inneri",
            "_ZN6Widget4workEi",
            "5apply",
            "main",
            "__libc_start_call_main",
        ],
    );
}

#[test]
fn recursion_100_deep() {
    let (names, end) = run("gcc", C_RECURSION, "c");
    let first = names.iter().position(|n| n == "rec").expect("rec frames");
    let count = names[first..].iter().take_while(|n| *n == "rec").count();
    assert_eq!(count, 101, "rec(100) .. rec(0): {names:#?}");
    assert_chain(
        &names[first + count - 1..],
        end,
        &["rec", "main", "__libc_start_call_main", "__libc_start_main"],
    );
}

const C_SIGNAL: &str = r#"
#include <signal.h>
#include <string.h>
volatile int sink;
__attribute__((noinline)) int c_func(int x) { raise(SIGSTOP); sink = x; return x + 1; }
__attribute__((noinline)) void handler(int sig) { sink = c_func(sig); }
__attribute__((noinline)) int a_func(int x) { raise(SIGUSR1); sink = x; return x * 2; }
int main(int argc, char **argv) {
    (void)argv;
    struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = handler;
    sigaction(SIGUSR1, &sa, 0);
    return a_func(argc) & 1;
}
"#;

#[test]
fn through_a_signal_frame() {
    let (names, end) = run("gcc", C_SIGNAL, "c");
    // The handler's caller is the trampoline; after it, the interrupted PC (exact, no -1)
    // inside raise, then the code that raised.
    // glibc's __restore_rt symbol has size 0, so the trampoline frame is named by module.
    assert_chain(
        &names,
        end,
        &[
            "c_func",
            "handler",
            "libc.so.6",
            "__pthread_kill_implementation",
            "__GI_raise",
            "a_func",
            "main",
            "__libc_start_call_main",
        ],
    );
}
