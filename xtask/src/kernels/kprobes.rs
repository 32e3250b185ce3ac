//! The kernel-probe step of the matrix: on a kernel with kprobes, a record of the getppid
//! program (fixtures/probes/getppids.c) with `kprobe:__x64_sys_getppid` and
//! `kretprobe:__x64_sys_getppid`, judged against the calls the program counted (the entry's
//! hits are those whose leaf is the function, the return's are its caller's); on a kernel
//! without (the host), the refusal of such a link, which must name the link and say why.

use std::path::Path;

use super::outcome::{Stack, stacks, strip_ansi};

/// Rounds of the program: 3 calls in `call_a` and 1 in `call_b` each (16000 calls, twice
/// as many probe hits), a few seconds under TCG.
pub const ROUNDS: u32 = 4000;
/// The function probed: the getppid system call's entry on x86-64 (4.17 and later).
const FUNCTION: &str = "__x64_sys_getppid";
/// The names the probed function's address has in kallsyms: the entry shares it with the
/// body it wraps, and either may be the one the symbolizer picks (it picked the body).
const LEAF_NAMES: [&str; 2] = [FUNCTION, "__do_sys_getppid"];
/// Each chain's hits must be within this share of the calls the program made.
const TOLERANCE: f64 = 0.10;
/// The user frames above the system call, leaf first, for each chain.
const CHAIN_A: [&str; 3] = ["call_a", "run_rounds", "main"];
const CHAIN_B: [&str; 3] = ["call_b", "run_rounds", "main"];

/// The program, under `fixtures/`.
pub const FIXTURE: &str = "probes/getppids.c";

/// The hits of one of the record's two probes.
#[derive(Debug, Default, Clone)]
pub struct ProbeRecord {
    pub rc: Option<i32>,
    /// record's stdout and stderr.
    pub output: String,
    /// The calls the program made in each chain (`a=N b=M`).
    pub calls: Option<(i64, i64)>,
    /// Hits whose stack has each chain's user frames.
    pub hits: Option<(i64, i64)>,
    /// The probe's hits.
    pub total: i64,
    /// A stack that has neither chain, for the report.
    pub stray_example: Option<String>,
}

/// What the step gave on one kernel.
#[derive(Debug, Default)]
pub enum KernelProbes {
    /// The step did not run (an older matrix, or the run was cut short).
    #[default]
    Missing,
    /// The kernel has kprobes: the entry's and the return's hits.
    Available {
        entry: ProbeRecord,
        ret: ProbeRecord,
    },
    /// The kernel has none: what record said to the link.
    Unavailable { rc: Option<i32>, output: String },
}

impl KernelProbes {
    /// Reads the files `matrix.sh` wrote into `dir`.
    pub fn read(dir: &Path) -> KernelProbes {
        let text = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let rc = |name: &str| text(name).trim().parse().ok();
        match text("kprobes").trim() {
            "yes" => {
                let (entry, ret) = read_record(dir, "kprobe", rc("kprobe.rc"));
                KernelProbes::Available { entry, ret }
            }
            "no" => KernelProbes::Unavailable {
                rc: rc("refused.rc"),
                output: strip_ansi(&text("refused.out")),
            },
            _ => KernelProbes::Missing,
        }
    }

    /// For the report's table: `a 12000/12000, b 4000/4000; ret ...` or how it was refused.
    pub fn summary(&self) -> String {
        match self {
            KernelProbes::Missing => "did not run".into(),
            KernelProbes::Unavailable { rc, .. } => match rc {
                Some(0) => "no kprobes, yet accepted".into(),
                _ => "no kprobes: refused".into(),
            },
            KernelProbes::Available { entry, ret } => {
                let one = |r: &ProbeRecord| match (r.hits, r.calls) {
                    (Some((ha, hb)), Some((ca, cb))) => format!("a {ha}/{ca} b {hb}/{cb}"),
                    _ => format!("rc {}", r.rc.map_or("?".into(), |c| c.to_string())),
                };
                format!("entry {}; return {}", one(entry), one(ret))
            }
        }
    }

    /// Why the step fails; empty when it passes.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            KernelProbes::Missing => out.push("the kernel-probe step did not run".into()),
            KernelProbes::Unavailable { rc, output } => {
                let link = format!("kprobe:{FUNCTION}");
                if *rc == Some(0) || !output.contains(&link) || !output.contains("CONFIG_KPROBES") {
                    out.push(format!(
                        "on a kernel without kprobes, `record --probe {link}` must fail naming \
                         the link and CONFIG_KPROBES; it exited with {rc:?} and said: {}",
                        output.trim()
                    ));
                }
            }
            KernelProbes::Available { entry, ret } => {
                for (what, r) in [("kprobe", entry), ("kretprobe", ret)] {
                    out.extend(r.failures(what));
                }
            }
        }
        out
    }
}

