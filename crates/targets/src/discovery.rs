//! Built-in process discovery, like Alloy's `discovery.process`: one label set per process
//! in a `/proc` tree.
//!
//! Every read is bounded and every failure is local to one process: processes exit while
//! they are read, kernel threads have no executable, and permission may be denied. A
//! process whose directory vanished is skipped; a label that cannot be read is left out.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::cgroup;
use crate::labels::Labels;
use crate::target::{LABEL_CONTAINER_ID, LABEL_PID};

/// `readlink /proc/PID/exe`.
pub const LABEL_EXE: &str = "__meta_process_exe";
/// `readlink /proc/PID/cwd`.
pub const LABEL_CWD: &str = "__meta_process_cwd";
/// `/proc/PID/cmdline`, arguments joined by spaces.
pub const LABEL_COMMANDLINE: &str = "__meta_process_commandline";
/// The name of the real UID, from the passwd file.
pub const LABEL_USERNAME: &str = "__meta_process_username";
/// The real UID.
pub const LABEL_UID: &str = "__meta_process_uid";
/// The cgroup path (see [`cgroup::cgroup_path`]).
pub const LABEL_CGROUP_PATH: &str = "__meta_process_cgroup_path";

/// Bytes read from a `/proc` file, at most.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Bytes read from the passwd file, at most.
const MAX_PASSWD_BYTES: u64 = 4 * 1024 * 1024;

/// Discovers processes in a `/proc` tree.
#[derive(Debug, Clone)]
pub struct ProcessDiscovery {
    /// The `/proc` directory (a fixture directory in tests).
    pub proc_root: PathBuf,
    /// The passwd file used to name UIDs (`/etc/passwd`); `None` leaves usernames out.
    pub passwd_path: Option<PathBuf>,
    /// Processes reported, at most (the kernel's PID limit by default).
    pub max_processes: usize,
}

impl Default for ProcessDiscovery {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            passwd_path: Some(PathBuf::from("/etc/passwd")),
            max_processes: 4 * 1024 * 1024,
        }
    }
}

impl ProcessDiscovery {
    /// Discovery of the processes in `proc_root`, naming users from `/etc/passwd`.
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            ..Self::default()
        }
    }

    /// One label set per process, sorted by PID.
    ///
    /// Fails only when `proc_root` itself cannot be listed.
    pub fn discover(&self) -> Result<Vec<Labels>, Error> {
        let entries = fs::read_dir(&self.proc_root).map_err(|source| Error::ProcRoot {
            path: self.proc_root.clone(),
            source,
        })?;
        let mut pids: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != 0)
            .collect();
        pids.sort_unstable();
        pids.truncate(self.max_processes);
        let users = self
            .passwd_path
            .as_deref()
            .map(read_passwd)
            .unwrap_or_default();
        Ok(pids
            .into_iter()
            .filter_map(|pid| process_labels(&self.proc_root, pid, &users))
            .collect())
    }

    /// The label set of one process, or `None` if it does not exist (any more).
    pub fn process(&self, pid: u32) -> Option<Labels> {
        let users = self
            .passwd_path
            .as_deref()
            .map(read_passwd)
            .unwrap_or_default();
        process_labels(&self.proc_root, pid, &users)
    }
}

fn process_labels(root: &Path, pid: u32, users: &HashMap<u32, String>) -> Option<Labels> {
    let dir = root.join(pid.to_string());
    // `status` exists for every live process, kernel threads and zombies included; if it
    // cannot be read the process is gone (or was never a process directory).
    let status = read_bounded(&dir.join("status"))?;
    let mut labels = Labels::new();
    labels.set(LABEL_PID, pid.to_string());
    if let Some(uid) = real_uid(&status) {
        labels.set(LABEL_UID, uid.to_string());
        if let Some(name) = users.get(&uid) {
            labels.set(LABEL_USERNAME, name.clone());
        }
    }
    if let Ok(exe) = fs::read_link(dir.join("exe")) {
        labels.set(LABEL_EXE, exe.to_string_lossy());
    }
    if let Ok(cwd) = fs::read_link(dir.join("cwd")) {
        labels.set(LABEL_CWD, cwd.to_string_lossy());
    }
    if let Some(cmdline) = read_bounded(&dir.join("cmdline")) {
        let args: Vec<&str> = cmdline.split('\0').filter(|a| !a.is_empty()).collect();
        labels.set(LABEL_COMMANDLINE, args.join(" "));
    }
    if let Some(cg) = read_bounded(&dir.join("cgroup")) {
        if let Some(path) = cgroup::cgroup_path(&cg) {
            labels.set(LABEL_CGROUP_PATH, path);
        }
        if let Some(cid) = cgroup::container_id(&cg) {
            labels.set(LABEL_CONTAINER_ID, cid);
        }
    }
    Some(labels)
}

/// Reads at most [`MAX_FILE_BYTES`] of a file as (lossy) UTF-8.
pub(crate) fn read_bounded(path: &Path) -> Option<String> {
    read_limited(path, MAX_FILE_BYTES)
}

fn read_limited(path: &Path, limit: u64) -> Option<String> {
    let mut buf = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(limit)
        .read_to_end(&mut buf)
        .ok()?;
    Some(match String::from_utf8(buf) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// The real UID: the first number of the `Uid:` line of `/proc/PID/status`.
fn real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// UID → user name from a passwd file (`name:password:uid:...`); first entry wins.
fn read_passwd(path: &Path) -> HashMap<u32, String> {
    let mut users = HashMap::new();
    let Some(text) = read_limited(path, MAX_PASSWD_BYTES) else {
        tracing::debug!(path = %path.display(), "cannot read the passwd file; usernames are left out");
        return users;
    };
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse::<u32>()
            && !name.is_empty()
        {
            users.entry(uid).or_insert_with(|| name.to_owned());
        }
    }
    users
}

/// The start time of a process (field 22 of `/proc/PID/stat`, in clock ticks since boot),
/// which together with the PID identifies a process across PID reuse.
pub fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = read_bounded(&proc_root.join(pid.to_string()).join("stat"))?;
    // The command name (field 2) may contain spaces and parentheses: fields after it start
    // after the last ')'. Field 3 is the first there, so field 22 is the 20th.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_and_start_time_parse() {
        assert_eq!(
            real_uid("Name:\tx\nUid:\t1000\t1001\t1000\t1000\n"),
            Some(1000)
        );
        assert_eq!(real_uid("Name:\tx\n"), None);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("7");
        fs::create_dir(&p).unwrap_or_else(|e| panic!("{e}"));
        fs::write(
            p.join("stat"),
            "7 (a) b) c) S 1 7 7 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 100\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(start_time(dir.path(), 7), Some(123456));
        assert_eq!(start_time(dir.path(), 8), None);
    }
}
