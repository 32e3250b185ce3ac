//! Parsing `/proc/PID/maps`.
//!
//! Each line of the file describes one mapping:
//!
//! ```text
//! 7f1c2a000000-7f1c2a028000 r-xp 00028000 08:01 1835106    /usr/lib/x86_64-linux-gnu/libc.so.6
//! ```
//!
//! The text is treated as untrusted: the parsers never panic. [`parse_maps`] is strict and
//! fails on the first malformed line (a malformed line means the kernel prints something this
//! parser does not understand, which should be noticed); [`parse_maps_lossy`] skips malformed
//! lines and counts them, for callers that prefer a partial answer to none.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Error;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapEntry {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address of the mapping.
    pub end: u64,
    /// Permissions as printed, e.g. `*b"r-xp"`.
    pub perms: [u8; 4],
    /// Offset in the mapped file of the byte mapped at `start`.
    pub offset: u64,
    /// Major number of the device holding the file.
    pub dev_major: u32,
    /// Minor number of the device holding the file.
    pub dev_minor: u32,
    /// Inode of the file (0 for anonymous mappings).
    pub inode: u64,
    /// What is mapped.
    pub path: MapPath,
}

/// What a mapping maps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MapPath {
    /// A file, by the absolute path the kernel printed.
    File(PathBuf),
    /// A file that has been deleted (or replaced) since it was mapped; the kernel's
    /// `" (deleted)"` suffix is stripped.
    Deleted(PathBuf),
    /// An anonymous mapping (no name).
    Anonymous,
    /// A kernel-named mapping such as `[vdso]`, `[stack]`, `[heap]`, `[vsyscall]`,
    /// `[anon:name]`, or a pseudo-file such as `anon_inode:[perf_event]`; kept as printed.
    Special(String),
}

impl MapPath {
    fn parse(raw: &str) -> MapPath {
        const DELETED: &str = " (deleted)";
        if raw.is_empty() {
            MapPath::Anonymous
        } else if raw.starts_with('/') {
            match raw.strip_suffix(DELETED) {
                Some(p) => MapPath::Deleted(PathBuf::from(p)),
                None => MapPath::File(PathBuf::from(raw)),
            }
        } else {
            MapPath::Special(raw.to_owned())
        }
    }

    /// The file path, for file mappings (deleted or not).
    pub fn file_path(&self) -> Option<&Path> {
        match self {
            MapPath::File(p) | MapPath::Deleted(p) => Some(p),
            MapPath::Anonymous | MapPath::Special(_) => None,
        }
    }
}

impl MapEntry {
    /// Whether the mapping is executable (`x` permission).
    pub fn is_executable(&self) -> bool {
        self.perms[2] == b'x'
    }

    /// Whether `addr` lies inside the mapping.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the mapping is empty (never the case for kernel-produced lines).
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// Parses the text of a `/proc/PID/maps` file, failing on the first malformed line.
///
/// Blank lines are ignored. Never panics.
pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>, Error> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(e) => out.push(e),
            Err(reason) => {
                return Err(Error::MalformedMaps {
                    line_number: i + 1,
                    reason,
                    line: line.chars().take(200).collect(),
                });
            }
        }
    }
    Ok(out)
}

/// Parses the text of a `/proc/PID/maps` file, skipping malformed lines.
///
/// Returns the entries and the number of lines skipped. Never panics.
pub fn parse_maps_lossy(text: &str) -> (Vec<MapEntry>, usize) {
    let mut out = Vec::new();
    let mut skipped = 0;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(e) => out.push(e),
            Err(reason) => {
                skipped += 1;
                tracing::debug!(line, reason, "skipping malformed maps line");
            }
        }
    }
    (out, skipped)
}

/// Reads and parses `/proc/PID/maps` (strictly, see [`parse_maps`]).
pub fn read_maps(pid: u32) -> Result<Vec<MapEntry>, Error> {
    parse_maps(&read_maps_text(pid)?)
}

/// Reads `/proc/PID/maps` as text, classifying failures.
pub(crate) fn read_maps_text(pid: u32) -> Result<String, Error> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    match fs::read(&path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) => Err(Error::from_proc_io(pid, path, e)),
    }
}

fn is_sep(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Splits off the next separator-delimited field.
fn field<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let s = rest.trim_start_matches(is_sep);
    let end = s.find(is_sep).unwrap_or(s.len());
    let (f, r) = s.split_at(end);
    *rest = r;
    (!f.is_empty()).then_some(f)
}

