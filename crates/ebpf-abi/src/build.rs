//! Compiling eBPF programs from a build script.
//!
//! Each program is compiled with clang, against this crate's headers, once per entry (see
//! [`crate::Entry`]: `FS_ENTRY`) and per kernel kind: `NAME.o` with `FS_LEGACY=0` (loops
//! through `bpf_loop`, Linux 5.17+) and `NAME.legacy.o` with `FS_LEGACY=1` (bounded loops,
//! Linux 5.10+) for the CPU sampler's entry, and `NAME.switch.o`, `NAME.switch.legacy.o`,
//! `NAME.probe.o`, `NAME.probe.legacy.o` for the others. Flags are fixed (no host paths leak
//! into the objects) and warnings are errors.
//!
//! ```no_run
//! // build.rs of a runtime crate:
//! ferroscope_ebpf_abi::build::compile_program("bpf/python.bpf.c");
//! // then, in the crate: ferroscope_ebpf_abi::include_objects!("python.bpf")
//! ```

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_HINT: &str = "install them with `apt-get install clang libbpf-dev` \
    (or run `cargo xtask test` / `cargo xtask demo`, which install what is missing)";

/// The objects built from one source, for the CPU sampler's entry (the others are next to
/// them, named as the module says).
#[derive(Debug, Clone)]
pub struct Objects {
    /// For kernels with `bpf_loop`.
    pub modern: PathBuf,
    /// For kernels without it.
    pub legacy: PathBuf,
}

/// The entries an object is built for: `FS_ENTRY` and the object name's infix.
const ENTRIES: [(u32, &str); 3] = [(0, ""), (1, ".switch"), (2, ".probe")];

/// Compiles `source` (relative to the calling crate's manifest directory) into `OUT_DIR`,
/// and tells cargo to rebuild when it or a header changes. Panics with what to install when
/// clang or libbpf's headers are missing: a build script has no better way to say it.
// A build script talks to cargo on stdout.
#[allow(clippy::print_stdout)]
pub fn compile_program(source: &str) -> Objects {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let src = manifest.join(source);
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    for header in headers() {
        println!("cargo:rerun-if-changed={}", header.display());
    }
    match compile(&src, &out, &manifest) {
        Ok(objects) => objects,
        Err(message) => panic!("\n\n{message}\n"),
    }
}

fn headers() -> Vec<PathBuf> {
    let dir = crate::include_dir();
    let mut out = vec![dir.join("vmlinux.h")];
    if let Ok(entries) = std::fs::read_dir(dir.join("ferroscope")) {
        out.extend(entries.flatten().map(|e| e.path()));
    }
    out.sort();
    out
}

/// Compiles `src` into `out_dir` (both builds); `prefix_dir` is stripped from the debug
/// information's paths. The error says what failed and what to do.
pub fn compile(src: &Path, out_dir: &Path, prefix_dir: &Path) -> Result<Objects, String> {
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") | Err(_) => "x86",
        Ok(other) => {
            return Err(format!(
                "ferroscope's eBPF programs support x86-64 only (its vmlinux.h, signal frame \
                 and thread pointer code are x86-64's), not {other}"
            ));
        }
    };
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        return Err(format!(
            "building the eBPF programs needs libbpf's headers (/usr/include/bpf/bpf_helpers.h \
             is missing): {INSTALL_HINT}"
        ));
    }
    let clang = env::var_os("CLANG")
        .map(PathBuf::from)
        .unwrap_or_else(|| "clang".into());
    let stem = src
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".c").to_owned())
        .ok_or_else(|| format!("{} is not a C file name", src.display()))?;
    let objects = Objects {
        modern: out_dir.join(format!("{stem}.o")),
        legacy: out_dir.join(format!("{stem}.legacy.o")),
    };
    let builds = ENTRIES.iter().flat_map(|&(entry, infix)| {
        [0, 1].map(|legacy| {
            let suffix = if legacy == 1 { ".legacy" } else { "" };
            (
                entry,
                legacy,
                out_dir.join(format!("{stem}{infix}{suffix}.o")),
            )
        })
    });
    for (entry, legacy, obj) in builds {
        let result = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-D__TARGET_ARCH_{arch}"))
            .arg(format!("-DFS_LEGACY={legacy}"))
            .arg(format!("-DFS_ENTRY={entry}"))
            .arg("-I")
            .arg(crate::include_dir())
            .arg(format!("-fdebug-prefix-map={}=.", prefix_dir.display()))
            .arg(format!(
                "-fdebug-prefix-map={}=abi",
                crate::include_dir().display()
            ))
            .arg("-c")
            .arg(src)
            .arg("-o")
            .arg(&obj)
            .status();
        match result {
            Ok(status) if status.success() => {}
            Ok(status) => {
                return Err(format!(
                    "clang failed ({status}) compiling {} (FS_LEGACY={legacy}, FS_ENTRY={entry}); see the errors above",
                    src.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "building the eBPF programs needs clang, which was not found ({}): {INSTALL_HINT}",
                    clang.display()
                ));
            }
            Err(e) => return Err(format!("could not run {}: {e}", clang.display())),
        }
    }
    Ok(objects)
}
