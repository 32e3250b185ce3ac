//! Judging one run of the matrix steps from the files `matrix.sh` wrote: the check's verdict
//! and lines, each record's exit status and the share of its samples that carry the whole
//! known call chain, decoded from the pprof it wrote with the workspace's own reader.

use std::collections::HashMap;
use std::path::Path;

use ferroscope_pprof::proto::Profile;

/// The C program's chain, leaf first (fixtures/c/nofp_chain.c).
pub const C_CHAIN: [&str; 6] = [
    "hot_leaf",
    "inner",
    "middle",
    "outer",
    "run_forever",
    "main",
];
/// The Python program's two chains, leaf first, as ferroscope names CPython 3.11+ frames
/// (qualified names; fixtures/python/chains.py).
pub const PY_CHAINS: [&[&str]; 2] = [
    &[
        "Worker.run.<locals>.inner",
        "Worker.run",
        "chain_a",
        "<module>",
    ],
    &["leaf_b", "chain_b", "<module>"],
];
/// Below this share of whole chains a record fails. Under TCG a process's unwind tables
/// take up to 1-2 s to load, and samples taken before are cut short; the records last long
/// enough (`RECORD_SECONDS`) that a working unwinder still stays well above it (measured:
/// 99-100 % in the guests), while a broken one (frame pointers only, no Python frames)
/// gives far less.
pub const MIN_WHOLE_SHARE: f64 = 0.90;
/// What ferroscope logs when the kernel refuses the stack-delta unwinder and it falls back
/// to frame pointers.
const UNWINDER_REFUSED: &str = "unwinder could not be loaded";

/// One record (`c` or `py`).
#[derive(Debug, Default)]
pub struct Record {
    pub rc: Option<i32>,
    /// Its stdout and stderr, colour codes removed.
    pub output: String,
    pub samples: i64,
    /// Share of the samples judged (C: those in `hot_leaf`; Python: all) that carry a whole
    /// chain, when a profile was written.
    pub whole: Option<f64>,
    /// A sample that lacks it, for the report.
    pub broken_example: Option<String>,
    /// Samples with at least one interpreted (Python) frame.
    pub interpreted: i64,
}

impl Record {
    /// The lines worth showing: record's end-of-run summary (samples, its own cost, Python
    /// frames named), warnings and errors.
    pub fn notable_lines(&self) -> Vec<&str> {
        self.output
            .lines()
            .filter(|l| {
                (l.starts_with("ferroscope: ") && !l.starts_with("ferroscope: sampling"))
                    || l.contains(" WARN ")
                    || l.contains(" ERROR ")
                    || l.starts_with("error:")
            })
            .collect()
    }
}

/// Everything one kernel (or the host) gave.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `5.10`, `6.1`, `6.12`, `host`.
    pub kernel: String,
    /// The Debian package booted (empty for the host).
    pub package: String,
    /// `uname -r` as the steps saw it.
    pub release: String,
    pub check_rc: Option<i32>,
    pub check_lines: Vec<String>,
    pub c: Record,
    pub py: Record,
    /// The kernel-probe records, or the refusal on a kernel without kprobes.
    pub kprobes: super::kprobes::KernelProbes,
    /// Wall-clock seconds of the whole run (qemu from start to power-off, or the host's steps).
    pub seconds: f64,
    /// Uptime marks from `matrix.sh` (start, check, c, py).
    pub marks: Vec<(String, f64)>,
    /// Problems of the run itself (qemu timed out, results missing).
    pub run_problems: Vec<String>,
}

