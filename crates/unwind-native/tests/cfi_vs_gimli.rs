//! For random addresses inside the FDEs of real binaries, the table's rule equals gimli's
//! own evaluation of the CFI at that address.

mod common;

use std::path::Path;
use std::time::Duration;

use common::GimliCfi;
use ferroscope_test_harness as harness;
use ferroscope_unwind_native::{ExtractOptions, Kind, StackDeltaTable, extract};
use proptest::prelude::*;

fn check_file(path: &Path, cases: u32) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let path = path.display();
    let table = extract(&data, None, &ExtractOptions::default()).unwrap();
    check_table_invariants(&table);
    let cfi = GimliCfi::new(&data);
    assert!(cfi.fdes.len() > 10, "{path}: only {} FDEs", cfi.fdes.len());
    let mut ctx = gimli::UnwindContext::new();
    // Every FDE's first byte, deterministically.
    for i in 0..cfi.fdes.len() {
        let addr = cfi.fdes[i].initial_address();
        let expected = cfi.expected(i, addr, &mut ctx);
        if expected.kind == Kind::Signal {
            continue; // glibc's trampoline FDE starts 1 byte early on purpose; checked below
        }
        assert_eq!(
            table.lookup(addr),
            Some(&expected),
            "{path}: FDE start {addr:#x}"
        );
    }
    let ctx = std::cell::RefCell::new(ctx);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(pick in any::<prop::sample::Index>(), frac in 0.0f64..1.0)| {
        let i = pick.index(cfi.fdes.len());
        let fde = &cfi.fdes[i];
        let addr = fde.initial_address() + ((fde.len() as f64 * frac) as u64).min(fde.len() - 1);
        let expected = cfi.expected(i, addr, &mut ctx.borrow_mut());
        prop_assert_eq!(table.lookup(addr), Some(&expected), "{}: {:#x} in FDE {:#x}+{:#x}", path, addr, fde.initial_address(), fde.len());
    });
}

pub fn check_table_invariants(table: &StackDeltaTable) {
    assert!(!table.is_empty());
    for w in table.deltas.windows(2) {
        assert!(
            w[0].address < w[1].address,
            "not sorted/unique at {:#x}",
            w[1].address
        );
        assert_ne!(
            w[0].info, w[1].info,
            "adjacent equal infos at {:#x}",
            w[1].address
        );
    }
    assert_eq!(table.deltas.last().unwrap().info.kind, Kind::Invalid);
    for d in &table.deltas {
        if !matches!(
            d.info.kind,
            Kind::Sp | Kind::Fp | Kind::SpDeref | Kind::FpDeref
        ) {
            assert_eq!(
                (d.info.cfa_offset, d.info.fp_offset),
                (0, None),
                "command with parameters"
            );
        }
    }
}

#[test]
fn libc_matches_gimli() {
    check_file(&harness::files::libc(), 4000);
}

#[test]
fn libstdcxx_matches_gimli() {
    let Some(libstdcxx) = harness::files::compiler_library("g++", "libstdc++.so.6") else {
        return;
    };
    check_file(&libstdcxx, 4000);
}

#[test]
fn rust_test_binary_matches_gimli() {
    check_file(&std::env::current_exe().unwrap(), 4000);
}

#[test]
fn rust_release_binary_matches_gimli() {
    let dir = common::tempdir();
    let src = dir.path().join("t.rs");
    std::fs::write(&src, "fn main() { let v: Vec<u64> = (0..100).collect(); println!(\"{}\", v.iter().sum::<u64>()); }").unwrap();
    let out = dir.path().join("t");
    harness::run_ok(
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .args(["-O", "--edition", "2021", "-o"])
            .arg(&out)
            .arg(&src),
        Duration::from_secs(300),
    );
    check_file(&out, 2000);
}

#[test]
fn glibc_signal_trampoline_covers_the_byte_before() {
    let data = std::fs::read(harness::files::libc()).unwrap();
    let table = extract(&data, None, &ExtractOptions::default()).unwrap();
    let cfi = GimliCfi::new(&data);
    let sig = cfi
        .fdes
        .iter()
        .find(|f| f.is_signal_trampoline())
        .expect("'S' FDE in libc");
    for addr in sig.initial_address()..sig.end_address() {
        assert_eq!(table.lookup(addr).unwrap().kind, Kind::Signal, "{addr:#x}");
    }
}

#[test]
fn libc_debug_file_is_used_only_when_cfi_is_scarce() {
    let data = std::fs::read(harness::files::libc()).unwrap();
    let Some(debug) = harness::file(
        common::debug_path_for(&data).expect("libc has a build ID"),
        "apt-get install libc6-dbg",
    ) else {
        return;
    };
    let debug = std::fs::read(debug).unwrap();
    let with = extract(&data, Some(&debug), &ExtractOptions::default()).unwrap();
    let without = extract(&data, None, &ExtractOptions::default()).unwrap();
    assert_eq!(
        with, without,
        "libc has plenty of .eh_frame; its debug file must not change the table"
    );
}

/// The optional push/pop merge only changes rules at push/pop instructions (leaf PCs): every
/// return-address lookup (`ra - 1`, the last byte of a call instruction) gives the same rule
/// with and without it. Call sites come from objdump's disassembly of libc and libstdc++.
#[test]
fn push_pop_merge_keeps_return_address_lookups() {
    let Some(libstdcxx) = harness::files::compiler_library("g++", "libstdc++.so.6") else {
        return;
    };
    let Some(objdump) = harness::tool("objdump") else {
        return;
    };
    for path in [harness::files::libc(), libstdcxx] {
        let data = std::fs::read(&path).unwrap();
        let path = path.display();
        let exact = extract(&data, None, &ExtractOptions::default()).unwrap();
        let merged = extract(
            &data,
            None,
            &ExtractOptions {
                merge_push_pop: true,
                ..ExtractOptions::default()
            },
        )
        .unwrap();
        check_table_invariants(&merged);
        assert!(merged.len() < exact.len(), "{path}: merge removed nothing");
        let text = harness::run_ok(
            std::process::Command::new(&objdump)
                .args(["-d", "--no-show-raw-insn", "-w"])
                .arg(path.to_string()),
            Duration::from_secs(300),
        );
        let mut lines = text.lines().peekable();
        let mut checked = 0;
        while let Some(line) = lines.next() {
            if !line.contains("\tcall") {
                continue;
            }
            // The return address is the next instruction's address.
            let Some(next) = lines.peek() else { break };
            let Some(ra) = next
                .split(':')
                .next()
                .and_then(|a| u64::from_str_radix(a.trim(), 16).ok())
            else {
                continue;
            };
            assert_eq!(
                exact.lookup(ra - 1),
                merged.lookup(ra - 1),
                "{path}: call site ending at {ra:#x}"
            );
            checked += 1;
        }
        assert!(checked > 1000, "{path}: only {checked} call sites");
        // Only Sp entries at push/pop instructions disappear.
        let kept: std::collections::HashSet<u64> =
            merged.deltas.iter().map(|d| d.address).collect();
        for d in exact.deltas.iter().filter(|d| !kept.contains(&d.address)) {
            assert_eq!(
                d.info.kind,
                Kind::Sp,
                "{path}: merged away a non-Sp rule at {:#x}",
                d.address
            );
        }
    }
}
