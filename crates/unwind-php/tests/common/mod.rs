//! What the tests of real PHP processes share: the PHP builds on this machine (installed by
//! the harness), an `ElfFile` over a file on disk, and where a process maps its executable.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferroscope_test_harness::runtimes::{self, Runtime};
use ferroscope_test_harness::{self as harness, Guard};
use ferroscope_unwind_api::{ElfFile, SymbolRange};
use object::{Object, ObjectSegment, ObjectSymbol};

/// Every PHP build the tests run: npm's @libphp 7.4, 8.2, 8.3, 8.4, 8.5 and Debian's 8.2.
/// A missing one is skipped (logged), or fails the test when tests are required.
pub fn phps() -> Vec<Runtime> {
    let mut out: Vec<Runtime> = ["7.4", "8.2", "8.3", "8.4", "8.5"]
        .into_iter()
        .filter_map(runtimes::php)
        .collect();
    out.extend(runtimes::php_debian());
    out
}

/// `PHP_VERSION` of a runtime, as it prints it.
pub fn php_version(rt: &Runtime) -> String {
    harness::run_ok(
        rt.command().args(["-n", "-r", "echo PHP_VERSION;"]),
        Duration::from_secs(60),
    )
}

/// A script of this crate's tests.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name)
}

/// Starts `php -n SCRIPT` (with `args` before the script) and waits for its `ready`.
pub fn start(rt: &Runtime, args: &[&str], script: &Path) -> Guard {
    let mut cmd: Command = rt.command();
    cmd.arg("-n").args(args).arg(script);
    let mut guard = Guard::spawn(&mut cmd, Duration::from_secs(120));
    guard.wait_for_line("ready", Duration::from_secs(60));
    guard
}

/// An `ElfFile` over a file read from disk (the agent has its own, over the mapped bytes).
pub struct Elf<'a> {
    pub path: String,
    pub file: object::File<'a>,
}

impl<'a> Elf<'a> {
    pub fn new(path: &Path, bytes: &'a [u8]) -> Elf<'a> {
        Elf {
            path: path.to_string_lossy().into_owned(),
            file: object::File::parse(bytes).expect("an ELF file"),
        }
    }
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

/// The load bias of `exe` in process `pid`: where its offset-0 mapping starts, minus the
/// page of its first segment's address.
pub fn load_bias(pid: u32, exe: &Path, file: &object::File<'_>) -> u64 {
    let exe = std::fs::canonicalize(exe).expect("canonical path");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let start = maps
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 6
                && f[5] == exe.to_string_lossy()
                && u64::from_str_radix(f[2], 16) == Ok(0))
            .then(|| u64::from_str_radix(f[0].split('-').next()?, 16).ok())
            .flatten()
        })
        .unwrap_or_else(|| panic!("{} not mapped at offset 0 in {pid}", exe.display()));
    let first = file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
    start - first
}

/// Line numbers of the `// @name` markers of a script.
pub fn markers(script: &Path) -> std::collections::HashMap<String, u32> {
    std::fs::read_to_string(script)
        .expect("read script")
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let (_, m) = l.split_once("// @")?;
            Some((m.trim().to_string(), i as u32 + 1))
        })
        .collect()
}
