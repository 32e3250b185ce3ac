//! The session's table of named runtime frames: each distinct list of names that one
//! recorded frame became (a method and the methods inlined into it) gets an ID, which is
//! what a [`Frame::Named`](ferroscope_unwind_api::Frame::Named) holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One named frame of a runtime.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedLine {
    /// The runtime's slot (its frame kind).
    pub runtime: u8,
    /// Function name, as the runtime's users write it.
    pub function: Arc<str>,
    /// Source file.
    pub file: Arc<str>,
    /// The line executed (0 when unknown).
    pub line: u32,
    /// First line of the function (0 when unknown).
    pub start_line: u32,
}

/// Interned names: an ID per distinct list of frames (innermost first).
///
/// The session's unwinder thread interns while it names traces; the thread that builds
/// profiles reads. An ID carries the table's generation (above bit 40): when the table
/// starts over ([`FrameNames::trim`]), IDs of the old generation that are still on their
/// way give no name (the frame shows as unnamed) rather than another frame's.
#[derive(Debug, Default)]
pub struct FrameNames {
    ids: HashMap<Arc<[NamedLine]>, u64>,
    names: Vec<Arc<[NamedLine]>>,
    generation: u64,
}

/// The table shared between the thread that names frames and those that read names.
pub type SharedNames = Arc<Mutex<FrameNames>>;

/// More distinct names than this and the table starts over.
const MAX_NAMES: usize = 1 << 20;
const GENERATION_SHIFT: u32 = 40;

/// Where profile building finds the names of [`Frame::Named`](ferroscope_unwind_api::Frame::Named) frames.
pub trait NameLookup {
    /// The frames with this ID, innermost first.
    fn lines(&self, id: u64) -> Option<&[NamedLine]>;
}

impl FrameNames {
    /// The ID of a list of frames, adding it if new.
    pub fn intern(&mut self, lines: &[NamedLine]) -> u64 {
        if let Some(&id) = self.ids.get(lines) {
            return id;
        }
        let id = (self.generation << GENERATION_SHIFT) | self.names.len() as u64;
        let lines: Arc<[NamedLine]> = Arc::from(lines);
        self.names.push(Arc::clone(&lines));
        self.ids.insert(lines, id);
        id
    }

    /// The frames with this ID, innermost first.
    pub fn get(&self, id: u64) -> Option<&[NamedLine]> {
        if id >> GENERATION_SHIFT != self.generation {
            return None;
        }
        let index = usize::try_from(id & ((1 << GENERATION_SHIFT) - 1)).ok()?;
        self.names.get(index).map(|l| &l[..])
    }

    /// The names of these IDs, to build profiles from without holding the table.
    pub fn subset(&self, ids: impl IntoIterator<Item = u64>) -> NameSubset {
        let mut out = HashMap::new();
        for id in ids {
            if let Some(i) = usize::try_from(id & ((1 << GENERATION_SHIFT) - 1))
                .ok()
                .filter(|_| id >> GENERATION_SHIFT == self.generation)
                && let Some(lines) = self.names.get(i)
            {
                out.insert(id, Arc::clone(lines));
            }
        }
        NameSubset(out)
    }

    /// Distinct entries.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether nothing was interned.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Starts over (a new generation) when there are too many names.
    pub fn trim(&mut self) {
        if self.names.len() > MAX_NAMES {
            self.ids.clear();
            self.names.clear();
            self.generation = (self.generation + 1) & 0xff_ffff;
        }
    }
}

impl NameLookup for FrameNames {
    fn lines(&self, id: u64) -> Option<&[NamedLine]> {
        self.get(id)
    }
}

/// Some names of a [`FrameNames`], copied out of it.
#[derive(Debug, Default)]
pub struct NameSubset(HashMap<u64, Arc<[NamedLine]>>);

impl NameLookup for NameSubset {
    fn lines(&self, id: u64) -> Option<&[NamedLine]> {
        self.0.get(&id).map(|l| &l[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(function: &str, line: u32) -> NamedLine {
        NamedLine {
            runtime: 1,
            function: Arc::from(function),
            file: Arc::from("app.py"),
            line,
            start_line: 3,
        }
    }

    #[test]
    fn a_new_generation_does_not_name_old_ids() {
        let mut names = FrameNames::default();
        let old = names.intern(&[line("a", 4)]);
        for i in 0..=MAX_NAMES as u32 {
            names.intern(&[line("b", i)]);
        }
        names.trim();
        assert!(names.is_empty());
        let new = names.intern(&[line("c", 1)]);
        assert!(
            names.get(old).is_none(),
            "an ID of the old table names nothing"
        );
        assert_eq!(names.get(new).map(|l| &*l[0].function), Some("c"));
    }

    #[test]
    fn lists_are_interned_once_and_trimmed_only_when_too_many() {
        let mut names = FrameNames::default();
        let a = names.intern(&[line("a", 4)]);
        let inlined = names.intern(&[line("leaf", 9), line("a", 4)]);
        assert_ne!(a, inlined);
        assert_eq!(names.intern(&[line("a", 4)]), a);
        assert_ne!(
            names.intern(&[line("a", 5)]),
            a,
            "another line is another entry"
        );
        assert_eq!(names.get(inlined).map(<[NamedLine]>::len), Some(2));
        assert_eq!(names.len(), 3);
        names.trim();
        assert_eq!(names.len(), 3, "a small table is kept");
        assert!(names.get(99).is_none());
        let subset = names.subset([a, 99]);
        assert_eq!(subset.lines(a).map(<[NamedLine]>::len), Some(1));
        assert!(subset.lines(inlined).is_none() && subset.lines(99).is_none());
    }
}
