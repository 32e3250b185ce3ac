//! [`TargetFinder`]: which target a sampled process belongs to.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use lru::LruCache;

use crate::cgroup;
use crate::discovery::{read_bounded, start_time};
use crate::target::{Target, TargetId};

/// How a [`TargetFinder`] matches processes.
#[derive(Debug, Clone)]
pub struct FinderOptions {
    /// The `/proc` directory.
    pub proc_root: PathBuf,
    /// `true`: processes that match no target are not profiled; `false`: they go to
    /// [`Target::unmatched`].
    pub targets_only: bool,
    /// Entries of the PID → container-ID cache, at most (at least 1).
    pub container_id_cache_size: usize,
}

impl Default for FinderOptions {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            targets_only: true,
            container_id_cache_size: 1024,
        }
    }
}

/// A cached container ID of one process incarnation.
#[derive(Debug, Clone)]
struct CachedCid {
    start_time: Option<u64>,
    container_id: Option<Arc<str>>,
}

/// Maps a PID to its target: by PID first, then by the container ID in the process's
/// `/proc/PID/cgroup`.
///
/// Container IDs are cached per (PID, start time), so a reused PID is looked up again.
#[derive(Debug)]
pub struct TargetFinder {
    options: FinderOptions,
    by_pid: HashMap<u32, Arc<Target>>,
    by_container: HashMap<String, Arc<Target>>,
    unmatched: Arc<Target>,
    cids: LruCache<u32, CachedCid>,
}

impl TargetFinder {
    /// A finder with no targets.
    pub fn new(options: FinderOptions) -> Self {
        let size = NonZeroUsize::new(options.container_id_cache_size).unwrap_or(NonZeroUsize::MIN);
        Self {
            options,
            by_pid: HashMap::new(),
            by_container: HashMap::new(),
            unmatched: Arc::new(Target::unmatched()),
            cids: LruCache::new(size),
        }
    }

    /// Replaces the targets; when two targets match the same PID or container, the later one
    /// wins.
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = Target>) {
        self.by_pid.clear();
        self.by_container.clear();
        for target in targets {
            match target.id().clone() {
                TargetId::Pid(pid) => {
                    self.by_pid.insert(pid, Arc::new(target));
                }
                TargetId::Container(cid) => {
                    self.by_container.insert(cid, Arc::new(target));
                }
                TargetId::Unmatched => {}
            }
        }
    }

    /// Replaces the target of one PID (`None`: no PID target any more), e.g. after the
    /// process exec'd and was discovered again.
    pub fn set_pid_target(&mut self, pid: u32, target: Option<Target>) {
        match target {
            Some(t) => {
                self.by_pid.insert(pid, Arc::new(t));
            }
            None => {
                self.by_pid.remove(&pid);
            }
        }
        self.cids.pop(&pid);
    }

    /// The number of PID and container targets.
    pub fn len(&self) -> usize {
        self.by_pid.len() + self.by_container.len()
    }

    /// Whether there are no targets.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether processes that match no target are profiled.
    pub fn targets_only(&self) -> bool {
        self.options.targets_only
    }

    /// The target of `pid`, or `None` when the process is not to be profiled.
    pub fn find(&mut self, pid: u32) -> Option<Arc<Target>> {
        if let Some(t) = self.by_pid.get(&pid) {
            return Some(t.clone());
        }
        if !self.by_container.is_empty()
            && let Some(cid) = self.container_id(pid)
            && let Some(t) = self.by_container.get(&*cid)
        {
            return Some(t.clone());
        }
        (!self.options.targets_only).then(|| self.unmatched.clone())
    }

    /// The container ID of `pid` from its `/proc/PID/cgroup`, cached.
    pub fn container_id(&mut self, pid: u32) -> Option<Arc<str>> {
        let start = start_time(&self.options.proc_root, pid);
        if let Some(c) = self.cids.get(&pid)
            && c.start_time == start
        {
            return c.container_id.clone();
        }
        let path = self.options.proc_root.join(pid.to_string()).join("cgroup");
        // Gone (or unreadable): nothing to cache.
        let text = read_bounded(&path)?;
        let container_id: Option<Arc<str>> = cgroup::container_id(&text).map(Arc::from);
        self.cids.put(
            pid,
            CachedCid {
                start_time: start,
                container_id: container_id.clone(),
            },
        );
        container_id
    }

    /// Forgets the cached container ID of an exited process.
    pub fn forget(&mut self, pid: u32) {
        self.cids.pop(&pid);
    }
}
