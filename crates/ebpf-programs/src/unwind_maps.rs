//! The maps the stack-delta unwinder reads, as userspace writes them.
//!
//! The policy (which ranges to allocate, which rules to share, when to evict, who owns a
//! range) belongs to the agent's process manager; this module only offers typed, checked
//! writes: `fs_known_pids`, `fs_pid_mappings` (LPM trie), `fs_delta_pages`,
//! `fs_delta_entries` (written in place through a memory mapping of the pages written) and
//! `fs_unwind_infos`.

use std::os::fd::AsFd;
use std::ptr::NonNull;

use aya::Ebpf;
use aya::maps::{Map, MapData};
use ferroscope_ebpf_abi::{
    DeltaEntry, DeltaPage, DeltaPageKey, MAX_UNWIND_INFOS, PidMapping, PidMappingKey, Plain,
    UnwindInfoRaw,
};

use crate::Error;
use crate::sys::{self, Sizes};

/// Sizes of the unwinder's maps, fixed when the sampler is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnwinderConfig {
    /// Processes whose tables can be loaded at once (`fs_known_pids`, and each runtime's
    /// per-process maps).
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

/// A map used through raw key and value bytes, checked against its own sizes.
pub(crate) struct RawMap {
    pub(crate) name: String,
    data: MapData,
    sizes: Sizes,
}