impl Outcome {
    /// Reads what `matrix.sh` wrote into `dir`.
    pub fn read(kernel: &str, package: &str, dir: &Path) -> Outcome {
        let text = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let rc = |name: &str| text(name).trim().parse().ok();
        // check's report is its stdout; its log (stderr) repeats the same findings, and is
        // shown only when there is no report.
        let mut check = strip_ansi(&text("check.out"));
        if check.trim().is_empty() {
            check = strip_ansi(&text("check.err"));
        }
        Outcome {
            kernel: kernel.into(),
            package: package.into(),
            release: text("release").trim().into(),
            check_rc: rc("check.rc"),
            check_lines: check.lines().map(str::to_owned).collect(),
            c: read_record(dir, "c", rc("c.rc"), whole_c_chain),
            py: read_record(dir, "py", rc("py.rc"), whole_py_chain),
            kprobes: super::kprobes::KernelProbes::read(dir),
            marks: text("times")
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    Some((k.to_owned(), v.trim().parse().ok()?))
                })
                .collect(),
            ..Outcome::default()
        }
    }

    /// `pass (12 ok, 1 warn)` or `FAIL (rc 1: 1 FAIL, ...)`, counted from check's lines.
    pub fn check_verdict(&self) -> String {
        let count = |label: &str| {
            self.check_lines
                .iter()
                .filter(|l| l.split_whitespace().next() == Some(label))
                .count()
        };
        let counts = format!(
            "{} ok, {} warn, {} FAIL",
            count("ok"),
            count("warn"),
            count("FAIL")
        );
        match self.check_rc {
            Some(0) => format!("pass ({counts})"),
            Some(rc) => format!("FAIL (rc {rc}; {counts})"),
            None => "did not run".into(),
        }
    }

    /// `yes`, `no (refused)`, or `?` when no record said.
    pub fn unwinder(&self) -> &'static str {
        let refused = |r: &Record| r.output.contains(UNWINDER_REFUSED);
        if refused(&self.c) || refused(&self.py) {
            "no (refused)"
        } else if self.c.rc == Some(0) || self.py.rc == Some(0) {
            "yes"
        } else {
            "?"
        }
    }

    /// Why this kernel fails; empty when it passes.
    pub fn failures(&self) -> Vec<String> {
        let mut out = self.run_problems.clone();
        if self.check_rc != Some(0) {
            out.push(format!("`ferroscope check`: {}", self.check_verdict()));
        }
        if self.unwinder() != "yes" {
            out.push(format!(
                "the stack-delta unwinder did not load: {}",
                self.unwinder()
            ));
        }
        let records = [
            ("the C program", &self.c, false),
            ("the Python program", &self.py, true),
        ];
        for (what, r, interpreted) in records {
            // Said apart: the interpreter unwinder gave nothing, rather than broken chains.
            let none_named = if interpreted && r.samples > 0 && r.interpreted == 0 {
                "; no sample has a single Python frame"
            } else {
                ""
            };
            match (r.rc, r.whole) {
                (None, _) => out.push(format!("the record of {what} did not run")),
                (Some(rc), _) if rc != 0 => {
                    out.push(format!("the record of {what} exited with status {rc}"))
                }
                (_, None) => out.push(format!("the record of {what} wrote no profile")),
                (_, Some(share)) if share < MIN_WHOLE_SHARE => out.push(format!(
                    "only {:.1} % of the samples of {what} carry its whole chain (at least {:.0} % needed){none_named}",
                    share * 100.0,
                    MIN_WHOLE_SHARE * 100.0
                )),
                _ => {}
            }
        }
        out.extend(self.kprobes.failures());
        out
    }

    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }
}

/// A decoded sample: frame names leaf first (Python frames marked), and its sample count.
pub(super) struct Stack {
    pub(super) frames: Vec<(String, bool)>,
    pub(super) count: i64,
}

