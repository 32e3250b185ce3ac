//! `cargo xtask kernels`: the kernel matrix. Boots Debian's 5.10, 6.1 and 6.12 cloud kernels
//! under qemu (TCG: KVM cannot run a guest on this machine) with a small initramfs, runs
//! `ferroscope check` and a record of a C program built without frame pointers and of a
//! Python program in each, does the same on the host kernel, and judges the profiles by
//! whole call chains. Exits non-zero when any kernel fails.

mod debian;
mod initramfs;
mod kprobes;
mod outcome;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{build_release, ensure_packages, is_root, root, run, target_dir};
use outcome::Outcome;

/// qemu and the guest's tools, and gcc for the C program.
const PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "gcc", "libc6-dev"];
/// The CPython that runs the Python program: 3.11+ for the qualified names the chains use.
const PYTHON: &str = "/root/.pyenv/versions/3.12.1/bin/python3.12";
/// Long enough that the 1-2 s the unwind tables take to load under TCG stay a small part.
const RECORD_SECONDS: u32 = 10;
const RATE: u32 = 499;
/// A guest that has not powered off by then is stuck.
const QEMU_TIMEOUT_SECONDS: u32 = 300;

const USAGE: &str = "usage: cargo xtask kernels [--kernel 5.10|6.1|6.12|host]... [--binary PATH] [--keep] [--refresh]

Boots Debian's 5.10, 6.1 and 6.12 kernels under qemu (and runs on the host kernel too),
runs `ferroscope check` and records of a no-frame-pointer C program and a Python program in
each, and checks that the profiles carry whole call chains.

  --kernel K     run only this kernel (repeatable); `host` is the machine's own kernel
  --binary PATH  use this ferroscope binary instead of building the release one
  --keep         keep the work folder (target/kernels/work: initramfs, logs, profiles)
  --refresh      update the private apt lists before picking the kernel packages";

#[derive(Debug)]
struct Options {
    kernels: Vec<String>,
    binary: Option<PathBuf>,
    keep: bool,
    refresh: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options {
            kernels: Vec::new(),
            binary: None,
            keep: false,
            refresh: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--kernel" => {
                    let k = args.next().context("--kernel needs a value")?;
                    if k != "host" && !debian::KERNELS.iter().any(|d| d.name == k) {
                        bail!("--kernel {k}: not in the matrix (5.10, 6.1, 6.12, host)");
                    }
                    o.kernels.push(k.clone());
                }
                "--binary" => {
                    o.binary = Some(args.next().context("--binary needs a path")?.into());
                }
                "--keep" => o.keep = true,
                "--refresh" => o.refresh = true,
                "-h" | "--help" => {
                    eprintln!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument `{other}`\n\n{USAGE}"),
            }
        }
        if o.kernels.is_empty() {
            o.kernels = debian::KERNELS.iter().map(|k| k.name.to_owned()).collect();
            o.kernels.push("host".into());
        }
        Ok(o)
    }

    fn host(&self) -> bool {
        self.kernels.iter().any(|k| k == "host")
    }
}