impl ProbeRecord {
    /// The entry's hits are those at the function, so a leaf named otherwise shows here as
    /// hits missing from the entry's counts (and extra ones in the return's).
    fn failures(&self, what: &str) -> Vec<String> {
        let mut out = Vec::new();
        let (Some((ha, hb)), Some((ca, cb))) = (self.hits, self.calls) else {
            out.push(format!(
                "the {what} record (rc {:?}) wrote no kprobe profile, or the program printed no \
                 counts",
                self.rc
            ));
            return out;
        };
        if self.rc != Some(0) {
            out.push(format!("the {what} record exited with {:?}", self.rc));
        }
        for (chain, hits, calls) in [("call_a", ha, ca), ("call_b", hb, cb)] {
            let off = (hits - calls).abs() as f64 / calls.max(1) as f64;
            if off > TOLERANCE {
                out.push(format!(
                    "{what}: {hits} hits under {chain}, but the program made {calls} calls \
                     there ({:.1} % off, at most {:.0} %){}",
                    off * 100.0,
                    TOLERANCE * 100.0,
                    self.stray_example
                        .as_ref()
                        .map_or(String::new(), |s| format!("; a stack without it: {s}"))
                ));
            }
        }
        out
    }
}

/// The record's two probes' hits, told apart by their leaf: the entry's fire in the probed
/// function, the return's in its caller.
fn read_record(dir: &Path, name: &str, rc: Option<i32>) -> (ProbeRecord, ProbeRecord) {
    let text = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    let mut entry = ProbeRecord {
        rc,
        output: strip_ansi(&text(&format!("{name}.out"))),
        calls: parse_counts(&text(&format!("{name}.stdout"))),
        ..ProbeRecord::default()
    };
    let mut ret = ProbeRecord {
        output: String::new(),
        ..entry.clone()
    };
    let Ok(bytes) = std::fs::read(dir.join(format!("{name}.kprobe.pb.gz"))) else {
        return (entry, ret);
    };
    let profile = match ferroscope_pprof::decode(&bytes) {
        Ok(p) => p,
        Err(e) => {
            entry.output.push_str(&format!(
                "\nerror: the kprobe profile does not decode: {e}\n"
            ));
            return (entry, ret);
        }
    };
    let (mut entry_hits, mut ret_hits) = ((0, 0), (0, 0));
    for s in &stacks(&profile) {
        let at_function = s
            .frames
            .first()
            .is_some_and(|(n, _)| LEAF_NAMES.contains(&n.as_str()));
        let (record, hits) = if at_function {
            (&mut entry, &mut entry_hits)
        } else {
            (&mut ret, &mut ret_hits)
        };
        record.total += s.count;
        if has_chain(s, &CHAIN_A) {
            hits.0 += s.count;
        } else if has_chain(s, &CHAIN_B) {
            hits.1 += s.count;
        } else if record.stray_example.is_none() {
            record.stray_example = Some(
                s.frames
                    .iter()
                    .map(|(n, _)| if n.is_empty() { "?" } else { n.as_str() })
                    .collect::<Vec<_>>()
                    .join(" <- "),
            );
        }
    }
    entry.hits = Some(entry_hits);
    ret.hits = Some(ret_hits);
    (entry, ret)
}

/// Whether the stack has `chain` as consecutive frames.
fn has_chain(s: &Stack, chain: &[&str]) -> bool {
    s.frames
        .windows(chain.len())
        .any(|w| w.iter().map(|(n, _)| n.as_str()).eq(chain.iter().copied()))
}

