//! The Perl plug-in on the real files of every installed Perl: detection (the version, how
//! a thread finds its interpreter: a thread-local variable of the executable, or the pthread
//! key of libperl.so), the runops ranges, and the eBPF data built from the layout.

mod common;

use std::path::Path;

use common::{Elf, perls};
use ferroscope_unwind_api::{ElfFile, RangeMode, SymbolRange};
use ferroscope_unwind_perl::ebpf::{INTERP_TLS, INTERP_TSD, NO_FIELD, PerlProc};
use ferroscope_unwind_perl::{InterpreterAt, detect_file, ebpf_proc, runops_ranges};

#[test]
fn perl_executables_find_their_interpreter_in_thread_local_storage() {
    for perl in perls() {
        let bytes = std::fs::read(perl.exe()).unwrap();
        let elf = Elf::new(perl.exe(), &bytes);
        let file = detect_file(&elf).unwrap().expect("detected");
        assert_eq!(
            (file.version.revision, file.version.version),
            (5, perl.minor),
            "{}",
            perl.runtime.name
        );
        // PL_current_context is the executable's only thread-local variable: 8 bytes right
        // below the thread pointer.
        assert_eq!(
            file.interpreter,
            InterpreterAt::ThreadLocal { offset: -8 },
            "{}",
            perl.runtime.name
        );
        let runops = elf.exported_symbol("Perl_runops_standard").unwrap();
        let ranges = runops_ranges(&file, 0x5555_0000_0000);
        assert_eq!(ranges[0].start, 0x5555_0000_0000 + runops.address);
        assert_eq!(ranges[0].end, ranges[0].start + runops.size);
        assert!(
            ranges
                .iter()
                .all(|r| r.mode == RangeMode::Splice && !r.frame_pointer)
        );
        let p = ebpf_proc(&file, 0x5555_0000_0000);
        assert_eq!(p.interp_kind, INTERP_TLS);
        assert_eq!(p.interp_at as i64, -8);
        assert_eq!(p.curcop, 0xd0);
        assert_eq!(p.curstackinfo, 0xe0);
        assert_ne!(p.si_cxsubix, NO_FIELD);
        assert_eq!(p.to_bytes().len(), PerlProc::SIZE);
    }
}

#[test]
fn libperl_finds_its_interpreter_through_the_pthread_key() {
    let Some(lib) = ferroscope_test_harness::file(
        "/usr/lib/x86_64-linux-gnu/libperl.so.5.36",
        "apt-get install libperl5.36",
    ) else {
        return;
    };
    let bytes = std::fs::read(&lib).unwrap();
    let elf = Elf::new(&lib, &bytes);
    let file = detect_file(&elf).unwrap().expect("detected");
    let key = elf.exported_symbol("PL_thr_key").unwrap();
    assert_eq!(
        file.interpreter,
        InterpreterAt::PthreadKey { key: key.address }
    );
    let p = ebpf_proc(&file, 0x7f00_0000_0000);
    assert_eq!(p.interp_kind, INTERP_TSD);
    assert_eq!(p.interp_at, 0x7f00_0000_0000 + key.address);
}

/// A file without Perl's runops loop is not Perl: the small `perl5.NN-x86_64-linux-gnu`
/// wrappers, libc, and Perl's own XS modules.
#[test]
fn files_without_the_runops_loop_are_not_perl() {
    for path in [
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/perl/5.36/auto/Digest/SHA/SHA.so",
        "/usr/bin/perl5.36-x86_64-linux-gnu",
    ] {
        let path = Path::new(path);
        if !path.exists() {
            continue;
        }
        let bytes = std::fs::read(path).unwrap();
        let elf = Elf::new(path, &bytes);
        assert!(
            detect_file(&elf).unwrap().is_none(),
            "{} is not Perl",
            path.display()
        );
    }
}

/// An ELF file that claims an unsupported version is refused with a clear error.
#[test]
fn an_unsupported_version_is_an_error_that_says_so() {
    struct Fake;
    impl ElfFile for Fake {
        fn path(&self) -> &str {
            "/opt/perl/bin/perl"
        }
        fn symbol(&self, name: &str) -> Option<SymbolRange> {
            self.exported_symbol(name)
        }
        fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
            let address = match name {
                "Perl_runops_standard" => 0x1000,
                "PL_revision" => 0x2000,
                "PL_version" => 0x2001,
                "PL_subversion" => 0x2002,
                _ => return None,
            };
            Some(SymbolRange { address, size: 1 })
        }
        fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool {
            buf[0] = match vaddr {
                0x2000 => 5,
                0x2001 => 26,
                _ => 1,
            };
            true
        }
    }
    let e = detect_file(&Fake).unwrap_err().to_string();
    assert!(e.contains("Perl 5.26.1 is not supported"), "{e}");
}
