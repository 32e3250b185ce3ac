//! Keeping profiles in a local directory, with size and age retention.
//!
//! Layout: `<dir>/<service>/<unix-seconds>-<pid>.pb.gz`, one gzip pprof per
//! file, the service name made into one safe path component. Files appear
//! atomically (written to a hidden temporary file, then linked into place), so a
//! reader never sees a partial profile, and an existing file is never
//! overwritten: a second profile for the same service, PID and second gets
//! `<unix-seconds>-<pid>.<n>.pb.gz`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::Error;

const SUFFIX: &str = ".pb.gz";

/// A directory of profiles with optional retention by total size and age.
#[derive(Debug, Clone)]
pub struct LocalSink {
    dir: PathBuf,
    max_bytes: Option<u64>,
    max_age: Option<Duration>,
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
    /// profiles take at most `max_bytes`.
    pub fn new(
        dir: impl Into<PathBuf>,
        max_bytes: Option<u64>,
        max_age: Option<Duration>,
    ) -> LocalSink {
        LocalSink {
            dir: dir.into(),
            max_bytes,
            max_age,
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
        let result = write_and_sync(&tmp, pprof_gzip)
            .and_then(|()| link_unique(&tmp, &service_dir, secs, pid));
        // The temporary name is gone either way (linked or failed).
        let _ = fs::remove_file(&tmp);
        let path = result?;
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
    /// are skipped.
    pub fn enforce_retention(&self, keep: Option<&Path>) -> Result<Retention, Error> {
        let mut removed = Retention::default();
        if self.max_bytes.is_none() && self.max_age.is_none() {
            return Ok(removed);
        }
        let mut files = self.list()?;
        // Oldest first; the path breaks ties, and file names start with the time.
        files.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        let now = SystemTime::now();
        let mut total: u64 = files.iter().map(|f| f.2).sum();
        for (path, mtime, size) in files {
            if keep == Some(path.as_path()) {
                continue;
            }
            let too_old = self
                .max_age
                .is_some_and(|age| now.duration_since(mtime).unwrap_or_default() > age);
            let too_big = self.max_bytes.is_some_and(|max| total > max);
            if !too_old && !too_big {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    total -= size;
                    removed.files += 1;
                    removed.bytes += size;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => total -= size,
                Err(e) => return Err(file_err("delete", &path)(e)),
            }
        }
        Ok(removed)
    }

    /// Every profile file: (path, modification time, size).
    fn list(&self) -> Result<Vec<(PathBuf, SystemTime, u64)>, Error> {
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
                if meta.is_file() {
                    out.push((
                        entry.path(),
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        meta.len(),
                    ));
                }
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

fn write_and_sync(tmp: &Path, data: &[u8]) -> Result<(), Error> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(file_err("create temporary file", tmp))?;
    f.write_all(data)
        .map_err(file_err("write temporary file", tmp))?;
    f.sync_all()
        .map_err(file_err("flush temporary file to disk", tmp))
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
            // Distinct modification times, oldest first.
            let f = fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(100 - i))
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
        let old = sink.write("svc", 1, at(1), b"old").unwrap();
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        // The new file alone is over max_bytes, but the file just written stays.
        let new = sink.write("svc", 1, at(2), &[7u8; 50]).unwrap();
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
    fn retention_on_a_missing_dir_is_a_no_op() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = LocalSink::new(tmp.path().join("nope"), Some(1), Some(Duration::ZERO));
        assert_eq!(sink.enforce_retention(None).unwrap(), Retention::default());
    }
}
