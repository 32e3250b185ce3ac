//! ELF symbol tables of real files on this machine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferroscope_test_harness as harness;

use ferroscope_symbolize::Error;
use ferroscope_symbolize::elf::ElfSymbols;
use ferroscope_symbolize::maps::read_maps;

/// The libc this test runs with (from /proc/self/maps: no distribution path is assumed).
fn libc() -> PathBuf {
    harness::files::libc()
}

/// `readelf ARGS FILE`'s stdout; `None` after a skip when binutils is missing.
fn readelf(args: &[&str], file: &Path) -> Option<String> {
    let readelf = harness::tool("readelf")?;
    Some(harness::run_ok(
        Command::new(readelf).args(args).arg(file),
        Duration::from_secs(120),
    ))
}

#[inline(never)]
fn distinctive_test_function_name(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(31)
}

#[test]
fn symbolizes_a_function_of_this_test_binary() {
    let addr = distinctive_test_function_name as *const () as usize as u64;
    assert_eq!(distinctive_test_function_name(1), 31);
    let maps = read_maps(std::process::id()).expect("reading own maps");
    let m = maps
        .iter()
        .find(|m| m.contains(addr))
        .expect("function address in no mapping");
    assert!(m.is_executable(), "{m:?}");
    let path = m.path.file_path().expect("function not in a file mapping");
    let syms = ElfSymbols::open(path).unwrap_or_else(|e| panic!("{e}"));
    let vaddr = syms
        .mapping_offset_to_vaddr(m.offset, true)
        .expect("no PT_LOAD for the text mapping")
        + (addr - m.start);
    let (name, offset) = syms
        .lookup(vaddr)
        .unwrap_or_else(|| panic!("no symbol at {vaddr:#x}"));
    assert!(
        name.contains("distinctive_test_function_name"),
        "got {name}"
    );
    assert_eq!(offset, 0);
    assert!(
        syms.lookup(vaddr + 1)
            .is_some_and(|(n, o)| n == name && o == 1)
    );
}

/// `(address -> names)` of defined FUNC/IFUNC symbols in `.dynsym`, as `readelf` prints them.
fn readelf_dynamic_functions(out: &str) -> BTreeMap<u64, BTreeSet<String>> {
    let mut funcs: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for line in out.lines() {
        // Num: Value Size Type Bind Vis Ndx Name
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !matches!(f[3], "FUNC" | "IFUNC") || f[6] == "UND" {
            continue;
        }
        let addr = u64::from_str_radix(f[1], 16).expect("readelf value");
        let name = f[7].split('@').next().unwrap_or_default().to_owned();
        funcs.entry(addr).or_default().insert(name);
    }
    funcs
}

#[test]
fn libc_dynsym_matches_readelf() {
    let Some(out) = readelf(&["--dyn-syms", "-W"], &libc()) else {
        return;
    };
    let data = std::fs::read(libc()).expect("reading libc");
    let syms = ElfSymbols::parse(&data).unwrap_or_else(|e| panic!("{e}"));
    let expected = readelf_dynamic_functions(&out);
    assert!(
        expected.len() > 1000,
        "readelf listed only {} functions",
        expected.len()
    );
    for (addr, names) in &expected {
        let got = syms.lookup(*addr);
        assert!(
            got.is_some_and(|(n, off)| off == 0 && names.contains(n)),
            "at {addr:#x}: expected one of {names:?}, got {got:?}"
        );
    }
    // getpid has aliases (__getpid); either is acceptable but the readable one is preferred.
    let (&getpid, _) = expected
        .iter()
        .find(|(_, n)| n.contains("getpid"))
        .expect("getpid in libc");
    assert_eq!(syms.lookup(getpid + 3), Some(("getpid", 3)));
}

