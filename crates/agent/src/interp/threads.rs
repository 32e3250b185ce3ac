//! The runtimes' names for threads (Python's `threading` names), asked of the plug-ins once
//! per thread and kept, bounded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most threads whose names are kept, over every process; past it the table starts again.
const MAX_THREADS: usize = 65_536;
/// How often a thread whose runtime gave no name is asked again, and how long to wait
/// before the first retry (doubled each time): a thread sampled just after it started may
/// not be registered with its runtime yet.
const RETRIES: u8 = 6;
const FIRST_RETRY: Duration = Duration::from_millis(50);

struct Entry {
    name: Option<Arc<str>>,
    asked: u8,
    next: Instant,
}

/// Thread names by process and thread.
#[derive(Default)]
pub(super) struct ThreadNames {
    by_pid: HashMap<u32, HashMap<u32, Entry>>,
    len: usize,
}

impl ThreadNames {
    /// The name of thread `tid` of `pid`: the one kept, or what `ask` says when the thread
    /// is new or its last answer was none and a retry is due.
    pub(super) fn get(
        &mut self,
        pid: u32,
        tid: u32,
        now: Instant,
        ask: impl FnOnce() -> Option<String>,
    ) -> Option<Arc<str>> {
        if let Some(e) = self.by_pid.get(&pid).and_then(|t| t.get(&tid))
            && (e.name.is_some() || e.asked > RETRIES || now < e.next)
        {
            return e.name.clone();
        }
        let name: Option<Arc<str>> = ask().map(Into::into);
        if self.len >= MAX_THREADS {
            self.by_pid.clear();
            self.len = 0;
        }
        let threads = self.by_pid.entry(pid).or_default();
        let asked = threads.get(&tid).map_or(0, |e| e.asked) + 1;
        let entry = Entry {
            name: name.clone(),
            asked,
            next: now + FIRST_RETRY * (1 << asked.min(RETRIES)),
        };
        if threads.insert(tid, entry).is_none() {
            self.len += 1;
        }
        name
    }

    /// Drops what is kept of process `pid` (it exited or was detached).
    pub(super) fn forget(&mut self, pid: u32) {
        if let Some(t) = self.by_pid.remove(&pid) {
            self.len -= t.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_asked_once_and_no_name_is_retried_a_few_times() {
        let mut names = ThreadNames::default();
        let t0 = Instant::now();
        let asked = std::cell::Cell::new(0);
        let get = |names: &mut ThreadNames, at: Duration, answer: Option<&str>| {
            names.get(1, 2, t0 + at, || {
                asked.set(asked.get() + 1);
                answer.map(str::to_owned)
            })
        };
        assert_eq!(get(&mut names, Duration::ZERO, None), None);
        // Not due yet: the runtime is not asked again.
        assert_eq!(get(&mut names, Duration::from_millis(1), Some("x")), None);
        // Due: asked, and kept once given.
        let named = get(&mut names, Duration::from_secs(1), Some("worker"));
        assert_eq!(named.as_deref(), Some("worker"));
        let again = get(&mut names, Duration::from_secs(2), Some("other"));
        assert_eq!(again.as_deref(), Some("worker"));
        assert_eq!(asked.get(), 2);

        // A thread that never gets a name stops being asked after the retries.
        let mut asked = 0;
        for s in 0..1000 {
            names.get(1, 3, t0 + Duration::from_millis(100 * s), || {
                asked += 1;
                None
            });
        }
        assert_eq!(asked, usize::from(RETRIES) + 1);

        names.forget(1);
        assert_eq!(names.len, 0);
        assert!(names.by_pid.is_empty());
    }
}
