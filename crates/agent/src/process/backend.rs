//! What the process manager writes into the kernel, behind a trait: the sampler's
//! [`UnwindMaps`] in a session, an in-memory fake (which answers lookups as the eBPF program
//! does) in unit tests.

use ferroscope_ebpf_abi::{DeltaEntry, DeltaPage, DeltaPageKey, PidMapping, UnwindInfoRaw};
use ferroscope_ebpf_programs::UnwindMaps;

pub(crate) type MapResult = Result<(), ferroscope_ebpf_programs::Error>;

/// The eBPF maps as the process manager writes them (see [`UnwindMaps`] for the meaning of
/// each operation).
pub trait UnwindBackend {
    /// Size of the entries array.
    fn entries_capacity(&self) -> u32;
    /// Writes entries at `first..`.
    fn write_entries(&mut self, first: u32, entries: &[DeltaEntry]) -> MapResult;
    /// Sets one rule.
    fn set_info(&mut self, index: u32, info: UnwindInfoRaw) -> MapResult;
    /// Publishes a page.
    fn insert_page(&mut self, key: DeltaPageKey, page: DeltaPage) -> MapResult;
    /// Withdraws a page.
    fn remove_page(&mut self, key: &DeltaPageKey) -> MapResult;
    /// Maps an address prefix of a process (or replaces what it maps).
    fn insert_mapping_prefix(
        &mut self,
        pid: u32,
        address: u64,
        prefix_len: u32,
        value: PidMapping,
    ) -> MapResult;
    /// Unmaps an address prefix.
    fn remove_mapping_prefix(&mut self, pid: u32, address: u64, prefix_len: u32) -> MapResult;
    /// Marks a process known.
    fn set_pid_known(&mut self, pid: u32) -> MapResult;
    /// Marks a process unknown.
    fn forget_pid(&mut self, pid: u32) -> MapResult;
}

impl UnwindBackend for UnwindMaps {
    fn entries_capacity(&self) -> u32 {
        UnwindMaps::entries_capacity(self)
    }
    fn write_entries(&mut self, first: u32, entries: &[DeltaEntry]) -> MapResult {
        UnwindMaps::write_entries(self, first, entries)
    }
    fn set_info(&mut self, index: u32, info: UnwindInfoRaw) -> MapResult {
        UnwindMaps::set_info(self, index, info)
    }
    fn insert_page(&mut self, key: DeltaPageKey, page: DeltaPage) -> MapResult {
        UnwindMaps::insert_page(self, key, page)
    }
    fn remove_page(&mut self, key: &DeltaPageKey) -> MapResult {
        UnwindMaps::remove_page(self, key)
    }
    fn insert_mapping_prefix(
        &mut self,
        pid: u32,
        address: u64,
        prefix_len: u32,
        value: PidMapping,
    ) -> MapResult {
        UnwindMaps::insert_mapping_prefix(self, pid, address, prefix_len, value)
    }
    fn remove_mapping_prefix(&mut self, pid: u32, address: u64, prefix_len: u32) -> MapResult {
        UnwindMaps::remove_mapping_prefix(self, pid, address, prefix_len)
    }
    fn set_pid_known(&mut self, pid: u32) -> MapResult {
        UnwindMaps::set_pid_known(self, pid)
    }
    fn forget_pid(&mut self, pid: u32) -> MapResult {
        UnwindMaps::forget_pid(self, pid)
    }
}

#[cfg(test)]
pub(crate) use fake::FakeMaps;

#[cfg(test)]
mod fake {
    use std::collections::{HashMap, HashSet};

    use ferroscope_ebpf_abi::DELTA_PAGE_BITS;

    use super::*;
    use crate::process::FileId;

    /// The maps in memory, answering lookups the way the eBPF program does.
    #[derive(Default)]
    pub(crate) struct FakeMaps {
        pub entries: Vec<DeltaEntry>,
        pub infos: HashMap<u32, UnwindInfoRaw>,
        pub pages: HashMap<DeltaPageKey, DeltaPage>,
        pub prefixes: HashMap<(u32, u64, u32), PidMapping>,
        pub known: HashSet<u32>,
        /// Runtime maps: (slot, map, key) -> value.
        pub runtime: HashMap<(u32, String, Vec<u8>), Vec<u8>>,
        /// (slot, pid) of every `forget_runtime_pid`.
        pub forgotten: Vec<(u32, u32)>,
    }

