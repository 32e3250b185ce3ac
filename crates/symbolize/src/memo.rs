//! The per-file memo of resolved addresses: a profiler symbolizes the same addresses every
//! collect interval, and a memo hit skips the symbol-table, DWARF and demangling work.

use std::sync::Arc;

use lru::LruCache;

use crate::demangle::DemangleMode;
use crate::source::NameSource;

/// One frame of a memoized result; strings are shared with other entries.
#[derive(Debug, Clone)]
pub(crate) struct MemoFrame {
    pub function: Option<Arc<str>>,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
}

/// What a lookup of one ELF address resolved to.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// Innermost first; the last is the physical function. Empty when nothing was found.
    pub frames: Box<[MemoFrame]>,
    pub source: Option<NameSource>,
}

/// The settings that shape a result: a memo filled under one set is never read under another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoKey {
    pub demangle: DemangleMode,
    pub inline_frames: bool,
    pub dwarf: bool,
    pub debug_files: bool,
}

/// Approximate bytes of one entry beyond its shared strings (LRU node, key, frames).
const ENTRY_BYTES: usize = 96;
const FRAME_BYTES: usize = std::mem::size_of::<MemoFrame>();
/// `approx_bytes` moves in steps this large, so the cache accounting is not redone per entry.
const BYTES_STEP: usize = 256 << 10;

/// A bounded LRU from ELF virtual address to the resolved result.
#[derive(Debug)]
pub(crate) struct AddrMemo {
    key: Option<MemoKey>,
    map: LruCache<u64, Resolved>,
    bytes: usize,
}

impl AddrMemo {
    pub(crate) fn new() -> AddrMemo {
        AddrMemo {
            key: None,
            map: LruCache::unbounded(),
            bytes: 0,
        }
    }

    /// Empties the memo if it was filled under other settings.
    fn check_key(&mut self, key: MemoKey) {
        if self.key != Some(key) {
            self.map.clear();
            self.bytes = 0;
            self.key = Some(key);
        }
    }

    pub(crate) fn get(&mut self, key: MemoKey, vaddr: u64) -> Option<&Resolved> {
        self.check_key(key);
        self.map.get(&vaddr)
    }

    /// Remembers `r` for `vaddr`, evicting the least recently used beyond `capacity` entries.
    pub(crate) fn insert(&mut self, key: MemoKey, capacity: usize, vaddr: u64, r: Resolved) {
        self.check_key(key);
        if capacity == 0 {
            return;
        }
        while self.map.len() >= capacity {
            match self.map.pop_lru() {
                Some((_, old)) => self.bytes -= entry_bytes(&old).min(self.bytes),
                None => break,
            }
        }
        self.bytes += entry_bytes(&r);
        if let Some(old) = self.map.put(vaddr, r) {
            self.bytes -= entry_bytes(&old).min(self.bytes);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Approximate bytes held (shared strings not counted), rounded down to a coarse step.
    pub(crate) fn approx_bytes(&self) -> usize {
        self.bytes / BYTES_STEP * BYTES_STEP
    }
}

fn entry_bytes(r: &Resolved) -> usize {
    ENTRY_BYTES + r.frames.len() * FRAME_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(demangle: DemangleMode) -> MemoKey {
        MemoKey {
            demangle,
            inline_frames: true,
            dwarf: true,
            debug_files: true,
        }
    }

    fn resolved(name: &str) -> Resolved {
        Resolved {
            frames: vec![MemoFrame {
                function: Some(name.into()),
                file: None,
                line: Some(1),
            }]
            .into(),
            source: None,
        }
    }

    #[test]
    fn other_settings_never_read_an_entry() {
        let mut m = AddrMemo::new();
        m.insert(key(DemangleMode::Full), 10, 0x1000, resolved("a"));
        assert!(m.get(key(DemangleMode::Full), 0x1000).is_some());
        assert!(m.get(key(DemangleMode::None), 0x1000).is_none());
        assert!(m.get(key(DemangleMode::Full), 0x1000).is_none());
    }

    #[test]
    fn bounded_lru_and_zero_is_off() {
        let mut m = AddrMemo::new();
        let k = key(DemangleMode::Full);
        for a in 0..1000 {
            m.insert(k, 100, a, resolved("f"));
            assert!(m.len() <= 100);
        }
        assert_eq!(m.len(), 100);
        assert!(m.get(k, 899).is_none());
        assert!(m.get(k, 999).is_some());
        let mut off = AddrMemo::new();
        off.insert(k, 0, 1, resolved("f"));
        assert_eq!(off.len(), 0);
    }
}
