//! Builds the PHP walker (`bpf/php.bpf.c`) in both builds.

fn main() {
    ferroscope_ebpf_abi::build::compile_program("bpf/php.bpf.c");
}
