//! Summaries of a profile, built or decoded: per-function shares and folded
//! stacks.
//!
//! These functions accept any decoded profile, including inconsistent ones
//! (dangling ids, string indices out of range): what cannot be resolved gets a
//! placeholder name instead of a panic. A sample without a value at the chosen
//! index counts as 0.
//!
//! Frames are named by `Function.name` (falling back to `system_name`); a
//! location without lines is named `<mapping file>+0x<address>`, or
//! `0x<address>` without a mapping.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::proto;

/// How much of a profile's value one function accounts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionShare {
    /// The function's name.
    pub name: String,
    /// The value of the samples in which this function is the leaf frame.
    pub self_value: i64,
    /// The value of the samples in which this function appears anywhere
    /// (counted once per sample, even when it recurses).
    pub total_value: i64,
}

/// Every function of `p` with its self and total value at `value_index`,
/// sorted by self value, then total value (both descending), then name; and
/// the grand total of all samples.
///
/// Functions are identified by name, as `pprof -top` does. Inlined functions
/// (several lines in one location) count as frames of their own; the leaf
/// frame is the innermost line of the first location.
pub fn top_functions(p: &proto::Profile, value_index: usize) -> (Vec<FunctionShare>, i64) {
    let names = Names::new(p);
    let mut grand_total = 0i64;
    let mut shares: HashMap<Cow<'_, str>, (i64, i64)> = HashMap::new();
    let mut seen: HashSet<Cow<'_, str>> = HashSet::new();
    for sample in &p.sample {
        let v = value(sample, value_index);
        grand_total = grand_total.saturating_add(v);
        seen.clear();
        let mut leaf = true;
        for &loc in &sample.location_id {
            for name in names.frames_innermost_first(loc) {
                let entry = shares.entry(name.clone()).or_default();
                if leaf {
                    entry.0 = entry.0.saturating_add(v);
                    leaf = false;
                }
                if seen.insert(name) {
                    entry.1 = entry.1.saturating_add(v);
                }
            }
        }
    }
    let mut out: Vec<FunctionShare> = shares
        .into_iter()
        .map(|(name, (self_value, total_value))| FunctionShare {
            name: name.into_owned(),
            self_value,
            total_value,
        })
        .collect();
    out.sort_by(|a, b| {
        b.self_value
            .cmp(&a.self_value)
            .then(b.total_value.cmp(&a.total_value))
            .then_with(|| a.name.cmp(&b.name))
    });
    (out, grand_total)
}

/// The folded stacks of `p` at `value_index`: one entry per distinct stack of
/// function names, root first, with the summed value of its samples (samples
/// that differ only in labels end up in one entry), sorted by stack.
///
/// A location with several lines (inlining) expands into several frames, the
/// innermost last. A sample without locations gives an empty stack.
pub fn stacks(p: &proto::Profile, value_index: usize) -> Vec<(Vec<String>, i64)> {
    let names = Names::new(p);
    let mut folded: HashMap<Vec<String>, i64> = HashMap::new();
    for sample in &p.sample {
        let mut stack = Vec::new();
        for &loc in sample.location_id.iter().rev() {
            let mut frames = names.frames_innermost_first(loc);
            frames.reverse();
            stack.extend(frames.into_iter().map(Cow::into_owned));
        }
        let entry = folded.entry(stack).or_default();
        *entry = entry.saturating_add(value(sample, value_index));
    }
    let mut out: Vec<_> = folded.into_iter().collect();
    out.sort_unstable();
    out
}

fn value(sample: &proto::Sample, index: usize) -> i64 {
    sample.value.get(index).copied().unwrap_or(0)
}

/// Resolves location ids to frame names.
struct Names<'p> {
    p: &'p proto::Profile,
    functions: HashMap<u64, &'p proto::Function>,
    locations: HashMap<u64, &'p proto::Location>,
    mappings: HashMap<u64, &'p proto::Mapping>,
}

impl<'p> Names<'p> {
    fn new(p: &'p proto::Profile) -> Self {
        Names {
            p,
            functions: p.function.iter().map(|f| (f.id, f)).collect(),
            locations: p.location.iter().map(|l| (l.id, l)).collect(),
            mappings: p.mapping.iter().map(|m| (m.id, m)).collect(),
        }
    }

    fn string(&self, index: i64) -> &'p str {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.p.string_table.get(i))
            .map_or("", String::as_str)
    }

    fn frames_innermost_first(&self, location_id: u64) -> Vec<Cow<'p, str>> {
        let Some(loc) = self.locations.get(&location_id) else {
            return vec![Cow::Owned(format!("<unknown location {location_id}>"))];
        };
        if loc.line.is_empty() {
            let file = self
                .mappings
                .get(&loc.mapping_id)
                .map_or("", |m| self.string(m.filename));
            let name = if file.is_empty() {
                format!("0x{:x}", loc.address)
            } else {
                format!("{file}+0x{:x}", loc.address)
            };
            return vec![Cow::Owned(name)];
        }
        loc.line
            .iter()
            .map(|line| match self.functions.get(&line.function_id) {
                Some(f) => {
                    let name = self.string(f.name);
                    let name = if name.is_empty() {
                        self.string(f.system_name)
                    } else {
                        name
                    };
                    if name.is_empty() {
                        Cow::Owned(format!("<function {}>", f.id))
                    } else {
                        Cow::Borrowed(name)
                    }
                }
                None => Cow::Owned(format!("<unknown function {}>", line.function_id)),
            })
            .collect()
    }
}
