//! The maps the stack-delta unwinder reads, as userspace writes them.
//!
//! The policy (which ranges to allocate, which rules to share, when to evict) belongs to
//! the agent's process manager; this module only offers typed, checked writes:
//! `fs_known_pids`, `fs_pid_mappings` (LPM trie), `fs_delta_pages`, `fs_delta_entries`
//! (memory-mapped, written in place) and `fs_unwind_infos`.

use std::os::fd::AsFd;
use std::ptr::NonNull;

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData};

use crate::Error;
use crate::abi::{
    DeltaEntry, DeltaPage, DeltaPageKey, InterpProc, MAX_UNWIND_INFOS, PidMapping, UnwindInfoRaw,
};
use crate::sampler::take_map;

// SAFETY: PidMapping is repr(C), four u64s: no padding, every bit pattern valid.
unsafe impl aya::Pod for PidMapping {}
// SAFETY: DeltaPageKey is repr(C), two u64s: no padding, every bit pattern valid.
unsafe impl aya::Pod for DeltaPageKey {}
// SAFETY: DeltaPage is repr(C), two u32s: no padding, every bit pattern valid.
unsafe impl aya::Pod for DeltaPage {}
// SAFETY: InterpProc is repr(C): u32, u32, four u64s, then PyProc (two u64s, thirteen u16s,
// six u8s: 48 bytes); no padding anywhere (the ABI test pins every offset), every bit
// pattern valid.
unsafe impl aya::Pod for InterpProc {}
// SAFETY: UnwindInfoRaw is repr(C) u8, u8, u16, i32, i32, u32 (16 bytes, no padding);
// every bit pattern is a valid value.
unsafe impl aya::Pod for UnwindInfoRaw {}

/// Sizes of the unwinder's maps, fixed when the sampler is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnwinderConfig {
    /// Processes whose tables can be loaded at once (`fs_known_pids`).
    pub max_pids: u32,
    /// Address prefixes of all processes' mappings (`fs_pid_mappings`); a mapping takes up
    /// to about 70, usually a handful.
    pub max_mapping_prefixes: u32,
    /// 64 KiB pages of all loaded tables (`fs_delta_pages`).
    pub max_delta_pages: u32,
    /// Stack deltas of all loaded tables (`fs_delta_entries`, 8 bytes each in the kernel).
    pub max_delta_entries: u32,
}

impl Default for UnwinderConfig {
    fn default() -> Self {
        UnwinderConfig {
            max_pids: 16384,
            max_mapping_prefixes: 262_144,
            max_delta_pages: 131_072,
            max_delta_entries: 1 << 21,
        }
    }
}

impl UnwinderConfig {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let sizes = [
            ("max_pids", self.max_pids),
            ("max_mapping_prefixes", self.max_mapping_prefixes),
            ("max_delta_pages", self.max_delta_pages),
            ("max_delta_entries", self.max_delta_entries),
        ];
        for (name, value) in sizes {
            if value == 0 || value > 1 << 28 {
                return Err(Error::BadMapSize { name, value });
            }
        }
        Ok(())
    }
}

/// The process-manager side of the unwinder's maps. Obtained from
/// [`crate::Sampler::unwind_maps`].
pub struct UnwindMaps {
    known_pids: HashMap<MapData, u32, u8>,
    pid_mappings: LpmTrie<MapData, [u8; 12], PidMapping>,
    delta_pages: HashMap<MapData, DeltaPageKey, DeltaPage>,
    infos: Array<MapData, UnwindInfoRaw>,
    interp_procs: HashMap<MapData, u32, InterpProc>,
    entries: MappedEntries,
}

impl std::fmt::Debug for UnwindMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnwindMaps")
            .field("entries", &self.entries.len)
            .finish_non_exhaustive()
    }
}

/// Kernel array maps store each value in a slot rounded up to 8 bytes.
const ENTRY_STRIDE: usize = 8;

/// `fs_delta_entries`, memory-mapped so that a table is written with stores rather than
/// one syscall per entry.
struct MappedEntries {
    ptr: NonNull<u8>,
    bytes: usize,
    len: u32,
    // Keeps the map (and so the kernel memory behind `ptr`) alive; unmapped first in Drop.
    _map: MapData,
}

// SAFETY: the mapping is plain shared memory owned by this value; nothing about it is tied
// to the thread that created it.
unsafe impl Send for MappedEntries {}

