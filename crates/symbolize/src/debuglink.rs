//! Finding the separate debug file of an ELF object, in gdb's order:
//!
//! 1. `/usr/lib/debug/.build-id/xx/rest.debug` (build ID in hex, first byte as directory);
//! 2. `<dir>/<debuglink>` (the object's directory and its `.gnu_debuglink` name);
//! 3. `<dir>/.debug/<debuglink>`;
//! 4. `/usr/lib/debug/<dir>/<debuglink>`.
//!
//! A build-ID candidate is accepted when its build ID matches; a debuglink candidate when the
//! CRC-32 of its whole content matches the one in `.gnu_debuglink` (a stale debug file from
//! another build is rejected, as gdb does). Candidates are looked up in the process's root
//! first, then on the host.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use object::{Object, ObjectSection};

use crate::root::FsRoot;

/// The global debug directory.
pub const DEBUG_DIR: &str = "/usr/lib/debug";

/// Which rule produced a candidate path, and so how it is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CandidateKind {
    /// Found by build ID; must have the same build ID.
    BuildId,
    /// Found by debuglink name; must have this CRC-32.
    DebugLink {
        /// The expected CRC-32 of the file.
        crc: u32,
    },
}

/// A place where the debug file may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The path, absolute, as seen from the root it is looked up in.
    pub path: PathBuf,
    /// How it is verified.
    pub kind: CandidateKind,
}

/// What an object says about its debug file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebugRefs {
    /// The GNU build ID.
    pub build_id: Option<Vec<u8>>,
    /// The `.gnu_debuglink` file name and CRC-32.
    pub debuglink: Option<(String, u32)>,
}

impl DebugRefs {
    /// Reads the build ID and `.gnu_debuglink` of an ELF object. Malformed notes or sections
    /// are ignored.
    pub fn of<'data, R: object::ReadRef<'data>>(file: &object::File<'data, R>) -> DebugRefs {
        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        let debuglink = file.gnu_debuglink().ok().flatten().and_then(|(name, crc)| {
            let name = std::str::from_utf8(name).ok()?;
            Some((name.to_owned(), crc))
        });
        DebugRefs {
            build_id,
            debuglink,
        }
    }

    /// Parses an ELF object's bytes and reads its references (for fuzzing and tools).
    pub fn parse(data: &[u8]) -> Option<DebugRefs> {
        object::File::parse(data).ok().map(|f| DebugRefs::of(&f))
    }
}

/// Whether a debuglink name is a plain file name (no directory, not `.`/`..`, no NUL).
fn valid_link_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.contains('/')
        && !name.contains('\0')
        && name != "."
        && name != ".."
}

/// Lexically normalizes an absolute path: drops `.`, resolves `..` (never above `/`).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The candidate paths, in gdb's order, for an object at `object_path`.
///
/// Never panics; every returned path is absolute and normalized (no `.` or `..`).
pub fn candidates(object_path: &Path, refs: &DebugRefs) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(id) = refs
        .build_id
        .as_deref()
        .filter(|id| id.len() >= 2 && id.len() <= 64)
    {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        out.push(Candidate {
            path: PathBuf::from(format!(
                "{DEBUG_DIR}/.build-id/{}/{}.debug",
                &hex[..2],
                &hex[2..]
            )),
            kind: CandidateKind::BuildId,
        });
    }
    if let Some((name, crc)) = &refs.debuglink
        && valid_link_name(name)
    {
        let dir = normalize(object_path.parent().unwrap_or(Path::new("/")));
        let kind = CandidateKind::DebugLink { crc: *crc };
        let global = normalize(&Path::new(DEBUG_DIR).join(dir.strip_prefix("/").unwrap_or(&dir)));
        for path in [
            dir.join(name),
            dir.join(".debug").join(name),
            global.join(name),
        ] {
            out.push(Candidate {
                path,
                kind: kind.clone(),
            });
        }
    }
    out
}

