//! The initramfs every guest of the matrix boots: busybox, the ferroscope binary, the two
//! test programs, the shared libraries they link (at their host paths, so the dynamic loader
//! finds them where `ldd` did), and the few standard-library files the Python program needs.
//! Debian's cloud kernels have no 9p, so the host filesystem cannot be shared instead.
//!
//! The archive is written here in the kernel's "newc" cpio format, straight from the host
//! files: no staging copy of ~100 MB, and the paths are exactly the host's.

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// `/init`: mounts, then the matrix steps, then the results out on the second serial port.
const INIT: &str = include_str!("init.sh");
/// The matrix steps, shared with the run on the host.
pub const MATRIX: &str = include_str!("matrix.sh");

/// Where things are inside the guest (the binary and the C program at fixed paths; the Python
/// interpreter and its libraries at their host paths).
pub const GUEST_FERROSCOPE: &str = "/bin/ferroscope";
pub const GUEST_C_PROGRAM: &str = "/nofp_chain";
pub const GUEST_PY_SCRIPT: &str = "/chains.py";
pub const GUEST_KPROBE_PROGRAM: &str = "/getppids";
const GUEST_OUT: &str = "/tmp/out";

/// What goes in, from the host.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub busybox: &'a Path,
    pub ferroscope: &'a Path,
    pub c_program: &'a Path,
    pub python: &'a Path,
    pub py_script: &'a Path,
    pub kprobe_program: &'a Path,
    pub record_seconds: u32,
    pub rate: u32,
}

/// What was written, for the report.
#[derive(Debug)]
pub struct Built {
    pub bytes: u64,
    pub python_stdlib_files: usize,
    pub python_stdlib_bytes: u64,
}

pub fn build(out: &Path, inputs: &Inputs) -> Result<Built> {
    let stdlib = python_stdlib(inputs.python, inputs.py_script)?;
    let mut elves: Vec<&Path> = vec![inputs.ferroscope, inputs.python, inputs.c_program];
    elves.extend(
        stdlib
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "so"))
            .map(PathBuf::as_path),
    );
    let mut libraries = BTreeSet::new();
    for elf in &elves {
        libraries.extend(shared_libraries(elf)?);
    }

    let file = std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut cpio = Newc::new(BufWriter::new(file));
    cpio.char_device("dev/console", 5, 1)?;
    cpio.data("init", INIT.as_bytes(), 0o755)?;
    cpio.data("matrix.sh", MATRIX.as_bytes(), 0o644)?;
    cpio.data("matrix.conf", config(inputs).as_bytes(), 0o644)?;
    cpio.host_file("bin/busybox", inputs.busybox)?;
    cpio.host_file(&GUEST_FERROSCOPE[1..], inputs.ferroscope)?;
    cpio.host_file(&GUEST_C_PROGRAM[1..], inputs.c_program)?;
    cpio.host_file(&GUEST_PY_SCRIPT[1..], inputs.py_script)?;
    cpio.host_file(&GUEST_KPROBE_PROGRAM[1..], inputs.kprobe_program)?;
    for path in std::iter::once(&inputs.python.to_owned())
        .chain(&stdlib)
        .chain(&libraries)
    {
        cpio.host_file(&path.to_string_lossy()[1..], path)?;
    }
    let bytes = cpio.finish()?;
    let python_stdlib_bytes = stdlib
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    Ok(Built {
        bytes,
        python_stdlib_files: stdlib.len(),
        python_stdlib_bytes,
    })
}

/// The variables `matrix.sh` reads, as `/init` sources them. The host's `RUST_LOG`, when
/// set, goes to ferroscope in the guest too (to debug a kernel).
fn config(inputs: &Inputs) -> String {
    let log = std::env::var("RUST_LOG").map_or(String::new(), |v| format!("RUST_LOG='{v}'\n"));
    log + &format!(
        "OUT={GUEST_OUT}\nFERROSCOPE={GUEST_FERROSCOPE}\nC_PROGRAM={GUEST_C_PROGRAM}\n\
         PYTHON={}\nPY_SCRIPT={GUEST_PY_SCRIPT}\nRECORD_SECONDS={}\nRATE={}\n\
         KPROBE_PROGRAM={GUEST_KPROBE_PROGRAM}\nKPROBE_ROUNDS={}\n",
        inputs.python.display(),
        inputs.record_seconds,
        inputs.rate,
        super::kprobes::ROUNDS
    )
}

