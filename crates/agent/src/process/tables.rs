//! The stack-delta tables in the kernel: encoding a table into pages and entries, the range
//! allocator of the entries array, the shared rule array, and eviction of unused tables.
//!
//! Invariants: a loaded table's pages all point into its own allocated range; a table is
//! evicted only when no mapping uses it (`users == 0`); rule indexes are never reassigned
//! (the eBPF rule cache relies on it).

use std::collections::{BTreeMap, HashMap};

use ferroscope_ebpf_abi::{
    DELTA_PAGE_BITS, DeltaEntry, DeltaPage, DeltaPageKey, MAX_UNWIND_INFOS, UNWIND_FLAG_FP_SAVED,
    UnwindInfoRaw,
};
use ferroscope_unwind_native::{StackDeltaTable, UnwindInfo};

use super::FileId;
use super::backend::UnwindBackend;

/// First-fit allocator of index ranges in the entries array, with a free list that merges
/// neighbours.
#[derive(Debug)]
pub struct RangeAllocator {
    free: BTreeMap<u32, u32>, // start -> len
    used: u64,
    capacity: u32,
}

impl RangeAllocator {
    /// All of `0..capacity` free.
    pub fn new(capacity: u32) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        RangeAllocator {
            free,
            used: 0,
            capacity,
        }
    }

    /// A range of `len` entries, or `None` when no free range is long enough.
    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return Some(0);
        }
        let (&start, &free_len) = self.free.iter().find(|&(_, &l)| l >= len)?;
        self.free.remove(&start);
        if free_len > len {
            self.free.insert(start + len, free_len - len);
        }
        self.used += u64::from(len);
        Some(start)
    }

    /// Returns a range from [`RangeAllocator::alloc`].
    pub fn free(&mut self, start: u32, len: u32) {
        if len == 0 {
            return;
        }
        self.used -= u64::from(len);
        let (mut start, mut len) = (start, len);
        if let Some((&prev, &prev_len)) = self.free.range(..start).next_back()
            && prev + prev_len == start
        {
            self.free.remove(&prev);
            start = prev;
            len += prev_len;
        }
        if let Some(&next_len) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += next_len;
        }
        self.free.insert(start, len);
    }

    /// Entries allocated.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Size of the array.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// A table encoded for the eBPF maps: entries grouped into pages, each page starting with
/// an entry at offset 0.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EncodedTable {
    /// `(page number, index of its first entry in entries, entry count)`.
    pub pages: Vec<(u64, u32, u32)>,
    /// Entries, `info_index` already global.
    pub entries: Vec<DeltaEntry>,
}

/// The eBPF form of a rule.
pub fn raw_info(info: &UnwindInfo) -> UnwindInfoRaw {
    UnwindInfoRaw {
        kind: info.kind as u8,
        flags: if info.fp_offset.is_some() {
            UNWIND_FLAG_FP_SAVED
        } else {
            0
        },
        reserved: 0,
        cfa_offset: info.cfa_offset,
        fp_offset: info.fp_offset.unwrap_or(0),
        reserved2: 0,
    }
}

/// Splits a table into 64 KiB pages. `index_of` gives each rule's global index. Pages in
/// which only an Invalid rule is in effect are left out (the unwinder reports "no table
/// page", which ends the stack just the same).
pub fn encode_table(
    table: &StackDeltaTable,
    mut index_of: impl FnMut(&UnwindInfo) -> Option<u16>,
) -> Option<EncodedTable> {
    let page_size = 1u64 << DELTA_PAGE_BITS;
    let mut out = EncodedTable::default();
    let invalid = ferroscope_unwind_native::Kind::Invalid;
    let deltas = &table.deltas;
    let mut i = 0;
    while i < deltas.len() {
        let page = deltas[i].address >> DELTA_PAGE_BITS;
        let first = out.entries.len() as u32;
        // The rule in effect where the page starts, unless a delta starts exactly there.
        if deltas[i].address & (page_size - 1) != 0 {
            let carried = i
                .checked_sub(1)
                .map(|p| deltas[p].info)
                .unwrap_or(UnwindInfo::INVALID);
            out.entries.push(DeltaEntry {
                address_low: 0,
                info_index: index_of(&carried)?,
            });
        }
        while i < deltas.len() && deltas[i].address >> DELTA_PAGE_BITS == page {
            let low = (deltas[i].address & (page_size - 1)) as u16;
            out.entries.push(DeltaEntry {
                address_low: low,
                info_index: index_of(&deltas[i].info)?,
            });
            i += 1;
        }
        out.pages
            .push((page, first, out.entries.len() as u32 - first));
        // Whole pages until the next delta carry the last rule, unless it is Invalid.
        let last = deltas[i - 1].info;
        if last.kind != invalid {
            let next_page = deltas
                .get(i)
                .map(|d| d.address >> DELTA_PAGE_BITS)
                .unwrap_or(page + 1);
            let carried = index_of(&last)?;
            for p in page + 1..next_page {
                let first = out.entries.len() as u32;
                out.entries.push(DeltaEntry {
                    address_low: 0,
                    info_index: carried,
                });
                out.pages.push((p, first, 1));
            }
        }
    }
    Some(out)
}