/// `a=12000 b=4000` from the program's output.
fn parse_counts(text: &str) -> Option<(i64, i64)> {
    let line = text.lines().find(|l| l.starts_with("a="))?;
    let mut fields = line.split_whitespace();
    let a = fields.next()?.strip_prefix("a=")?.parse().ok()?;
    let b = fields.next()?.strip_prefix("b=")?.parse().ok()?;
    Some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(frames: &[&str], count: i64) -> Stack {
        Stack {
            frames: frames.iter().map(|&n| (n.to_owned(), false)).collect(),
            count,
        }
    }

    #[test]
    fn chains_are_whole_and_counts_are_read() {
        let full = [
            "__do_sys_getppid",
            "do_syscall_64",
            "entry_SYSCALL_64",
            "syscall",
            "call_a",
            "run_rounds",
            "main",
        ];
        assert!(has_chain(&stack(&full, 1), &CHAIN_A));
        assert!(!has_chain(&stack(&full, 1), &CHAIN_B));
        assert!(!has_chain(
            &stack(&[FUNCTION, "syscall", "call_a"], 1),
            &CHAIN_A
        ));
        assert_eq!(parse_counts("ready\na=12000 b=4000\n"), Some((12000, 4000)));
        assert_eq!(parse_counts("ready\n"), None);
    }

    #[test]
    fn a_kernel_without_kprobes_must_refuse_clearly() {
        let refused = KernelProbes::Unavailable {
            rc: Some(1),
            output: "error: probe link kprobe:__x64_sys_getppid: this kernel has no kprobes (it \
                     was built without CONFIG_KPROBES ...)"
                .into(),
        };
        assert!(refused.failures().is_empty());
        let vague = KernelProbes::Unavailable {
            rc: Some(1),
            output: "error: Operation not supported".into(),
        };
        assert_eq!(vague.failures().len(), 1);
        let accepted = KernelProbes::Unavailable {
            rc: Some(0),
            output: String::new(),
        };
        assert_eq!(accepted.failures().len(), 1);
        assert_eq!(KernelProbes::Missing.failures().len(), 1);
    }

    #[test]
    fn probe_counts_must_match_the_calls() {
        let record = |hits: (i64, i64)| ProbeRecord {
            rc: Some(0),
            calls: Some((12000, 4000)),
            hits: Some(hits),
            total: hits.0 + hits.1,
            ..ProbeRecord::default()
        };
        assert!(record((11900, 3990)).failures("kprobe").is_empty());
        // Hits lost in one chain (a broken unwind there).
        assert_eq!(record((11900, 2000)).failures("kprobe").len(), 1);
        // More hits than calls (the other probe's counted as this one's).
        assert_eq!(record((24000, 8000)).failures("kretprobe").len(), 2);
        let none = ProbeRecord {
            rc: Some(1),
            ..ProbeRecord::default()
        };
        assert_eq!(none.failures("kprobe").len(), 1);
    }

    /// The two probes' hits are told apart by the leaf: the entry's is the function (by
    /// either of its names), the return's its caller.
    #[test]
    fn entry_and_return_hits_are_told_apart_by_the_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = ferroscope_pprof::ProfileBuilder::new(("kprobe", "count"), None, 0);
        let mut add = |names: &[&str], count: i64| {
            let locations: Vec<_> = names
                .iter()
                .map(|n| {
                    b.add_location(&ferroscope_pprof::LocationSpec {
                        mapping: None,
                        address: 0,
                        lines: &[ferroscope_pprof::LineSpec {
                            function: n,
                            system_name: "",
                            filename: "",
                            start_line: 0,
                            line: 0,
                        }],
                    })
                })
                .collect();
            b.add_sample(&locations, &[count], &[]);
        };
        let user_a = ["syscall", "call_a", "run_rounds", "main"];
        let user_b = ["syscall", "call_b", "run_rounds", "main"];
        let with = |kernel: &[&'static str], user: &[&'static str]| -> Vec<&'static str> {
            kernel.iter().chain(user).copied().collect()
        };
        add(
            &with(&["__x64_sys_getppid", "do_syscall_64"], &user_a),
            12000,
        );
        add(&with(&["__do_sys_getppid", "do_syscall_64"], &user_b), 4000);
        add(&with(&["do_syscall_64"], &user_a), 11000);
        add(&with(&["do_syscall_64"], &user_b), 4000);
        let bytes = ferroscope_pprof::encode_gzip(&b.build());
        std::fs::write(dir.path().join("k.kprobe.pb.gz"), bytes).unwrap();
        std::fs::write(dir.path().join("k.stdout"), "ready\na=12000 b=4000\n").unwrap();
        let (entry, ret) = read_record(dir.path(), "k", Some(0));
        assert_eq!((entry.hits, entry.total), (Some((12000, 4000)), 16000));
        assert_eq!((ret.hits, ret.total), (Some((11000, 4000)), 15000));
        assert!(entry.failures("kprobe").is_empty());
        assert!(
            ret.failures("kretprobe").is_empty(),
            "{:?}",
            ret.failures("kretprobe")
        );
    }
}
