//! The crate's single error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong when decoding, writing or rendering a profile.
///
/// Each message says what failed, why, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input started with the gzip magic bytes but could not be decompressed.
    #[error(
        "could not decompress the gzip pprof data: {source}; the data is truncated or corrupt, \
         re-create the profile or pass the uncompressed protobuf"
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
        "the data is not a valid pprof protobuf (perftools.profiles.Profile): {source}; \
         make sure the input is a pprof file, gzip-compressed or raw"
    )]
    Protobuf {
        /// What the protobuf decoder reported.
        source: prost::DecodeError,
    },

    /// Reading or writing a file failed.
    #[error("could not {action} {}: {source}; check that the directory exists and is writable and that the disk is not full", path.display())]
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
    #[error("could not render the flame graph: {source}; check that the output can be written")]
    Flamegraph {
        /// What inferno reported.
        source: io::Error,
    },
}
