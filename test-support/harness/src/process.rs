//! Processes started by tests, each under a time limit.
//!
//! [`Guard::spawn`] starts a command in its own process group with piped stdout and stderr
//! (read by two threads, so a chatty child never blocks on a full pipe), and a watchdog that
//! kills the whole group with SIGKILL when the time limit passes. Waiting for a readiness line
//! ([`Guard::wait_for_line`]) or for the exit ([`Guard::wait`]) has its own timeout, and a
//! timeout fails the test with a message that names the command and ends with the tail of
//! its stderr. Dropping the guard kills the group and reaps the child, and a child whose
//! deadline passed fails the test there too. The child also gets SIGKILL if the thread that
//! started it ends first (`PR_SET_PDEATHSIG`), so a test killed mid-way leaves nothing behind:
//! keep a guard in the test that started it.
//!
//! [`run`] runs a command to completion under a time limit and returns its output.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many lines of stderr (and of stdout) a failure message shows.
const TAIL_LINES: usize = 40;

/// The last lines a stream printed.
#[derive(Debug, Default)]
struct Tail(VecDeque<String>);

impl Tail {
    fn push(&mut self, line: String) {
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0.push_back(line);
    }

    fn text(&self) -> String {
        self.0.iter().map(|l| format!("  | {l}\n")).collect()
    }
}

/// A command line, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn kill_group(pgid: u32, signal: i32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        // SAFETY: kill has no memory-safety preconditions; a negative PID names the process
        // group the child leads (it was started with process_group(0)).
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// Puts the child in its own process group, and has it killed when the spawning thread ends.
fn prepare(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
}

/// A process started by a test: killed with its whole process group when its time limit
/// passes or when the guard is dropped.
#[derive(Debug)]
pub struct Guard {
    child: Child,
    what: String,
    limit: Duration,
    started: Instant,
    /// Behind a mutex so that a guard can be shared with other threads of the test.
    lines: Mutex<Receiver<String>>,
    stdout: Arc<Mutex<Tail>>,
    stderr: Arc<Mutex<Tail>>,
    readers: Vec<JoinHandle<()>>,
    timed_out: Arc<AtomicBool>,
    cancel: Option<Sender<()>>,
    watchdog: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Guard {
    /// Starts `cmd` with stdout and stderr piped, in a new process group, to be killed after
    /// `limit`. Panics when it cannot start.
    pub fn spawn(cmd: &mut Command, limit: Duration) -> Guard {
        let what = describe(cmd);
        prepare(cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(Tail::default()));
        let stderr = Arc::new(Mutex::new(Tail::default()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let tail = Arc::clone(&stdout);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lock(&tail).push(line.clone());
                    let _ = tx.send(line);
                }
            }));
        }
        if let Some(err) = child.stderr.take() {
            let tail = Arc::clone(&stderr);
            readers.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(err);
                let mut buf = Vec::new();
                while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    lock(&tail).push(line);
                    buf.clear();
                }
            }));
        }
        let timed_out = Arc::new(AtomicBool::new(false));
        let (cancel, cancelled) = mpsc::channel::<()>();
        let watchdog = {
            let timed_out = Arc::clone(&timed_out);
            let pid = child.id();
            std::thread::spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = cancelled.recv_timeout(limit) {
                    timed_out.store(true, Ordering::SeqCst);
                    kill_group(pid, libc::SIGKILL);
                }
            })
        };
        Guard {
            child,
            what,
            limit,
            started: Instant::now(),
            lines: Mutex::new(lines),
            stdout,
            stderr,
            readers,
            timed_out,
            cancel: Some(cancel),
            watchdog: Some(watchdog),
            status: None,
        }
    }

    /// The child's PID (also its process group ID).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdin, when the command was given `Stdio::piped()` for it.
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.child.stdin.as_mut()
    }

    /// The last lines it wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        lock(&self.stderr).text()
    }

    /// The last lines it wrote to stdout.
    pub fn stdout_tail(&self) -> String {
        lock(&self.stdout).text()
    }

    fn fail(&self, why: &str) -> ! {
        let timed_out = if self.timed_out.load(Ordering::SeqCst) {
            format!(
                " (killed: it ran past its time limit of {} s)",
                self.limit.as_secs_f64()
            )
        } else {
            String::new()
        };
        panic!(
            "`{}` {why}{timed_out}, {:.1} s after it started\n--- its stdout (last lines)\n{}--- its stderr (last lines)\n{}",
            self.what,
            self.started.elapsed().as_secs_f64(),
            self.stdout_tail(),
            self.stderr_tail()
        );
    }

    /// Waits up to `timeout` for a stdout line that `pred` accepts and returns it; earlier
    /// lines are dropped. Fails the test when the child exits or the time runs out first.
    pub fn wait_for(&mut self, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let next = self
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .recv_timeout(left);
            match next {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => self.fail(&format!(
                    "printed no expected line within {} s",
                    timeout.as_secs_f64()
                )),
                Err(RecvTimeoutError::Disconnected) => {
                    // Give an exiting child a moment, for the status in the message.
                    std::thread::sleep(Duration::from_millis(100));
                    let status = match self.child.try_wait() {
                        Ok(Some(status)) => format!("exited: {status}"),
                        _ => "still running".to_owned(),
                    };
                    self.fail(&format!(
                        "closed its stdout ({status}) before printing the expected line"
                    ))
                }
            }
        }
    }

    /// Waits up to `timeout` for the stdout line `line` (compared trimmed), e.g. `ready`.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) {
        self.wait_for(timeout, |l| l.trim() == line);
    }

    /// The next stdout line within `timeout`, or `None` when stdout closed first; fails the
    /// test when the time runs out.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let next = self
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recv_timeout(timeout);
        match next {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => self.fail(&format!(
                "printed no line within {} s",
                timeout.as_secs_f64()
            )),
        }
    }

    /// Sends `signal` to the child alone (not its group).
    pub fn signal(&self, signal: i32) {
        if let Ok(pid) = i32::try_from(self.pid()) {
            // SAFETY: kill has no memory-safety preconditions; the PID is our unreaped child.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Whether it is still running (not exited).
    pub fn running(&mut self) -> bool {
        self.status.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the child to exit and returns its status; fails the test
    /// (after killing the group) when it does not.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let end = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    // What it left running in its group goes too, so that the readers see
                    // the end of the pipes and catch the last lines.
                    kill_group(self.pid(), libc::SIGKILL);
                    for r in self.readers.drain(..) {
                        let _ = r.join();
                    }
                    if self.timed_out.load(Ordering::SeqCst) {
                        self.fail("was killed");
                    }
                    return status;
                }
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    kill_group(self.pid(), libc::SIGKILL);
                    let _ = self.child.wait();
                    self.fail(&format!("did not exit within {} s", timeout.as_secs_f64()))
                }
                Err(e) => self.fail(&format!("cannot be waited for: {e}")),
            }
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns its status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(timeout)
    }

    /// Waits up to `timeout` for the exit and fails the test unless it succeeded; returns
    /// what it printed on stdout (the last lines).
    pub fn expect_success(&mut self, timeout: Duration) -> String {
        let status = self.wait(timeout);
        if !status.success() {
            self.fail(&format!("failed ({status})"));
        }
        self.stdout_tail()
    }
}