fn read_record(dir: &Path, name: &str, rc: Option<i32>, judge: Judge) -> Record {
    let output =
        strip_ansi(&std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap_or_default());
    let mut record = Record {
        rc,
        output,
        ..Record::default()
    };
    let Ok(bytes) = std::fs::read(dir.join(format!("{name}.pb.gz"))) else {
        return record;
    };
    let profile = match ferroscope_pprof::decode(&bytes) {
        Ok(p) => p,
        Err(e) => {
            record
                .output
                .push_str(&format!("\nerror: the profile does not decode: {e}\n"));
            return record;
        }
    };
    let stacks = stacks(&profile);
    record.samples = stacks.iter().map(|s| s.count).sum();
    record.interpreted = stacks
        .iter()
        .filter(|s| s.frames.iter().any(|(_, python)| *python))
        .map(|s| s.count)
        .sum();
    let judged: Vec<(&Stack, bool)> = stacks
        .iter()
        .filter_map(|s| judge(s).map(|whole| (s, whole)))
        .collect();
    let counted: i64 = judged.iter().map(|(s, _)| s.count).sum();
    let whole: i64 = judged
        .iter()
        .filter(|(_, w)| *w)
        .map(|(s, _)| s.count)
        .sum();
    record.whole = Some(whole as f64 / counted.max(1) as f64);
    record.broken_example = judged.iter().find(|(_, w)| !w).map(|(s, _)| {
        s.frames
            .iter()
            .map(|(n, _)| if n.is_empty() { "?" } else { n.as_str() })
            .collect::<Vec<_>>()
            .join(" <- ")
    });
    record
}

/// Whether a sample carries the whole chain; `None`: the sample does not count.
type Judge = fn(&Stack) -> Option<bool>;

/// Of the samples in `hot_leaf` (nearly all: the time is spent there), those whose stack
/// has the chain as consecutive frames (libc's start code may follow `main`).
fn whole_c_chain(s: &Stack) -> Option<bool> {
    let names: Vec<&str> = s.frames.iter().map(|(n, _)| n.as_str()).collect();
    (names.first() == Some(&C_CHAIN[0])).then(|| names.windows(C_CHAIN.len()).any(|w| w == C_CHAIN))
}

/// Every sample counts: the program runs only Python code, so every sample must have Python
/// frames, and they must run unbroken from the function sampled down to `<module>`: one of
/// the two chains, or its tail when the time was spent in a caller (the loop in `<module>`
/// calling `rng.random()`, say). A walk cut short loses the bottom frames, so it fails.
fn whole_py_chain(s: &Stack) -> Option<bool> {
    let names: Vec<&str> = s
        .frames
        .iter()
        .filter(|(_, python)| *python)
        .map(|(n, _)| n.as_str())
        .collect();
    Some(!names.is_empty() && PY_CHAINS.iter().any(|chain| chain.ends_with(&names)))
}

pub(super) fn stacks(p: &Profile) -> Vec<Stack> {
    let string = |i: i64| p.string_table.get(i as usize).cloned().unwrap_or_default();
    let functions: HashMap<u64, (String, String)> = p
        .function
        .iter()
        .map(|f| (f.id, (string(f.name), string(f.filename))))
        .collect();
    let locations: HashMap<u64, &ferroscope_pprof::proto::Location> =
        p.location.iter().map(|l| (l.id, l)).collect();
    let period = p.period.max(1);
    p.sample
        .iter()
        .map(|sample| {
            let mut frames = Vec::new();
            for loc in sample.location_id.iter().filter_map(|id| locations.get(id)) {
                if loc.line.is_empty() {
                    frames.push((String::new(), false));
                }
                for line in &loc.line {
                    let (name, file) = functions
                        .get(&line.function_id)
                        .cloned()
                        .unwrap_or_default();
                    // An interpreted frame: a location with no mapping but a source file.
                    let python = loc.mapping_id == 0 && !file.is_empty();
                    frames.push((name, python));
                }
            }
            Stack {
                frames,
                count: sample.value.first().copied().unwrap_or(0) / period,
            }
        })
        .collect()
}

