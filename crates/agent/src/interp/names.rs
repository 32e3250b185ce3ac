//! The session's table of named runtime frames: each distinct list of names that one
//! recorded frame became (a method and the methods inlined into it) gets an ID, which is
//! what a [`Frame::Named`](ferroscope_unwind_api::Frame::Named) holds.

use std::collections::HashMap;
use std::sync::Arc;

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
#[derive(Debug, Default)]
pub struct FrameNames {
    ids: HashMap<Arc<[NamedLine]>, u64>,
    names: Vec<Arc<[NamedLine]>>,
}

/// More distinct names than this and the table starts over at the next round boundary.
const MAX_NAMES: usize = 1 << 20;

impl FrameNames {
    /// The ID of a list of frames, adding it if new.
    pub fn intern(&mut self, lines: &[NamedLine]) -> u64 {
        if let Some(&id) = self.ids.get(lines) {
            return id;
        }
        let id = self.names.len() as u64;
        let lines: Arc<[NamedLine]> = Arc::from(lines);
        self.names.push(Arc::clone(&lines));
        self.ids.insert(lines, id);
        id
    }

    /// The frames with this ID, innermost first.
    pub fn get(&self, id: u64) -> Option<&[NamedLine]> {
        self.names.get(usize::try_from(id).ok()?).map(|l| &l[..])
    }

    /// Distinct entries.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether nothing was interned.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Forgets every name when there are too many; call only when no trace refers to them
    /// (after a round's profiles were built).
    pub fn trim(&mut self) {
        if self.names.len() > MAX_NAMES {
            self.ids.clear();
            self.names.clear();
        }
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
    }
}
