//! Debian's cloud kernels for the matrix: which package a release's meta-package points to,
//! fetched with `apt-get download` through a private apt configuration (the system's sources
//! and lists stay untouched), unpacked with `dpkg-deb -x`, and cached under
//! `target/kernels/` by package version, so that a second run downloads nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{describe, run};

/// The system's deb822 sources file: the private configurations reuse its mirrors, so no
/// host name is written down here.
const SYSTEM_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

/// One set of Debian suites with its own apt lists.
#[derive(Debug)]
pub struct Archive {
    /// The folder name under `target/kernels/apt/`.
    pub name: &'static str,
    /// (`security` archive?, suite): the security suites live at the mirror's other URI.
    pub suites: &'static [(bool, &'static str)],
}

/// A kernel of the matrix.
#[derive(Debug)]
pub struct Kernel {
    /// What `--kernel` selects and the table shows: `5.10`, `6.1`, `6.12`.
    pub name: &'static str,
    pub archive: &'static Archive,
    /// The meta-package that depends on the newest image of that series.
    pub meta: &'static str,
}

const BULLSEYE: Archive = Archive {
    name: "bullseye",
    suites: &[(false, "bullseye")],
};
/// bookworm-security carries the 6.12 images (`linux-image-6.12.*+deb12-cloud-amd64`) and
/// the newest 6.1 ones.
const BOOKWORM: Archive = Archive {
    name: "bookworm",
    suites: &[(false, "bookworm"), (true, "bookworm-security")],
};

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        archive: &BULLSEYE,
        meta: "linux-image-cloud-amd64",
    },
    Kernel {
        name: "6.1",
        archive: &BOOKWORM,
        meta: "linux-image-cloud-amd64",
    },
    Kernel {
        name: "6.12",
        archive: &BOOKWORM,
        meta: "linux-image-6.12-cloud-amd64",
    },
];

/// A kernel image ready to boot.
#[derive(Debug)]
pub struct Image {
    /// `linux-image-5.10.0-32-cloud-amd64 5.10.223-1`.
    pub package: String,
    pub vmlinuz: PathBuf,
}

/// The kernel image of `kernel`, from the cache or downloaded into it. `refresh` updates the
/// apt lists first (otherwise they are fetched once, on the first run).
pub fn image(kernel: &Kernel, cache: &Path, refresh: bool) -> Result<Image> {
    let apt = AptConfig::prepare(kernel.archive, cache)?;
    if refresh || !apt.has_lists()? {
        run(apt.command("apt-get").args(["update", "-qq"]))?;
    }
    let (package, version) = apt.dependency(kernel.meta)?;
    let key = format!("{package}_{version}");
    let dir = cache.join("images").join(&key);
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.exists() {
        let deb = apt.download(&package, &version, &cache.join("debs"))?;
        unpack_kernel(&deb, &dir).with_context(|| format!("cannot unpack {}", deb.display()))?;
    }
    Ok(Image {
        package: format!("{package} {version}"),
        vmlinuz,
    })
}

/// A private apt configuration: its own sources.list, lists and package cache.
struct AptConfig {
    dir: PathBuf,
}

impl AptConfig {
    fn prepare(archive: &Archive, cache: &Path) -> Result<AptConfig> {
        let dir = cache.join("apt").join(archive.name);
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mirrors = system_mirrors()?;
        let sources: String = archive
            .suites
            .iter()
            .map(|&(security, suite)| {
                let uri = if security {
                    &mirrors.security
                } else {
                    &mirrors.main
                };
                format!("deb [signed-by={}] {uri} {suite} main\n", mirrors.keyring)
            })
            .collect();
        std::fs::write(dir.join("sources.list"), sources)?;
        let d = dir.display();
        // The sandbox user `_apt` cannot write into a root-owned target/: download as root.
        let conf = format!(
            "Dir::Etc::SourceList \"{d}/sources.list\";\nDir::Etc::SourceParts \"/dev/null\";\n\
             Dir::State::Lists \"{d}/lists\";\nDir::Cache \"{d}/cache\";\n\
             Dir::Cache::pkgcache \"\";\nDir::Cache::srcpkgcache \"\";\nAPT::Sandbox::User \"root\";\n"
        );
        std::fs::write(dir.join("apt.conf"), conf)?;
        Ok(AptConfig { dir })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", self.dir.join("apt.conf"));
        cmd
    }

