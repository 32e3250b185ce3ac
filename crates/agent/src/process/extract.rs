//! Table extraction off the process manager's thread: a worker thread that builds
//! stack-delta tables from open files, within a CPU budget, and keeps each table it built in
//! a cache directory by file identity, so that the next process (or the next start of the
//! agent) that maps the same file gets its table without extracting it again.
//!
//! The worker reads files with `pread` only (`extract_file`), looks for the separate debug
//! file inside the process's root, and paces itself: over any stretch of time it uses at
//! most its share of one CPU, after a burst allowance (small files at start-up go at once,
//! a 150 MB library is spread out).

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferroscope_symbolize::debuglink::{DebugRefs, find_debug_file};
use ferroscope_symbolize::root::FsRoot;
use ferroscope_unwind_native::{ExtractOptions, StackDeltaTable};

use super::FileId;
use super::cache::TableCache;

/// Where to look for a file's separate debug file (its `.debug_frame` when the file has
/// almost no CFI of its own).
#[derive(Debug)]
pub(crate) struct DebugSearch {
    pub root: FsRoot,
    pub maps_path: PathBuf,
    pub refs: DebugRefs,
    pub identity: Option<(u64, u64)>,
}

/// A table to build.
#[derive(Debug)]
pub(crate) struct Job {
    pub file_id: FileId,
    pub file: File,
    /// The file's path as a process maps it, for messages.
    pub shown: String,
    pub debug: DebugSearch,
}

/// A table built, read from the cache, or why not.
#[derive(Debug)]
pub(crate) struct Done {
    pub file_id: FileId,
    pub shown: String,
    pub result: Result<StackDeltaTable, String>,
    /// It came from the cache.
    pub cached: bool,
    /// CPU time the worker spent on it.
    pub cpu: Duration,
}

/// The worker and its queues.
#[derive(Debug)]
pub(crate) struct Extractor {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
}

/// Seconds of CPU the worker may spend at once before its share applies.
const BURST: Duration = Duration::from_secs(2);

impl Extractor {
    /// Starts the worker: it may use `cpu_share` of one CPU (0.25 = a quarter) over time,
    /// and keeps tables in `cache` when given.
    pub(crate) fn start(cache: Option<TableCache>, cpu_share: f64) -> Extractor {
        let (jobs, job_rx) = channel::<Job>();
        let (done_tx, done) = channel();
        let share = cpu_share.clamp(0.01, 1.0);
        let thread = std::thread::Builder::new()
            .name("ferroscope-tables".into())
            .spawn(move || work(job_rx, done_tx, cache, share))
            .map_err(|e| {
                tracing::warn!(
                    "cannot start the table extraction thread, tables are built inline: {e}"
                )
            })
            .ok();
        Extractor {
            jobs: thread.is_some().then_some(jobs),
            done,
            thread,
        }
    }

    /// Queues a job; without a worker it runs now.
    pub(crate) fn submit(&mut self, job: Job) -> Option<Done> {
        match &self.jobs {
            Some(tx) => match tx.send(job) {
                Ok(()) => None,
                Err(std::sync::mpsc::SendError(job)) => Some(run(job, None)),
            },
            None => Some(run(job, None)),
        }
    }

    /// Jobs finished since the last call.
    pub(crate) fn finished(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        while let Ok(d) = self.done.try_recv() {
            out.push(d);
        }
        out
    }
}

impl Drop for Extractor {
    fn drop(&mut self) {
        // Closing the queue ends the worker after its current job.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero timespec is a valid value; clock_gettime only writes into it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: CLOCK_THREAD_CPUTIME_ID is always valid for the calling thread, and `ts` is a
    // valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn work(jobs: Receiver<Job>, done: Sender<Done>, cache: Option<TableCache>, share: f64) {
    // CPU the worker may still spend now: refilled at `share` per second of wall time,
    // up to BURST.
    let mut allowance = BURST.as_secs_f64();
    let mut last = Instant::now();
    while let Ok(job) = jobs.recv() {
        let now = Instant::now();
        allowance =
            (allowance + now.duration_since(last).as_secs_f64() * share).min(BURST.as_secs_f64());
        last = now;
        if allowance < 0.0 {
            std::thread::sleep(Duration::from_secs_f64(-allowance / share));
            allowance = 0.0;
            last = Instant::now();
        }
        let d = run(job, cache.as_ref());
        allowance -= d.cpu.as_secs_f64();
        if done.send(d).is_err() {
            return;
        }
    }
}

/// Builds (or reads from the cache) one table.
fn run(job: Job, cache: Option<&TableCache>) -> Done {
    let started = thread_cpu();
    let Job {
        file_id,
        file,
        shown,
        debug,
    } = job;
    if let Some(table) = cache.and_then(|c| c.load(file_id)) {
        return Done {
            file_id,
            shown,
            result: Ok(table),
            cached: true,
            cpu: thread_cpu().saturating_sub(started),
        };
    }
    let wall = Instant::now();
    let found = find_debug_file(&debug.root, &debug.maps_path, &debug.refs, debug.identity);
    if let Some(d) = &found {
        tracing::debug!(path = %shown, debug = %d.path.display(), "looking at the debug file's CFI too");
    }
    let result = ferroscope_unwind_native::extract_file(
        &file,
        found.as_ref().map(|d| &d.file),
        &ExtractOptions::default(),
    )
    .map_err(|e| e.to_string());
    if let (Ok(table), Some(c)) = (&result, cache) {
        c.store(file_id, table);
    }
    let cpu = thread_cpu().saturating_sub(started);
    tracing::debug!(path = %shown, ok = result.is_ok(), took = ?wall.elapsed(), ?cpu, "unwind table extracted");
    Done {
        file_id,
        shown,
        result,
        cached: false,
        cpu,
    }
}
