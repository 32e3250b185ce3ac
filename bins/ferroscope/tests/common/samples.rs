//! A pprof profile as plain samples, for tests that judge stacks and labels.

use std::collections::HashMap;

use ferroscope_pprof::proto::Profile;

/// One frame: a line of a location (inlined and runtime frames each have their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: i64,
    /// A frame of a runtime (interpreted or JIT code): no mapping, but a source file.
    pub runtime: bool,
    /// Its location has a mapping (a native or kernel frame).
    pub mapped: bool,
    /// Its location's address (0 for frames named by a runtime or made up).
    pub address: u64,
    /// Not the last line of its location: a frame inlined into the next one.
    pub inlined: bool,
}

/// One sample: frames leaf first, how many samples it stands for, its string labels.
#[derive(Debug, Clone)]
pub struct Sample {
    pub frames: Vec<Frame>,
    pub count: i64,
    pub labels: HashMap<String, String>,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// Its `pid` label as a number.
    pub fn pid(&self) -> Option<u32> {
        self.label("pid")?.parse().ok()
    }

    /// Whether a frame is named `function`.
    pub fn has(&self, function: &str) -> bool {
        self.frames.iter().any(|f| f.function == function)
    }

    /// The names of its runtime frames, leaf first.
    pub fn runtime_names(&self) -> Vec<&str> {
        self.frames
            .iter()
            .filter(|f| f.runtime)
            .map(|f| f.function.as_str())
            .collect()
    }
}

/// The total count of the samples that have every one of `functions`.
pub fn total_with(samples: &[Sample], functions: &[&str]) -> i64 {
    samples
        .iter()
        .filter(|s| functions.iter().all(|f| s.has(f)))
        .map(|s| s.count)
        .sum()
}

/// The biggest samples, one line each (`count leaf < ... < root`), for a failure message.
pub fn show(samples: &[Sample]) -> String {
    let mut v: Vec<&Sample> = samples.iter().collect();
    v.sort_by_key(|s| std::cmp::Reverse(s.count));
    v.iter()
        .take(12)
        .map(|s| {
            let frames: Vec<&str> = s.frames.iter().map(|f| f.function.as_str()).collect();
            format!("{:>12} {}\n", s.count, frames.join(" < "))
        })
        .collect()
}

/// Every sample of `p`, with counts in samples (values divided by the period).
pub fn samples(p: &Profile) -> Vec<Sample> {
    let s = |i: i64| p.string_table[i as usize].clone();
    let period = p.period.max(1);
    let functions: HashMap<u64, (String, String)> = p
        .function
        .iter()
        .map(|f| (f.id, (s(f.name), s(f.filename))))
        .collect();
    let locations: HashMap<u64, &ferroscope_pprof::proto::Location> =
        p.location.iter().map(|l| (l.id, l)).collect();
    p.sample
        .iter()
        .map(|sample| {
            let mut frames = Vec::new();
            for id in &sample.location_id {
                let loc = locations[id];
                for (i, line) in loc.line.iter().enumerate() {
                    let (function, file) = functions[&line.function_id].clone();
                    frames.push(Frame {
                        runtime: loc.mapping_id == 0 && !file.is_empty(),
                        mapped: loc.mapping_id != 0,
                        address: loc.address,
                        inlined: i + 1 < loc.line.len(),
                        function,
                        file,
                        line: line.line,
                    });
                }
            }
            let labels = sample
                .label
                .iter()
                .filter(|l| l.str != 0)
                .map(|l| (s(l.key), s(l.str)))
                .collect();
            Sample {
                frames,
                count: sample.value[0] / period,
                labels,
            }
        })
        .collect()
}

/// Reads and decodes the profile `ferroscope record` wrote to `path`.
pub fn read_samples(path: &std::path::Path) -> Vec<Sample> {
    let bytes = std::fs::read(path).unwrap();
    samples(&ferroscope_pprof::decode(&bytes).expect("a valid pprof"))
}
