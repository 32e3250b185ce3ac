//! Builds the HotSpot walker (`bpf/hotspot.bpf.c`) in both builds.

fn main() {
    ferroscope_ebpf_abi::build::compile_program("bpf/hotspot.bpf.c");
}
