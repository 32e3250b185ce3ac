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
    for (file, documents) in [
        // Namespace, ServiceAccount, ClusterRole, ClusterRoleBinding, ConfigMap, DaemonSet.
        ("deploy/kubernetes/daemonset.yaml", 6),
        // Namespace, ServiceAccount, ConfigMap, DaemonSet: no RBAC.
        ("deploy/kubernetes/daemonset-cri.yaml", 4),
    ] {
        let out = run(Command::new(&validate)
            .args(["--strict"])
            .arg(repo().join(file)));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "kubernetes-validate failed on {file}:\n{text}"
        );
        assert_eq!(
            text.matches("passed").count(),
            documents,
            "every document of {file} validates:\n{text}"
        );
    }
}

/// The `config.toml: |` block of a manifest's ConfigMap, de-indented.
fn configmap_config(manifest: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "config.toml: |")
        .skip(1);
    let mut out = String::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            out.push('\n');
        } else if let Some(rest) = line.strip_prefix("    ") {
            out.push_str(rest);
            out.push('\n');
        } else {
            break;
        }
    }
    out
}

#[test]
fn the_daemonsets_carry_the_examples_and_they_check() {
    let dir = tempfile::tempdir().unwrap();
    for (manifest, example) in [
        (
            "deploy/kubernetes/daemonset.yaml",
            "examples/kubernetes.toml",
        ),
        (
            "deploy/kubernetes/daemonset-cri.yaml",
            "examples/kubernetes-cri.toml",
        ),
    ] {
        let text = std::fs::read_to_string(repo().join(manifest)).unwrap();
        let config = configmap_config(&text);
        let want = std::fs::read_to_string(repo().join(example)).unwrap();
        assert_eq!(config, want, "the ConfigMap of {manifest} is {example}");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, &config).unwrap();
        let out = run(Command::new(env!("CARGO_BIN_EXE_ferroscope"))
            .args(["run", "--check-config", "--config"])
            .arg(&path)
            .env("NODE_NAME", "node-a"));
        assert!(
            out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("warning"),
            "{manifest}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // What each mode needs, and no more.
        assert!(text.contains("hostPID: true") && text.contains("fieldPath: spec.nodeName"));
        assert!(text.lines().any(|l| l.trim() == "privileged: false"));
        assert!(!text.contains("docker.sock"));
        if manifest.ends_with("daemonset.yaml") {
            assert!(
                text.contains("kind: ClusterRole")
                    && text.contains("verbs: [\"get\", \"list\", \"watch\"]")
            );
            assert_eq!(text.matches("resources: [").count(), 1, "only pods");
        } else {
            assert!(
                !text.contains("ClusterRole")
                    && text.contains("automountServiceAccountToken: false")
            );
            assert!(text.contains("/run/containerd/io.containerd.runtime.v2.task"));
            assert!(
                !text.contains("path: /run/containerd\n"),
                "not the socket's directory"
            );
            assert_eq!(text.matches("mountPropagation: HostToContainer").count(), 2);
        }
    }
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