/// Runs the script the way `matrix.sh` does (`-S -E`: no site-packages, no environment) up
/// to its `ready` line, and lists the files of every module it imported by then: the smallest
/// standard library that runs it. Frozen modules are listed too; they are small, and `os.py`
/// is the landmark CPython looks for to find its prefix.
const LIST_MODULES: &str = r#"
import os, sys
script = sys.argv[1]
class Tap:
    def write(self, s):
        if "ready" in s:
            for m in list(sys.modules.values()):
                for attr in ("__file__", "__cached__"):
                    f = getattr(m, attr, None)
                    if f:
                        sys.__stderr__.write(f + "\n")
            sys.__stderr__.flush()
            os._exit(0)
        return len(s)
    def flush(self):
        pass
sys.stdout = Tap()
sys.argv = [script]
exec(compile(open(script).read(), script, "exec"), {"__name__": "__main__", "__file__": script})
"#;

fn python_stdlib(python: &Path, script: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new(python)
        .args(["-S", "-E", "-c", LIST_MODULES])
        .arg(script)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} could not run {} to list its modules: {}",
            python.display(),
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let prefix = python
        .parent()
        .and_then(Path::parent)
        .context("the interpreter is not in <prefix>/bin")?;
    let files: BTreeSet<PathBuf> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.starts_with(prefix) && p.is_file())
        .collect();
    Ok(files.into_iter().collect())
}

/// The libraries `ldd` resolves for `elf` (none for a static one), the loader included.
fn shared_libraries(elf: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(elf)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || out.stdout.is_empty() {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {text}", elf.display());
    }
    let mut found = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("ldd {}: {}", elf.display(), line.trim());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = line.split("=>").last().unwrap_or(line).trim();
        if let Some(path) = path.split(" (").next().filter(|p| p.starts_with('/')) {
            found.push(PathBuf::from(path));
        }
    }
    Ok(found)
}

/// A writer of the "newc" cpio format the kernel unpacks: a 110-byte ASCII header of 13 hex
/// fields, the NUL-ended name and the data, each padded to 4 bytes. The kernel creates no
/// missing parent folders, so every path's folders are written before it.
struct Newc<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Newc<W> {
    fn new(out: W) -> Self {
        Newc {
            out,
            written: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn host_file(&mut self, name: &str, host: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(host).with_context(|| format!("{}", host.display()))?;
        let bytes = std::fs::read(host).with_context(|| format!("read {}", host.display()))?;
        self.data(name, &bytes, meta.permissions().mode() & 0o7777)
    }

    fn data(&mut self, name: &str, bytes: &[u8], perm: u32) -> Result<()> {
        self.parents(name)?;
        self.entry(name, 0o100000 | perm, (0, 0), bytes)
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) -> Result<()> {
        self.parents(name)?;
        self.entry(name, 0o020600, (major, minor), &[])
    }

    fn parents(&mut self, name: &str) -> Result<()> {
        let mut dir = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(part);
            if self.dirs.insert(dir.clone()) {
                let d = dir.clone();
                self.entry(&d, 0o040755, (0, 0), &[])?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).context("a file over 4 GiB")?,
            0, // dev major, minor
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.next_ino += 1;
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.write(&[0; 3][..n as usize])
    }

    fn finish(mut self) -> Result<u64> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists an archive with busybox's cpio, as an independent reader.
    #[test]
    fn newc_archive_reads_back() {
        assert!(
            Path::new("/bin/busybox").exists(),
            "this test reads the archive back with busybox: apt-get install busybox-static"
        );
        let mut buf = Vec::new();
        let mut cpio = Newc::new(&mut buf);
        cpio.data("a/b/c.txt", b"hello", 0o644).unwrap();
        cpio.data("a/d", b"xy", 0o755).unwrap();
        cpio.finish().unwrap();
        assert_eq!(buf.len() % 4, 0);
        let mut child = Command::new("/bin/busybox")
            .args(["cpio", "-t"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        let out = child.wait_with_output().unwrap();
        let names = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            names.lines().collect::<Vec<_>>(),
            ["a", "a/b", "a/b/c.txt", "a/d"]
        );
    }
}
