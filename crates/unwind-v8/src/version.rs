//! V8's version, as the binary states it (`v8::internal::Version::major_` and friends).

use std::fmt;

use ferroscope_unwind_api::ElfFile;

/// A V8 version: major.minor.build.patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct V8Version {
    /// Major (Node 18: 10, Node 26: 14).
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Build.
    pub build: u32,
    /// Patch.
    pub patch: u32,
}

impl V8Version {
    /// A version from its parts.
    pub const fn new(major: u32, minor: u32, build: u32, patch: u32) -> Self {
        V8Version {
            major,
            minor,
            build,
            patch,
        }
    }

    /// Whether this version is at least major.minor.build.
    pub fn at_least(&self, major: u32, minor: u32, build: u32) -> bool {
        (self.major, self.minor, self.build) >= (major, minor, build)
    }
}

impl fmt::Display for V8Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.major, self.minor, self.build, self.patch
        )
    }
}

/// The mangled names of `v8::internal::Version`'s static members.
const PARTS: [&str; 4] = [
    "_ZN2v88internal7Version6major_E",
    "_ZN2v88internal7Version6minor_E",
    "_ZN2v88internal7Version6build_E",
    "_ZN2v88internal7Version6patch_E",
];

/// The V8 version of a file that embeds V8, from `v8::internal::Version`'s static members
/// (`.dynsym`, or `.symtab` in builds that hide V8's symbols); `None` when it has none.
pub fn version_of(file: &dyn ElfFile) -> Option<V8Version> {
    let mut parts = [0u32; 4];
    for (i, name) in PARTS.iter().enumerate() {
        match file.symbol(name) {
            Some(s) => {
                let mut b = [0u8; 4];
                // A member in .bss is zero (patch levels often are).
                if file.read_vaddr(s.address, &mut b) {
                    parts[i] = u32::from_le_bytes(b);
                }
            }
            // Every build has major, minor and build; patch is optional.
            None if i < 3 => return None,
            None => {}
        }
    }
    let v = V8Version::new(parts[0], parts[1], parts[2], parts[3]);
    (v.major > 0 && v.major < 1000 && v.minor < 1000).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_major_minor_build() {
        let v = V8Version::new(12, 4, 254, 21);
        assert!(v.at_least(12, 4, 254));
        assert!(v.at_least(11, 9, 0));
        assert!(!v.at_least(12, 8, 44));
        assert_eq!(v.to_string(), "12.4.254.21");
    }
}
