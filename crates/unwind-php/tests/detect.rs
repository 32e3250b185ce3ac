//! Detection on the real files of every PHP build on this machine (and Debian trixie's
//! php8.4 in the harness's chroot): the executable, FPM and
//! CGI binaries are PHP with the version they print, the JIT's resume address lies in the VM
//! loop's body, and other files (opcache.so, /bin/ls) are not PHP.

mod common;

use std::path::Path;

use ferroscope_unwind_api::{MappedRange, RangeMode};
use ferroscope_unwind_php::{VM_KIND_HYBRID, detect_file, jit_ranges};

fn detect(path: &Path) -> Option<ferroscope_unwind_php::PhpFile> {
    let bytes = std::fs::read(path).unwrap();
    let elf = common::Elf::new(path, &bytes);
    detect_file(&elf).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_php_binary_is_detected_with_its_version() {
    // And Debian trixie's 8.4, from its chroot.
    let trixie = ferroscope_test_harness::runtimes::php_trixie();
    for rt in common::phps().into_iter().chain(trixie) {
        let version = common::php_version(&rt);
        let mut files = vec![rt.exe.clone()];
        // The @libphp packages ship FPM and CGI next to the CLI.
        for other in ["php-fpm", "php-cgi"] {
            let p = rt.exe.with_file_name(other);
            if p.exists() {
                files.push(p);
            }
        }
        for path in files {
            let php = detect(&path).unwrap_or_else(|| panic!("{} is PHP", path.display()));
            assert_eq!(php.version.to_string(), version, "{}", path.display());
            let ex = php.execute_ex;
            assert!(ex.size > 10_000, "execute_ex is the VM loop: {ex:?}");
            let resume = php
                .jit_resume
                .unwrap_or_else(|| panic!("{}: hybrid VM, CFI found", path.display()));
            assert!(
                ex.address + 64 < resume && resume < ex.address + ex.size,
                "{}: the resume address {resume:#x} is inside execute_ex's body {ex:?}",
                path.display()
            );
        }
    }
    assert_eq!(VM_KIND_HYBRID, 4);
}

#[test]
fn other_files_are_not_php() {
    assert!(detect(Path::new("/bin/ls")).is_none());
    for rt in common::phps() {
        let opcache = rt.exe.with_file_name("modules/opcache.so");
        if opcache.exists() {
            assert!(detect(&opcache).is_none(), "{}", opcache.display());
        }
    }
    let debian = Path::new("/usr/lib/php/20220829/opcache.so");
    if debian.exists() {
        assert!(detect(debian).is_none());
    }
}

/// opcache's JIT buffer is the executable part of its shared memory, as a JIT-enabled PHP
/// maps it.
#[test]
fn the_jit_buffer_of_a_real_process_is_owned() {
    let Some(rt) = ferroscope_test_harness::runtimes::php_debian() else {
        return;
    };
    let script = common::script("stacks.php");
    let mut guard = common::start(
        &rt,
        &[
            "-d",
            "zend_extension=opcache",
            "-d",
            "opcache.enable_cli=1",
            "-d",
            "opcache.jit=tracing",
            "-d",
            "opcache.jit_buffer_size=16M",
        ],
        &script,
    );
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", guard.pid())).unwrap();
    guard.terminate(std::time::Duration::from_secs(5));
    let mappings: Vec<MappedRange> = maps
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (s, e) = f.first()?.split_once('-')?;
            Some(MappedRange {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                path: f.get(5..).map(|p| p.join(" ")).unwrap_or_default(),
                executable: f.get(1)?.as_bytes().get(2) == Some(&b'x'),
            })
        })
        .collect();
    let jit = jit_ranges(&mappings);
    assert_eq!(jit.len(), 1, "one JIT buffer in\n{maps}");
    assert_eq!(
        jit[0].end - jit[0].start,
        16 << 20,
        "opcache.jit_buffer_size"
    );
    assert_eq!(jit[0].mode, RangeMode::Takeover);
}
