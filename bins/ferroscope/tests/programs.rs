//! Every eBPF program this binary links (native and each runtime's) loads in both builds,
//! and the verifier's work on each stays within budget, as `ferroscope check` reports it.
//!
//! The budget is half of the verifier's 1M processed-instruction limit, so that a change
//! which doubles a program's verification cost is caught here, before a kernel refuses it.
//! A runtime added to the binary is covered without editing this test.

#![allow(clippy::print_stderr)]

mod common;

use std::process::Command;

use ferroscope_test_harness as harness;

const VERIFIED_INSTRUCTION_BUDGET: u64 = 500_000;

/// One `ok|FAIL  <program> (<owner>, <build>): ...` line under "eBPF programs".
#[derive(Debug)]
struct ProgramLine {
    loaded: bool,
    program: String,
    owner: String,
    verified: Option<u64>,
    text: String,
}

fn program_lines(check: &str) -> Vec<ProgramLine> {
    check
        .lines()
        .filter(|l| l.starts_with("      "))
        .filter_map(|l| {
            let l = l.trim_start();
            let (status, rest) = l.split_once(char::is_whitespace)?;
            let rest = rest.trim_start();
            let (program, rest) = rest.split_once(" (")?;
            let (owner, _) = rest.split_once(", ")?;
            let verified = rest
                .split(", ")
                .find_map(|part| part.strip_suffix(" instructions verified"))
                .or_else(|| {
                    rest.split(": ")
                        .find_map(|part| part.strip_suffix(" instructions verified"))
                })
                .and_then(|n| n.rsplit(' ').next()?.parse().ok());
            Some(ProgramLine {
                loaded: status == "ok",
                program: program.to_owned(),
                owner: owner.to_owned(),
                verified,
                text: l.to_owned(),
            })
        })
        .collect()
}

#[test]
fn every_program_loads_in_both_builds_within_the_verifier_budget() {
    if !common::can_run_bpf() {
        return;
    }
    for (build, name) in [
        ("loop", "bpf_loop build"),
        ("legacy", "legacy (no bpf_loop) build"),
    ] {
        let output = harness::run(
            Command::new(env!("CARGO_BIN_EXE_ferroscope"))
                .arg("check")
                .env("FERROSCOPE_BPF_BUILD", build),
            common::FERROSCOPE_LIMIT,
        );
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "check failed ({build}):\n{text}");
        let lines = program_lines(&text);
        assert!(
            lines.iter().any(|l| l.program == "fs_native") && lines.len() >= 5,
            "no program lines in check's output ({build}):\n{text}"
        );
        let runtimes = lines
            .iter()
            .filter(|l| l.owner.ends_with(" runtime"))
            .count();
        assert!(
            runtimes >= 1,
            "no runtime program in check ({build}):\n{text}"
        );
        for line in &lines {
            assert!(
                line.loaded,
                "{} did not load ({build}): {}",
                line.program, line.text
            );
            assert!(
                line.text.contains(name),
                "{} is not of the {name}: {}",
                line.program,
                line.text
            );
            let n = line
                .verified
                .unwrap_or_else(|| panic!("no verified count for {}: {}", line.program, line.text));
            eprintln!("{build:7} {:24} {n:>8} instructions verified", line.program);
            assert!(
                n <= VERIFIED_INSTRUCTION_BUDGET,
                "{build} {} took {n} verified instructions, over the budget of \
                 {VERIFIED_INSTRUCTION_BUDGET}",
                line.program
            );
        }
    }
}
