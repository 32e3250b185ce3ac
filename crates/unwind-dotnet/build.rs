//! Builds the .NET walker (`bpf/dotnet.bpf.c`) in both builds.

fn main() {
    ferroscope_ebpf_abi::build::compile_program("bpf/dotnet.bpf.c");
}