pub fn kernels(args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    let started = Instant::now();
    if options.host() && !is_root() {
        bail!("the host run loads eBPF programs and must run as root (or pass --kernel 5.10 etc.)");
    }
    ensure_packages(PACKAGES)?;
    let setup = Setup::prepare(&options)?;
    let prepared = started.elapsed().as_secs_f64();

    let mut outcomes = Vec::new();
    for (name, image) in &setup.images {
        eprintln!("\n== booting {name} ({}) under qemu", image.package);
        outcomes.push(boot(name, image, &setup.initrd, &setup.work.join(name)));
    }
    if options.host() {
        eprintln!("\n== the host kernel");
        outcomes.push(on_host(&setup, &setup.work.join("host")));
    }

    print_report(&outcomes);
    println!(
        "\nmatrix took {:.0} s: {prepared:.0} s to prepare (binary, kernels, initramfs), then {}",
        started.elapsed().as_secs_f64(),
        outcomes
            .iter()
            .map(|o| format!("{} {:.0} s", o.kernel, o.seconds))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if options.keep {
        println!("work folder kept: {}", setup.work.display());
    } else {
        let _ = std::fs::remove_dir_all(&setup.work);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.kernel.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("the kernel matrix failed on: {}", failed.join(", "));
    }
    Ok(())
}

/// What every run needs, built or fetched before the first one.
struct Setup {
    /// target/kernels/work: the initramfs, the C program, one folder per kernel.
    work: PathBuf,
    ferroscope: PathBuf,
    c_program: PathBuf,
    kprobe_program: PathBuf,
    python: PathBuf,
    py_script: PathBuf,
    images: Vec<(&'static str, debian::Image)>,
    initrd: PathBuf,
}

impl Setup {
    fn prepare(options: &Options) -> Result<Setup> {
        let root = root();
        let cache = target_dir(&root).join("kernels");
        // Each run replaces the folders of the kernels it runs (a --keep of an earlier run
        // of another kernel stays).
        let work = cache.join("work");
        std::fs::create_dir_all(&work)?;
        let ferroscope = match &options.binary {
            Some(path) => std::fs::canonicalize(path)
                .with_context(|| format!("--binary {}: no such file", path.display()))?,
            None => build_release(&root)?.join("release/ferroscope"),
        };
        let python = PathBuf::from(PYTHON);
        if !python.exists() {
            bail!(
                "{PYTHON} is missing: the Python record needs CPython 3.12.1 from pyenv \
                 (`pyenv install 3.12.1`; environment.md lists it)"
            );
        }
        let mut setup = Setup {
            c_program: build_static_program(&root, &work, "c/nofp_chain.c", "nofp_chain")?,
            kprobe_program: build_static_program(&root, &work, kprobes::FIXTURE, "getppids")?,
            initrd: work.join("initramfs.cpio"),
            work,
            ferroscope,
            python,
            py_script: root.join("fixtures/python/chains.py"),
            images: Vec::new(),
        };
        for kernel in debian::KERNELS
            .iter()
            .filter(|k| options.kernels.iter().any(|n| n == k.name))
        {
            let image = debian::image(kernel, &cache, options.refresh)
                .with_context(|| format!("cannot get Debian's {} kernel", kernel.name))?;
            eprintln!("kernel {}: {}", kernel.name, image.package);
            setup.images.push((kernel.name, image));
        }
        if !setup.images.is_empty() {
            setup.build_initramfs()?;
        }
        Ok(setup)
    }

    fn build_initramfs(&self) -> Result<()> {
        let built = initramfs::build(
            &self.initrd,
            &initramfs::Inputs {
                busybox: Path::new("/bin/busybox"),
                ferroscope: &self.ferroscope,
                c_program: &self.c_program,
                python: &self.python,
                py_script: &self.py_script,
                kprobe_program: &self.kprobe_program,
                record_seconds: RECORD_SECONDS,
                rate: RATE,
            },
        )?;
        eprintln!(
            "initramfs: {:.1} MB (Python standard library: {} files, {:.1} MB)",
            built.bytes as f64 / 1e6,
            built.python_stdlib_files,
            built.python_stdlib_bytes as f64 / 1e6
        );
        Ok(())
    }
}

/// `fixtures/<fixture>` built without frame pointers (the tables unwind it) into
/// `work/<name>`, linked statically so the guest needs no library for it: nofp_chain.c, and
/// the kernel-probe step's getppids.c.
fn build_static_program(root: &Path, work: &Path, fixture: &str, name: &str) -> Result<PathBuf> {
    let exe = work.join(name);
    run(Command::new("gcc")
        .args(["-O2", "-g", "-fomit-frame-pointer", "-static", "-o"])
        .arg(&exe)
        .arg(root.join("fixtures").join(fixture)))?;
    Ok(exe)
}

/// Boots `image` with the initramfs and reads back the results it sends on ttyS1.
fn boot(name: &str, image: &debian::Image, initrd: &Path, dir: &Path) -> Outcome {
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::create_dir_all(dir);
    let (console, serial) = (dir.join("console.log"), dir.join("results.serial"));
    let started = Instant::now();
    let status = Command::new("timeout")
        .arg(QEMU_TIMEOUT_SECONDS.to_string())
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(&image.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        // ttyS0 is the console (kept as a log), ttyS1 carries the results.
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let seconds = started.elapsed().as_secs_f64();
    let mut problems = Vec::new();
    match &status {
        Ok(out) if out.status.code() == Some(124) => problems.push(format!(
            "qemu did not power off within {QEMU_TIMEOUT_SECONDS} s (see {})",
            console.display()
        )),
        Ok(out) if !out.status.success() => problems.push(format!(
            "qemu failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!("cannot run qemu-system-x86_64: {e}")),
    }
    let results = dir.join("results");
    if let Err(e) = unpack_results(&serial, &results) {
        problems.push(format!(
            "no results from the guest: {e:#}; the end of its console:\n{}",
            tail(&console, 15)
        ));
    }
    let mut outcome = Outcome::read(name, &image.package, &results);
    outcome.seconds = seconds;
    outcome.run_problems = problems;
    outcome
}

/// The base64 tar between the marker lines of the guest's second serial port, unpacked.
fn unpack_results(serial: &Path, into: &Path) -> Result<()> {
    let text = std::fs::read_to_string(serial)
        .with_context(|| format!("cannot read {}", serial.display()))?;
    let body = text
        .split_once("-----BEGIN MATRIX RESULTS-----")
        .context("the guest sent no results")?
        .1
        .split_once("-----END MATRIX RESULTS-----")
        .context("the results were cut off")?
        .0;
    // The guest's tty turns each newline into CR LF.
    let base64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let tar = pipe(Command::new("base64").arg("-d"), base64.as_bytes())?;
    std::fs::create_dir_all(into)?;
    pipe(
        Command::new("tar").arg("-xf").arg("-").arg("-C").arg(into),
        &tar,
    )?;
    Ok(())
}

/// Runs `cmd` with `input` on its stdin and returns its stdout.
fn pipe(cmd: &mut Command, input: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    // Written from a thread so a full stdout pipe cannot block both sides.
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The same steps on the host kernel, for comparison.
fn on_host(setup: &Setup, dir: &Path) -> Outcome {
    let _ = std::fs::remove_dir_all(dir);
    let results = dir.join("results");
    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(initramfs::MATRIX)
        .env("OUT", &results)
        .env("FERROSCOPE", &setup.ferroscope)
        .env("C_PROGRAM", &setup.c_program)
        .env("PYTHON", &setup.python)
        .env("PY_SCRIPT", &setup.py_script)
        .env("RECORD_SECONDS", RECORD_SECONDS.to_string())
        .env("RATE", RATE.to_string())
        .env("KPROBE_PROGRAM", &setup.kprobe_program)
        .env("KPROBE_ROUNDS", kprobes::ROUNDS.to_string())
        .env("NO_COLOR", "1")
        .status();
    let seconds = started.elapsed().as_secs_f64();
    let mut outcome = Outcome::read("host", "", &results);
    outcome.seconds = seconds;
    if let Err(e) = status {
        outcome
            .run_problems
            .push(format!("cannot run the matrix steps with sh: {e}"));
    }
    outcome
}

fn print_report(outcomes: &[Outcome]) {
    println!(
        "\n| kernel | release | check | unwinder | C record | C samples | C whole chain | \
         Python record | Python samples | Python whole chain | kernel probes | seconds | verdict |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for o in outcomes {
        let rc = |r: &outcome::Record| r.rc.map_or("did not run".into(), |rc| format!("rc {rc}"));
        let share = |r: &outcome::Record| {
            r.whole
                .map_or("-".into(), |s| format!("{:.1} %", s * 100.0))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
            o.kernel,
            if o.release.is_empty() {
                "?"
            } else {
                &o.release
            },
            o.check_verdict(),
            o.unwinder(),
            rc(&o.c),
            o.c.samples,
            share(&o.c),
            rc(&o.py),
            o.py.samples,
            share(&o.py),
            o.kprobes.summary(),
            o.seconds,
            if o.passed() { "PASS" } else { "FAIL" }
        );
    }
    for o in outcomes {
        print_details(o);
    }
}

/// Everything check said (verbatim: it names each eBPF program's verdict), the records'
/// warnings and errors, the times, and why the kernel failed.
fn print_details(o: &Outcome) {
    let what = if o.package.is_empty() {
        o.release.clone()
    } else {
        o.package.clone()
    };
    println!(
        "\n== {} ({what}): {}",
        o.kernel,
        if o.passed() { "PASS" } else { "FAIL" }
    );
    println!("ferroscope check ({}):", o.check_verdict());
    for line in o.check_lines.iter().filter(|l| !l.trim().is_empty()) {
        println!("    {line}");
    }
    for (name, r) in [("C", &o.c), ("Python", &o.py)] {
        let Some(rc) = r.rc else { continue };
        println!("record of the {name} program (rc {rc}):");
        for line in r.notable_lines() {
            println!("    {}", clip(line));
        }
        if let (Some(share), Some(example)) = (r.whole, &r.broken_example)
            && share < 1.0
        {
            println!("    a sample without the whole chain: {}", clip(example));
        }
    }
    match &o.kprobes {
        kprobes::KernelProbes::Available { entry, .. } => {
            println!(
                "record with a kprobe and a kretprobe ({}):",
                o.kprobes.summary()
            );
            for line in entry.output.lines().filter(|l| {
                l.starts_with("ferroscope: probes")
                    || l.contains(" WARN ")
                    || l.starts_with("error")
            }) {
                println!("    {}", clip(line));
            }
        }
        kprobes::KernelProbes::Unavailable { output, .. } => {
            println!("a kprobe link on a kernel without kprobes:");
            for line in output.lines().filter(|l| !l.trim().is_empty()) {
                println!("    {}", clip(line));
            }
        }
        kprobes::KernelProbes::Missing => {}
    }
    if let Some(times) = marks(o) {
        println!("{times}");
    }
    for failure in o.failures() {
        println!("FAILED: {failure}");
    }
}

/// A log line cut to a readable length (a verifier log can run to thousands of lines; the
/// whole output stays in the work folder with --keep).
fn clip(line: &str) -> String {
    const MAX: usize = 600;
    match line.char_indices().nth(MAX) {
        Some((at, _)) => format!("{} [... {} more characters]", &line[..at], line.len() - at),
        None => line.to_owned(),
    }
}

/// `boot 3.1 s, check 5.2 s, C record 14.0 s, Python record 15.3 s` from the uptime marks.
fn marks(o: &Outcome) -> Option<String> {
    let at = |name: &str| o.marks.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    let mut parts = Vec::new();
    if o.kernel != "host" {
        parts.push(format!("boot to /init {:.1} s", at("start")?));
    }
    let mut last = at("start")?;
    for (mark, label) in [
        ("check", "check"),
        ("c", "C record"),
        ("py", "Python record"),
        ("kprobes", "kernel probes"),
    ] {
        if let Some(t) = at(mark) {
            parts.push(format!("{label} {:.1} s", t - last));
            last = t;
        }
    }
    Some(format!("times: {}", parts.join(", ")))
}
