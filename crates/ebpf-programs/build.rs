//! Compiles every `bpf/*.bpf.c` into a BPF object in OUT_DIR with clang.
//!
//! Sources are found by listing the directory, so adding a program needs no edit here.
//! Flags are fixed (no host paths leak into the object), and warnings are errors.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_HINT: &str = "install them with `apt-get install clang libbpf-dev` \
    (or run `cargo xtask test` / `cargo xtask demo`, which install what is missing)";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let bpf_dir = manifest.join("bpf");
    let clang = env::var_os("CLANG")
        .map(PathBuf::from)
        .unwrap_or_else(|| "clang".into());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());

    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok(other) => {
            panic!("ferroscope's eBPF programs do not support the {other} architecture yet")
        }
        Err(_) => panic!("CARGO_CFG_TARGET_ARCH is not set"),
    };

    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        panic!(
            "\n\nbuilding the eBPF programs needs libbpf's headers (/usr/include/bpf/bpf_helpers.h \
                is missing): {INSTALL_HINT}\n"
        );
    }

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&bpf_dir)
        .expect("crates/ebpf-programs/bpf must exist")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".bpf.c")))
        .collect();
    sources.sort();
    for entry in std::fs::read_dir(&bpf_dir).expect("bpf dir").flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }

    for src in sources {
        let stem = src
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .trim_end_matches(".c");
        let obj = out.join(format!("{stem}.o"));
        let result = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-D__TARGET_ARCH_{arch}"))
            .arg("-I")
            .arg(&bpf_dir)
            .arg(format!("-fdebug-prefix-map={}=.", manifest.display()))
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status();
        match result {
            Ok(status) if status.success() => {}
            Ok(status) => panic!(
                "clang failed ({status}) compiling {}; see the errors above",
                src.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "\n\nbuilding the eBPF programs needs clang, which was not found ({}): {INSTALL_HINT}\n",
                clang.display()
            ),
            Err(e) => panic!("could not run {}: {e}", clang.display()),
        }
    }
}
