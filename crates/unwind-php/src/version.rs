//! Which PHP a file holds: from the code of `php_version_id()` (8.3+), from the
//! `X-Powered-By: PHP/x.y.z` string every build carries in its read-only data, or from a file
//! name such as `php8.2` or `libphp8.2.so`.

use std::fmt;

/// A PHP version. Versions found from a file name have `release` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhpVersion {
    /// Major version (7 or 8).
    pub major: u8,
    /// Minor version: with `major`, selects the [`Layout`](crate::Layout).
    pub minor: u8,
    /// Release (patch) version.
    pub release: u8,
}

impl PhpVersion {
    /// A version from its parts.
    pub const fn new(major: u8, minor: u8, release: u8) -> Self {
        PhpVersion {
            major,
            minor,
            release,
        }
    }

    /// The version from `PHP_VERSION_ID` (`80502` for 8.5.2).
    pub fn from_id(id: u32) -> Option<Self> {
        let (major, minor, release) = (id / 10000, id / 100 % 100, id % 100);
        if !(5..=99).contains(&major) {
            return None;
        }
        Some(PhpVersion::new(major as u8, minor as u8, release as u8))
    }
}

impl fmt::Display for PhpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.release)
    }
}

/// What every PHP build has in its read-only data, followed by `PHP_VERSION`.
pub const POWERED_BY: &[u8] = b"X-Powered-By: PHP/";

/// The version after the first [`POWERED_BY`] in `bytes`: `X-Powered-By: PHP/8.2.36`, also
/// with a suffix (`8.4.0RC1`, `8.2.36-1~deb12u1` is not how PHP writes it, but a suffix after
/// the release digits is ignored).
pub fn version_in_bytes(bytes: &[u8]) -> Option<PhpVersion> {
    let mut from = 0;
    while let Some(at) = find(&bytes[from..], POWERED_BY) {
        let rest = &bytes[from + at + POWERED_BY.len()..];
        if let Some(v) = parse_dotted(rest) {
            return Some(v);
        }
        from += at + 1;
    }
    None
}

/// Parses `X.Y.Z` at the start of `s` (one or two digits each).
fn parse_dotted(s: &[u8]) -> Option<PhpVersion> {
    let (major, s) = number(s)?;
    let s = s.strip_prefix(b".")?;
    let (minor, s) = number(s)?;
    let s = s.strip_prefix(b".")?;
    let (release, _) = number(s)?;
    Some(PhpVersion::new(major, minor, release))
}

/// One to three decimal digits fitting a `u8`, and what follows.
fn number(s: &[u8]) -> Option<(u8, &[u8])> {
    let digits = s.iter().take(3).take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let v: u32 = s[..digits]
        .iter()
        .fold(0, |v, b| v * 10 + u32::from(b - b'0'));
    Some((u8::try_from(v).ok()?, &s[digits..]))
}

