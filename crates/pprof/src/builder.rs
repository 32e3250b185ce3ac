//! [`ProfileBuilder`]: accumulates samples and the tables they point into,
//! deduplicating every table entry as it goes.

use std::collections::HashMap;

use crate::proto;

/// Identifies a mapping added to one [`ProfileBuilder`]; the value is the
/// pprof `Mapping.id` (the first mapping is 1).
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug)]
pub struct MappingId(u64);

impl MappingId {
    /// The pprof `Mapping.id` this stands for.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Identifies a location added to one [`ProfileBuilder`]; the value is the
/// pprof `Location.id` (the first location is 1).
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug)]
pub struct LocationId(u64);

impl LocationId {
    /// The pprof `Location.id` this stands for.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A memory mapping of an executable or library.
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug)]
pub struct MappingSpec<'a> {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address of the mapping.
    pub limit: u64,
    /// Offset in the file that `start` corresponds to.
    pub offset: u64,
    /// File name of the mapped object (ferroscope uses the basename).
    pub filename: &'a str,
    /// Build id of the object, e.g. the GNU build id in hex; "" if unknown.
    pub build_id: &'a str,
    /// Whether locations in this mapping carry function names.
    pub has_functions: bool,
}

/// A code location: an address and, if symbolized, its source lines.
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug)]
pub struct LocationSpec<'a> {
    /// The mapping the address belongs to, if any (interpreted frames and
    /// unknown addresses may have none).
    pub mapping: Option<MappingId>,
    /// The address (for native frames: inside the ELF's address space).
    pub address: u64,
    /// The source lines at this address, innermost (inlined) function first,
    /// the function they were inlined into last, as pprof orders `Line`.
    pub lines: &'a [LineSpec<'a>],
}

/// One source line of a location, with the function it is in.
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug)]
pub struct LineSpec<'a> {
    /// Human-readable (demangled) function name.
    pub function: &'a str,
    /// Function name as the system knows it (e.g. mangled); may be "".
    pub system_name: &'a str,
    /// Source file name; may be "".
    pub filename: &'a str,
    /// First line of the function; 0 if unknown.
    pub start_line: i64,
    /// Line number of this position; 0 if unknown.
    pub line: i64,
}

/// A per-sample label.
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug)]
pub enum Label<'a> {
    /// A text label: key and value (stored in `Label.str`).
    Str(&'a str, &'a str),
    /// A numeric label: key, value (stored in `Label.num`) and optional unit
    /// (stored in `Label.num_unit`), e.g. `Num("pid", 42, None)`.
    Num(&'a str, i64, Option<&'a str>),
}

/// A label after interning: all text replaced by string indices.
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug, PartialOrd, Ord)]
enum LabelKey {
    Str { key: i64, value: i64 },
    Num { key: i64, value: i64, unit: i64 },
}

#[derive(Clone, Eq, PartialEq, Hash, Debug)]
struct FunctionKey {
    name: i64,
    system_name: i64,
    filename: i64,
    start_line: i64,
}

#[derive(Clone, Eq, PartialEq, Hash, Debug)]
struct MappingKey {
    start: u64,
    limit: u64,
    offset: u64,
    filename: i64,
    build_id: i64,
    has_functions: bool,
}

#[derive(Clone, Eq, PartialEq, Hash, Debug)]
struct LocationKey {
    mapping: u64,
    address: u64,
    /// (function id, line) per line, innermost first.
    lines: Vec<(u64, i64)>,
}

#[derive(Clone, Eq, PartialEq, Hash, Debug)]
struct SampleKey {
    locations: Vec<u64>,
    /// Sorted, so that the same labels given in another order are the same sample.
    labels: Vec<LabelKey>,
}

/// Builds a [`proto::Profile`] with one sample type.
///
/// Strings, functions, mappings and locations are deduplicated: adding the same
/// one twice returns the same id and stores it once. String index 0 is always
/// the empty string. Samples with the same locations and the same labels (in any
/// order) are merged by summing their values.
#[derive(Clone, Debug)]
pub struct ProfileBuilder {
    strings: Vec<Box<str>>,
    string_ids: HashMap<Box<str>, i64>,
    functions: Vec<proto::Function>,
    function_ids: HashMap<FunctionKey, u64>,
    mappings: Vec<proto::Mapping>,
    mapping_ids: HashMap<MappingKey, u64>,
    locations: Vec<proto::Location>,
    location_ids: HashMap<LocationKey, u64>,
    samples: Vec<proto::Sample>,
    sample_ids: HashMap<SampleKey, usize>,
    sample_type: proto::ValueType,
    period_type: Option<proto::ValueType>,
    period: i64,
    time_nanos: i64,
    duration_nanos: i64,
}

