//! Compiles `proto/profile.proto` into Rust types with protox (a pure-Rust
//! protobuf compiler, so no `protoc` is needed) and prost-build.

use std::path::Path;

fn main() {
    let dir = Path::new("proto");
    let file = dir.join("profile.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = match protox::compile([&file], [dir]) {
        Ok(fds) => fds,
        Err(e) => panic!(
            "could not parse {}: {e:?}; fix the .proto file",
            file.display()
        ),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(fds) {
        panic!(
            "prost-build could not generate Rust from {}: {e}",
            file.display()
        );
    }
}