/// Where `needle` first occurs in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..hay.len() - needle.len() + 1]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// The constant a tiny function returns, from its code: `[endbr64] mov $imm32, %eax; ret`
/// (how GCC and clang compile `php_version_id()` and `zend_vm_kind()`).
pub fn returned_constant(code: &[u8]) -> Option<u32> {
    let code = code.strip_prefix(&[0xf3, 0x0f, 0x1e, 0xfa]).unwrap_or(code);
    match code {
        [0xb8, a, b, c, d, 0xc3, ..] => Some(u32::from_le_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// The version named by a PHP file's name, or `None`: `php8.2`, `php-fpm8.2`, `php-cgi8.2`,
/// `libphp8.2.so`, `libphp-8.2.so`, `php82`; `php`, `libphp.so` and `libphp8.so` carry no
/// minor version.
pub fn version_from_path(path: &str) -> Option<PhpVersion> {
    let base = path.rsplit('/').next().unwrap_or(path);
    let rest = base
        .strip_prefix("libphp")
        .or_else(|| base.strip_prefix("php-fpm"))
        .or_else(|| base.strip_prefix("php-cgi"))
        .or_else(|| base.strip_prefix("php"))?;
    let rest = rest.strip_prefix('-').unwrap_or(rest).as_bytes();
    match rest {
        [major @ b'7'..=b'9', b'.', minor @ b'0'..=b'9', tail @ ..]
            if !tail.first().is_some_and(u8::is_ascii_digit) =>
        {
            Some(PhpVersion::new(major - b'0', minor - b'0', 0))
        }
        [major @ b'7'..=b'9', minor @ b'0'..=b'9', tail @ ..]
            if tail.is_empty() || tail.starts_with(b".so") =>
        {
            Some(PhpVersion::new(major - b'0', minor - b'0', 0))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powered_by_strings() {
        let v = |s: &[u8]| version_in_bytes(s);
        assert_eq!(
            v(b"\0X-Powered-By: PHP/8.2.36\0"),
            Some(PhpVersion::new(8, 2, 36))
        );
        assert_eq!(
            v(b"X-Powered-By: PHP/8.4.0RC1"),
            Some(PhpVersion::new(8, 4, 0))
        );
        assert_eq!(
            v(b"X-Powered-By: PHP/\0 X-Powered-By: PHP/7.4.33"),
            Some(PhpVersion::new(7, 4, 33))
        );
        assert_eq!(v(b"X-Powered-By: PHP/8.x"), None);
        assert_eq!(v(b"X-Powered-By: PHP/999.1.1"), None);
        assert_eq!(v(b"nothing here"), None);
        assert_eq!(v(b""), None);
    }

    #[test]
    fn version_ids() {
        assert_eq!(PhpVersion::from_id(80502), Some(PhpVersion::new(8, 5, 2)));
        assert_eq!(PhpVersion::from_id(70433), Some(PhpVersion::new(7, 4, 33)));
        assert_eq!(PhpVersion::from_id(42), None);
    }

    #[test]
    fn constants_returned_by_tiny_functions() {
        // php_version_id() of PHP 8.5.2 (with endbr64) and zend_vm_kind() of Debian's 8.2.
        let id = [
            0xf3, 0x0f, 0x1e, 0xfa, 0xb8, 0x76, 0x3a, 0x01, 0x00, 0xc3, 0x66,
        ];
        assert_eq!(returned_constant(&id), Some(80502));
        assert_eq!(
            returned_constant(&[0xb8, 4, 0, 0, 0, 0xc3, 0x66, 0x2e]),
            Some(4)
        );
        assert_eq!(returned_constant(&[0x55, 0x48, 0x89, 0xe5]), None);
        assert_eq!(returned_constant(&[0xb8, 4, 0]), None);
    }

    #[test]
    fn file_names() {
        let v = version_from_path;
        assert_eq!(v("/usr/bin/php8.2"), Some(PhpVersion::new(8, 2, 0)));
        assert_eq!(v("/usr/sbin/php-fpm8.1"), Some(PhpVersion::new(8, 1, 0)));
        assert_eq!(v("php-cgi7.4"), Some(PhpVersion::new(7, 4, 0)));
        assert_eq!(
            v("/usr/lib/apache2/modules/libphp8.2.so"),
            Some(PhpVersion::new(8, 2, 0))
        );
        assert_eq!(v("/opt/libphp-8.3.so"), Some(PhpVersion::new(8, 3, 0)));
        assert_eq!(v("/usr/bin/php82"), Some(PhpVersion::new(8, 2, 0)));
        for none in [
            "/usr/bin/php",
            "/usr/lib/libphp.so",
            "libphp8.so",
            "/usr/bin/phpize",
            "/usr/bin/python3.12",
            "php8.10",
        ] {
            assert_eq!(v(none), None, "{none}");
        }
    }

    #[test]
    fn find_finds_the_first_match() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"aaa", b"aa"), Some(0));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"", b"a"), None);
    }
}
