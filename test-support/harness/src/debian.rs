//! Debian packages for tests: installed on the host with apt-get, or downloaded from other
//! suites (trixie, sid) with a private apt configuration in the cache and unpacked there.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{FileLock, lock_path, provision};
use crate::exec::{exec, minutes};
use crate::require::{Unavailable, is_root};

/// The Debian mirror and the security mirror this machine's apt uses (from
/// `/etc/apt/sources.list.d/*.sources` or `/etc/apt/sources.list`), so that no host name is
/// written into the project.
pub fn mirrors() -> Result<(String, Option<String>), Unavailable> {
    let mut uris: Vec<(String, bool)> = Vec::new();
    let dir = Path::new("/etc/apt/sources.list.d");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sources"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        // deb822 stanzas: the URIs of stanzas whose suites are not "*-security".
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            let (Some(u), Some(suites)) = (field("URIs:"), field("Suites:")) else {
                continue;
            };
            if let Some(uri) = u.split_whitespace().next() {
                uris.push((uri.to_owned(), suites.contains("-security")));
            }
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in list.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"deb") {
            // deb [options] URI SUITE COMPONENTS...
            let rest: Vec<&str> = f[1..]
                .iter()
                .copied()
                .skip_while(|w| w.starts_with('['))
                .collect();
            if let (Some(uri), Some(suite)) = (rest.first(), rest.get(1)) {
                uris.push(((*uri).to_owned(), suite.contains("-security")));
            }
        }
    }
    let main = uris
        .iter()
        .find(|(_, security)| !security)
        .map(|(u, _)| u.clone())
        .ok_or_else(|| {
            Unavailable("no Debian mirror found in /etc/apt/sources.list(.d)".to_owned())
        })?;
    let security = uris.iter().find(|(_, s)| *s).map(|(u, _)| u.clone());
    Ok((main, security))
}

/// Installs `packages` on the host with apt-get (as root), running `apt-get update` first
/// when the package lists do not know them.
pub fn apt_install(packages: &[&str]) -> Result<(), Unavailable> {
    if !is_root() {
        return Err(Unavailable(format!(
            "the Debian packages {} are missing and only root can install them: \
             apt-get install {}",
            packages.join(" "),
            packages.join(" ")
        )));
    }
    // apt-get waits for dpkg's own lock; ours keeps the update-then-install of parallel
    // tests in one piece.
    let _lock = FileLock::exclusive(&lock_path("apt-host"))?;
    let install = || {
        exec(
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "-o",
                    "DPkg::Lock::Timeout=600",
                ])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            minutes(20),
        )
    };
    if install().is_ok() {
        return Ok(());
    }
    exec(
        Command::new("apt-get").args(["update", "-q", "-o", "DPkg::Lock::Timeout=600"]),
        minutes(10),
    )?;
    install().map(drop)
}

/// `exe` when it exists, else installs the Debian `package` that provides it.
pub fn host_exe(exe: &str, package: &str) -> Result<PathBuf, Unavailable> {
    let path = PathBuf::from(exe);
    if !path.exists() {
        apt_install(&[package])?;
    }
    if path.exists() {
        Ok(path)
    } else {
        Err(Unavailable(format!(
            "{exe} is still missing after installing the Debian package {package}"
        )))
    }
}

/// Suites the private apt configuration knows, besides the host's own.
const SUITES: &[&str] = &["trixie", "sid"];

/// `-o` options that point apt at the private configuration in `dir`.
fn apt_options(dir: &Path) -> Vec<String> {
    vec![
        "-o".into(),
        format!(
            "Dir::Etc::SourceList={}",
            dir.join("sources.list").display()
        ),
        "-o".into(),
        "Dir::Etc::SourceParts=/dev/null".into(),
        "-o".into(),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
        "-o".into(),
        format!("Dir::Cache={}", dir.join("cache").display()),
        "-o".into(),
        "Dir::Cache::pkgcache=".into(),
        "-o".into(),
        "Dir::Cache::srcpkgcache=".into(),
        // sid's Release file is often past its Valid-Until date.
        "-o".into(),
        "Acquire::Check-Valid-Until=false".into(),
        "-o".into(),
        "APT::Default-Release=".into(),
    ]
}

fn apt_update(dir: &Path) -> Result<(), Unavailable> {
    exec(
        Command::new("apt-get")
            .args(apt_options(dir))
            .args(["update", "-q"]),
        minutes(10),
    )
    .map(drop)
}