impl Drop for MappedEntries {
    fn drop(&mut self) {
        // SAFETY: ptr/bytes are exactly what mmap returned, unmapped only here.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

impl MappedEntries {
    fn new(map: MapData) -> Result<Self, Error> {
        let info = map.info().map_err(|e| Error::Map {
            map: "fs_delta_entries",
            action: "read info of",
            source: Box::new(e),
        })?;
        let len = info.max_entries();
        // SAFETY: sysconf has no preconditions.
        let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize;
        let bytes = (len as usize * ENTRY_STRIDE).div_ceil(page) * page;
        let fd = map.fd().as_fd();
        use std::os::fd::AsRawFd;
        // SAFETY: a shared read-write mapping of a BPF_F_MMAPABLE array map of exactly the
        // map's (page-rounded) size; the kernel validates the length and flags and returns
        // MAP_FAILED on error. The memory is only accessed through `write`, within `bytes`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::MmapEntries(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::MmapEntries(std::io::Error::other("null mapping")))?;
        Ok(MappedEntries {
            ptr,
            bytes,
            len,
            _map: map,
        })
    }

    fn write(&mut self, first: u32, entries: &[DeltaEntry]) -> Result<(), Error> {
        let end = u64::from(first) + entries.len() as u64;
        if end > u64::from(self.len) {
            return Err(Error::EntriesOutOfRange {
                first,
                count: entries.len(),
                capacity: self.len,
            });
        }
        for (i, e) in entries.iter().enumerate() {
            let off = (first as usize + i) * ENTRY_STRIDE;
            // SAFETY: off + 4 <= len * 8 <= bytes (checked above), so the write stays inside
            // the mapping; DeltaEntry needs 2-byte alignment and `off` is a multiple of 8 in
            // a page-aligned mapping. The eBPF program may read the slot concurrently; it
            // only ever sees a table's slots after userspace publishes its page entries.
            unsafe {
                self.ptr
                    .as_ptr()
                    .add(off)
                    .cast::<DeltaEntry>()
                    .write_volatile(*e)
            };
        }
        Ok(())
    }
}

fn map_err(map: &'static str, action: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |e| Error::Map {
        map,
        action,
        source: Box::new(e),
    }
}

impl UnwindMaps {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        let entries = match ebpf.take_map("fs_delta_entries") {
            Some(Map::Array(data)) => data,
            _ => return Err(Error::MissingMap("fs_delta_entries")),
        };
        Ok(UnwindMaps {
            known_pids: take_map(ebpf, "fs_known_pids")?,
            pid_mappings: take_map(ebpf, "fs_pid_mappings")?,
            delta_pages: take_map(ebpf, "fs_delta_pages")?,
            infos: take_map(ebpf, "fs_unwind_infos")?,
            interp_procs: take_map(ebpf, "fs_interp_procs")?,
            entries: MappedEntries::new(entries)?,
        })
    }

    /// How many entries `fs_delta_entries` holds.
    pub fn entries_capacity(&self) -> u32 {
        self.entries.len
    }

    /// Writes `entries` at `first..first + entries.len()` of `fs_delta_entries`.
    pub fn write_entries(&mut self, first: u32, entries: &[DeltaEntry]) -> Result<(), Error> {
        self.entries.write(first, entries)
    }

    /// Sets rule `index` of `fs_unwind_infos`.
    pub fn set_info(&mut self, index: u32, info: UnwindInfoRaw) -> Result<(), Error> {
        if index as usize >= MAX_UNWIND_INFOS {
            return Err(Error::TooManyUnwindInfos);
        }
        self.infos
            .set(index, info, 0)
            .map_err(map_err("fs_unwind_infos", "update"))
    }

    /// Publishes a table page.
    pub fn insert_page(&mut self, key: DeltaPageKey, page: DeltaPage) -> Result<(), Error> {
        self.delta_pages
            .insert(key, page, 0)
            .map_err(map_err("fs_delta_pages", "insert"))
    }

    /// Withdraws a table page (a missing page is not an error).
    pub fn remove_page(&mut self, key: &DeltaPageKey) -> Result<(), Error> {
        ignore_missing(self.delta_pages.remove(key)).map_err(map_err("fs_delta_pages", "delete"))
    }

    /// Maps `[address, address + 2^(64 - prefix_len))` of process `pid` to `value`.
    /// `prefix_len` counts the address bits that must match (0 to 64).
    pub fn insert_mapping_prefix(
        &mut self,
        pid: u32,
        address: u64,
        prefix_len: u32,
        value: PidMapping,
    ) -> Result<(), Error> {
        let key = Key::new(32 + prefix_len, prefix_key(pid, address));
        self.pid_mappings
            .insert(&key, value, 0)
            .map_err(map_err("fs_pid_mappings", "insert"))
    }

    /// Removes a prefix inserted by [`UnwindMaps::insert_mapping_prefix`] (a missing one is
    /// not an error).
    pub fn remove_mapping_prefix(
        &mut self,
        pid: u32,
        address: u64,
        prefix_len: u32,
    ) -> Result<(), Error> {
        let key = Key::new(32 + prefix_len, prefix_key(pid, address));
        ignore_missing(self.pid_mappings.remove(&key)).map_err(map_err("fs_pid_mappings", "delete"))
    }

    /// Lets the unwinder walk `pid`'s stacks (its mappings must be inserted first).
    pub fn set_pid_known(&mut self, pid: u32) -> Result<(), Error> {
        self.known_pids
            .insert(pid, 1, 0)
            .map_err(map_err("fs_known_pids", "insert"))
    }

    /// Tells the unwinder that `pid` runs an interpreter, and what its walker needs.
    pub fn set_interpreter(&mut self, pid: u32, proc: &InterpProc) -> Result<(), Error> {
        self.interp_procs
            .insert(pid, *proc, 0)
            .map_err(map_err("fs_interp_procs", "insert"))
    }

    /// Stops walking `pid`'s interpreter frames (a missing PID is not an error).
    pub fn remove_interpreter(&mut self, pid: u32) -> Result<(), Error> {
        ignore_missing(self.interp_procs.remove(&pid)).map_err(map_err("fs_interp_procs", "delete"))
    }

    /// Sends `pid`'s samples back to the frame-pointer walk (a missing PID is not an error).
    pub fn forget_pid(&mut self, pid: u32) -> Result<(), Error> {
        ignore_missing(self.known_pids.remove(&pid)).map_err(map_err("fs_known_pids", "delete"))
    }
}

fn prefix_key(pid: u32, address: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&pid.to_ne_bytes());
    k[4..].copy_from_slice(&address.to_be_bytes());
    k
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}
