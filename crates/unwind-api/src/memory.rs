//! Reading another process's memory.

use std::collections::BTreeMap;
use std::io;

/// Why a read of process memory failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Part of the range is not mapped in the process (or not in the snapshot).
    #[error("cannot read {len} bytes at {addr:#x} in process {pid}: the address is not mapped")]
    Unmapped {
        /// The process.
        pid: u32,
        /// Start of the read.
        addr: u64,
        /// Length of the read.
        len: usize,
    },
    /// The kernel refused the read.
    #[error(
        "cannot read {len} bytes at {addr:#x} in process {pid} (reading another process's \
         memory needs CAP_SYS_PTRACE, run as root, and a process that still exists)"
    )]
    Io {
        /// The process.
        pid: u32,
        /// Start of the read.
        addr: u64,
        /// Length of the read.
        len: usize,
        /// The error from process_vm_readv.
        source: io::Error,
    },
}

/// Read access to the address space of one process.
pub trait ProcessMemory {
    /// The process whose memory this reads.
    fn pid(&self) -> u32;

    /// Fills `buf` with the bytes at `addr`; fails unless every byte could be read.
    fn read_exact_at(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;

    /// Reads a little-endian `u64` at `addr`.
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read_exact_at(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a NUL-terminated string of at most `max` bytes at `addr` (lossy UTF-8).
    fn read_c_string(&self, addr: u64, max: usize) -> Result<String, MemoryError> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 64];
        while out.len() < max {
            let at = addr + out.len() as u64;
            // Do not cross a page boundary in one read: the next page may be unmapped even
            // though the string ends before it.
            let to_page_end = (4096 - (at % 4096)) as usize;
            let mut want = chunk.len().min(max - out.len()).min(to_page_end);
            if self.read_exact_at(at, &mut chunk[..want]).is_err() {
                want = 1;
                self.read_exact_at(at, &mut chunk[..1])?;
            }
            if let Some(nul) = chunk[..want].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..nul]);
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(&chunk[..want]);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// The memory of a live process, read with `process_vm_readv(2)`.
#[derive(Debug, Clone, Copy)]
pub struct RemoteMemory {
    pid: u32,
}

impl RemoteMemory {
    /// Memory of process `pid`. Nothing is checked until the first read.
    pub fn new(pid: u32) -> Self {
        RemoteMemory { pid }
    }
}

impl ProcessMemory for RemoteMemory {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn read_exact_at(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which is valid for writes of `buf.len()` bytes for
        // the duration of the call; `remote` is only interpreted by the kernel in the other
        // process's address space, where a bad address yields EFAULT rather than UB here.
        let n =
            unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        let err = |source| MemoryError::Io {
            pid: self.pid,
            addr,
            len: buf.len(),
            source,
        };
        match n {
            -1 => {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EFAULT) {
                    Err(MemoryError::Unmapped {
                        pid: self.pid,
                        addr,
                        len: buf.len(),
                    })
                } else {
                    Err(err(e))
                }
            }
            n if n as usize == buf.len() => Ok(()),
            _ => Err(MemoryError::Unmapped {
                pid: self.pid,
                addr,
                len: buf.len(),
            }),
        }
    }
}

/// Captured regions of a process's memory, for tests and offline replay.
#[derive(Debug, Clone, Default)]
pub struct SnapshotMemory {
    pid: u32,
    regions: BTreeMap<u64, Vec<u8>>,
}

impl SnapshotMemory {
    /// An empty snapshot attributed to `pid`.
    pub fn new(pid: u32) -> Self {
        SnapshotMemory {
            pid,
            regions: BTreeMap::new(),
        }
    }

    /// Adds the bytes of one region starting at `addr`. Regions must not overlap.
    pub fn add_region(&mut self, addr: u64, bytes: Vec<u8>) -> &mut Self {
        self.regions.insert(addr, bytes);
        self
    }
}

impl ProcessMemory for SnapshotMemory {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn read_exact_at(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let unmapped = || MemoryError::Unmapped {
            pid: self.pid,
            addr,
            len: buf.len(),
        };
        let (start, bytes) = self
            .regions
            .range(..=addr)
            .next_back()
            .ok_or_else(unmapped)?;
        let off = usize::try_from(addr - start).map_err(|_| unmapped())?;
        let end = off.checked_add(buf.len()).ok_or_else(unmapped)?;
        let src = bytes.get(off..end).ok_or_else(unmapped)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reads_inside_regions_and_refuses_gaps() {
        let mut m = SnapshotMemory::new(7);
        m.add_region(0x1000, (0u8..16).collect())
            .add_region(0x2000, b"hello\0world".to_vec());
        let mut b = [0u8; 4];
        m.read_exact_at(0x1004, &mut b).unwrap();
        assert_eq!(b, [4, 5, 6, 7]);
        assert!(matches!(
            m.read_exact_at(0x100e, &mut b),
            Err(MemoryError::Unmapped { .. })
        ));
        assert!(m.read_exact_at(0x0fff, &mut b).is_err());
        assert_eq!(m.read_c_string(0x2000, 100).unwrap(), "hello");
        assert_eq!(m.read_c_string(0x2006, 3).unwrap(), "wor");
    }

    #[test]
    fn remote_memory_reads_our_own_process() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mem = RemoteMemory::new(std::process::id());
        let got = mem.read_u64(&value as *const u64 as u64).unwrap();
        assert_eq!(got, value);
        let s = b"ferroscope\0";
        assert_eq!(
            mem.read_c_string(s.as_ptr() as u64, 64).unwrap(),
            "ferroscope"
        );
    }

    #[test]
    fn remote_memory_reports_unmapped_addresses() {
        let mem = RemoteMemory::new(std::process::id());
        let mut b = [0u8; 8];
        assert!(matches!(
            mem.read_exact_at(8, &mut b),
            Err(MemoryError::Unmapped { .. })
        ));
    }
}
