//! Differential test: thousands of addresses from several real binaries, named by ferroscope
//! and by binutils `addr2line -f -i -C`; the inline chains of function names must agree on at
//! least 99.9 % of addresses, and every disagreement is listed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{gcc, run};
use ferroscope_symbolize::{DemangleMode, Symbolizer};
use ferroscope_test_harness as harness;

/// Addresses spread over every sized function of `symtab_of`'s symbol table.
fn sample_addresses(symtab_of: &Path, per_function: u64, max: usize) -> Vec<u64> {
    let out = run(Command::new("readelf").arg("-sW").arg(symtab_of));
    let mut addrs = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[3] != "FUNC" || f[6] == "UND" {
            continue;
        }
        let (Ok(a), Ok(size)) = (u64::from_str_radix(f[1], 16), f[2].parse::<u64>()) else {
            continue;
        };
        if a == 0 || size == 0 {
            continue;
        }
        for k in 0..per_function.min(size) {
            addrs.push(a + k * size / per_function.min(size));
        }
    }
    addrs.sort_unstable();
    addrs.dedup();
    let step = addrs.len().div_ceil(max).max(1);
    addrs.into_iter().step_by(step).collect()
}

/// binutils' chains of function names, innermost first, one per address.
fn addr2line_chains(bin: &Path, addrs: &[u64]) -> Vec<Vec<String>> {
    let addr2line = harness::tool("addr2line").expect("checked by the caller");
    let input: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    let text = harness::run_ok_with_input(
        Command::new(addr2line)
            .args(["-a", "-f", "-i", "-C", "-e"])
            .arg(bin),
        input.as_bytes(),
        Duration::from_secs(600),
    );
    let mut chains: Vec<Vec<String>> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if l.starts_with("0x") {
            chains.push(Vec::new());
            continue;
        }
        // A function line, followed by its file:line.
        chains
            .last_mut()
            .expect("output starts with an address")
            .push(l.to_owned());
        lines.next();
    }
    chains
}

/// Names that mean the same: binutils prints `??` for no name.
fn normalize(chain: &[String]) -> Vec<String> {
    chain
        .iter()
        .map(|n| if n == "??" { String::new() } else { n.clone() })
        .collect()
}

fn compare(bin: &Path, addrs: &[u64]) -> (usize, Vec<String>) {
    let reference = addr2line_chains(bin, addrs);
    assert_eq!(
        reference.len(),
        addrs.len(),
        "addr2line output for {}",
        bin.display()
    );
    let mut s = Symbolizer::builder().demangle(DemangleMode::Full).build();
    let mut disagreements = Vec::new();
    for (a, want) in addrs.iter().zip(&reference) {
        let f = s.symbolize_elf(bin, *a).unwrap();
        let got: Vec<String> = f
            .inlined
            .iter()
            .map(|i| i.function.clone().unwrap_or_default())
            .chain([f.function.clone().unwrap_or_default()])
            .collect();
        if got != normalize(want) {
            disagreements.push(format!(
                "{}:{a:#x}: ferroscope {got:?}, addr2line {want:?}",
                bin.display()
            ));
        }
    }
    (addrs.len(), disagreements)
}

const PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static inline __attribute__((always_inline)) unsigned mix(unsigned h, unsigned v) { return (h ^ v) * 16777619u; }
static unsigned hash_words(const char *s) { unsigned h = 2166136261u; while (*s) h = mix(h, (unsigned char)*s++); return h; }
static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
__attribute__((noinline)) void sort_words(char **w, size_t n) { qsort(w, n, sizeof *w, cmp); }
__attribute__((noinline)) unsigned checksum(char **w, size_t n) { unsigned h = 0; for (size_t i = 0; i < n; i++) h = mix(h, hash_words(w[i])); return h; }
int main(int argc, char **argv) { sort_words(argv, (size_t)argc); printf("%u\n", checksum(argv, (size_t)argc)); return 0; }
"#;

#[test]
fn function_names_agree_with_binutils_addr2line() {
    if harness::tool("addr2line").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prog = gcc(dir.path(), "diff", PROGRAM, &["-O2", "-g"]);
    let mut targets: Vec<(PathBuf, PathBuf, u64, usize)> = vec![(prog.clone(), prog, 64, 2000)];
    // The libc and dynamic loader this test process runs with, named by their debug files.
    for name in ["libc.so", "ld-linux-x86-64.so"] {
        let lib = harness::files::mapped_library(name)
            .unwrap_or_else(|| panic!("this process maps no {name}"));
        let Some(debug) = common::debug_file_of(&lib) else {
            return;
        };
        targets.push((lib, debug, 8, 3000));
    }
    let mut total = 0;
    let mut all = Vec::new();
    for (bin, symtab, per_fn, max) in &targets {
        let addrs = sample_addresses(symtab, *per_fn, *max);
        let (n, d) = compare(bin, &addrs);
        total += n;
        all.extend(d);
    }
    assert!(total >= 3000, "only {total} addresses");
    let agreement = 1.0 - all.len() as f64 / total as f64;
    assert!(
        agreement >= 0.999,
        "{} of {total} addresses disagree ({:.3} % agree):\n{}",
        all.len(),
        agreement * 100.0,
        all.join("\n")
    );
    if !all.is_empty() {
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "{} disagreements of {total}:\n{}",
                all.len(),
                all.join("\n")
            );
        }
    }
}
