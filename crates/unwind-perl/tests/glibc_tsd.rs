//! The glibc fact the walker's pthread-key path rests on: the value of key K (K < 32) is at
//! `thread pointer + 0x310 + 16 K + 8` (`struct pthread.specific_1stblock[K].data`). Read
//! from the code of `pthread_getspecific` in the libc of the host and of each chroot.

mod common;

use ferroscope_test_harness::{self as harness, chroot};
use ferroscope_unwind_perl::ebpf::GLIBC_TSD_DATA;
use object::{Object, ObjectSection, ObjectSymbol};

/// The offset from the thread pointer of key 0's value, from `pthread_getspecific`'s code:
/// `cmp $0x1f,%edi; ja ..; mov %edi,%eax; add $N,%rax; shl $4,%rax; add %fs:0x10,%rax;
/// mov 0x8(%rax),%rdx` gives `N * 16 + 8`.
fn key0_offset(libc: &[u8]) -> Option<u64> {
    let file = object::File::parse(libc).ok()?;
    let sym = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok("pthread_getspecific") && s.is_definition())?;
    let text = file.section_by_name(".text")?;
    let data = text.data().ok()?;
    let at = (sym.address() - text.address()) as usize;
    let code = data.get(at..at + 32)?;
    let ok = code[..3] == [0x83, 0xff, 0x1f]
        && code[3] == 0x77
        && code[5..7] == [0x89, 0xf8]
        && code[7..10] == [0x48, 0x83, 0xc0]
        && code[11..15] == [0x48, 0xc1, 0xe0, 0x04]
        && code[15..24] == [0x64, 0x48, 0x03, 0x04, 0x25, 0x10, 0x00, 0x00, 0x00]
        && code[24..28] == [0x48, 0x8b, 0x50, 0x08];
    ok.then(|| u64::from(code[10]) * 16 + 8)
}

#[test]
fn glibc_keeps_pthread_key_values_where_the_walker_reads_them() {
    let mut libcs = vec![std::path::PathBuf::from(
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    )];
    if harness::root("the Debian chroots") {
        for c in [chroot::trixie(), chroot::sid()].into_iter().flatten() {
            libcs.push(c.host_path("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        }
    }
    for libc in libcs {
        let bytes = std::fs::read(&libc).unwrap();
        let offset = key0_offset(&bytes).unwrap_or_else(|| {
            panic!(
                "{}: pthread_getspecific does not read the key's value the way glibc 2.36 to \
                 2.42 do",
                libc.display()
            )
        });
        assert_eq!(offset, u64::from(GLIBC_TSD_DATA), "{}", libc.display());
    }
}
