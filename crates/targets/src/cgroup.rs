//! Container IDs from `/proc/PID/cgroup`.
//!
//! Each line is `hierarchy-ID:controllers:path`. The container ID is the last segment of the
//! path when it is 64 hex digits (Docker, containerd, CRI-O, with or without the systemd
//! `docker-`/`cri-containerd-`/`crio-` prefix and `.scope` suffix), or ECS's
//! `<32 hex>-<digits>`; the cgroup-v2 root line `0::/` is skipped; the first line that
//! matches wins.

use std::sync::LazyLock;

use regex::Regex;

/// Lines looked at, at most: real files have a few dozen.
pub const MAX_CGROUP_LINES: usize = 1024;

static LINE: LazyLock<Regex> = LazyLock::new(|| {
    // An invalid literal here would be a programming error caught by every test.
    Regex::new(r"^\d+:[^:]*:(.+)$").unwrap_or_else(|e| panic!("cgroup line regex: {e}"))
});
static CONTAINER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"([0-9a-f]{64}|[0-9a-f]{32}-\d+)(?:\.scope)?(?:/[a-z]+)?$")
        .unwrap_or_else(|e| panic!("container ID regex: {e}"))
});

/// The container ID in the contents of a `/proc/PID/cgroup` file, if any.
///
/// ```
/// let text = "0::/system.slice/docker-4c0a5ee7c8d59bd7e4ff1a09e1b0f6e96c1a1b3b8fbd5ab3a4e0bd6c3a3b4e5f.scope\n";
/// assert_eq!(
///     ferroscope_targets::cgroup::container_id(text).as_deref(),
///     Some("4c0a5ee7c8d59bd7e4ff1a09e1b0f6e96c1a1b3b8fbd5ab3a4e0bd6c3a3b4e5f"),
/// );
/// assert_eq!(ferroscope_targets::cgroup::container_id("0::/\n"), None);
/// ```
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .take(MAX_CGROUP_LINES)
        .filter(|line| *line != "0::/")
        .find_map(container_id_of_line)
}

/// The container ID in one `/proc/PID/cgroup` line, if any.
pub fn container_id_of_line(line: &str) -> Option<String> {
    let path = LINE.captures(line)?.get(1)?.as_str();
    Some(CONTAINER.captures(path)?.get(1)?.as_str().to_owned())
}

/// The process's cgroup path: the cgroup-v2 (`0::`) path if there is one, else the path of
/// the first well-formed line.
pub fn cgroup_path(cgroup: &str) -> Option<String> {
    let mut first = None;
    for line in cgroup.lines().take(MAX_CGROUP_LINES) {
        let Some(caps) = LINE.captures(line) else {
            continue;
        };
        let Some(path) = caps.get(1) else { continue };
        if line.starts_with("0::") {
            return Some(path.as_str().to_owned());
        }
        first.get_or_insert_with(|| path.as_str().to_owned());
    }
    first
}