fn lock(tail: &Mutex<Tail>) -> std::sync::MutexGuard<'_, Tail> {
    tail.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Guard {
    fn drop(&mut self) {
        kill_group(self.pid(), libc::SIGKILL);
        let _ = self.child.wait();
        drop(self.cancel.take());
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        if self.timed_out.load(Ordering::SeqCst) && !std::thread::panicking() {
            self.fail("was killed");
        }
        if std::thread::panicking() {
            // Shown with the failing test's output.
            let tail = self.stderr_tail();
            if !tail.is_empty() {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr().lock(),
                    format!("--- stderr of `{}` (last lines)\n{tail}", self.what).as_bytes(),
                );
            }
        }
    }
}

/// Why [`try_run`] failed.
#[derive(Debug)]
pub enum RunError {
    /// The command could not start.
    Start(std::io::Error),
    /// It ran past its limit and was killed; what it printed so far.
    Timeout(Output),
}

/// Runs `cmd` to completion in its own process group, with stdout and stderr captured, and
/// kills the group when it runs past `limit`.
pub fn try_run(cmd: &mut Command, limit: Duration) -> Result<Output, RunError> {
    try_run_with_input(cmd, None, limit)
}

/// [`try_run`], writing `input` (when given) to the command's stdin, then closing it.
pub fn try_run_with_input(
    cmd: &mut Command,
    input: Option<Vec<u8>>,
    limit: Duration,
) -> Result<Output, RunError> {
    prepare(cmd);
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Start)?;
    let writer = child.stdin.take().zip(input).map(|(mut stdin, input)| {
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &input);
        })
    });
    let collect = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = stream {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = collect(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = collect(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let end = Instant::now() + limit;
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status, false),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                kill_group(child.id(), libc::SIGKILL);
                break (child.wait().map_err(RunError::Start)?, true);
            }
        }
    };
    // A grandchild that kept the pipes open must not keep us waiting.
    kill_group(child.id(), libc::SIGKILL);
    if let Some(w) = writer {
        let _ = w.join();
    }
    let output = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    if timed_out {
        Err(RunError::Timeout(output))
    } else {
        Ok(output)
    }
}

/// The last 40 lines of `bytes`, indented, for failure messages.
pub fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..]
        .iter()
        .map(|l| format!("  | {l}\n"))
        .collect()
}

/// Runs `cmd` to completion under `limit` ([`try_run`]) and returns its output, whatever its
/// exit status; fails the test when it cannot start or runs past the limit.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    run_with_input(cmd, None, limit)
}

fn run_with_input(cmd: &mut Command, input: Option<Vec<u8>>, limit: Duration) -> Output {
    let what = describe(cmd);
    match try_run_with_input(cmd, input, limit) {
        Ok(out) => out,
        Err(RunError::Start(e)) => panic!("cannot run `{what}`: {e}"),
        Err(RunError::Timeout(out)) => panic!(
            "`{what}` ran past its time limit of {} s and was killed\n--- its stdout (last lines)\n{}--- its stderr (last lines)\n{}",
            limit.as_secs_f64(),
            tail(&out.stdout),
            tail(&out.stderr)
        ),
    }
}

/// Runs `cmd` under `limit` and fails the test unless it succeeds; returns its stdout.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    run_ok_inner(cmd, None, limit)
}

/// [`run_ok`], with `input` written to the command's stdin.
pub fn run_ok_with_input(cmd: &mut Command, input: &[u8], limit: Duration) -> String {
    run_ok_inner(cmd, Some(input.to_vec()), limit)
}

fn run_ok_inner(cmd: &mut Command, input: Option<Vec<u8>>, limit: Duration) -> String {
    let what = describe(cmd);
    let out = run_with_input(cmd, input, limit);
    assert!(
        out.status.success(),
        "`{what}` failed ({})\n--- its stdout (last lines)\n{}--- its stderr (last lines)\n{}",
        out.status,
        tail(&out.stdout),
        tail(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
