//! The deployment files in `deploy/` are checked with the real tools: `systemd-analyze
//! verify` for the unit and `kubernetes-validate --strict` (PyPI, installed into the
//! test cache on first use) for the manifests; the configuration they carry must pass
//! `ferroscope run --check-config`.
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferroscope_test_harness as harness;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Finds a tool by `FERROSCOPE_<TOOL>` or PATH (kubernetes-validate: else from PyPI into the
/// test cache), or skips (logged) / fails when tests are required.
fn tool(name: &str) -> Option<PathBuf> {
    harness::tool(name)
}

/// Runs a checker for at most 2 minutes.
fn run(cmd: &mut Command) -> std::process::Output {
    harness::run(cmd, Duration::from_secs(120))
}

#[test]
fn systemd_unit_verifies() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let unit = std::fs::read_to_string(repo().join("deploy/ferroscope.service")).unwrap();
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let unit = unit.replace(
        "/usr/local/bin/ferroscope",
        env!("CARGO_BIN_EXE_ferroscope"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferroscope.service");
    std::fs::write(&path, unit).unwrap();
    let out = run(Command::new(analyze).arg("verify").arg(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("ferroscope.service:"),
        "warnings about the unit:\n{stderr}"
    );
}

#[test]
fn kubernetes_manifests_validate() {
    let Some(validate) = tool("kubernetes-validate") else {
        return;
    };
    let out = run(Command::new(validate)
        .args(["--strict"])
        .arg(repo().join("deploy/kubernetes/daemonset.yaml")));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    assert_eq!(
        text.matches("passed").count(),
        3,
        "namespace, configmap and daemonset validate:\n{text}"
    );
}

#[test]
fn broken_manifest_is_rejected_by_the_validator() {
    // The validator really checks: a DaemonSet with a misspelt field fails.
    let Some(validate) = tool("kubernetes-validate") else {
        return;
    };
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let broken = text.replace("hostPID: true", "hostPid: true");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = run(Command::new(validate).arg("--strict").arg(&path));
    assert!(
        !out.status.success(),
        "a misspelt field must fail strict validation"
    );
}
