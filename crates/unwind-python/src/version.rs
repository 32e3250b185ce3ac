//! Which CPython a file or a process runs: from a file name or from `PY_VERSION_HEX`.

use std::fmt;

/// A CPython version. Versions found from a file name have `micro` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PyVersion {
    /// Major version (3).
    pub major: u8,
    /// Minor version: selects the [`Layout`](crate::Layout).
    pub minor: u8,
    /// Micro (patch) version.
    pub micro: u8,
}

impl fmt::Display for PyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// The version named by an interpreter's file name, or `None` for a file that is not one.
///
/// Matches what the regular expressions `^(?:.*/)?python(\d)\.(\d+)(d|m|dm)?$` (the
/// executable: `python3.12`, `/usr/bin/python3.6m`) and `^(?:.*/)?libpython(\d)\.(\d+)[^/]*`
/// (the shared library: `libpython3.12.so.1.0`, also `libpython3.12d.so`) match; `micro` is 0.
/// `python3` and `libpython3.so` (the stable-ABI stub) carry no minor version and give `None`.
pub fn version_from_path(path: &str) -> Option<PyVersion> {
    let base = path.rsplit('/').next().unwrap_or(path);
    if let Some(rest) = base.strip_prefix("python")
        && let Some((major, minor, tail)) = major_minor(rest)
        && matches!(tail, "" | "d" | "m" | "dm")
    {
        return Some(PyVersion {
            major,
            minor,
            micro: 0,
        });
    }
    // `(?:.*/)?` is greedy: the last path component that starts a match wins.
    let mut components: Vec<&str> = path.split('/').collect();
    while let Some(component) = components.pop() {
        // Everything after the component is matched by `[^/]*` only up to the next '/',
        // and nothing after it needs to match (the pattern is not anchored at the end).
        if let Some(rest) = component.strip_prefix("libpython")
            && let Some((major, minor, _)) = major_minor(rest)
        {
            return Some(PyVersion {
                major,
                minor,
                micro: 0,
            });
        }
    }
    None
}

/// Parses `(\d)\.(\d+)` at the start of `s`; returns the rest.
fn major_minor(s: &str) -> Option<(u8, u8, &str)> {
    let bytes = s.as_bytes();
    let major = *bytes.first()?;
    if !major.is_ascii_digit() || bytes.get(1) != Some(&b'.') {
        return None;
    }
    let digits = bytes[2..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let minor: u8 = s[2..2 + digits].parse().ok()?;
    Some((major - b'0', minor, &s[2 + digits..]))
}

/// The version encoded in `PY_VERSION_HEX` (also the value of the `Py_Version` symbol, 3.11+):
/// `0xMMmmuuLS` (major, minor, micro, release level, serial).
pub fn version_from_hex(hex: u32) -> PyVersion {
    PyVersion {
        major: (hex >> 24) as u8,
        minor: (hex >> 16) as u8,
        micro: (hex >> 8) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u8, minor: u8) -> Option<PyVersion> {
        Some(PyVersion {
            major,
            minor,
            micro: 0,
        })
    }

    #[test]
    fn executables_and_libraries_are_recognized() {
        let cases = [
            ("/usr/bin/python3.12", v(3, 12)),
            ("python3.6m", v(3, 6)),
            ("/opt/py/bin/python3.13d", v(3, 13)),
            ("/opt/py/bin/python3.7dm", v(3, 7)),
            ("/usr/bin/python3", None),
            ("/usr/bin/python3.12-config", None),
            ("/usr/bin/python3.", None),
            ("/usr/lib/libpython3.12.so.1.0", v(3, 12)),
            ("libpython3.6m.so", v(3, 6)),
            ("/usr/lib/libpython3.so", None),
            ("/usr/lib/x86_64-linux-gnu/libpython3.11d.so.1.0", v(3, 11)),
            ("/x/libpython3.10/y", v(3, 10)),
            ("/usr/lib/notlibpython3.12.so", None),
            ("/usr/bin/python3.999", None),
            ("", None),
        ];
        for (path, want) in cases {
            assert_eq!(version_from_path(path), want, "{path}");
        }
    }

    #[test]
    fn hex_versions_decode() {
        let got = version_from_hex(0x030c_01f0);
        assert_eq!(
            got,
            PyVersion {
                major: 3,
                minor: 12,
                micro: 1
            }
        );
        assert_eq!(got.to_string(), "3.12.1");
        assert_eq!(version_from_hex(0x030d_00f0).to_string(), "3.13.0");
    }

    #[test]
    fn versions_order_numerically() {
        let a = version_from_hex(0x0309_1200);
        let b = version_from_hex(0x030a_0000);
        assert!(a < b);
    }
}