impl std::fmt::Debug for RawMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawMap")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RawMap {
    pub(crate) fn new(name: &str, data: MapData) -> Result<RawMap, Error> {
        let info = data.info().map_err(|e| Error::Map {
            map: name.to_owned(),
            action: "read the info of",
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(RawMap {
            name: name.to_owned(),
            sizes: Sizes {
                key: info.key_size(),
                value: info.value_size(),
            },
            data,
        })
    }

    pub(crate) fn take(ebpf: &mut Ebpf, name: &str) -> Result<RawMap, Error> {
        let data = match ebpf.take_map(name) {
            Some(
                Map::HashMap(d)
                | Map::LruHashMap(d)
                | Map::Array(d)
                | Map::LpmTrie(d)
                | Map::PerCpuArray(d)
                | Map::PerCpuHashMap(d),
            ) => d,
            _ => return Err(Error::MissingMap(name.to_owned())),
        };
        RawMap::new(name, data)
    }

    fn err(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Map {
            map: self.name.clone(),
            action,
            source,
        }
    }

    pub(crate) fn update(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        sys::update(self.data.fd().as_fd(), self.sizes, key, value, sys::BPF_ANY)
            .map_err(self.err("update"))
    }

    pub(crate) fn delete(&self, key: &[u8]) -> Result<(), Error> {
        sys::delete(self.data.fd().as_fd(), self.sizes, key).map_err(self.err("delete"))
    }

    pub(crate) fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<bool, Error> {
        sys::lookup(self.data.fd().as_fd(), self.sizes, key, value).map_err(self.err("look up"))
    }

    /// The key after `key` (the first with `None`); `None` past the last.
    pub(crate) fn next_key(&self, key: Option<&[u8]>) -> Result<Option<Vec<u8>>, Error> {
        let mut next = vec![0; self.sizes.key as usize];
        let found = sys::next_key(self.data.fd().as_fd(), self.sizes, key, &mut next)
            .map_err(self.err("walk the keys of"))?;
        Ok(found.then_some(next))
    }

    pub(crate) fn max_entries(&self) -> u32 {
        self.data.info().map(|i| i.max_entries()).unwrap_or(0)
    }
}

/// The process-manager side of the unwinder's maps. Obtained from
/// [`crate::Sampler::unwind_maps`].
pub struct UnwindMaps {
    known_pids: RawMap,
    pid_mappings: RawMap,
    delta_pages: RawMap,
    infos: RawMap,
    delta_entries_lookup: RawMap,
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

/// Most bytes of `fs_delta_entries` mapped at once while writing (a larger write is done
/// window after window), so the agent's resident memory does not grow with a table's size.
const WINDOW_BYTES: usize = 1 << 20;

/// `fs_delta_entries`, written with stores through a short-lived memory mapping of just the
/// pages being written rather than one syscall per entry.
///
/// The kernel maps every page of a BPF array at `mmap` time, so keeping the whole array
/// mapped would count all of it (16 MiB for 2 M entries) in the agent's RSS for as long as
/// it runs. The array's memory is BPF map memory either way (vmalloc'ed by the kernel and
/// charged to the agent's memory cgroup); mapping only a window while writing keeps it out
/// of the agent's resident set. The kernel honours the mapping's page offset
/// (`vm_pgoff`) for array maps, so a window can start at any page of the array.
struct MappedEntries {
    len: u32,
    /// Bytes of the array as the kernel maps it (its slots, rounded up to a page).
    bytes: usize,
    page: usize,
    map: MapData,
}

/// One page-aligned window of `fs_delta_entries`, unmapped on drop.
struct Window {
    ptr: NonNull<u8>,
    bytes: usize,
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: ptr/bytes are exactly what mmap returned, unmapped only here.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

impl MappedEntries {
    fn new(map: MapData) -> Result<Self, Error> {
        let info = map.info().map_err(|e| Error::Map {
            map: "fs_delta_entries".into(),
            action: "read the info of",
            source: std::io::Error::other(e.to_string()),
        })?;
        let len = info.max_entries();
        // SAFETY: sysconf has no preconditions.
        let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize;
        let bytes = (len as usize * ENTRY_STRIDE).div_ceil(page) * page;
        let entries = MappedEntries {
            len,
            bytes,
            page,
            map,
        };
        // Fail at start rather than at the first table when the kernel cannot map the array.
        entries.window(0, page.min(bytes))?;
        Ok(entries)
    }

    /// Maps `[offset, offset + bytes)` of the array; `offset` is page-aligned and the range
    /// lies within `self.bytes`.
    fn window(&self, offset: usize, bytes: usize) -> Result<Window, Error> {
        use std::os::fd::AsRawFd;
        debug_assert!(offset.is_multiple_of(self.page) && offset + bytes <= self.bytes);
        let fd = self.map.fd().as_fd();
        // SAFETY: a shared read-write mapping of `bytes` bytes at page offset `offset` of a
        // BPF_F_MMAPABLE array map, within the map's page-rounded size; the kernel validates
        // the range and flags and returns MAP_FAILED on error. The memory is only accessed
        // through `write`, within `bytes`, and unmapped when the `Window` drops.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::MmapEntries(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::MmapEntries(std::io::Error::other("null mapping")))?;
        Ok(Window { ptr, bytes })
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
        let per_window = WINDOW_BYTES / ENTRY_STRIDE;
        let mut done = 0;
        while done < entries.len() {
            let index = first as usize + done;
            let byte = index * ENTRY_STRIDE;
            let offset = byte / self.page * self.page;
            let chunk = &entries[done..entries.len().min(done + per_window)];
            let last = byte + chunk.len() * ENTRY_STRIDE;
            let bytes = last.div_ceil(self.page) * self.page - offset;
            let window = self.window(offset, bytes)?;
            for (i, e) in chunk.iter().enumerate() {
                let off = byte - offset + i * ENTRY_STRIDE;
                // SAFETY: off + 4 <= last - offset <= window.bytes, so the write stays inside
                // the window; DeltaEntry needs 2-byte alignment and `off` is a multiple of 8
                // in a page-aligned mapping. The eBPF program may read the slot
                // concurrently; it only ever sees a table's slots after userspace publishes
                // its page entries.
                unsafe {
                    window
                        .ptr
                        .as_ptr()
                        .add(off)
                        .cast::<DeltaEntry>()
                        .write_volatile(*e)
                };
            }
            done += chunk.len();
        }
        Ok(())
    }
}

impl UnwindMaps {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        let entries = match ebpf.take_map("fs_delta_entries") {
            Some(Map::Array(data)) => data,
            _ => return Err(Error::MissingMap("fs_delta_entries".into())),
        };
        // A second handle on the same array, for reads through the syscall (what the kernel
        // sees, independently of the mapping used for writes).
        let lookup = MapData::from_id(entries.info().map(|i| i.id()).map_err(|e| Error::Map {
            map: "fs_delta_entries".into(),
            action: "read the info of",
            source: std::io::Error::other(e.to_string()),
        })?)
        .map_err(|e| Error::Map {
            map: "fs_delta_entries".into(),
            action: "open a second handle on",
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(UnwindMaps {
            known_pids: RawMap::take(ebpf, "fs_known_pids")?,
            pid_mappings: RawMap::take(ebpf, "fs_pid_mappings")?,
            delta_pages: RawMap::take(ebpf, "fs_delta_pages")?,
            infos: RawMap::take(ebpf, "fs_unwind_infos")?,
            delta_entries_lookup: RawMap::new("fs_delta_entries", lookup)?,
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

    /// Reads `count` entries of `fs_delta_entries` from `first` through the `bpf` syscall
    /// (as the kernel holds them; for tests and diagnostics).
    pub fn read_entries(&self, first: u32, count: u32) -> Result<Vec<DeltaEntry>, Error> {
        let mut out = Vec::with_capacity(count as usize);
        for i in first..first.saturating_add(count) {
            let mut v = [0u8; 4];
            if !self.delta_entries_lookup.lookup(&i.to_ne_bytes(), &mut v)? {
                return Err(Error::EntriesOutOfRange {
                    first,
                    count: count as usize,
                    capacity: self.entries.len,
                });
            }
            out.extend(DeltaEntry::from_bytes(&v));
        }
        Ok(out)
    }

    /// Sets rule `index` of `fs_unwind_infos`.
    pub fn set_info(&mut self, index: u32, info: UnwindInfoRaw) -> Result<(), Error> {
        if index as usize >= MAX_UNWIND_INFOS {
            return Err(Error::TooManyUnwindInfos);
        }
        self.infos.update(&index.to_ne_bytes(), info.as_bytes())
    }

    /// Publishes a table page.
    pub fn insert_page(&mut self, key: DeltaPageKey, page: DeltaPage) -> Result<(), Error> {
        self.delta_pages.update(key.as_bytes(), page.as_bytes())
    }

    /// Withdraws a table page (a missing page is not an error).
    pub fn remove_page(&mut self, key: &DeltaPageKey) -> Result<(), Error> {
        self.delta_pages.delete(key.as_bytes())
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
        self.pid_mappings.update(
            prefix_key(pid, address, prefix_len).as_bytes(),
            value.as_bytes(),
        )
    }

    /// Removes a prefix inserted by [`UnwindMaps::insert_mapping_prefix`] (a missing one is
    /// not an error).
    pub fn remove_mapping_prefix(
        &mut self,
        pid: u32,
        address: u64,
        prefix_len: u32,
    ) -> Result<(), Error> {
        self.pid_mappings
            .delete(prefix_key(pid, address, prefix_len).as_bytes())
    }

    /// What the trie holds for the exact prefix (for tests and diagnostics).
    pub fn mapping_prefix(
        &self,
        pid: u32,
        address: u64,
        prefix_len: u32,
    ) -> Result<Option<PidMapping>, Error> {
        let mut v = [0u8; size_of::<PidMapping>()];
        let found = self
            .pid_mappings
            .lookup(prefix_key(pid, address, prefix_len).as_bytes(), &mut v)?;
        Ok(found.then(|| PidMapping::from_bytes(&v)).flatten())
    }

    /// Lets the unwinder walk `pid`'s stacks (its mappings must be inserted first).
    pub fn set_pid_known(&mut self, pid: u32) -> Result<(), Error> {
        self.known_pids.update(&pid.to_ne_bytes(), &[1])
    }

    /// Sends `pid`'s samples back to the frame-pointer walk (a missing PID is not an error).
    pub fn forget_pid(&mut self, pid: u32) -> Result<(), Error> {
        self.known_pids.delete(&pid.to_ne_bytes())
    }

    /// How many processes `fs_known_pids` holds at most.
    pub fn max_pids(&self) -> u32 {
        self.known_pids.max_entries()
    }
}

/// The LPM key of `address`'s top `prefix_len` bits in `pid`'s mappings.
fn prefix_key(pid: u32, address: u64, prefix_len: u32) -> PidMappingKey {
    PidMappingKey {
        prefixlen: 32 + prefix_len,
        pid,
        address_be: address.to_be(),
    }
}
