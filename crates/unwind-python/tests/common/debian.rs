//! Debian's own CPython builds in the harness's chroots (trixie: 3.13; sid: 3.14, 3.15), with
//! the debug file of each from Debian's `python3.N-dbg` package of the same version.

use std::path::PathBuf;

use ferroscope_test_harness::{self as harness, Unavailable, runtimes::Runtime};
use object::Object;

/// One Debian CPython.
pub struct DebianPython {
    pub minor: u8,
    /// The Debian package version (`3.14.10-1`).
    pub package_version: String,
    /// The interpreter (kept: its chroot's `/proc` stays mounted while it lives).
    pub runtime: Runtime,
    /// Its separate debug file (DWARF and `.symtab`), from `python3.N-dbg`.
    pub debug_file: PathBuf,
}

impl DebianPython {
    /// The interpreter's host path (under the chroot's root).
    pub fn exe(&self) -> &std::path::Path {
        &self.runtime.exe
    }
}

fn find(minor: u8) -> Result<Option<DebianPython>, Unavailable> {
    let Some(runtime) = harness::runtimes::python_chroot(minor) else {
        return Ok(None);
    };
    let (chroot, _) = runtime
        .chroot
        .as_ref()
        .ok_or_else(|| Unavailable("the Debian CPython is not in a chroot".into()))?;
    let package = format!("python3.{minor}-minimal");
    let version = chroot.package_version(&package).ok_or_else(|| {
        Unavailable(format!(
            "{package} is not installed in {}",
            chroot.root().display()
        ))
    })?;
    let dbg = harness::debian::deb_extract_version(
        &format!("python3.{minor}-dbg"),
        chroot.suite().name,
        Some(&version),
    )?;
    let bytes = std::fs::read(&runtime.exe)
        .map_err(|e| Unavailable(format!("cannot read {}: {e}", runtime.exe.display())))?;
    let id = object::File::parse(&*bytes)
        .ok()
        .and_then(|f| f.build_id().ok().flatten().map(<[u8]>::to_vec))
        .ok_or_else(|| Unavailable(format!("{} has no build ID", runtime.exe.display())))?;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let debug_file = dbg.join(format!(
        "usr/lib/debug/.build-id/{}/{}.debug",
        &hex[..2],
        &hex[2..]
    ));
    if !debug_file.exists() {
        return Err(Unavailable(format!(
            "python3.{minor}-dbg {version} has no debug file for build ID {hex} ({})",
            debug_file.display()
        )));
    }
    Ok(Some(DebianPython {
        minor,
        package_version: version,
        runtime,
        debug_file,
    }))
}

/// Debian's CPython 3.`minor` (13, 14 or 15) with its debug file, or `None` after a skip
/// (a failure when tests are required).
pub fn debian_python(minor: u8) -> Option<DebianPython> {
    harness::need(find(minor)).flatten()
}

/// The Debian CPythons the tests read.
pub const DEBIAN_MINORS: [u8; 3] = [13, 14, 15];
