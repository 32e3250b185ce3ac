//! Mapped files: opening them as the process sees them, their identity by content, and the
//! load bias of a mapping.

use std::fs::File;
use std::path::PathBuf;

use ferroscope_symbolize::debuglink::DebugRefs;
use ferroscope_symbolize::maps::{MapEntry, MapPath};
use ferroscope_symbolize::root::{FsRoot, regular};
use object::ReadRef;

/// A file's identity by content: the same bytes give the same ID in every process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u64);

impl FileId {
    /// The ID of an ELF file's bytes: a hash of its GNU build ID when it has one, else of
    /// its length and its first and last 4 KiB.
    pub fn of_bytes(data: &[u8], build_id: Option<&[u8]>) -> FileId {
        match build_id.filter(|b| !b.is_empty()) {
            Some(id) => {
                let mut h = Fnv::new();
                h.write(b"build-id");
                h.write(id);
                // Zero means "no file" (an anonymous range) in the eBPF maps.
                FileId(h.finish().max(1))
            }
            None => FileId::of_content(
                data.len() as u64,
                &data[..data.len().min(4096)],
                &data[data.len().saturating_sub(4096)..],
            ),
        }
    }

    /// The ID of a file without a build ID: its length and its first and last 4 KiB.
    pub fn of_content(len: u64, head: &[u8], tail: &[u8]) -> FileId {
        let mut h = Fnv::new();
        h.write(b"content");
        h.write(&len.to_le_bytes());
        h.write(head);
        h.write(tail);
        FileId(h.finish().max(1))
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Where a file mapping's identity and layout were cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileKey {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl FileKey {
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileKey {
        use std::os::unix::fs::MetadataExt;
        FileKey {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// A PT_LOAD segment.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub offset: u64,
    pub filesz: u64,
    pub vaddr: u64,
    pub executable: bool,
}

/// What the manager keeps about a file: its ID, segments and debug-file references.
#[derive(Debug, Clone)]
pub(crate) struct FileFacts {
    pub id: FileId,
    pub loads: Vec<Load>,
    pub refs: DebugRefs,
}

/// Opens a mapped file as the process sees it: through `/proc/PID/map_files` (the kernel's
/// link to the very file mapped: works for deleted files and other mount namespaces), else
/// by its path resolved inside the process's root (`openat2(RESOLVE_IN_ROOT)`, so a symlink
/// in a container cannot point the agent at a host file). Regular files only, and the open
/// never waits (a FIFO planted at a library's path is refused).
pub(crate) fn open_mapped_file(pid: u32, entry: &MapEntry) -> Option<(File, PathBuf)> {
    let via_map_files = map_files_path(pid, entry);
    if let Ok(f) = File::open(&via_map_files).and_then(regular) {
        return Some((f, via_map_files));
    }
    let path = match &entry.path {
        MapPath::File(p) => p,
        _ => return None,
    };
    match FsRoot::of_process(pid).open_regular(path) {
        Ok(f) => Some((f, path.clone())),
        Err(e) => {
            tracing::debug!(pid, path = %path.display(), "cannot open the mapped file: {e}");
            None
        }
    }
}

/// `/proc/PID/map_files/START-END` of a mapping.
pub(crate) fn map_files_path(pid: u32, entry: &MapEntry) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        entry.start, entry.end
    ))
}

/// The file's ID, its PT_LOAD segments and its debug-file references, read with `pread`
/// (headers and notes only; a file truncated meanwhile gives `None`, not a `SIGBUS`).
pub(crate) fn file_facts(file: &File) -> Option<FileFacts> {
    facts_of(&object::ReadCache::new(file))
}

/// [`file_facts`] of bytes in memory (the vDSO) or read on demand.
pub(crate) fn facts_of<'a, R: ReadRef<'a>>(data: R) -> Option<FileFacts> {
    use object::read::elf::{FileHeader, ProgramHeader};
    use object::{Endianness, elf};
    let header = elf::FileHeader64::<Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let loads = header
        .program_headers(endian, data)
        .ok()?
        .iter()
        .filter(|p| p.p_type(endian) == elf::PT_LOAD)
        .map(|p| Load {
            offset: p.p_offset(endian),
            filesz: p.p_filesz(endian),
            vaddr: p.p_vaddr(endian),
            executable: (p.p_flags(endian) & elf::PF_X).0 != 0,
        })
        .collect();
    let parsed = object::File::parse(data).ok()?;
    let refs = DebugRefs::of(&parsed);
    let id = match refs.build_id.as_deref() {
        Some(id) => FileId::of_bytes(&[], Some(id)),
        None => {
            let len = data.len().ok()?;
            let head = data.read_bytes_at(0, len.min(4096)).ok()?;
            let tail_start = len.saturating_sub(4096);
            let tail = data.read_bytes_at(tail_start, len - tail_start).ok()?;
            FileId::of_content(len, head, tail)
        }
    };
    Some(FileFacts { id, loads, refs })
}