fn hex_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn hex_u32(s: &str) -> Option<u32> {
    hex_u64(s).and_then(|v| u32::try_from(v).ok())
}

fn parse_line(line: &str) -> Result<MapEntry, &'static str> {
    let mut rest = line;
    let range = field(&mut rest).ok_or("missing address range")?;
    let (start, end) = range.split_once('-').ok_or("address range has no '-'")?;
    let start = hex_u64(start).ok_or("bad start address")?;
    let end = hex_u64(end).ok_or("bad end address")?;
    if end < start {
        return Err("end address before start address");
    }

    let perms = field(&mut rest).ok_or("missing permissions")?;
    let perms: [u8; 4] = perms
        .as_bytes()
        .try_into()
        .map_err(|_| "permissions are not 4 characters")?;

    let offset = field(&mut rest).ok_or("missing offset")?;
    let offset = hex_u64(offset).ok_or("bad offset")?;

    let dev = field(&mut rest).ok_or("missing device")?;
    let (major, minor) = dev.split_once(':').ok_or("device has no ':'")?;
    let dev_major = hex_u32(major).ok_or("bad device major number")?;
    let dev_minor = hex_u32(minor).ok_or("bad device minor number")?;

    let inode = field(&mut rest).ok_or("missing inode")?;
    if !inode.bytes().all(|b| b.is_ascii_digit()) {
        return Err("bad inode");
    }
    let inode: u64 = inode.parse().map_err(|_| "bad inode")?;

    // The path is everything after the padding that follows the inode; it may contain spaces.
    let path = MapPath::parse(rest.trim_start_matches(is_sep));
    Ok(MapEntry {
        start,
        end,
        perms,
        offset,
        dev_major,
        dev_minor,
        inode,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        start: u64,
        end: u64,
        perms: &[u8; 4],
        offset: u64,
        dev: (u32, u32),
        inode: u64,
        path: MapPath,
    ) -> MapEntry {
        MapEntry {
            start,
            end,
            perms: *perms,
            offset,
            dev_major: dev.0,
            dev_minor: dev.1,
            inode,
            path,
        }
    }

    fn check(line: &str, expected: MapEntry) {
        let got = parse_maps(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(got, vec![expected], "line {line:?}");
    }

    fn file(p: &str) -> MapPath {
        MapPath::File(PathBuf::from(p))
    }

    #[test]
    fn table_of_real_lines() {
        check(
            "7f1c2a028000-7f1c2a1bd000 r-xp 00028000 08:01 1835106                    /usr/lib/x86_64-linux-gnu/libc.so.6",
            entry(
                0x7f1c2a028000,
                0x7f1c2a1bd000,
                b"r-xp",
                0x28000,
                (8, 1),
                1835106,
                file("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            ),
        );
        check(
            "7ffd3b5fe000-7ffd3b600000 r-xp 00000000 00:00 0                          [vdso]",
            entry(
                0x7ffd3b5fe000,
                0x7ffd3b600000,
                b"r-xp",
                0,
                (0, 0),
                0,
                MapPath::Special("[vdso]".into()),
            ),
        );
        check(
            "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
            entry(
                0xffffffffff600000,
                0xffffffffff601000,
                b"--xp",
                0,
                (0, 0),
                0,
                MapPath::Special("[vsyscall]".into()),
            ),
        );
        check(
            "7f1c29ff0000-7f1c2a000000 rw-p 00000000 00:00 0 ",
            entry(
                0x7f1c29ff0000,
                0x7f1c2a000000,
                b"rw-p",
                0,
                (0, 0),
                0,
                MapPath::Anonymous,
            ),
        );
        check(
            "7f1c29ff0000-7f1c2a000000 rw-p 00000000 00:00 0",
            entry(
                0x7f1c29ff0000,
                0x7f1c2a000000,
                b"rw-p",
                0,
                (0, 0),
                0,
                MapPath::Anonymous,
            ),
        );
        check(
            "55d0c8e00000-55d0c8e21000 rw-p 00000000 00:00 0                          [heap]",
            entry(
                0x55d0c8e00000,
                0x55d0c8e21000,
                b"rw-p",
                0,
                (0, 0),
                0,
                MapPath::Special("[heap]".into()),
            ),
        );
        check(
            "7f00aa000000-7f00aa100000 r-xp 00001000 fd:03 42    /opt/my app/lib foo.so (deleted)",
            entry(
                0x7f00aa000000,
                0x7f00aa100000,
                b"r-xp",
                0x1000,
                (0xfd, 3),
                42,
                MapPath::Deleted("/opt/my app/lib foo.so".into()),
            ),
        );
        check(
            "7f00aa000000-7f00aa100000 r-xp 00001000 fd:03 42    /opt/my app/bin",
            entry(
                0x7f00aa000000,
                0x7f00aa100000,
                b"r-xp",
                0x1000,
                (0xfd, 3),
                42,
                file("/opt/my app/bin"),
            ),
        );
        check(
            "7f00aa000000-7f00aa001000 r-xp 00000000 00:01 2050 /memfd:jit-code (deleted)",
            entry(
                0x7f00aa000000,
                0x7f00aa001000,
                b"r-xp",
                0,
                (0, 1),
                2050,
                MapPath::Deleted("/memfd:jit-code".into()),
            ),
        );
        check(
            "7f00aa000000-7f00aa001000 rw-s 00000000 00:0f 1060 anon_inode:[perf_event]",
            entry(
                0x7f00aa000000,
                0x7f00aa001000,
                b"rw-s",
                0,
                (0, 0xf),
                1060,
                MapPath::Special("anon_inode:[perf_event]".into()),
            ),
        );
        check(
            "7f00aa000000-7f00aa001000 rw-p 00000000 00:00 0 [anon:glibc.malloc]",
            entry(
                0x7f00aa000000,
                0x7f00aa001000,
                b"rw-p",
                0,
                (0, 0),
                0,
                MapPath::Special("[anon:glibc.malloc]".into()),
            ),
        );
        // Large device numbers (major > 255) print with more hex digits.
        check(
            "400000-401000 r-xp 00000000 103:02 9999999999 /bin/x",
            entry(
                0x400000,
                0x401000,
                b"r-xp",
                0,
                (0x103, 2),
                9999999999,
                file("/bin/x"),
            ),
        );
    }

    #[test]
    fn entry_helpers() {
        let e = &parse_maps("1000-2000 r-xp 00000000 00:00 0 /a").unwrap()[0];
        assert!(e.is_executable());
        assert!(e.contains(0x1000) && e.contains(0x1fff));
        assert!(!e.contains(0x2000) && !e.contains(0xfff));
        assert_eq!(e.len(), 0x1000);
        let e = &parse_maps("1000-2000 rw-p 00000000 00:00 0").unwrap()[0];
        assert!(!e.is_executable());
        assert_eq!(e.path.file_path(), None);
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for bad in [
            "1000 r-xp 0 00:00 0",
            "zz-2000 r-xp 0 00:00 0",
            "2000-1000 r-xp 0 00:00 0",
            "1000-2000 r-x 0 00:00 0",
            "1000-2000 r-xpp 0 00:00 0",
            "1000-2000 r-xp 0 0000 0",
            "1000-2000 r-xp 0 00:00",
            "1000-2000 r-xp 0 00:00 -1",
            "1000-2000 r-xp +0 00:00 1",
            "1000-2000 r-xp 0 1ffffffff:00 1",
            "10000000000000000-2 r-xp 0 00:00 0",
            "1000-2000 é-xp 0 00:00 0",
            "1000-2000",
            "-",
        ] {
            let err = parse_maps(bad).expect_err(bad);
            assert!(err.to_string().contains("line 1"), "{err}");
        }
    }

    #[test]
    fn lossy_parse_skips_bad_lines() {
        let text =
            "1000-2000 r-xp 00000000 00:00 0 /a\ngarbage\n\n3000-4000 r-xp 00000000 00:00 0 /b\n";
        let (entries, skipped) = parse_maps_lossy(text);
        assert_eq!(skipped, 1);
        assert_eq!(entries.len(), 2);
        assert!(parse_maps(text).unwrap_err().to_string().contains("line 2"));
    }

    #[test]
    fn reads_own_maps() {
        let maps = read_maps(std::process::id()).unwrap();
        assert!(
            maps.iter()
                .any(|m| m.is_executable() && m.path.file_path().is_some())
        );
    }

    #[test]
    fn missing_process_says_it_exited() {
        // PIDs are at most 2^22 on Linux, so this one never exists.
        let err = read_maps(u32::MAX - 1).unwrap_err();
        assert!(matches!(err, Error::ProcessExited { .. }), "{err}");
        assert!(err.to_string().contains("has exited"));
    }
}
