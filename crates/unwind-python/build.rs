//! Builds the CPython walker (`bpf/python.bpf.c`) in both builds.

fn main() {
    ferroscope_ebpf_abi::build::compile_program("bpf/python.bpf.c");
}
