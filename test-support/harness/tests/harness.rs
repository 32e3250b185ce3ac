//! The harness itself: the skip/require switch (through a child run of this test binary with
//! the variables set), tool lookup, and time limits that really kill.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferroscope_test_harness::{self as harness, Guard, process, require};

const ROLE: &str = "FERROSCOPE_HARNESS_TEST_ROLE";

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID: it counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

fn panic_text(result: Result<(), Box<dyn std::any::Any + Send>>) -> String {
    let payload = result.expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// Child side of `skip_is_logged_and_require_fails`: a test that cannot find its tool.
#[test]
fn child_missing_tool() {
    if std::env::var_os(ROLE).is_none() {
        return; // Only meaningful when run by the parent test below.
    }
    let Some(_) = harness::tool("no-such-tool-ferroscope") else {
        return;
    };
    unreachable!("the tool does not exist");
}

fn run_child(env: &[(&str, &str)], log: &Path) -> std::process::Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_missing_tool", "--test-threads=1"])
        .env(ROLE, "1")
        .env("FERROSCOPE_SKIP_LOG", log)
        .env_remove("FERROSCOPE_REQUIRE")
        .env_remove("FERROSCOPE_REQUIRE_BPF")
        .env_remove("CI");
    for (k, v) in env {
        cmd.env(k, v);
    }
    harness::run(&mut cmd, Duration::from_secs(60))
}

#[test]
fn skip_is_logged_and_require_fails() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips");

    let out = run_child(&[], &log);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "without the switch a skip passes: {stderr}"
    );
    assert!(
        stderr.contains("SKIPPED harness::child_missing_tool: `no-such-tool-ferroscope` was found neither in FERROSCOPE_NO_SUCH_TOOL_FERROSCOPE nor on PATH"),
        "{stderr}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.lines().count(), 1, "{logged}");
    assert!(
        logged.starts_with("harness::child_missing_tool\t`no-such-tool-ferroscope` was found"),
        "{logged}"
    );

    for switch in [
        ("FERROSCOPE_REQUIRE", "1"),
        ("CI", "true"),
        ("FERROSCOPE_REQUIRE_BPF", "1"),
    ] {
        let out = run_child(&[switch], &log);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{switch:?} makes the skip a failure");
        assert!(
            stdout.contains("cannot run: `no-such-tool-ferroscope` was found neither"),
            "{switch:?}: the failure gives the reason:\n{stdout}"
        );
    }
    // Failures are not skips.
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
    // CI=false is not CI.
    let out = run_child(&[("CI", "false")], &log);
    assert!(out.status.success());
}

#[test]
fn tools_are_found_by_their_variable_then_path() {
    assert_eq!(require::tool_var("go"), "FERROSCOPE_GO");
    assert_eq!(require::tool_var("go-1.19"), "FERROSCOPE_GO_1_19");
    assert_eq!(
        require::tool_var("kubernetes-validate"),
        "FERROSCOPE_KUBERNETES_VALIDATE"
    );
    assert_eq!(
        harness::find_tool("sh").unwrap(),
        require::on_path("sh").unwrap()
    );
    assert!(harness::find_tool("no-such-tool-ferroscope").is_err());
}

#[test]
fn a_child_that_never_prints_ready_fails_in_time_and_is_killed() {
    let started = Instant::now();
    let mut pid = 0;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut g = Guard::spawn(
            Command::new("sh").args(["-c", "echo starting; echo oops >&2; exec sleep 60"]),
            Duration::from_secs(60),
        );
        pid = g.pid();
        g.wait_for_line("ready", Duration::from_secs(1));
    }));
    let text = panic_text(result);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        text.contains("printed no expected line within 1 s"),
        "{text}"
    );
    assert!(
        text.contains("| starting") && text.contains("| oops"),
        "the tails: {text}"
    );
    assert!(!alive(pid), "the guard killed {pid} when dropped");
}

#[test]
fn the_time_limit_kills_the_whole_group_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild");
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut g = Guard::spawn(
            Command::new("sh").arg("-c").arg(format!(
                "sleep 60 & echo $! > {}; echo ready; wait",
                pidfile.display()
            )),
            Duration::from_secs(1),
        );
        g.wait_for_line("ready", Duration::from_secs(10));
        g.wait(Duration::from_secs(30));
    }));
    let text = panic_text(result);
    assert!(text.contains("ran past its time limit of 1 s"), "{text}");
    let grandchild: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !alive(grandchild),
        "the grandchild {grandchild} was killed too"
    );
}

#[test]
fn ready_lines_and_exit_status() {
    let mut g = Guard::spawn(
        Command::new("sh").args(["-c", "echo one; echo ready; echo two; exit 3"]),
        Duration::from_secs(30),
    );
    g.wait_for_line("ready", Duration::from_secs(10));
    assert_eq!(g.next_line(Duration::from_secs(10)).as_deref(), Some("two"));
    assert_eq!(g.wait(Duration::from_secs(10)).code(), Some(3));
}

#[test]
fn run_kills_at_its_limit() {
    let started = Instant::now();
    let result = catch_unwind(|| {
        harness::run(
            Command::new("sh").args(["-c", "echo partial; sleep 60"]),
            Duration::from_millis(500),
        );
    });
    let text = panic_text(result);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(text.contains("ran past its time limit of 0.5 s"), "{text}");
    assert!(text.contains("| partial"), "{text}");
    assert_eq!(
        process::run_ok(Command::new("echo").arg("hi"), Duration::from_secs(10)),
        "hi\n"
    );
}

#[test]
fn provision_installs_once_and_atomically() {
    // A private cache: FERROSCOPE_TEST_CACHE is read per call, so use a child run.
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = harness::run(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_provision",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(ROLE, "1")
            .env("FERROSCOPE_TEST_CACHE", dir.path()),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("k/v1/file")).unwrap(),
        "done"
    );
    // Only the finished entry and the lock are left.
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("k"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["v1"]);
}

#[test]
fn child_provision() {
    if std::env::var_os(ROLE).is_none() {
        return; // Run by provision_installs_once_and_atomically.
    }
    use harness::cache::provision;
    // A failed installation leaves nothing under the key.
    let failed = provision("k/v1", |tmp| {
        std::fs::write(tmp.join("half"), "x").unwrap();
        Err(harness::Unavailable::new("broken on purpose"))
    });
    assert!(failed.unwrap_err().0.contains("broken on purpose"));
    assert!(!harness::cache::cache_dir().join("k/v1").exists());
    // Eight threads ask at once: one installs.
    let installs = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let dir = provision("k/v1", |tmp| {
                    installs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(200));
                    std::fs::write(tmp.join("file"), "done").unwrap();
                    Ok(())
                })
                .unwrap();
                assert_eq!(std::fs::read_to_string(dir.join("file")).unwrap(), "done");
            });
        }
    });
    assert_eq!(installs.load(std::sync::atomic::Ordering::SeqCst), 1);
}
