//! Compiles the crate's `.proto` files (the pprof `Profile` and the Pyroscope
//! push API) into Rust types with protox (a pure-Rust protobuf compiler, so no
//! `protoc` is needed) and prost-build.

use std::path::Path;

const FILES: [&str; 3] = ["profile.proto", "types.proto", "push.proto"];

fn main() {
    let dir = Path::new("proto");
    let files: Vec<_> = FILES.iter().map(|f| dir.join(f)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = match protox::compile(&files, [dir]) {
        Ok(fds) => fds,
        Err(e) => panic!(
            "could not parse the files in {}: {e:?}; fix the .proto file",
            dir.display()
        ),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(fds) {
        panic!(
            "prost-build could not generate Rust from {}: {e}",
            dir.display()
        );
    }
}
