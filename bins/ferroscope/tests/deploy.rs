//! The deployment files in `deploy/` are checked with the real tools: `systemd-analyze
//! verify` for the unit and `kubernetes-validate --strict` (PyPI, installed by
//! `cargo xtask test`) for the manifests; the configuration they carry must pass
//! `ferroscope run --check-config`.
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Finds a tool, or fails (in CI) / skips with a note (elsewhere) when it is missing.
fn tool(name: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let required = std::env::var_os("CI").is_some()
            || std::env::var_os("FERROSCOPE_REQUIRE_TOOLS").is_some();
        assert!(
            !required,
            "{name} is missing: {install} (cargo xtask test installs it)"
        );
        eprintln!("SKIPPED: {name} is missing: {install}");
    }
    found
}

#[test]
fn systemd_unit_verifies() {
    let Some(analyze) = tool("systemd-analyze", "apt-get install systemd") else {
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
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
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
    let Some(validate) = tool("kubernetes-validate", "pip install kubernetes-validate") else {
        return;
    };
    let out = Command::new(validate)
        .args(["--strict"])
        .arg(repo().join("deploy/kubernetes/daemonset.yaml"))
        .output()
        .unwrap();
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
    let Some(validate) = tool("kubernetes-validate", "pip install kubernetes-validate") else {
        return;
    };
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let broken = text.replace("hostPID: true", "hostPid: true");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = Command::new(validate)
        .arg("--strict")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a misspelt field must fail strict validation"
    );
}
