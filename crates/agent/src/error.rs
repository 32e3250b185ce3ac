use std::path::PathBuf;

/// Why a ferroscope session could not start or finish. Each message says what failed,
/// why, and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `--pid` names no running process.
    #[error(
        "process {pid} does not exist (there is no /proc/{pid}); check the PID with `ps -p {pid}`; it may have exited already"
    )]
    NoSuchProcess {
        /// The PID given.
        pid: u32,
    },
    /// The sample rate is out of range.
    #[error("sample rate {rate} Hz is out of range: use 1 to {max} Hz{why}")]
    InvalidSampleRate {
        /// The rate given.
        rate: u32,
        /// The highest rate allowed here.
        max: u32,
        /// Why the limit is lower than 1000, if it is.
        why: String,
    },
    /// The environment check failed.
    #[error(
        "this machine cannot run the profiler yet: {0}\n(run `ferroscope check` to see every check)"
    )]
    Environment(String),
    /// An output file cannot be written.
    #[error("cannot write {path} (choose a path in a writable directory)")]
    Output {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The sampler failed.
    #[error(transparent)]
    Sampler(#[from] ferroscope_ebpf_programs::Error),
    /// Writing a profile or flame graph failed.
    #[error(transparent)]
    Profile(#[from] ferroscope_pprof::Error),
    /// The configuration file cannot be read.
    #[error("cannot read the configuration file {} (check the path given to --config and its permissions)", path.display())]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration has a wrong key, type or value.
    #[error("{file}:{line}:{column}: invalid configuration at `{key}`: {message}")]
    Config {
        /// The file name.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The dotted key (e.g. `ebpf.sample_rate`).
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A probe link cannot be attached.
    #[error("probe link {link:?}: {why}")]
    ProbeLink {
        /// The link as given.
        link: String,
        /// What is wrong, and what to do.
        why: String,
    },
    /// A thread of the session could not start (or its parts were already taken).
    #[error("{0} (the system may be out of threads or memory)")]
    Thread(String),
    /// The async runtime could not start.
    #[error("cannot start the agent's I/O threads (the system may be out of threads or memory)")]
    Runtime(#[source] std::io::Error),
    /// The HTTP server's address cannot be bound.
    #[error(
        "cannot listen on {address} for /metrics and /healthz (choose another [server] listen_address or stop what uses the port)"
    )]
    Listen {
        /// The configured address.
        address: std::net::SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
}

/// An error and each of its causes, joined by `": "`: how the agent's logs print an error,
/// since each `Display` names only its own failure and leaves the cause to `source()`.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}
