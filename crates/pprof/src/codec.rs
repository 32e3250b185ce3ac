//! Encoding, decoding and writing profiles.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use prost::Message;

use crate::{Error, proto};

/// The largest decompressed profile [`decode`] accepts: 512 MiB.
pub const MAX_DECODED_SIZE: u64 = 512 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Encodes `p` as a raw (uncompressed) protobuf message.
pub fn encode(p: &proto::Profile) -> Vec<u8> {
    p.encode_to_vec()
}

/// Encodes `p` and gzips it: the form pprof files and Pyroscope pushes carry.
///
/// Uses the fastest compression level, as Go's runtime profiler does: a
/// profiler's own CPU time matters more than a few percent of bytes.
pub fn encode_gzip(p: &proto::Profile) -> Vec<u8> {
    let raw = encode(p);
    let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 4 + 64), Compression::fast());
    // Writing into a Vec cannot fail.
    gz.write_all(&raw).expect("writing to a Vec does not fail");
    gz.finish().expect("writing to a Vec does not fail")
}

/// Decodes a profile from gzip-compressed or raw protobuf bytes.
///
/// Safe on untrusted input: it returns an error rather than panicking, and
/// refuses data that decompresses to more than [`MAX_DECODED_SIZE`]. It does not
/// check that the ids and string indices inside the profile are consistent; the
/// [`crate::report`] functions tolerate inconsistent ones.
pub fn decode(bytes: &[u8]) -> Result<proto::Profile, Error> {
    decode_limited(bytes, MAX_DECODED_SIZE)
}

fn decode_limited(bytes: &[u8], limit: u64) -> Result<proto::Profile, Error> {
    // A raw Profile message cannot start with 0x1f (field 3 with the invalid
    // wire type 7), so the gzip magic is unambiguous.
    if bytes.starts_with(&GZIP_MAGIC) {
        let mut raw = Vec::new();
        MultiGzDecoder::new(bytes)
            .take(limit.saturating_add(1))
            .read_to_end(&mut raw)
            .map_err(|source| Error::Gunzip { source })?;
        if raw.len() as u64 > limit {
            return Err(Error::TooLarge { limit });
        }
        decode_raw(&raw)
    } else {
        if bytes.len() as u64 > limit {
            return Err(Error::TooLarge { limit });
        }
        decode_raw(bytes)
    }
}

fn decode_raw(raw: &[u8]) -> Result<proto::Profile, Error> {
    proto::Profile::decode(raw).map_err(|source| Error::Protobuf { source })
}

/// Writes `p` gzipped to `path`, atomically: the data goes to a temporary file
/// in the same directory, which is flushed to disk and then renamed over
/// `path`, so readers see either the old file or the complete new one.
///
/// A path that names something other than a regular file (`/dev/null`, a FIFO, a terminal)
/// is written to in place: renaming over it would replace the device with a file.
pub fn write_file(p: &proto::Profile, path: &Path) -> Result<(), Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    if let Ok(meta) = fs::metadata(path)
        && !meta.is_file()
        && !meta.is_dir()
    {
        let data = encode_gzip(p);
        return fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &data))
            .map_err(|source| Error::File {
                action: "write a profile to",
                path: path.to_owned(),
                source,
            });
    }

    let file_name = path.file_name().ok_or_else(|| Error::File {
        action: "write a profile to",
        path: path.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name",
        ),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp: PathBuf = dir.join(tmp_name);

    let data = encode_gzip(p);
    let result = write_and_sync(&tmp, &data).and_then(|()| {
        fs::rename(&tmp, path).map_err(|source| Error::File {
            action: "rename the temporary file over",
            path: path.to_owned(),
            source,
        })
    });
    if result.is_err() {
        // Best effort: the temporary file may not even exist.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_and_sync(tmp: &Path, data: &[u8]) -> Result<(), Error> {
    let err = |action| {
        let path = tmp.to_owned();
        move |source| Error::File {
            action,
            path,
            source,
        }
    };
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(err("create temporary file"))?;
    f.write_all(data).map_err(err("write temporary file"))?;
    f.sync_all().map_err(err("flush temporary file to disk"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn decompression_is_bounded() {
        // 1 MiB of zeros compresses to about 1 KiB; with a 64 KiB limit the
        // decoder must stop instead of inflating it all.
        let bomb = gzip(&vec![0u8; 1 << 20]);
        let err = decode_limited(&bomb, 64 << 10).unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { limit } if limit == 64 << 10),
            "{err}"
        );
        // Right at the limit is fine as far as size goes (zeros are then a
        // protobuf error, not a size error).
        let exact = gzip(&[0u8; 16]);
        assert!(matches!(
            decode_limited(&exact, 16),
            Err(Error::Protobuf { .. })
        ));
    }

    #[test]
    fn raw_input_is_bounded_too() {
        let err = decode_limited(&[0x08; 100], 10).unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit: 10 }), "{err}");
    }

    #[test]
    fn multi_member_gzip_is_read_whole() {
        let p = proto::Profile {
            string_table: vec![String::new(), "a".into()],
            time_nanos: 5,
            ..Default::default()
        };
        let raw = encode(&p);
        let (first, second) = raw.split_at(raw.len() / 2);
        let mut joined = gzip(first);
        joined.extend(gzip(second));
        assert_eq!(decode(&joined).unwrap(), p);
    }

    /// `record -o /dev/null` (as root) once replaced the machine's /dev/null with a file.
    #[test]
    fn a_device_or_fifo_is_written_in_place_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let p = proto::Profile::default();
        write_file(&p, Path::new("/dev/null")).unwrap();
        assert!(
            fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );

        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::read(fifo).unwrap())
        };
        write_file(&p, &fifo).unwrap();
        let read = reader.join().unwrap();
        assert_eq!(decode(&read).unwrap(), p);
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }
}
