//! Builds the Perl walker (`bpf/perl.bpf.c`) in both builds.

fn main() {
    ferroscope_ebpf_abi::build::compile_program("bpf/perl.bpf.c");
}