/// The private apt configuration (sources for trixie and sid, lists, archive cache).
fn private_apt() -> Result<PathBuf, Unavailable> {
    provision("apt/trixie-sid-1", |tmp| {
        if !is_root() {
            return Err(Unavailable(
                "apt-get update of the private package lists needs root".to_owned(),
            ));
        }
        let (mirror, _) = mirrors()?;
        let sources: String = SUITES
            .iter()
            .map(|s| format!("deb {mirror} {s} main\n"))
            .collect();
        std::fs::write(tmp.join("sources.list"), sources)
            .and_then(|()| std::fs::create_dir_all(tmp.join("lists/partial")))
            .and_then(|()| std::fs::create_dir_all(tmp.join("cache/archives/partial")))
            .map_err(|e| Unavailable(format!("cannot write {}: {e}", tmp.display())))?;
        apt_update(tmp)
    })
}

/// The version of `package` in `suite` that the private lists know.
fn candidate(apt: &Path, package: &str, suite: &str) -> Result<Option<String>, Unavailable> {
    let out = exec(
        Command::new("apt-cache")
            .args(apt_options(apt))
            .args(["madison", package]),
        minutes(2),
    )?;
    // "  pkg | 1.2-3 | http://mirror/debian trixie/main amd64 Packages"
    Ok(out.lines().find_map(|l| {
        let f: Vec<&str> = l.split('|').map(str::trim).collect();
        let in_suite = f.get(2).is_some_and(|src| {
            src.split_whitespace()
                .nth(1)
                .is_some_and(|s| s.starts_with(&format!("{suite}/")))
        });
        (f.first() == Some(&package) && in_suite).then(|| f[1].to_owned())
    }))
}

/// Downloads `package` from Debian `suite` (`trixie`, `sid`) with `apt-get download` and
/// unpacks it with `dpkg-deb -x`; returns the directory it was unpacked into (keyed by the
/// package's version). Its programs may need a newer glibc than the host's: run those in a
/// chroot ([`crate::chroot`]); this is for reading their files.
pub fn deb_extract(package: &str, suite: &str) -> Result<PathBuf, Unavailable> {
    deb_extract_version(package, suite, None)
}

/// [`deb_extract`] of one version of the package (`None`: the one the lists offer), for
/// files that must match another install, such as the debug symbols of a chroot's
/// interpreter. A version the mirror no longer has is [`Unavailable`], with the reason.
pub fn deb_extract_version(
    package: &str,
    suite: &str,
    version: Option<&str>,
) -> Result<PathBuf, Unavailable> {
    if !SUITES.contains(&suite) {
        return Err(Unavailable(format!(
            "suite {suite} is not in the private apt sources ({})",
            SUITES.join(", ")
        )));
    }
    let key_of = |v: &str| format!("deb/{suite}/{package}_{}", v.replace(':', "_"));
    if let Some(v) = version {
        let cached = crate::cache::cache_dir().join(key_of(v));
        if cached.is_dir() {
            return Ok(cached);
        }
    }
    let apt = private_apt()?;
    let offered = match candidate(&apt, package, suite)? {
        Some(v) if version.is_none_or(|want| want == v) => v,
        _ => {
            // The lists may be older than the package: refresh them once.
            let _lock = FileLock::exclusive(&lock_path("apt/trixie-sid-1"))?;
            apt_update(&apt)?;
            candidate(&apt, package, suite)?
                .ok_or_else(|| Unavailable(format!("Debian {suite} has no package {package}")))?
        }
    };
    if let Some(want) = version
        && want != offered
    {
        return Err(Unavailable(format!(
            "Debian {suite} now has {package} {offered}, not {want}, and {want} is not in the \
             cache ({}); the install it must match is older than the mirror: reinstall it \
             (delete its cache directory) so that both are of the same version",
            crate::cache::cache_dir().join(key_of(want)).display()
        )));
    }
    let version = offered;
    let key = key_of(&version);
    provision(&key, |tmp| {
        let dl = tmp.join(".download");
        std::fs::create_dir(&dl)
            .map_err(|e| Unavailable(format!("cannot create {}: {e}", dl.display())))?;
        exec(
            Command::new("apt-get")
                .args(apt_options(&apt))
                .args(["download", "-q", &format!("{package}={version}")])
                .current_dir(&dl),
            minutes(10),
        )?;
        let deb = std::fs::read_dir(&dl)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| Unavailable(format!("apt-get download left no .deb of {package}")))?;
        exec(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tmp),
            minutes(5),
        )?;
        std::fs::remove_dir_all(&dl)
            .map_err(|e| Unavailable(format!("cannot remove {}: {e}", dl.display())))
    })
}
