//! The maps the stack-delta unwinder reads, as userspace writes them.
//!
//! The policy (which ranges to allocate, which rules to share, when to evict) belongs to
//! the agent's process manager; this module only offers typed, checked writes:
//! `fs_known_pids`, `fs_pid_mappings` (LPM trie), `fs_delta_pages`, `fs_delta_entries`
//! (written in place through a memory mapping of the pages written) and `fs_unwind_infos`.

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
            map: "fs_delta_entries",
            action: "read info of",
            source: Box::new(e),
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

    fn read(&self, first: u32, count: u32) -> Result<Vec<DeltaEntry>, Error> {
        let end = u64::from(first) + u64::from(count);
        if end > u64::from(self.len) {
            return Err(Error::EntriesOutOfRange {
                first,
                count: count as usize,
                capacity: self.len,
            });
        }
        let mut out = Vec::with_capacity(count as usize);
        let per_window = WINDOW_BYTES / ENTRY_STRIDE;
        while out.len() < count as usize {
            let byte = (first as usize + out.len()) * ENTRY_STRIDE;
            let offset = byte / self.page * self.page;
            let n = (count as usize - out.len()).min(per_window);
            let last = byte + n * ENTRY_STRIDE;
            let window = self.window(offset, last.div_ceil(self.page) * self.page - offset)?;
            for i in 0..n {
                let off = byte - offset + i * ENTRY_STRIDE;
                // SAFETY: as in `write`: inside the window, aligned, and every bit pattern
                // is a valid DeltaEntry.
                out.push(unsafe {
                    window
                        .ptr
                        .as_ptr()
                        .add(off)
                        .cast::<DeltaEntry>()
                        .read_volatile()
                });
            }
        }
        Ok(out)
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

    /// Reads `count` entries of `fs_delta_entries` from `first` (for tests and diagnostics).
    pub fn read_entries(&self, first: u32, count: u32) -> Result<Vec<DeltaEntry>, Error> {
        self.entries.read(first, count)
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
