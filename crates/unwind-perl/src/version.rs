//! Perl's version, as a Perl binary stores it (`PL_revision`, `PL_version`, `PL_subversion`).

use std::fmt;

/// A Perl 5 version: `5.36.0` is revision 5, version 36, subversion 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PerlVersion {
    /// Always 5 for Perl 5.
    pub revision: u8,
    /// The minor version (36 for 5.36); odd numbers are development releases.
    pub version: u8,
    /// The patch level.
    pub subversion: u8,
}

impl PerlVersion {
    /// A version from its three parts.
    pub const fn new(revision: u8, version: u8, subversion: u8) -> Self {
        PerlVersion {
            revision,
            version,
            subversion,
        }
    }

    /// The three bytes Perl binaries export as `PL_revision`, `PL_version` and
    /// `PL_subversion`.
    pub fn from_bytes(revision: u8, version: u8, subversion: u8) -> Self {
        PerlVersion::new(revision, version, subversion)
    }
}

impl fmt::Display for PerlVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.revision, self.version, self.subversion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_print_and_order_like_perl_does() {
        let v = PerlVersion::from_bytes(5, 36, 0);
        assert_eq!(v.to_string(), "5.36.0");
        assert!(PerlVersion::new(5, 28, 3) < PerlVersion::new(5, 30, 0));
        assert!(PerlVersion::new(5, 42, 3) > PerlVersion::new(5, 42, 0));
    }
}
