//! The crate's single error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong when decoding, writing, rendering, storing or
/// pushing a profile.
///
/// Each message says what failed, why, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input started with the gzip magic bytes but could not be decompressed.
    #[error(
        "could not decompress the gzip pprof data (the data is truncated or corrupt: \
         re-create the profile or pass the uncompressed protobuf)"
    )]
    Gunzip {
        /// What the gzip decoder reported.
        source: io::Error,
    },

    /// The decompressed profile is larger than the decoder accepts.
    #[error(
        "the pprof data decompresses to more than {limit} bytes, the most this decoder accepts; \
         the input is probably not a profile (or a gzip bomb), check where it came from"
    )]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },

    /// The bytes are not a valid `perftools.profiles.Profile` protobuf message.
    #[error(
        "the data is not a valid pprof protobuf (perftools.profiles.Profile; make sure the \
         input is a pprof file, gzip-compressed or raw)"
    )]
    Protobuf {
        /// What the protobuf decoder reported.
        source: prost::DecodeError,
    },

    /// Reading or writing a file failed.
    #[error("could not {action} {} (check that the directory exists and is writable and that the disk is not full)", path.display())]
    File {
        /// What was being done, e.g. "create temporary file".
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// What the operating system reported.
        source: io::Error,
    },

    /// The requested value index does not exist in the profile.
    #[error(
        "value index {index} is out of range: the profile has {count} sample type(s); \
         pick an index below {count}"
    )]
    ValueIndex {
        /// The index asked for.
        index: usize,
        /// How many sample types the profile has.
        count: usize,
    },

    /// There is nothing to draw: no sample has a positive value at the chosen index.
    #[error(
        "cannot draw a flame graph: no sample has a positive value at index {index}; \
         profile for longer or pick another value index"
    )]
    NoSamples {
        /// The value index used.
        index: usize,
    },

    /// The flame graph renderer failed (usually writing to the output failed).
    #[error("could not render the flame graph (check that the output can be written)")]
    Flamegraph {
        /// What inferno reported.
        source: io::Error,
    },

    /// A push endpoint's configuration is unusable.
    #[error("invalid push endpoint {url:?}: {reason}; fix the endpoint in the configuration")]
    Endpoint {
        /// The endpoint's URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The HTTP client could not be created.
    #[cfg(feature = "push")]
    #[error(
        "could not create the HTTP client for {url} (check the TLS setup, i.e. the system \
         root certificates, and the endpoint settings)"
    )]
    HttpClient {
        /// The endpoint's URL.
        url: String,
        /// What reqwest reported.
        source: reqwest::Error,
    },

    /// A profile's series labels break Pyroscope's rules, so it is not sent.
    #[error(
        "profile with labels {labels} rejected: {reason}; fix the target's labels or external_labels"
    )]
    InvalidLabels {
        /// The labels, formatted as `{name="value", ...}`.
        labels: String,
        /// Which rule they break.
        reason: String,
    },

    /// A push attempt failed (the server answered an error, or could not be reached).
    #[error(
        "could not push a profile to {endpoint}: {code}: {message}; check that the server is up \
         and reachable, the URL and credentials are right, and the profile is within its limits"
    )]
    Push {
        /// The endpoint's URL.
        endpoint: String,
        /// The Connect error code (e.g. `unavailable`, `invalid_argument`).
        code: &'static str,
        /// The server's message, or the transport error.
        message: String,
    },
}

/// An error and each of its causes, joined by `": "`: how the crate's logs print an error,
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
