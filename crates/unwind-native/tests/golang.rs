//! Go: the pcsp-derived rules against `go tool objdump` of a program built for the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ferroscope_unwind_native::{ExtractOptions, Kind, StackDeltaTable, UnwindInfo, extract};
use proptest::prelude::*;

const PROGRAM: &str = r#"package main

import "os"

//go:noinline
func leaf(x int) int { return x*3 + 1 }

//go:noinline
func big(n int) int {
	var buf [256]byte
	for i := range buf {
		buf[i] = byte(i * n)
	}
	return leaf(int(buf[n&255])) + leaf(n)
}

//go:noinline
func mid(n int) int { return big(n) * 2 }

func main() { os.Exit(mid(len(os.Args)) & 1) }
"#;

#[allow(clippy::print_stderr)]
fn go() -> Option<PathBuf> {
    let found = [
        "/root/.pyenv/shims/go",
        "/usr/lib/go/bin/go",
        "/usr/local/go/bin/go",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if found.is_none() {
        eprintln!("skipping: no go toolchain");
    }
    found
}

fn go_cmd(go: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(go);
    cmd.current_dir(dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPATH", dir.join("gopath"))
        .env("GOCACHE", dir.join("gocache"));
    cmd
}

/// One disassembled instruction.
struct Insn {
    addr: u64,
    text: String,
}

/// `go tool objdump` output as (function name, instructions).
fn objdump(go: &Path, dir: &Path, exe: &Path) -> Vec<(String, Vec<Insn>)> {
    let out = go_cmd(go, dir)
        .args(["tool", "objdump"])
        .arg(exe)
        .output()
        .expect("go tool objdump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut funcs: Vec<(String, Vec<Insn>)> = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        if let Some(rest) = line.strip_prefix("TEXT ") {
            let name = rest.split("(SB)").next().unwrap().to_string();
            funcs.push((name, Vec::new()));
            continue;
        }
        let fields: Vec<&str> = line.split('\t').filter(|f| !f.is_empty()).collect();
        if fields.len() < 4 {
            continue;
        }
        if let (Some(f), Ok(addr)) = (
            funcs.last_mut(),
            u64::from_str_radix(fields[1].trim_start_matches("0x"), 16),
        ) {
            f.1.push(Insn {
                addr,
                text: fields[3].trim().to_string(),
            });
        }
    }
    funcs
}

fn sp_rule(depth: i64) -> UnwindInfo {
    let cfa = i32::try_from(depth + 8).unwrap();
    UnwindInfo {
        kind: Kind::Sp,
        cfa_offset: cfa,
        fp_offset: (cfa >= 16).then_some(-16),
    }
}

fn imm(text: &str, op: &str) -> Option<i64> {
    let rest = text.strip_prefix(op)?.strip_suffix(", SP")?;
    i64::from_str_radix(rest.trim_start_matches("$0x"), 16).ok()
}

/// Simulates the SP depth of straight-line Go code with one RET at the end of its body.
fn simulate(insns: &[Insn]) -> Vec<(u64, i64)> {
    let mut depth = 0i64;
    let mut out = Vec::new();
    for i in insns {
        out.push((i.addr, depth));
        if i.text == "PUSHQ BP" {
            depth += 8;
        } else if i.text == "POPQ BP" {
            depth -= 8;
        } else if let Some(n) = imm(&i.text, "SUBQ ") {
            depth += n;
        } else if let Some(n) = imm(&i.text, "ADDQ ") {
            depth -= n;
        } else if i.text == "RET" {
            depth = 0;
        }
    }
    out
}

struct Built {
    _dir: tempfile::TempDir,
    table: StackDeltaTable,
    funcs: Vec<(String, Vec<Insn>)>,
}

fn build() -> Option<&'static Built> {
    static BUILT: std::sync::OnceLock<Option<Built>> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_uncached).as_ref()
}

