//! Builds the V8 walker (`bpf/v8.bpf.c`) in both builds.

fn main() {
    ferroscope_ebpf_abi::build::compile_program("bpf/v8.bpf.c");
}
