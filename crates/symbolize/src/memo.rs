//! The per-file memo of resolved addresses: a profiler symbolizes the same addresses every
//! collect interval, and a memo hit skips the symbol-table, DWARF and demangling work.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use lru::LruCache;

use crate::demangle::{DemangleMode, demangle};
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

/// A bounded memo from ELF virtual address to the resolved result, least recently used
/// first out, with frequency-based admission once full (TinyLFU).
///
/// Why admission: a profiler asks for its hot addresses every collect interval, while a long
/// tail of addresses seen once or rarely streams through. A plain LRU lets that tail evict the
/// hot entries, and when the addresses of an interval outnumber the memo and come back in a
/// similar order, an LRU evicts exactly the entry needed next and never hits. So, once the
/// memo is full, a new address takes the least recently used entry's place only if it has
/// been asked for more often recently than that entry (a compact count-min sketch of recent
/// lookups, halved periodically so that old popularity fades); otherwise it is answered but
/// not kept. A working set larger than the memo then keeps a stable resident part (hit rate
/// about capacity / working set instead of about zero), and a hot address recurring every
/// interval outranks a one-off and stays. While the memo is not full every result is kept.
#[derive(Debug)]
pub(crate) struct AddrMemo {
    key: Option<MemoKey>,
    map: LruCache<u64, Resolved>,
    sketch: Sketch,
    bytes: usize,
}

impl AddrMemo {
    pub(crate) fn new() -> AddrMemo {
        AddrMemo {
            key: None,
            map: LruCache::unbounded(),
            sketch: Sketch::default(),
            bytes: 0,
        }
    }

    /// Empties the memo if it was filled under other settings.
    fn check_key(&mut self, key: MemoKey) {
        if self.key != Some(key) {
            self.map.clear();
            self.sketch = Sketch::default();
            self.bytes = 0;
            self.key = Some(key);
        }
    }

    /// The result for `vaddr`, if kept (a hit is counted for admission; a miss is counted by
    /// the [`AddrMemo::insert`] that follows it).
    pub(crate) fn get(&mut self, key: MemoKey, capacity: usize, vaddr: u64) -> Option<&Resolved> {
        self.check_key(key);
        let len = self.map.len();
        let found = self.map.get(&vaddr);
        if found.is_some() {
            self.sketch.record(vaddr, capacity, len);
        }
        found
    }

    /// Offers `r` for `vaddr` after a miss: kept while there is room; when full, kept in the
    /// least recently used entry's place only if `vaddr` was asked for more often before this
    /// lookup than that entry was (comparing before counting this lookup keeps the decision
    /// the same for every address of a cycle, whenever the counters are halved). Returns
    /// whether [`AddrMemo::approx_bytes`] changed.
    pub(crate) fn insert(
        &mut self,
        key: MemoKey,
        capacity: usize,
        vaddr: u64,
        r: Resolved,
    ) -> bool {
        let before = self.approx_bytes();
        self.admit(key, capacity, vaddr, r);
        self.approx_bytes() != before
    }

    fn admit(&mut self, key: MemoKey, capacity: usize, vaddr: u64, r: Resolved) {
        self.check_key(key);
        if capacity == 0 {
            return;
        }
        while self.map.len() > capacity {
            // The capacity shrank (a memo is never shared between settings, but stay sound).
            self.evict_lru();
        }
        let admit = if self.map.len() < capacity || self.map.contains(&vaddr) {
            true
        } else {
            match self.map.peek_lru() {
                Some((&victim, _)) => {
                    let wins = self.sketch.estimate(vaddr) > self.sketch.estimate(victim);
                    if !wins {
                        // A second chance, as CLOCK gives: the victim that won goes to the
                        // most recently used end, so the next newcomer meets another entry
                        // (one over-counted entry must not block admission forever).
                        self.map.promote(&victim);
                    }
                    wins
                }
                None => false,
            }
        };
        self.sketch.record(vaddr, capacity, self.map.len());
        if !admit {
            return;
        }
        if self.map.len() >= capacity && !self.map.contains(&vaddr) {
            self.evict_lru();
        }
        self.bytes += entry_bytes(&r);
        if let Some(old) = self.map.put(vaddr, r) {
            self.bytes -= entry_bytes(&old).min(self.bytes);
        }
    }