impl ProfileBuilder {
    /// A builder whose samples carry one value of `sample_type` (`(type, unit)`,
    /// e.g. `("offcpu", "nanoseconds")`), with an optional period type and the
    /// period (0 when there is none).
    pub fn new(sample_type: (&str, &str), period_type: Option<(&str, &str)>, period: i64) -> Self {
        let mut b = ProfileBuilder {
            strings: Vec::new(),
            string_ids: HashMap::new(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            mappings: Vec::new(),
            mapping_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            samples: Vec::new(),
            sample_ids: HashMap::new(),
            sample_type: proto::ValueType::default(),
            period_type: None,
            period,
            time_nanos: 0,
            duration_nanos: 0,
        };
        let empty = b.intern("");
        debug_assert_eq!(empty, 0);
        b.sample_type = b.value_type(sample_type);
        b.period_type = period_type.map(|pt| b.value_type(pt));
        b
    }

    /// A CPU profile sampled at `sample_rate_hz`: sample type and period type
    /// `cpu/nanoseconds`, period `1_000_000_000 / sample_rate_hz` (integer
    /// division, as Pyroscope's agent does: 19 Hz gives 52631578, 97 Hz gives
    /// 10309278). Each sample's value is then `count * period`.
    ///
    /// A rate of 0 is treated as 1 Hz.
    pub fn cpu(sample_rate_hz: u32) -> Self {
        let period = 1_000_000_000 / i64::from(sample_rate_hz.max(1));
        Self::new(("cpu", "nanoseconds"), Some(("cpu", "nanoseconds")), period)
    }

    /// The period given at construction.
    pub fn period(&self) -> i64 {
        self.period
    }

    /// Sets `Profile.time_nanos`: when collection happened, in nanoseconds since
    /// the Unix epoch.
    pub fn set_time_nanos(&mut self, t: i64) {
        self.time_nanos = t;
    }

    /// Sets `Profile.duration_nanos`: how long the collection covered.
    pub fn set_duration_nanos(&mut self, d: i64) {
        self.duration_nanos = d;
    }

    /// Adds a mapping, or returns the id of an identical one (all fields
    /// equal) added before. Ids start at 1.
    pub fn add_mapping(&mut self, m: &MappingSpec<'_>) -> MappingId {
        let key = MappingKey {
            start: m.start,
            limit: m.limit,
            offset: m.offset,
            filename: self.intern(m.filename),
            build_id: self.intern(m.build_id),
            has_functions: m.has_functions,
        };
        if let Some(&id) = self.mapping_ids.get(&key) {
            return MappingId(id);
        }
        let id = self.mappings.len() as u64 + 1;
        self.mappings.push(proto::Mapping {
            id,
            memory_start: key.start,
            memory_limit: key.limit,
            file_offset: key.offset,
            filename: key.filename,
            build_id: key.build_id,
            has_functions: key.has_functions,
            ..Default::default()
        });
        self.mapping_ids.insert(key, id);
        MappingId(id)
    }

    /// Adds a location, or returns the id of an identical one (same mapping,
    /// address and lines) added before. Ids start at 1. The functions of the
    /// lines are added (deduplicated) as needed.
    ///
    /// `l.mapping` must come from this builder.
    pub fn add_location(&mut self, l: &LocationSpec<'_>) -> LocationId {
        let mapping = l.mapping.map_or(0, MappingId::get);
        debug_assert!(
            mapping as usize <= self.mappings.len(),
            "mapping id {mapping} does not come from this builder"
        );
        let lines = l
            .lines
            .iter()
            .map(|line| (self.add_function(line), line.line))
            .collect();
        let key = LocationKey {
            mapping,
            address: l.address,
            lines,
        };
        if let Some(&id) = self.location_ids.get(&key) {
            return LocationId(id);
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(proto::Location {
            id,
            mapping_id: mapping,
            address: key.address,
            line: key
                .lines
                .iter()
                .map(|&(function_id, line)| proto::Line {
                    function_id,
                    line,
                    column: 0,
                })
                .collect(),
            is_folded: false,
        });
        self.location_ids.insert(key, id);
        LocationId(id)
    }

    /// Adds a sample: its stack (leaf first), one value per sample type (one
    /// for builders made with [`ProfileBuilder::new`] or [`ProfileBuilder::cpu`])
    /// and its labels. A sample with the same stack and the same labels as an
    /// earlier one is merged into it by adding the values.
    ///
    /// `locations_leaf_first` must come from this builder. Missing values count
    /// as 0; extra values are dropped (and logged).
    pub fn add_sample(
        &mut self,
        locations_leaf_first: &[LocationId],
        values: &[i64],
        labels: &[Label<'_>],
    ) {
        debug_assert!(
            locations_leaf_first
                .iter()
                .all(|l| l.0 >= 1 && l.0 as usize <= self.locations.len()),
            "location ids do not come from this builder"
        );
        let n = self.value_count();
        if values.len() != n {
            tracing::warn!(
                given = values.len(),
                expected = n,
                "pprof sample has the wrong number of values; padding with 0 or dropping extras"
            );
        }
        let label_keys: Vec<LabelKey> = labels.iter().map(|l| self.label_key(l)).collect();
        let mut sorted = label_keys.clone();
        sorted.sort_unstable();
        let key = SampleKey {
            locations: locations_leaf_first.iter().map(|l| l.0).collect(),
            labels: sorted,
        };
        if let Some(&i) = self.sample_ids.get(&key) {
            let sample = &mut self.samples[i];
            for (acc, v) in sample.value.iter_mut().zip(values) {
                *acc = acc.saturating_add(*v);
            }
            return;
        }
        let mut value: Vec<i64> = values.iter().copied().take(n).collect();
        value.resize(n, 0);
        self.samples.push(proto::Sample {
            location_id: key.locations.clone(),
            value,
            label: label_keys
                .iter()
                .map(|l| match *l {
                    LabelKey::Str { key, value } => proto::Label {
                        key,
                        str: value,
                        ..Default::default()
                    },
                    LabelKey::Num { key, value, unit } => proto::Label {
                        key,
                        num: value,
                        num_unit: unit,
                        ..Default::default()
                    },
                })
                .collect(),
        });
        self.sample_ids.insert(key, self.samples.len() - 1);
    }

    /// How many distinct samples (after merging) have been added.
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    /// Finishes the profile.
    pub fn build(self) -> proto::Profile {
        proto::Profile {
            sample_type: vec![self.sample_type],
            sample: self.samples,
            mapping: self.mappings,
            location: self.locations,
            function: self.functions,
            string_table: self.strings.into_iter().map(String::from).collect(),
            time_nanos: self.time_nanos,
            duration_nanos: self.duration_nanos,
            period_type: self.period_type,
            period: self.period,
            ..Default::default()
        }
    }

    /// How many values each sample carries: one per sample type, and a
    /// builder has exactly one sample type.
    fn value_count(&self) -> usize {
        1
    }

    /// The index of `s` in the string table, adding it if new.
    fn intern(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        let boxed: Box<str> = s.into();
        self.strings.push(boxed.clone());
        self.string_ids.insert(boxed, i);
        i
    }

    fn value_type(&mut self, (ty, unit): (&str, &str)) -> proto::ValueType {
        proto::ValueType {
            r#type: self.intern(ty),
            unit: self.intern(unit),
        }
    }

    fn label_key(&mut self, l: &Label<'_>) -> LabelKey {
        match *l {
            Label::Str(key, value) => LabelKey::Str {
                key: self.intern(key),
                value: self.intern(value),
            },
            Label::Num(key, value, unit) => LabelKey::Num {
                key: self.intern(key),
                value,
                unit: unit.map_or(0, |u| self.intern(u)),
            },
        }
    }

    fn add_function(&mut self, line: &LineSpec<'_>) -> u64 {
        let key = FunctionKey {
            name: self.intern(line.function),
            system_name: self.intern(line.system_name),
            filename: self.intern(line.filename),
            start_line: line.start_line,
        };
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(proto::Function {
            id,
            name: key.name,
            system_name: key.system_name,
            filename: key.filename,
            start_line: key.start_line,
        });
        self.function_ids.insert(key, id);
        id
    }
}
