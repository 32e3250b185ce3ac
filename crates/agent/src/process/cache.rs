//! Stack-delta tables kept on disk by file identity (`<dir>/<file id>.tbl`), so that a
//! file's table is extracted once per host, not once per process or per start of the agent.
//!
//! The directory must be the agent's own: it is created mode 0700 when missing, and a path
//! that is a symlink, or a directory owned by another user or writable by others, is not
//! used (a table read from it would decide how the kernel walks stacks). Files are written
//! to a temporary name and renamed into place; a damaged or foreign file is ignored and
//! rewritten.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferroscope_unwind_native::StackDeltaTable;

use super::FileId;

/// Largest table file read (a table this large would not fit the kernel's array anyway).
const MAX_FILE: u64 = 512 << 20;

/// The cache directory.
#[derive(Debug, Clone)]
pub(crate) struct TableCache {
    dir: PathBuf,
}

impl TableCache {
    /// Opens (creating it when missing) the cache at `dir`; `None`, with a warning, when the
    /// directory is not safe to use.
    pub(crate) fn open(dir: &Path) -> Option<TableCache> {
        if let Err(e) = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            tracing::warn!(dir = %dir.display(), "unwind tables are not cached on disk: cannot create the directory: {e}");
            return None;
        }
        let meta = match fs::symlink_metadata(dir) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "unwind tables are not cached on disk: {e}");
                return None;
            }
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        let unsafe_dir = !meta.file_type().is_dir()
            || meta.uid() != euid
            || meta.permissions().mode() & 0o022 != 0;
        if unsafe_dir {
            tracing::warn!(
                dir = %dir.display(),
                "unwind tables are not cached on disk: the directory is a symlink, is not owned by \
                 this user or is writable by others; remove it or choose another symb_cache_path"
            );
            return None;
        }
        Some(TableCache {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, id: FileId) -> PathBuf {
        self.dir.join(format!("{:016x}.tbl", id.0))
    }

    /// The cached table of `id`, if there is a good one.
    pub(crate) fn load(&self, id: FileId) -> Option<StackDeltaTable> {
        let path = self.path(id);
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_file() || meta.len() > MAX_FILE {
            return None;
        }
        let bytes = fs::read(&path).ok()?;
        match StackDeltaTable::from_bytes(&bytes) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!(path = %path.display(), "ignoring a cached table: {e}");
                None
            }
        }
    }

    /// Keeps `table` as `id`'s (failures are logged: the cache is an optimisation).
    pub(crate) fn store(&self, id: FileId, table: &StackDeltaTable) {
        let path = self.path(id);
        let tmp = self
            .dir
            .join(format!(".{:016x}.{}.tmp", id.0, std::process::id()));
        let result = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&table.to_bytes()))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            tracing::debug!(path = %path.display(), "cannot cache the table: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_unwind_native::{StackDelta, UnwindInfo};

    fn table() -> StackDeltaTable {
        StackDeltaTable {
            deltas: vec![
                StackDelta {
                    address: 0x1000,
                    info: UnwindInfo::sp(8, None),
                },
                StackDelta {
                    address: 0x1004,
                    info: UnwindInfo::sp(16, Some(-16)),
                },
                StackDelta {
                    address: 0x1100,
                    info: UnwindInfo::INVALID,
                },
            ],
        }
    }

    #[test]
    fn tables_come_back_and_damaged_files_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = TableCache::open(&tmp.path().join("tables")).unwrap();
        assert!(cache.load(FileId(7)).is_none());
        cache.store(FileId(7), &table());
        assert_eq!(cache.load(FileId(7)), Some(table()));
        fs::write(cache.path(FileId(8)), b"FSDT garbage").unwrap();
        assert!(cache.load(FileId(8)).is_none());
    }

    #[test]
    fn a_directory_others_can_write_or_a_symlink_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(TableCache::open(&open).is_none());
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        assert!(TableCache::open(&link).is_none());
    }
}