    impl FakeMaps {
        pub fn new(capacity: usize) -> Self {
            FakeMaps {
                entries: vec![DeltaEntry::default(); capacity],
                ..Default::default()
            }
        }

        /// What the eBPF program computes: the rule for `vaddr` of `file`.
        pub fn lookup(&self, file: FileId, vaddr: u64) -> Option<UnwindInfoRaw> {
            let p = self.pages.get(&DeltaPageKey {
                file_id: file.0,
                page: vaddr >> DELTA_PAGE_BITS,
            })?;
            let target = (vaddr & 0xffff) as u16;
            let (mut lo, mut len) = (p.first, p.count);
            for _ in 0..16 {
                if len <= 1 {
                    break;
                }
                let half = len / 2;
                if self.entries[(lo + half) as usize].address_low <= target {
                    lo += half;
                    len -= half;
                } else {
                    len = half;
                }
            }
            let e = self.entries[lo as usize];
            assert!(
                e.address_low <= target,
                "the search found an entry after the address"
            );
            self.infos.get(&u32::from(e.info_index)).copied()
        }

        /// What the LPM trie answers for `pid`, `address`.
        pub fn mapping(&self, pid: u32, address: u64) -> Option<PidMapping> {
            (0..=64u32).rev().find_map(|len| {
                let mask = if len == 0 { 0 } else { u64::MAX << (64 - len) };
                self.prefixes.get(&(pid, address & mask, len)).copied()
            })
        }
    }

    impl crate::interp::RuntimeMaps for FakeMaps {
        fn write_runtime_map(
            &mut self,
            slot: u32,
            map: &str,
            key: &[u8],
            value: Option<&[u8]>,
        ) -> Result<(), String> {
            let k = (slot, map.to_owned(), key.to_vec());
            match value {
                Some(v) => self.runtime.insert(k, v.to_vec()),
                None => self.runtime.remove(&k),
            };
            Ok(())
        }

        fn forget_runtime_pid(&mut self, slot: u32, pid: u32) {
            self.forgotten.push((slot, pid));
            let key = pid.to_ne_bytes().to_vec();
            self.runtime
                .retain(|(s, _, k), _| !(*s == slot && *k == key));
        }
    }

    impl UnwindBackend for FakeMaps {
        fn entries_capacity(&self) -> u32 {
            self.entries.len() as u32
        }
        fn write_entries(&mut self, first: u32, entries: &[DeltaEntry]) -> MapResult {
            self.entries[first as usize..first as usize + entries.len()].copy_from_slice(entries);
            Ok(())
        }
        fn set_info(&mut self, index: u32, info: UnwindInfoRaw) -> MapResult {
            self.infos.insert(index, info);
            Ok(())
        }
        fn insert_page(&mut self, key: DeltaPageKey, page: DeltaPage) -> MapResult {
            self.pages.insert(key, page);
            Ok(())
        }
        fn remove_page(&mut self, key: &DeltaPageKey) -> MapResult {
            self.pages.remove(key);
            Ok(())
        }
        fn insert_mapping_prefix(
            &mut self,
            pid: u32,
            address: u64,
            prefix_len: u32,
            value: PidMapping,
        ) -> MapResult {
            self.prefixes.insert((pid, address, prefix_len), value);
            Ok(())
        }
        fn remove_mapping_prefix(&mut self, pid: u32, address: u64, prefix_len: u32) -> MapResult {
            self.prefixes.remove(&(pid, address, prefix_len));
            Ok(())
        }
        fn set_pid_known(&mut self, pid: u32) -> MapResult {
            self.known.insert(pid);
            Ok(())
        }
        fn forget_pid(&mut self, pid: u32) -> MapResult {
            self.known.remove(&pid);
            Ok(())
        }
    }
}