    fn has_lists(&self) -> Result<bool> {
        Ok(std::fs::read_dir(self.dir.join("lists"))?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("_Packages")))
    }

    /// The package and exact version the candidate of `meta` depends on, e.g.
    /// `Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)`.
    fn dependency(&self, meta: &str) -> Result<(String, String)> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["show", "--no-all-versions", meta]);
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {}", describe(&cmd)))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let depends = text
            .lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .with_context(|| {
                format!(
                    "`{}` shows no Depends line ({}); run with --refresh to update the lists",
                    describe(&cmd),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })?;
        parse_exact_dependency(depends)
            .with_context(|| format!("{meta} depends on `{depends}`, not on one exact image"))
    }

    /// `apt-get download package=version` into `debs`; returns the .deb's path.
    fn download(&self, package: &str, version: &str, debs: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(debs)?;
        // apt names the file with the epoch's colon escaped.
        let deb = debs.join(format!(
            "{package}_{}_amd64.deb",
            version.replace(':', "%3a")
        ));
        if !deb.exists() {
            run(self.command("apt-get").current_dir(debs).args([
                "download",
                "-qq",
                &format!("{package}={version}"),
            ]))?;
        }
        if !deb.exists() {
            bail!("apt-get download did not write {}", deb.display());
        }
        Ok(deb)
    }
}

/// `linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)` -> (package, version).
fn parse_exact_dependency(depends: &str) -> Option<(String, String)> {
    let (package, rest) = depends.trim().split_once(" (= ")?;
    let version = rest.strip_suffix(')')?;
    (!package.contains([',', '|'])).then(|| (package.to_owned(), version.to_owned()))
}

/// Takes `boot/vmlinuz-*` (and the kernel's config, for reference) out of the package.
fn unpack_kernel(deb: &Path, dir: &Path) -> Result<()> {
    let mut tmp = dir.as_os_str().to_owned();
    tmp.push(".unpack");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    let boot = tmp.join("boot");
    let mut vmlinuz = None;
    let mut config = None;
    for entry in std::fs::read_dir(&boot)
        .with_context(|| format!("no boot/ folder in {}", deb.display()))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("vmlinuz-") {
            vmlinuz = Some(entry.path());
        } else if name.starts_with("config-") {
            config = Some(entry.path());
        }
    }
    let vmlinuz = vmlinuz.with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))?;
    std::fs::create_dir_all(dir)?;
    if let Some(config) = config {
        std::fs::copy(config, dir.join("config"))?;
    }
    // Copied last: its presence marks the cache entry complete.
    std::fs::copy(vmlinuz, dir.join("vmlinuz"))?;
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}

/// The mirrors and keyring the system's apt uses.
struct Mirrors {
    main: String,
    security: String,
    keyring: String,
}

fn system_mirrors() -> Result<Mirrors> {
    let text = std::fs::read_to_string(SYSTEM_SOURCES).with_context(|| {
        format!("cannot read {SYSTEM_SOURCES}: the kernel matrix takes Debian's mirror from it")
    })?;
    parse_mirrors(&text).with_context(|| {
        format!("{SYSTEM_SOURCES} has no `URIs:` for both a main and a -security suite")
    })
}

/// From deb822 stanzas: the URI of the stanza with a plain suite, the URI of the one with a
/// `-security` suite, and the first Signed-By keyring.
fn parse_mirrors(text: &str) -> Option<Mirrors> {
    let (mut main, mut security, mut keyring) = (None, None, None);
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let (Some(uri), Some(suites)) = (field("URIs:"), field("Suites:")) else {
            continue;
        };
        let uri = uri.split_whitespace().next()?.to_owned();
        if suites.contains("-security") {
            security.get_or_insert(uri);
        } else {
            main.get_or_insert(uri);
        }
        if let Some(k) = field("Signed-By:") {
            keyring.get_or_insert(k);
        }
    }
    Some(Mirrors {
        main: main?,
        security: security?,
        keyring: keyring.unwrap_or_else(|| "/usr/share/keyrings/debian-archive-keyring.gpg".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_dependency() {
        assert_eq!(
            parse_exact_dependency(" linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)"),
            Some((
                "linux-image-6.1.0-57-cloud-amd64".into(),
                "6.1.192-3".into()
            ))
        );
        assert_eq!(parse_exact_dependency("a (>= 1) | b"), None);
    }

    #[test]
    fn mirrors_from_deb822() {
        let text = "Types: deb\n# a comment\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /k.gpg\n\nTypes: deb\nURIs: http://m.example/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n";
        let m = parse_mirrors(text).unwrap();
        assert_eq!(m.main, "http://m.example/debian");
        assert_eq!(m.security, "http://m.example/debian-security");
        assert_eq!(m.keyring, "/k.gpg");
    }
}