/// The CRC-32 used by `.gnu_debuglink` (the IEEE polynomial, as zlib's `crc32`).
pub fn debuglink_crc(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// A debug file that was found and verified.
#[derive(Debug)]
pub struct FoundDebugFile {
    /// Its path, as seen from the root it was found in.
    pub path: PathBuf,
    /// Whether it was found in the process's root (else on the host).
    pub in_process_root: bool,
    /// The open file (a regular file, verified by build ID or CRC).
    pub file: File,
}

/// The CRC-32 of everything `file` holds, read in chunks (no mapping).
fn file_crc(file: &File) -> std::io::Result<u32> {
    use std::io::Read;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut reader = file;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Whether the debug file at `file` is the one `kind` asks for, read with `pread` (a file
/// truncated meanwhile is a mismatch, not a `SIGBUS`).
fn verify(file: &File, kind: &CandidateKind, refs: &DebugRefs) -> bool {
    match kind {
        CandidateKind::BuildId => {
            let cache = object::ReadCache::new(file);
            object::File::parse(&cache)
                .ok()
                .and_then(|f| f.build_id().ok().flatten().map(<[u8]>::to_vec))
                .is_some_and(|id| Some(id) == refs.build_id)
        }
        CandidateKind::DebugLink { crc } => file_crc(file).is_ok_and(|c| c == *crc),
    }
}

/// Searches the candidates in the process's root, then on the host; returns the first that
/// passes verification. `object_identity` is `(dev, inode)` of the object itself, which is
/// never accepted as its own debug file. Only regular files are opened (no FIFO blocks the
/// search) and paths resolve inside the root.
pub fn find_debug_file(
    root: &FsRoot,
    object_path: &Path,
    refs: &DebugRefs,
    object_identity: Option<(u64, u64)>,
) -> Option<FoundDebugFile> {
    let cands = candidates(object_path, refs);
    if cands.is_empty() {
        return None;
    }
    let mut roots = vec![(root, true)];
    let host = FsRoot::Host;
    if !root.is_host() {
        roots.push((&host, false));
    }
    for (r, in_process_root) in roots {
        for c in &cands {
            let Ok(file) = r.open_regular(&c.path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            {
                use std::os::unix::fs::MetadataExt;
                if object_identity == Some((meta.dev(), meta.ino())) || meta.len() == 0 {
                    continue;
                }
            }
            if !verify(&file, &c.kind, refs) {
                tracing::debug!(path = %c.path.display(), "rejecting debug file: build ID or CRC mismatch");
                continue;
            }
            tracing::debug!(path = %c.path.display(), in_process_root, "found debug file");
            return Some(FoundDebugFile {
                path: c.path.clone(),
                in_process_root,
                file,
            });
        }
    }
    None
}

/// Whether an ELF object carries any DWARF line information.
pub fn has_dwarf(file: &object::File<'_>) -> bool {
    file.section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(obj: &str, refs: &DebugRefs) -> Vec<String> {
        candidates(Path::new(obj), refs)
            .into_iter()
            .map(|c| c.path.display().to_string())
            .collect()
    }

    #[test]
    fn gdb_order_for_the_documented_example() {
        let refs = DebugRefs {
            build_id: Some(vec![0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]),
            debuglink: Some(("libc.so.6.debug".into(), 7)),
        };
        assert_eq!(
            paths("/lib/x86_64-linux-gnu/libc.so.6", &refs),
            [
                "/usr/lib/debug/.build-id/01/23456789abcdef.debug",
                "/lib/x86_64-linux-gnu/libc.so.6.debug",
                "/lib/x86_64-linux-gnu/.debug/libc.so.6.debug",
                "/usr/lib/debug/lib/x86_64-linux-gnu/libc.so.6.debug",
            ]
        );
    }

    #[test]
    fn hostile_names_are_ignored() {
        for name in ["", ".", "..", "../../etc/shadow", "a/b", "x\0y"] {
            let refs = DebugRefs {
                build_id: None,
                debuglink: Some((name.into(), 0)),
            };
            assert!(paths("/usr/bin/x", &refs).is_empty(), "{name:?}");
        }
        let refs = DebugRefs {
            build_id: Some(vec![1]),
            debuglink: Some(("ok.debug".into(), 0)),
        };
        assert_eq!(
            paths("/a/../b/./bin", &refs),
            [
                "/b/ok.debug",
                "/b/.debug/ok.debug",
                "/usr/lib/debug/b/ok.debug"
            ]
        );
    }

    #[test]
    fn crc_is_the_zlib_crc32() {
        assert_eq!(debuglink_crc(b"123456789"), 0xcbf43926);
    }
}