fn build_uncached() -> Option<Built> {
    let go = go()?;
    let dir = common::tempdir();
    std::fs::write(dir.path().join("main.go"), PROGRAM).unwrap();
    std::fs::write(dir.path().join("go.mod"), "module t\n\ngo 1.21\n").unwrap();
    let exe = dir.path().join("prog");
    let out = go_cmd(&go, dir.path())
        .args(["build", "-o"])
        .arg(&exe)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = std::fs::read(&exe).unwrap();
    let table = extract(&data, None, &ExtractOptions::default()).unwrap();
    let funcs = objdump(&go, dir.path(), &exe);
    Some(Built {
        _dir: dir,
        table,
        funcs,
    })
}

#[test]
fn go_rules_match_objdump() {
    let Some(b) = build() else { return };
    let main_funcs: Vec<_> = b
        .funcs
        .iter()
        .filter(|(n, _)| n.starts_with("main."))
        .collect();
    assert_eq!(
        main_funcs.len(),
        4,
        "{:?}",
        main_funcs.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let mut all = Vec::new();
    for (name, insns) in &main_funcs {
        for (addr, depth) in simulate(insns) {
            assert_eq!(
                b.table.lookup(addr),
                Some(&sp_rule(depth)),
                "{name} at {addr:#x}"
            );
            all.push((addr, depth));
        }
    }
    // The known frame: big's SUBQ $0x110 plus the saved BP: CFA = RSP + 0x120 after it.
    let big = &main_funcs.iter().find(|f| f.0 == "main.big").unwrap().1;
    let call = big
        .iter()
        .find(|i| i.text.starts_with("CALL main.leaf"))
        .unwrap();
    assert_eq!(b.table.lookup(call.addr).unwrap().cfa_offset, 0x120);

    // Random instructions of those functions.
    let config = ProptestConfig {
        cases: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(pick in any::<prop::sample::Index>())| {
        let (addr, depth) = all[pick.index(all.len())];
        prop_assert_eq!(b.table.lookup(addr), Some(&sp_rule(depth)));
    });
}

#[test]
fn go_prologues_match_objdump_across_the_binary() {
    let Some(b) = build() else { return };
    let mut checked = 0;
    for (name, insns) in &b.funcs {
        // The standard Go prologue: PUSHQ BP; MOVQ SP, BP; SUBQ $n, SP.
        let Some(p) = insns.iter().position(|i| i.text == "PUSHQ BP") else {
            continue;
        };
        if insns.get(p + 1).is_none_or(|i| i.text != "MOVQ SP, BP") {
            continue;
        }
        let Some(n) = insns.get(p + 2).and_then(|i| imm(&i.text, "SUBQ ")) else {
            continue;
        };
        let Some(after) = insns.get(p + 3) else {
            continue;
        };
        if insns[..p]
            .iter()
            .any(|i| i.text.contains(", SP") || i.text.starts_with("PUSH"))
        {
            continue;
        }
        let info = b.table.lookup(after.addr).unwrap();
        if info.kind != Kind::Sp {
            continue; // special functions (Stop, FramePointer)
        }
        assert_eq!(
            info.cfa_offset as i64,
            n + 16,
            "{name} at {:#x}",
            after.addr
        );
        assert_eq!(
            b.table.lookup(insns[p].addr).unwrap().cfa_offset,
            8,
            "{name} entry"
        );
        checked += 1;
    }
    assert!(checked > 300, "only {checked} functions checked");
}

#[test]
fn go_special_functions() {
    let Some(b) = build() else { return };
    let kind_of = |name: &str| {
        let (_, insns) = b
            .funcs
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name}"));
        b.table.lookup(insns[0].addr).unwrap().kind
    };
    assert_eq!(kind_of("runtime.goexit.abi0"), Kind::Stop);
    assert_eq!(kind_of("runtime.mstart.abi0"), Kind::Stop);
    assert_eq!(kind_of("runtime.rt0_go.abi0"), Kind::Stop);
    assert_eq!(kind_of("runtime.systemstack.abi0"), Kind::FramePointer);
    assert_eq!(kind_of("runtime.sigreturn__sigaction.abi0"), Kind::Signal);
}