/// `mapping start - vaddr of the mapping's file offset`, choosing the PT_LOAD segment whose
/// execute flag matches the mapping's (lld lets the executable segment start inside the
/// page of the read-only one before it).
pub(crate) fn load_bias(loads: &[Load], entry: &MapEntry) -> Option<u64> {
    const MAX_PAGE: u64 = 1 << 16;
    let off = entry.offset;
    let executable = entry.is_executable();
    let best = loads
        .iter()
        .filter_map(|l| {
            let contains = l.offset <= off && off - l.offset < l.filesz.max(1);
            let just_after = l.offset > off && l.offset - off < MAX_PAGE;
            (contains || just_after)
                .then_some(((l.executable != executable, !contains, l.offset), l))
        })
        .min_by_key(|(rank, _)| *rank)?
        .1;
    let vaddr = if best.offset <= off {
        best.vaddr + (off - best.offset)
    } else {
        best.vaddr.checked_sub(best.offset - off)?
    };
    Some(entry.start.wrapping_sub(vaddr))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process chrooted into a directory whose library path is an absolute symlink to a
    /// host file: when `map_files` cannot be used, the path is resolved inside the process's
    /// root, so the agent opens the file inside it, never the host's.
    #[test]
    fn a_symlink_in_a_chroot_does_not_lead_out_of_it() {
        if !ferroscope_test_harness::require::root("chroot") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), "inside the root").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("lib/libevil.so")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc/hostname", root.join("lib/libup.so"))
            .unwrap();
        let c_root = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: the child only makes async-signal-safe system calls (chroot, chdir, pause,
        // _exit) before it is killed.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            // SAFETY: as above; the path is NUL-terminated.
            unsafe {
                if libc::chroot(c_root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        let pid = child as u32;
        // Wait until the child is in its root.
        let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
        for _ in 0..500 {
            if std::fs::read_link(&proc_root).is_ok_and(|p| p == root) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let opened: Vec<Option<String>> = ["/lib/libevil.so", "/lib/libup.so"]
            .iter()
            .map(|path| {
                // No such mapping: map_files fails and the path is used.
                let entry = MapEntry {
                    start: 0x1000,
                    end: 0x2000,
                    perms: *b"r-xp",
                    offset: 0,
                    dev_major: 0,
                    dev_minor: 0,
                    inode: 1,
                    path: MapPath::File(PathBuf::from(path)),
                };
                open_mapped_file(pid, &entry).map(|(f, _)| std::io::read_to_string(f).unwrap())
            })
            .collect();
        // SAFETY: kill and waitpid on our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        for text in opened {
            assert_eq!(text.as_deref(), Some("inside the root"));
        }
    }

    #[test]
    fn file_ids_depend_on_content_only() {
        let a = FileId::of_bytes(b"\x7fELF same", Some(b"\x01\x02"));
        let b = FileId::of_bytes(b"\x7fELF other", Some(b"\x01\x02"));
        assert_eq!(a, b, "the build ID decides when present");
        assert_ne!(
            FileId::of_bytes(b"one", None),
            FileId::of_bytes(b"two", None)
        );
    }

    #[test]
    fn bias_uses_the_segment_whose_execute_flag_matches() {
        // lld layout: read-only segment at offset 0 (0x1234 bytes), executable segment at
        // file offset 0x1240 with vaddr 0x2240; the executable mapping starts at offset 0x1000.
        let loads = vec![
            Load {
                offset: 0,
                filesz: 0x1234,
                vaddr: 0,
                executable: false,
            },
            Load {
                offset: 0x1240,
                filesz: 0x5000,
                vaddr: 0x2240,
                executable: true,
            },
        ];
        let entry = MapEntry {
            start: 0x5555_0000_1000,
            end: 0x5555_0000_7000,
            perms: *b"r-xp",
            offset: 0x1000,
            dev_major: 0,
            dev_minor: 0,
            inode: 1,
            path: MapPath::File("/x".into()),
        };
        let bias = load_bias(&loads, &entry).unwrap();
        assert_eq!(
            0x5555_0000_1000 - bias,
            0x2000,
            "offset 0x1000 is vaddr 0x2000 in the executable segment"
        );
    }
}