#[derive(Debug)]
struct LoadedTable {
    pages: Vec<u64>,
    first: u32,
    len: u32,
    users: u32,
    last_used: u64,
}

/// Why a table was not loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotLoaded {
    /// It will never fit or encode (cache the failure).
    Permanent,
    /// Every table in the array is in use now; try again later.
    Full,
}

/// Every table loaded into the kernel, shared by the processes mapping each file.
#[derive(Debug)]
pub(crate) struct TableStore {
    tables: HashMap<FileId, LoadedTable>,
    infos: HashMap<UnwindInfoRaw, u16>,
    allocator: Option<RangeAllocator>,
    max_entries: u64,
    clock: u64,
    pages: u64,
    pub(crate) evicted: u64,
}

impl TableStore {
    pub(crate) fn new(max_entries: u64) -> TableStore {
        TableStore {
            tables: HashMap::new(),
            infos: HashMap::new(),
            allocator: None,
            max_entries,
            clock: 0,
            pages: 0,
            evicted: 0,
        }
    }

    /// Whether `id`'s table is loaded; marks it used now.
    pub(crate) fn touch(&mut self, id: FileId) -> bool {
        self.clock += 1;
        match self.tables.get_mut(&id) {
            Some(t) => {
                t.last_used = self.clock;
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, id: FileId) -> bool {
        self.tables.contains_key(&id)
    }

    /// One more mapping uses `id`'s table.
    pub(crate) fn add_user(&mut self, id: FileId) {
        if let Some(t) = self.tables.get_mut(&id) {
            t.users += 1;
        }
    }

    /// One mapping less uses `id`'s table.
    pub(crate) fn remove_user(&mut self, id: FileId) {
        if let Some(t) = self.tables.get_mut(&id) {
            t.users = t.users.saturating_sub(1);
        }
    }

    pub(crate) fn loaded(&self) -> usize {
        self.tables.len()
    }

    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    pub(crate) fn infos(&self) -> usize {
        self.infos.len()
    }

    /// Entries of tables some mapping uses (the rest can be evicted).
    pub(crate) fn entries_in_use(&self) -> u64 {
        self.tables
            .values()
            .filter(|t| t.users > 0)
            .map(|t| u64::from(t.len))
            .sum()
    }

    pub(crate) fn entries_used(&self) -> u64 {
        self.allocator.as_ref().map_or(0, RangeAllocator::used)
    }

    pub(crate) fn entries_capacity(&self) -> u64 {
        self.allocator
            .as_ref()
            .map_or(0, |a| u64::from(a.capacity()))
    }

    fn info_index(&mut self, maps: &mut dyn UnwindBackend, info: &UnwindInfo) -> Option<u16> {
        let raw = raw_info(info);
        if let Some(&i) = self.infos.get(&raw) {
            return Some(i);
        }
        if self.infos.len() >= MAX_UNWIND_INFOS {
            return None;
        }
        let index = self.infos.len() as u16;
        if let Err(e) = maps.set_info(u32::from(index), raw) {
            tracing::warn!("cannot load an unwind rule into eBPF: {e}");
            return None;
        }
        self.infos.insert(raw, index);
        Some(index)
    }

    /// Encodes and writes a table; `path` names it in messages.
    pub(crate) fn load(
        &mut self,
        maps: &mut dyn UnwindBackend,
        id: FileId,
        path: &str,
        table: &StackDeltaTable,
    ) -> Result<(), NotLoaded> {
        let Some(encoded) = encode_table(table, |info| self.info_index(maps, info)) else {
            tracing::warn!(
                path,
                "more than 65536 distinct unwind rules are loaded: this file's table was not, so \
                 its frames end the stack"
            );
            return Err(NotLoaded::Permanent);
        };
        let len = u32::try_from(encoded.entries.len()).map_err(|_| NotLoaded::Permanent)?;
        let capacity = maps.entries_capacity();
        if len > capacity {
            tracing::warn!(
                path,
                entries = len,
                capacity,
                "this file's unwind table has more entries than the whole stack-delta array: its \
                 frames end the stack (raise the array's size)"
            );
            return Err(NotLoaded::Permanent);
        }
        self.allocator
            .get_or_insert_with(|| RangeAllocator::new(capacity));
        // Make room: the budget first, then whatever the array needs.
        while self
            .allocator
            .as_ref()
            .is_some_and(|a| a.used() + u64::from(len) > self.max_entries)
        {
            if !self.evict_one(maps) {
                break;
            }
        }
        let first = loop {
            if let Some(first) = self.allocator.as_mut().and_then(|a| a.alloc(len)) {
                break first;
            }
            if !self.evict_one(maps) {
                tracing::debug!(
                    path,
                    entries = len,
                    used = self.entries_used(),
                    capacity,
                    "the stack-delta array is full of tables in use"
                );
                return Err(NotLoaded::Full);
            }
        };
        let free = |s: &mut Self| {
            if let Some(a) = s.allocator.as_mut() {
                a.free(first, len);
            }
        };
        if let Err(e) = maps.write_entries(first, &encoded.entries) {
            tracing::warn!(path, "cannot write a table into eBPF: {e}");
            free(self);
            return Err(NotLoaded::Permanent);
        }
        let mut pages = Vec::with_capacity(encoded.pages.len());
        for &(page, start, count) in &encoded.pages {
            let key = DeltaPageKey {
                file_id: id.0,
                page,
            };
            match maps.insert_page(
                key,
                DeltaPage {
                    first: first + start,
                    count,
                },
            ) {
                Ok(()) => pages.push(page),
                Err(e) => {
                    tracing::warn!(
                        path,
                        "cannot publish a table page (fs_delta_pages full?): {e}"
                    );
                    break;
                }
            }
        }
        if pages.len() < encoded.pages.len() {
            for page in &pages {
                let _ = maps.remove_page(&DeltaPageKey {
                    file_id: id.0,
                    page: *page,
                });
            }
            free(self);
            return Err(NotLoaded::Full);
        }
        self.pages += pages.len() as u64;
        self.clock += 1;
        self.tables.insert(
            id,
            LoadedTable {
                pages,
                first,
                len,
                users: 0,
                last_used: self.clock,
            },
        );
        Ok(())
    }

    /// Evicts unused tables while more entries than the budget are loaded.
    pub(crate) fn evict_over_budget(&mut self, maps: &mut dyn UnwindBackend) {
        while self
            .allocator
            .as_ref()
            .is_some_and(|a| a.used() > self.max_entries)
        {
            if !self.evict_one(maps) {
                break;
            }
        }
    }

    /// Unloads the least recently used table no mapping uses; false when there is none.
    fn evict_one(&mut self, maps: &mut dyn UnwindBackend) -> bool {
        let Some((&id, _)) = self
            .tables
            .iter()
            .filter(|(_, t)| t.users == 0)
            .min_by_key(|(_, t)| t.last_used)
        else {
            return false;
        };
        let t = self.tables.remove(&id).expect("present");
        for page in &t.pages {
            let _ = maps.remove_page(&DeltaPageKey {
                file_id: id.0,
                page: *page,
            });
        }
        self.pages = self.pages.saturating_sub(t.pages.len() as u64);
        if let Some(a) = self.allocator.as_mut() {
            a.free(t.first, t.len);
        }
        self.evicted += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::backend::FakeMaps;
    use ferroscope_unwind_native::{Kind, StackDelta};

    fn table(rows: &[(u64, UnwindInfo)]) -> StackDeltaTable {
        StackDeltaTable {
            deltas: rows
                .iter()
                .map(|&(address, info)| StackDelta { address, info })
                .collect(),
        }
    }

    #[test]
    fn allocator_reuses_and_merges_freed_ranges() {
        let mut a = RangeAllocator::new(100);
        let x = a.alloc(40).unwrap();
        let y = a.alloc(40).unwrap();
        assert_eq!((x, y), (0, 40));
        assert!(a.alloc(30).is_none());
        a.free(x, 40);
        a.free(y, 40);
        assert_eq!(a.used(), 0);
        assert_eq!(
            a.alloc(100),
            Some(0),
            "the three free ranges merged back into one"
        );
    }

    #[test]
    fn every_address_finds_the_same_rule_as_the_table() {
        let sp8 = UnwindInfo::sp(8, None);
        let sp16 = UnwindInfo::sp(16, Some(-16));
        let fp = UnwindInfo::fp(16, Some(-16));
        // Rules crossing page boundaries, a page with no delta inside, an Invalid gap, a
        // delta exactly at a page start.
        let t = table(&[
            (0x40_fff0, sp8),
            (0x40_fff1, sp16),
            (0x41_0004, fp),
            (0x43_0010, sp8),
            (0x43_0020, UnwindInfo::INVALID),
            (0x45_0000, sp8),
            (0x45_0100, UnwindInfo::STOP),
            (0x45_0110, UnwindInfo::INVALID),
        ]);
        let mut maps = FakeMaps::new(1000);
        let mut store = TableStore::new(u64::MAX);
        let id = FileId(7);
        assert_eq!(store.load(&mut maps, id, "t", &t), Ok(()));
        for vaddr in (0x40_ff00..0x45_0200u64)
            .step_by(7)
            .chain([0x40_fff0, 0x41_0000, 0x42_0000, 0x45_0000])
        {
            let expected = t
                .lookup(vaddr)
                .filter(|i| i.kind != Kind::Invalid)
                .map(raw_info);
            let got = maps
                .lookup(id, vaddr)
                .filter(|i| i.kind != Kind::Invalid as u8);
            assert_eq!(got, expected, "rule at {vaddr:#x}");
        }
        // Pages 0x41 and 0x42 exist (0x42 is carried whole); 0x44 is all Invalid: no page.
        assert!(maps.pages.contains_key(&DeltaPageKey {
            file_id: 7,
            page: 0x42
        }));
        assert!(!maps.pages.contains_key(&DeltaPageKey {
            file_id: 7,
            page: 0x44
        }));
        assert_eq!(store.infos(), 5, "rules are shared, not repeated");
    }

    #[test]
    fn unused_tables_are_evicted_least_recently_used_first_when_full() {
        let sp8 = UnwindInfo::sp(8, None);
        let small = table(&[(0x1000, sp8), (0x1010, UnwindInfo::INVALID)]);
        let mut maps = FakeMaps::new(10);
        let mut store = TableStore::new(9);
        for id in 1..=3 {
            assert_eq!(
                store.load(&mut maps, FileId(id), "t", &small),
                Ok(()),
                "table {id}"
            );
        }
        assert_eq!(store.loaded(), 3);
        store.add_user(FileId(1));
        assert_eq!(store.load(&mut maps, FileId(4), "t", &small), Ok(()));
        assert!(store.contains(FileId(1)), "in use: kept");
        assert!(
            !store.contains(FileId(2)),
            "least recently used unused table evicted"
        );
        assert!(
            !maps.pages.keys().any(|k| k.file_id == 2),
            "its pages were withdrawn"
        );
        assert_eq!(store.evicted, 1);
    }

    #[test]
    fn a_table_larger_than_the_array_is_refused_for_good_and_one_that_waits_is_not() {
        let sp8 = UnwindInfo::sp(8, None);
        let rows: Vec<(u64, UnwindInfo)> = (0..40u64).map(|i| (0x1000 + 16 * i, sp8)).collect();
        let big = table(&rows);
        let mut maps = FakeMaps::new(10);
        let mut store = TableStore::new(u64::MAX);
        assert_eq!(
            store.load(&mut maps, FileId(1), "big", &big),
            Err(NotLoaded::Permanent)
        );
        let small = table(&[(0x1000, sp8), (0x1010, UnwindInfo::INVALID)]);
        // Three entries each (the carried rule at the page start, two deltas): three fit.
        for id in 2..=4 {
            assert_eq!(store.load(&mut maps, FileId(id), "s", &small), Ok(()));
            store.add_user(FileId(id));
        }
        assert_eq!(
            store.load(&mut maps, FileId(5), "s", &small),
            Err(NotLoaded::Full),
            "every table in use: try again later"
        );
    }
}
