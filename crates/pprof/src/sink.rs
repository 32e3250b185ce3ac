//! Keeping profiles in a local directory, with size and age retention.
//!
//! Layout: `<dir>/<service>/<unix-seconds>-<pid>.pb.gz`, one gzip pprof per
//! file, the service name made into one safe path component. Files appear
//! atomically (written to a hidden temporary file, then linked into place), so a
//! reader never sees a partial profile, and an existing file is never
//! overwritten: a second profile for the same service, PID and second gets
//! `<unix-seconds>-<pid>.<n>.pb.gz`.
//!
//! Retention goes by the time in each file's name (the profile's time), oldest first. The
//! directory is listed once, on the first retention pass; after that the sink keeps its own
//! index of the files it knows, so a pass costs what it removes, not what the directory
//! holds (a busy node writes thousands of profiles an interval).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::Error;

const SUFFIX: &str = ".pb.gz";

/// A directory of profiles with optional retention by total size and age.
#[derive(Debug, Clone)]
pub struct LocalSink {
    dir: PathBuf,
    max_bytes: Option<u64>,
    max_age: Option<Duration>,
    index: Arc<Mutex<Option<Index>>>,
}

/// The profiles the sink knows, oldest first: (time in seconds, path) -> size.
#[derive(Debug, Default)]
struct Index {
    files: BTreeMap<(u64, PathBuf), u64>,
    total: u64,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Files removed.
    pub files: u64,
    /// Bytes freed.
    pub bytes: u64,
}

impl LocalSink {
    /// A sink writing under `dir` (created on first write). After each write,
    /// profiles older than `max_age` are deleted, then the oldest until all
    /// profiles take at most `max_bytes` (see [`LocalSink::enforce_retention`]).
    pub fn new(
        dir: impl Into<PathBuf>,
        max_bytes: Option<u64>,
        max_age: Option<Duration>,
    ) -> LocalSink {
        LocalSink {
            dir: dir.into(),
            max_bytes,
            max_age,
            index: Arc::new(Mutex::new(None)),
        }
    }

    /// The directory profiles go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one profile of `service_name`'s process `pid` taken at `time`,
    /// then applies retention (never to the file just written). Returns the
    /// file's path.
    pub fn write(
        &self,
        service_name: &str,
        pid: u32,
        time: SystemTime,
        pprof_gzip: &[u8],
    ) -> Result<PathBuf, Error> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let service_dir = self.dir.join(sanitize_component(service_name));
        fs::create_dir_all(&service_dir).map_err(file_err("create the directory", &service_dir))?;
        let secs = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let tmp = service_dir.join(format!(
            ".{secs}-{pid}.{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result =
            write_whole(&tmp, pprof_gzip).and_then(|()| link_unique(&tmp, &service_dir, secs, pid));
        // The temporary name is gone either way (linked or failed).
        let _ = fs::remove_file(&tmp);
        let path = result?;
        if let Some(index) = self
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            let size = pprof_gzip.len() as u64;
            if index.files.insert((secs, path.clone()), size).is_none() {
                index.total += size;
            }
        }
        if let Err(e) = self.enforce_retention(Some(&path)) {
            tracing::warn!(
                "profile retention in {} failed: {}",
                self.dir.display(),
                crate::error::Chain(&e)
            );
        }
        Ok(path)
    }

    /// Deletes profiles older than `max_age`, then the oldest until the rest
    /// take at most `max_bytes`, sparing `keep`. Files that vanish meanwhile
    /// are skipped. The first pass lists the directory; later ones use the
    /// sink's index of what it wrote since.
    pub fn enforce_retention(&self, keep: Option<&Path>) -> Result<Retention, Error> {
        let mut removed = Retention::default();
        if self.max_bytes.is_none() && self.max_age.is_none() {
            return Ok(removed);
        }
        let mut guard = self.index.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let mut index = Index::default();
            for (path, secs, size) in self.list()? {
                index.total += size;
                index.files.insert((secs, path), size);
            }
            *guard = Some(index);
        }
        let Some(index) = guard.as_mut() else {
            return Ok(removed);
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut spared = None;
        while let Some(((secs, path), size)) = index.files.pop_first() {
            let too_old = self
                .max_age
                .is_some_and(|age| now.saturating_sub(secs) > age.as_secs());
            let too_big = self.max_bytes.is_some_and(|max| index.total > max);
            if !too_old && !too_big {
                index.files.insert((secs, path), size);
                break;
            }
            if keep == Some(path.as_path()) {
                spared = Some(((secs, path), size));
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    index.total -= size;
                    removed.files += 1;
                    removed.bytes += size;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => index.total -= size,
                Err(e) => {
                    index.files.insert((secs, path.clone()), size);
                    return Err(file_err("delete", &path)(e));
                }
            }
        }
        if let Some((key, size)) = spared {
            index.files.insert(key, size);
        }
        Ok(removed)
    }

    /// Every profile file: (path, time in seconds, size). The time is the one in
    /// the file's name, else its modification time.
    fn list(&self) -> Result<Vec<(PathBuf, u64, u64)>, Error> {
        let mut out = Vec::new();
        let top = match fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(file_err("list", &self.dir)(e)),
        };
        for service in top.flatten() {
            if !service.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(entries) = fs::read_dir(service.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') || !name.ends_with(SUFFIX) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let secs = name
                    .split('-')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| {
                        meta.modified()
                            .ok()
                            .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                            .map_or(0, |d| d.as_secs())
                    });
                out.push((entry.path(), secs, meta.len()));
            }
        }
        Ok(out)
    }
}

