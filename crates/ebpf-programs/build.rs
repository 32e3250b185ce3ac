//! Compiles every `bpf/*.bpf.c` into OUT_DIR, in both builds (see
//! `ferroscope_ebpf_abi::build`). Sources are found by listing the directory, so adding a
//! program needs no edit here.

fn main() {
    let manifest =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dir = manifest.join("bpf");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut sources: Vec<String> = std::fs::read_dir(&dir)
        .expect("crates/ebpf-programs/bpf must exist")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for name in sources {
        ferroscope_ebpf_abi::build::compile_program(&format!("bpf/{name}"));
    }
}
