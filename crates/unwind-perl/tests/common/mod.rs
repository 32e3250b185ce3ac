//! Shared by the integration tests: the Perls of this machine (Debian's 5.36 on the host,
//! 5.40 in the trixie chroot, 5.42 in the sid chroot), an `ElfFile` over a file on disk, and
//! starting a fixture script in a Perl.
#![allow(dead_code, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferroscope_test_harness::runtimes::{self, Runtime};
use ferroscope_test_harness::{self as harness, Guard};
use ferroscope_unwind_api::{ElfFile, SymbolRange, TlsTemplate};
use object::{Object, ObjectSegment, ObjectSymbol};

/// One Perl of the machine.
pub struct TestPerl {
    /// `5.36` ...
    pub minor: u8,
    /// How to start it.
    pub runtime: Runtime,
}

impl TestPerl {
    /// The interpreter's file on the host.
    pub fn exe(&self) -> &Path {
        &self.runtime.exe
    }

    /// The host path of `inside` (a path the interpreter sees).
    pub fn host_path(&self, inside: &Path) -> PathBuf {
        match &self.runtime.chroot {
            Some((chroot, _)) => chroot.host_path(inside),
            None => inside.to_path_buf(),
        }
    }

    /// A fixture file as the interpreter sees it (copied into the chroot's /tmp).
    pub fn fixture(&self, name: &str) -> PathBuf {
        let host = fixture(name);
        match &self.runtime.chroot {
            Some((chroot, _)) => chroot.copy_in(&host),
            None => host,
        }
    }

    /// Starts `perl -I<dir of the fixtures> <script> <args>` and waits for its `ready` line.
    pub fn start(&self, script: &str, args: &[&str]) -> Guard {
        let path = self.fixture(script);
        // Sleepy.pm goes where the script is (`require` mode).
        let lib = self.fixture("Sleepy.pm");
        let mut cmd: Command = self.runtime.command();
        cmd.arg(format!("-I{}", lib.parent().unwrap().display()))
            .arg(&path)
            .args(args);
        let mut guard = Guard::spawn(&mut cmd, Duration::from_secs(120));
        guard.wait_for_line("ready", Duration::from_secs(30));
        guard
    }
}

/// A file of `fixtures/perl/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/perl")
        .join(name)
}

/// Debian's Perl 5.36 on the host, or `None` after a skip.
pub fn host_perl() -> Option<TestPerl> {
    Some(TestPerl {
        minor: 36,
        runtime: runtimes::perl_debian()?,
    })
}

/// Every Perl the tests run: the host's 5.36 and the chroots' 5.40 and 5.42 (each skipped,
/// or a failure when tests are required, when it cannot be had).
pub fn perls() -> Vec<TestPerl> {
    let mut out = Vec::new();
    out.extend(host_perl());
    if harness::root("the Debian chroots with Perl 5.40 and 5.42") {
        if let Some(runtime) = runtimes::perl_trixie() {
            out.push(TestPerl { minor: 40, runtime });
        }
        if let Some(runtime) = runtimes::perl_sid() {
            out.push(TestPerl { minor: 42, runtime });
        }
    }
    out
}

/// An `ElfFile` over a file read from disk (the agent has its own, over the mapped bytes).
pub struct Elf<'a> {
    pub path: String,
    pub data: &'a [u8],
    pub file: object::File<'a>,
}

impl<'a> Elf<'a> {
    pub fn new(path: &Path, data: &'a [u8]) -> Elf<'a> {
        Elf {
            path: path.to_string_lossy().into_owned(),
            data,
            file: object::File::parse(data).expect("an ELF file"),
        }
    }
}

/// Defined here: code, data, and thread-local variables (which `object` does not count as
/// definitions), as the agent's own `ElfFile` does.
fn defined(s: &object::Symbol<'_, '_>) -> bool {
    s.is_definition() || (s.kind() == object::SymbolKind::Tls && !s.is_undefined())
}

impl ElfFile for Elf<'_> {
    fn path(&self) -> &str {
        &self.path
    }
    fn symbol(&self, name: &str) -> Option<SymbolRange> {
        self.file
            .dynamic_symbols()
            .chain(self.file.symbols())
            .find(|s| s.name() == Ok(name) && defined(s))
            .map(|s| SymbolRange {
                address: s.address(),
                size: s.size(),
            })
    }
    fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
        self.file
            .dynamic_symbols()
            .find(|s| s.name() == Ok(name) && defined(s))
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
    fn tls_template(&self) -> Option<TlsTemplate> {
        use object::read::elf::{FileHeader, ProgramHeader};
        use object::{Endianness, elf};
        let header = elf::FileHeader64::<Endianness>::parse(self.data).ok()?;
        let endian = header.endian().ok()?;
        let tls = header
            .program_headers(endian, self.data)
            .ok()?
            .iter()
            .find(|p| p.p_type(endian) == elf::PT_TLS)?;
        Some(TlsTemplate {
            vaddr: tls.p_vaddr(endian),
            memsz: tls.p_memsz(endian),
            align: tls.p_align(endian),
        })
    }
}

/// The load bias of the file the process maps at `path` (its mapping at file offset 0).
pub fn bias(pid: u32, path: &str) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && f[5] == path && u64::from_str_radix(f[2], 16) == Ok(0))
                .then(|| u64::from_str_radix(f[0].split('-').next()?, 16).ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("process {pid} does not map {path}:\n{maps}"))
}

/// The line number of the line of `fixtures/perl/<script>` that contains `text`.
pub fn line_of(script: &str, text: &str) -> u32 {
    std::fs::read_to_string(fixture(script))
        .unwrap()
        .lines()
        .position(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no line with `{text}` in {script}")) as u32
        + 1
}