/// Makes `name` one safe path component: characters other than ASCII letters,
/// digits, `.`, `_` and `-` become `_`, at most 128 bytes, and never empty, `.`
/// or `..` (`ebpf/default/api` becomes `ebpf_default_api`).
pub fn sanitize_component(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if out.is_empty() || out.chars().all(|c| c == '.') {
        out = format!("_{out}");
    }
    out
}

fn file_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::File {
        action,
        path,
        source,
    }
}

/// Writes the whole file under its temporary name; it appears under its real name (linked)
/// only when complete. Not synced to disk: on a node with thousands of processes a round
/// writes thousands of files, and an fsync each made rounds many times longer than the
/// collect interval. A crash of the machine (not of the agent) may lose or cut short the
/// last profiles written.
fn write_whole(tmp: &Path, data: &[u8]) -> Result<(), Error> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(file_err("create temporary file", tmp))?;
    f.write_all(data)
        .map_err(file_err("write temporary file", tmp))
}

/// Links `tmp` to the first free name `<secs>-<pid>[.<n>].pb.gz` (a hard link
/// fails rather than replacing an existing file).
fn link_unique(tmp: &Path, dir: &Path, secs: u64, pid: u32) -> Result<PathBuf, Error> {
    for n in 0..10_000u32 {
        let name = if n == 0 {
            format!("{secs}-{pid}{SUFFIX}")
        } else {
            format!("{secs}-{pid}.{n}{SUFFIX}")
        };
        let path = dir.join(name);
        match fs::hard_link(tmp, &path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(file_err("move the temporary file to", &path)(e)),
        }
    }
    Err(file_err("find a free file name in", dir)(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "10000 profiles for this process and second already exist",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_under_a_sanitized_service_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = LocalSink::new(tmp.path(), None, None);
        let p = sink
            .write("ebpf/default/api", 42, at(1_700_000_000), b"abc")
            .unwrap();
        assert_eq!(p, tmp.path().join("ebpf_default_api/1700000000-42.pb.gz"));
        assert_eq!(fs::read(&p).unwrap(), b"abc");
        // Same service, pid and second: a new name, the first file is kept.
        let q = sink
            .write("ebpf/default/api", 42, at(1_700_000_000), b"def")
            .unwrap();
        assert_eq!(q, tmp.path().join("ebpf_default_api/1700000000-42.1.pb.gz"));
        assert_eq!(fs::read(&p).unwrap(), b"abc");
        // No temporary files are left behind.
        assert_eq!(
            names(&tmp.path().join("ebpf_default_api")),
            ["1700000000-42.1.pb.gz", "1700000000-42.pb.gz"]
        );
    }

    #[test]
    fn component_sanitizing() {
        for (input, want) in [
            ("", "_"),
            (".", "_."),
            ("..", "_.."),
            ("a b/c", "a_b_c"),
            ("ok-1.x_y", "ok-1.x_y"),
            ("é", "_"),
        ] {
            assert_eq!(sanitize_component(input), want, "{input:?}");
        }
        assert_eq!(sanitize_component(&"x".repeat(500)).len(), 128);
    }

    #[test]
    fn oldest_files_go_first_when_over_max_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = LocalSink::new(tmp.path(), Some(250), None);
        let mut paths = Vec::new();
        for i in 0..5u64 {
            let p = sink
                .write(
                    if i % 2 == 0 { "a" } else { "b" },
                    1,
                    at(1000 + i),
                    &[0u8; 100],
                )
                .unwrap();
            paths.push(p);
        }
        let left: Vec<bool> = paths.iter().map(|p| p.exists()).collect();
        assert_eq!(left, [false, false, false, true, true]);
    }

    #[test]
    fn old_files_are_deleted_and_the_new_one_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = LocalSink::new(tmp.path(), Some(10), Some(Duration::from_secs(60)));
        let now = SystemTime::now();
        let old = sink
            .write("svc", 1, now - Duration::from_secs(3600), b"old")
            .unwrap();
        // The new file alone is over max_bytes, but the file just written stays.
        let new = sink.write("svc", 1, now, &[7u8; 50]).unwrap();
        assert!(!old.exists());
        assert!(new.exists());
        let removed = sink.enforce_retention(None).unwrap();
        assert_eq!(
            removed,
            Retention {
                files: 1,
                bytes: 50
            }
        );
    }

    #[test]
    fn files_from_before_a_restart_are_found_once_then_indexed() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        // Written by an earlier run.
        let earlier = LocalSink::new(tmp.path(), None, None);
        let stale = earlier
            .write("svc", 7, now - Duration::from_secs(7200), b"x")
            .unwrap();
        let recent = earlier.write("svc", 7, now, b"y").unwrap();
        let sink = LocalSink::new(tmp.path(), None, Some(Duration::from_secs(3600)));
        let removed = sink.enforce_retention(None).unwrap();
        assert_eq!(removed.files, 1);
        assert!(!stale.exists() && recent.exists());
        // A file written since is known without listing the directory again, and goes
        // once it is too old.
        let later = sink
            .write("svc", 8, now - Duration::from_secs(4000), b"z")
            .unwrap();
        assert!(later.exists(), "the file just written is spared");
        assert_eq!(sink.enforce_retention(None).unwrap().files, 1);
        assert!(!later.exists() && recent.exists());
    }

    #[test]
    fn retention_on_a_missing_dir_is_a_no_op() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = LocalSink::new(tmp.path().join("nope"), Some(1), Some(Duration::ZERO));
        assert_eq!(sink.enforce_retention(None).unwrap(), Retention::default());
    }
}
