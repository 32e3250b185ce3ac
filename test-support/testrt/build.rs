//! Builds the test runtimes' programs (both builds).

fn main() {
    ferroscope_ebpf_abi::build::compile_program("bpf/testjit.bpf.c");
    ferroscope_ebpf_abi::build::compile_program("bpf/rejected.bpf.c");
}