    fn evict_lru(&mut self) {
        if let Some((_, old)) = self.map.pop_lru() {
            self.bytes -= entry_bytes(&old).min(self.bytes);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Approximate bytes held (shared strings not counted), rounded down to a coarse step.
    pub(crate) fn approx_bytes(&self) -> usize {
        (self.bytes + self.sketch.table.len()) / BYTES_STEP * BYTES_STEP
    }
}

/// Counters per memo entry of capacity, as TinyLFU's (a power of two at most this many times
/// the capacity; 4-bit counters, so half as many bytes).
const SKETCH_SLOTS_PER_ENTRY: usize = 16;
/// Smallest sketch, in counters.
const SKETCH_MIN_SLOTS: usize = 512;
/// Counters saturate here (4 bits).
const SKETCH_MAX_COUNT: u8 = 15;
/// Lookups recorded, per entry of capacity, before every counter is halved.
const SKETCH_SAMPLE_PER_ENTRY: usize = 10;

/// A count-min sketch of recent lookups with 4-bit counters, two per byte: each address
/// increments the smallest of its four counters (conservative update), and its estimate is
/// the smallest of the four. Starts small and doubles with the memo's entries, up to
/// `SKETCH_SLOTS_PER_ENTRY × capacity` counters; doubling copies each counter into both
/// halves, so estimates stay upper bounds.
#[derive(Debug, Default)]
struct Sketch {
    /// Counter `i` is the nibble `i % 2` of byte `i / 2`.
    table: Vec<u8>,
    /// Increments since the last halving.
    additions: usize,
}

impl Sketch {
    fn slot_count(&self) -> usize {
        self.table.len() * 2
    }

    /// The four counter indices of `vaddr` (double hashing over a power-of-two table).
    fn slots(&self, vaddr: u64) -> [usize; 4] {
        let mask = self.slot_count() as u64 - 1;
        let h1 = mix64(vaddr);
        let h2 = mix64(h1) | 1;
        std::array::from_fn(|k| (h1.wrapping_add((k as u64).wrapping_mul(h2)) & mask) as usize)
    }

    fn counter(&self, i: usize) -> u8 {
        (self.table[i / 2] >> ((i % 2) * 4)) & 0xf
    }

    fn estimate(&self, vaddr: u64) -> u8 {
        if self.table.is_empty() {
            return 0;
        }
        self.slots(vaddr)
            .into_iter()
            .map(|i| self.counter(i))
            .min()
            .unwrap_or(0)
    }

    /// Counts one lookup of `vaddr`; `capacity` and `len` are the memo's bound and entries,
    /// which size the sketch.
    fn record(&mut self, vaddr: u64, capacity: usize, len: usize) {
        if capacity == 0 {
            return;
        }
        let max_slots = capacity
            .saturating_mul(SKETCH_SLOTS_PER_ENTRY)
            .next_power_of_two()
            .max(SKETCH_MIN_SLOTS);
        if self.table.is_empty() {
            self.table = vec![0; SKETCH_MIN_SLOTS / 2];
        }
        while len.saturating_mul(SKETCH_SLOTS_PER_ENTRY) > self.slot_count()
            && self.slot_count() < max_slots
        {
            // More entries than the table serves well: double it. Counter `i` lands at `i`
            // and `i + old count`, i.e. byte `i / 2` and `i / 2 + old bytes`.
            self.table.extend_from_within(..);
        }
        let slots = self.slots(vaddr);
        let min = slots.iter().map(|&i| self.counter(i)).min().unwrap_or(0);
        if min < SKETCH_MAX_COUNT {
            for i in slots {
                if self.counter(i) == min {
                    self.table[i / 2] += 1 << ((i % 2) * 4);
                }
            }
        }
        self.additions += 1;
        if self.additions
            >= capacity
                .saturating_mul(SKETCH_SAMPLE_PER_ENTRY)
                .max(SKETCH_MIN_SLOTS)
        {
            for b in &mut self.table {
                *b = (*b >> 1) & 0x77;
            }
            self.additions /= 2;
        }
    }
}

/// A 64-bit mixer (splitmix64's finalizer).
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn entry_bytes(r: &Resolved) -> usize {
    ENTRY_BYTES + r.frames.len() * FRAME_BYTES
}

/// Most entries of each table of a [`NameCache`]; a table that fills up is emptied (entries
/// already handed out stay valid). A file has as many names as functions, so only a huge
/// file reaches it.
const NAME_CACHE_ENTRIES: usize = 1 << 20;
/// Approximate bytes of one name-cache entry beyond its string (hash-table slot, `Arc` header).
const NAME_ENTRY_BYTES: usize = 48;

/// The demangled names and file names of one file, each made once and then shared by every
/// frame that refers to it, so that a lookup neither demangles nor copies a string it has seen
/// before (a profile names the same functions over and over, at many addresses).
///
/// Names borrowed from the file's own immutable tables (DWARF sections, symbol tables) are
/// keyed by the address and length of their bytes: those bytes live, unchanged, as long as
/// the file's [`FileSymbols`](crate::source::FileSymbols), and so does this cache. The key is
/// only compared, never dereferenced. Other names (the Go table's) are keyed by content.
#[derive(Debug, Default)]
pub(crate) struct NameCache {
    mode: Option<DemangleMode>,
    by_addr: HashMap<(usize, usize), Arc<str>, BuildHasherDefault<AddrHasher>>,
    by_text: HashMap<Box<str>, Arc<str>>,
    files: HashSet<Arc<str>>,
    /// The same names by address and length of the caller's copy (addr2line keeps one copy
    /// per compilation unit, so one name has many): spares hashing the path. An entry is used
    /// only if its content is equal, so a reused address can never give another file's name.
    files_at: HashMap<(usize, usize), Arc<str>, BuildHasherDefault<AddrHasher>>,
    bytes: usize,
}

/// A multiplicative hasher for the integer keys of [`NameCache::by_addr`]: addresses of
/// names inside this process's own maps, which no input can choose, so a fast non-keyed hash
/// is safe.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        mix64(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

impl NameCache {
    /// Empties the cache if it was filled under another demangling mode.
    fn check_mode(&mut self, mode: DemangleMode) {
        if self.mode != Some(mode) {
            self.by_addr.clear();
            self.by_text.clear();
            self.bytes = self
                .files
                .iter()
                .map(|f| NAME_ENTRY_BYTES + f.len())
                .sum::<usize>()
                + self.files_at.len() * NAME_ENTRY_BYTES;
            self.mode = Some(mode);
        }
    }

    /// The demangled form of `raw`, whose bytes live as long as this cache (see above).
    pub(crate) fn name_at(&mut self, mode: DemangleMode, raw: &[u8]) -> Arc<str> {
        self.check_mode(mode);
        let key = (raw.as_ptr() as usize, raw.len());
        if let Some(n) = self.by_addr.get(&key) {
            return n.clone();
        }
        let n: Arc<str> = demangle(&String::from_utf8_lossy(raw), mode).into();
        if self.by_addr.len() >= NAME_CACHE_ENTRIES {
            self.bytes -= self
                .by_addr
                .values()
                .map(|v| NAME_ENTRY_BYTES + v.len())
                .sum::<usize>()
                .min(self.bytes);
            self.by_addr.clear();
        }
        self.bytes += NAME_ENTRY_BYTES + n.len();
        self.by_addr.insert(key, n.clone());
        n
    }

    /// The demangled form of `raw` (any string, keyed by content).
    pub(crate) fn name(&mut self, mode: DemangleMode, raw: &str) -> Arc<str> {
        self.check_mode(mode);
        if let Some(n) = self.by_text.get(raw) {
            return n.clone();
        }
        let n: Arc<str> = demangle(raw, mode).into();
        if self.by_text.len() >= NAME_CACHE_ENTRIES {
            self.bytes -= self
                .by_text
                .iter()
                .map(|(k, v)| NAME_ENTRY_BYTES + k.len() + v.len())
                .sum::<usize>()
                .min(self.bytes);
            self.by_text.clear();
        }
        self.bytes += NAME_ENTRY_BYTES + raw.len() + n.len();
        self.by_text.insert(raw.into(), n.clone());
        n
    }

    /// One shared copy of the file name `f`.
    pub(crate) fn file(&mut self, f: &str) -> Arc<str> {
        let key = (f.as_ptr() as usize, f.len());
        if let Some(name) = self.files_at.get(&key)
            && **name == *f
        {
            return name.clone();
        }
        let name = match self.files.get(f) {
            Some(a) => a.clone(),
            None => {
                if self.files.len() >= NAME_CACHE_ENTRIES {
                    self.bytes -= self
                        .files
                        .iter()
                        .map(|v| NAME_ENTRY_BYTES + v.len())
                        .sum::<usize>()
                        .min(self.bytes);
                    self.files.clear();
                }
                let a: Arc<str> = f.into();
                self.bytes += NAME_ENTRY_BYTES + a.len();
                self.files.insert(a.clone());
                a
            }
        };
        if self.files_at.len() >= NAME_CACHE_ENTRIES {
            self.bytes -= (self.files_at.len() * NAME_ENTRY_BYTES).min(self.bytes);
            self.files_at.clear();
        }
        if self.files_at.insert(key, name.clone()).is_none() {
            self.bytes += NAME_ENTRY_BYTES;
        }
        name
    }

    /// Approximate bytes held, rounded down to a coarse step.
    pub(crate) fn approx_bytes(&self) -> usize {
        self.bytes / BYTES_STEP * BYTES_STEP
    }
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
        assert!(m.get(key(DemangleMode::Full), 10, 0x1000).is_some());
        assert!(m.get(key(DemangleMode::None), 10, 0x1000).is_none());
        assert!(m.get(key(DemangleMode::Full), 10, 0x1000).is_none());
    }

    /// One lookup as the symbolizer does it: get, and on a miss, insert.
    fn ask(m: &mut AddrMemo, cap: usize, a: u64) -> bool {
        let k = key(DemangleMode::Full);
        if m.get(k, cap, a).is_some() {
            return true;
        }
        m.insert(k, cap, a, resolved("f"));
        false
    }

    #[test]
    fn bounded_and_zero_is_off() {
        let mut m = AddrMemo::new();
        for a in 0..1000 {
            ask(&mut m, 100, a);
            assert!(m.len() <= 100);
        }
        assert_eq!(m.len(), 100);
        let k = key(DemangleMode::Full);
        let mut off = AddrMemo::new();
        off.insert(k, 0, 1, resolved("f"));
        assert_eq!(off.len(), 0);
        assert!(off.get(k, 0, 1).is_none());
        assert_eq!(off.sketch.table.len(), 0);
    }

    #[test]
    fn a_one_pass_scan_keeps_most_entries_and_a_recurring_address_gets_in() {
        let mut m = AddrMemo::new();
        for a in 0..1000 {
            ask(&mut m, 1000, a);
        }
        // Addresses seen once do not displace entries seen as often (an LRU would keep none
        // of the first 1,000); the sketch is approximate, so a few get in by collision.
        for a in 1_000_000..1_001_000 {
            ask(&mut m, 1000, a);
        }
        let kept = (0..1000).filter(|a| m.map.contains(a)).count();
        assert!(kept >= 700, "{kept} of 1000 kept");
        // An address asked for again outranks the least recently used entry.
        for _ in 0..3 {
            ask(&mut m, 1000, 5_000_000);
        }
        assert!(ask(&mut m, 1000, 5_000_000));
        assert_eq!(m.len(), 1000);
    }

    #[test]
    fn a_cycle_larger_than_the_memo_keeps_hitting() {
        // 1,500 addresses replayed in the same order through 1,000 entries: an LRU never hits.
        let mut m = AddrMemo::new();
        let cycle: Vec<u64> = (0..1500u64).map(|i| mix64(i) >> 16).collect();
        for &a in &cycle {
            ask(&mut m, 1000, a);
        }
        for round in 0..20 {
            let hits = cycle.iter().filter(|&&a| ask(&mut m, 1000, a)).count();
            assert!(hits >= 950, "round {round}: {hits} hits of 1500");
        }
    }

    #[test]
    fn hot_addresses_survive_a_long_tail() {
        let mut m = AddrMemo::new();
        let hot: Vec<u64> = (0..50).collect();
        let mut tail = 1_000_000u64;
        for _ in 0..200 {
            // Each interval: the hot addresses, then a tail of new ones larger than the memo.
            for &a in &hot {
                ask(&mut m, 100, a);
            }
            for _ in 0..300 {
                ask(&mut m, 100, tail);
                tail += 1;
            }
        }
        let hits = hot.iter().filter(|&&a| ask(&mut m, 100, a)).count();
        assert_eq!(hits, hot.len());
    }

    #[test]
    fn old_popularity_fades() {
        // A hot set, then a new hot set: the sketch's halving lets the new one take over.
        let mut m = AddrMemo::new();
        for _ in 0..20 {
            for a in 0..100 {
                ask(&mut m, 100, a);
            }
        }
        for _ in 0..60 {
            for a in 1000..1100 {
                ask(&mut m, 100, a);
            }
        }
        let hits = (1000..1100).filter(|&a| ask(&mut m, 100, a)).count();
        assert!(hits >= 90, "{hits} of 100");
    }

    #[test]
    fn sketch_estimates_are_upper_bounds_across_growth_and_packing() {
        let mut sk = Sketch::default();
        let addrs: Vec<u64> = (0..3000u64).map(|i| mix64(i) >> 12).collect();
        for (n, &a) in addrs.iter().enumerate() {
            // Address `i` is recorded `i % 7` times; the table grows as `len` does.
            for _ in 0..n % 7 {
                sk.record(a, 1 << 20, n);
            }
        }
        assert!(sk.slot_count() > SKETCH_MIN_SLOTS);
        for (n, &a) in addrs.iter().enumerate() {
            assert!(sk.estimate(a) >= (n % 7) as u8, "address {n}");
        }
    }
}
