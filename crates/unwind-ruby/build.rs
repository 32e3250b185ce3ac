//! Builds the CRuby walker (`bpf/ruby.bpf.c`) in both builds.

fn main() {
    ferroscope_ebpf_abi::build::compile_program("bpf/ruby.bpf.c");
}