/// Removes terminal colour sequences (`ESC [ ... m`) from logs.
pub(super) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(frames: &[(&str, bool)]) -> Stack {
        Stack {
            frames: frames.iter().map(|&(n, p)| (n.to_owned(), p)).collect(),
            count: 1,
        }
    }

    #[test]
    fn c_chain_must_be_whole_and_in_order() {
        let whole: Vec<(&str, bool)> = C_CHAIN
            .iter()
            .chain(&["__libc_start_call_main"])
            .map(|&n| (n, false))
            .collect();
        assert_eq!(whole_c_chain(&stack(&whole)), Some(true));
        let cut = stack(&[("hot_leaf", false), ("inner", false), ("", false)]);
        assert_eq!(whole_c_chain(&cut), Some(false));
        let elsewhere = stack(&[("inner", false), ("middle", false)]);
        assert_eq!(whole_c_chain(&elsewhere), None);
        let skipped = stack(&[
            ("hot_leaf", false),
            ("middle", false),
            ("outer", false),
            ("run_forever", false),
            ("main", false),
        ]);
        assert_eq!(whole_c_chain(&skipped), Some(false));
    }

    #[test]
    fn python_frames_must_be_exactly_one_chain() {
        let b = stack(&[
            ("_PyEval_EvalFrameDefault", false),
            ("leaf_b", true),
            ("chain_b", true),
            ("<module>", true),
            ("main", false),
        ]);
        assert_eq!(whole_py_chain(&b), Some(true));
        let truncated = stack(&[("leaf_b", true), ("chain_b", true)]);
        assert_eq!(whole_py_chain(&truncated), Some(false));
        let in_module = stack(&[("genrand_uint32", false), ("<module>", true)]);
        assert_eq!(whole_py_chain(&in_module), Some(true));
        let mixed = stack(&[("leaf_b", true), ("chain_a", true), ("<module>", true)]);
        assert_eq!(whole_py_chain(&mixed), Some(false));
        assert_eq!(whole_py_chain(&stack(&[("main", false)])), Some(false));
        assert_eq!(whole_py_chain(&stack(&[("leaf_b", false)])), Some(false));
    }

    fn passing() -> Outcome {
        let record = |samples| Record {
            rc: Some(0),
            samples,
            whole: Some(0.995),
            interpreted: samples,
            ..Record::default()
        };
        Outcome {
            check_rc: Some(0),
            c: record(4000),
            py: record(4000),
            kprobes: super::super::kprobes::KernelProbes::Unavailable {
                rc: Some(1),
                output: "kprobe:__x64_sys_getppid: no kprobes (CONFIG_KPROBES)".into(),
            },
            ..Outcome::default()
        }
    }

    #[test]
    fn a_kernel_passes_only_with_check_records_and_whole_chains() {
        assert_eq!(passing().failures(), Vec::<String>::new());

        // 5.10 today: check passes, then both records fail because the unwinder is refused.
        let mut refused = passing();
        for r in [&mut refused.c, &mut refused.py] {
            r.rc = Some(1);
            r.whole = None;
            r.output = "WARN ferroscope_agent::record: the stack-delta unwinder could not be loaded, user stacks will use frame pointers only: ...".into();
        }
        let failures = refused.failures();
        assert_eq!(refused.unwinder(), "no (refused)");
        assert_eq!(failures.len(), 3, "{failures:?}");

        // A record that runs but has no Python frame at all.
        let mut no_python = passing();
        no_python.py.whole = Some(0.0);
        no_python.py.interpreted = 0;
        let failures = no_python.failures();
        assert_eq!(failures.len(), 1);
        assert!(failures[0].contains("no sample has a single Python frame"));

        let mut check_failed = passing();
        check_failed.check_rc = Some(1);
        assert_eq!(check_failed.failures().len(), 1);
    }

    #[test]
    fn colour_codes_are_removed() {
        assert_eq!(
            strip_ansi("\u{1b}[33m WARN\u{1b}[0m ferroscope: x"),
            " WARN ferroscope: x"
        );
    }
}