#[test]
fn libc_build_id_matches_readelf() {
    let Some(text) = readelf(&["-n"], &libc()) else {
        return;
    };
    let expected = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("libc has a build ID")
        .to_owned();
    let syms = ElfSymbols::open(&libc()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(syms.build_id_hex().as_deref(), Some(expected.as_str()));
    assert_eq!(syms.build_id().map(<[u8]>::len), Some(expected.len() / 2));
}

#[test]
fn file_offset_to_vaddr_follows_program_headers() {
    let Some(out) = readelf(&["-lW"], &libc()) else {
        return;
    };
    let syms = ElfSymbols::open(&libc()).unwrap_or_else(|e| panic!("{e}"));
    let mut checked = 0;
    for line in out.lines() {
        // LOAD Offset VirtAddr PhysAddr FileSiz MemSiz Flg Align
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&"LOAD") {
            continue;
        }
        let hex =
            |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("readelf hex");
        let (offset, vaddr, filesz) = (hex(f[1]), hex(f[2]), hex(f[4]));
        assert_eq!(syms.file_offset_to_vaddr(offset), Some(vaddr));
        assert_eq!(
            syms.file_offset_to_vaddr(offset + filesz - 1),
            Some(vaddr + filesz - 1)
        );
        // The page-aligned offset a mapping starts at.
        let aligned = offset & !0xfff;
        assert_eq!(
            syms.file_offset_to_vaddr(aligned),
            Some(vaddr - (offset - aligned))
        );
        checked += 1;
    }
    assert!(checked >= 2);
    assert_eq!(syms.file_offset_to_vaddr(u64::MAX), None);
}

#[test]
fn malformed_elf_is_an_error_not_a_panic() {
    let check = |data: &[u8]| match ElfSymbols::parse(data) {
        Ok(_) => {}
        Err(e @ Error::InvalidElf { .. }) => assert!(e.to_string().contains("cannot parse ELF")),
        Err(e) => panic!("unexpected error kind: {e}"),
    };
    check(b"");
    check(b"\x7fELF");
    check(&[0xff; 4096]);
    assert!(ElfSymbols::parse(b"not an elf").is_err());

    let libc = std::fs::read(libc()).expect("reading libc");
    // Truncations at many lengths, and corruptions of the headers at many positions.
    for len in (0..libc.len())
        .step_by(libc.len() / 97 + 1)
        .chain([63, 64, 65])
    {
        check(&libc[..len]);
    }
    let mut data = libc[..libc.len().min(1 << 20)].to_vec();
    for i in (0..128).chain((128..4096).step_by(7)) {
        let saved = data[i];
        for v in [0x00, 0xff, 0x7f, saved ^ 0x80] {
            data[i] = v;
            check(&data);
        }
        data[i] = saved;
    }
}

#[test]
fn open_reports_the_path() {
    let err = ElfSymbols::open(Path::new("/proc/self/status")).unwrap_err();
    assert!(err.to_string().contains("/proc/self/status"), "{err}");
    let err = ElfSymbols::open(Path::new("/nonexistent/file")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/file"), "{err}");
}

/// lld lets the read-only segment and the executable segment after it share a file page, so
/// the executable mapping starts at a file offset that the read-only segment contains.
#[test]
fn regression_lld_text_mapping_starting_inside_the_rodata_segment() {
    let exe = std::env::current_exe().expect("current exe");
    let syms = ElfSymbols::open(&exe).unwrap_or_else(|e| panic!("{e}"));
    let maps = read_maps(std::process::id()).expect("own maps");
    let text = maps
        .iter()
        .find(|m| m.is_executable() && m.path.file_path() == Some(exe.as_path()))
        .expect("executable mapping of the test binary");
    let vaddr = syms
        .mapping_offset_to_vaddr(text.offset, true)
        .expect("vaddr of text mapping");
    // The mapping must translate this function's address to its symbol, whichever linker.
    let addr =
        regression_lld_text_mapping_starting_inside_the_rodata_segment as *const () as usize as u64;
    let (name, _) = syms
        .lookup(vaddr + (addr - text.start))
        .expect("symbol of this test");
    assert!(name.contains("regression_lld_text_mapping"), "{name}");
}
