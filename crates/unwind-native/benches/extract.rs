//! Extraction time on the largest ELF file on the machine (rustc's librustc_driver, about
//! 150 MB, 107k FDEs), and on libc for scale.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use ferroscope_unwind_native::{ExtractOptions, extract};

fn largest_rustc_driver() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let toolchains = PathBuf::from(home).join(".rustup/toolchains");
    let mut best: Option<(u64, PathBuf)> = None;
    for tc in std::fs::read_dir(toolchains).ok()?.flatten() {
        let Ok(libs) = std::fs::read_dir(tc.path().join("lib")) else {
            continue;
        };
        for lib in libs.flatten() {
            let name = lib.file_name().to_string_lossy().into_owned();
            if name.starts_with("librustc_driver-") && name.ends_with(".so") {
                let size = lib.metadata().map_or(0, |m| m.len());
                if best.as_ref().is_none_or(|(s, _)| size > *s) {
                    best = Some((size, lib.path()));
                }
            }
        }
    }
    best.map(|(_, p)| p)
}

fn map(path: &std::path::Path) -> memmap2::Mmap {
    let file = std::fs::File::open(path).expect("open");
    // SAFETY: read-only mapping of a toolchain file nobody modifies during the benchmark.
    unsafe { memmap2::Mmap::map(&file) }.expect("mmap")
}

fn bench(c: &mut Criterion) {
    let opts = ExtractOptions::default();
    let libc = map(std::path::Path::new("/lib/x86_64-linux-gnu/libc.so.6"));
    c.bench_function("extract libc.so.6", |b| {
        b.iter(|| extract(&libc, None, &opts).unwrap())
    });
    if let Some(path) = largest_rustc_driver() {
        let data = map(&path);
        let mut group = c.benchmark_group("large");
        group.sample_size(10);
        group.bench_function("extract librustc_driver.so", |b| {
            b.iter(|| extract(&data, None, &opts).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
