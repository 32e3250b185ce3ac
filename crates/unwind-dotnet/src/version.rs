//! Which CoreCLR a `libcoreclr.so` is: the version directory it lies in
//! (`.../Microsoft.NETCore.App/8.0.4/libcoreclr.so`).

use std::fmt;

/// A runtime version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DotnetVersion {
    /// Major (8).
    pub major: u32,
    /// Minor (0).
    pub minor: u32,
    /// Patch (4).
    pub patch: u32,
}

impl fmt::Display for DotnetVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The version of the `libcoreclr.so` at `path`, from its directory's name (`X.Y.Z`, maybe
/// with a prerelease suffix: `9.0.0-rc.1.24431.7`); `None` when the file is not
/// `libcoreclr.so` or its directory is not a version.
pub fn version_from_path(path: &str) -> Option<DotnetVersion> {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let dir = path.strip_suffix("/libcoreclr.so")?;
    let name = dir.rsplit('/').next()?;
    let core = name.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let mut next = || -> Option<u32> {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 6 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let v = DotnetVersion {
        major: next()?,
        minor: next()?,
        patch: next()?,
    };
    parts.next().is_none().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_the_runtime_directory() {
        let v = |major, minor, patch| DotnetVersion {
            major,
            minor,
            patch,
        };
        assert_eq!(
            version_from_path("/usr/share/dotnet/shared/Microsoft.NETCore.App/8.0.4/libcoreclr.so"),
            Some(v(8, 0, 4))
        );
        assert_eq!(
            version_from_path("/d/shared/Microsoft.NETCore.App/9.0.0-rc.1.24431.7/libcoreclr.so"),
            Some(v(9, 0, 0))
        );
        assert_eq!(
            version_from_path("/x/3.1.23/libcoreclr.so (deleted)"),
            Some(v(3, 1, 23))
        );
        assert_eq!(version_from_path("/app/libcoreclr.so"), None);
        assert_eq!(version_from_path("/x/8.0/libcoreclr.so"), None);
        assert_eq!(
            version_from_path("/x/8.0.4/libcoreclrtraceptprovider.so"),
            None
        );
        assert_eq!(version_from_path("/x/8.0.4.1/libcoreclr.so"), None);
    }
}
