//! The optional on-disk cache of parsed symbol tables, keyed by file identity (build ID, else
//! content hash).
//!
//! Layout: `<dir>/v<VERSION>/<key>.sym`, each file
//! `magic (8) | version (u32) | payload length (u64) | CRC-32 of payload (u32) | payload`.
//! A file whose magic, version, length or checksum is wrong (truncated by a crash, corrupted,
//! from another version) is ignored and rewritten; entries are written to a temporary file
//! and renamed, so readers never see half an entry. Errors only cost a re-parse.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::elf::ElfSymbols;

/// The default cache directory (`symb_cache_path`).
pub const DEFAULT_CACHE_DIR: &str = "/tmp/symb-cache";

/// Bumped whenever the payload format changes.
const VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"FSSYMCHE";
const HEADER: usize = 8 + 4 + 8 + 4;

/// Outcome of a cache read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Hit(Box<ElfSymbolsBox>),
    Miss,
    /// The entry exists but is damaged; it will be rebuilt.
    Corrupt,
}

/// Boxed to keep [`Lookup`] small.
#[derive(Debug)]
pub(crate) struct ElfSymbolsBox(pub ElfSymbols);

impl PartialEq for ElfSymbolsBox {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bytes() == other.0.to_bytes()
    }
}
impl Eq for ElfSymbolsBox {}

/// A cache directory.
#[derive(Debug, Clone)]
pub(crate) struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    pub(crate) fn new(dir: &Path) -> DiskCache {
        DiskCache {
            dir: dir.join(format!("v{VERSION}")),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        // Keys are hex digits plus a suffix; anything else is replaced to keep paths safe.
        let safe: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.sym"))
    }

    pub(crate) fn load(&self, key: &str) -> Lookup {
        let Ok(data) = fs::read(self.path(key)) else {
            return Lookup::Miss;
        };
        match decode(&data) {
            Some(s) => Lookup::Hit(Box::new(ElfSymbolsBox(s))),
            None => {
                tracing::debug!(key, "corrupt symbol cache entry; rebuilding it");
                Lookup::Corrupt
            }
        }
    }

    pub(crate) fn store(&self, key: &str, syms: &ElfSymbols) {
        if let Err(e) = self.try_store(key, syms) {
            tracing::debug!(key, dir = %self.dir.display(), error = %e, "cannot write symbol cache entry");
        }
    }

    fn try_store(&self, key: &str, syms: &ElfSymbols) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let path = self.path(key);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&encode(syms))?;
        drop(f);
        fs::rename(&tmp, &path)
    }
}

pub(crate) fn encode(syms: &ElfSymbols) -> Vec<u8> {
    let payload = syms.to_bytes();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend(MAGIC);
    out.extend(VERSION.to_le_bytes());
    out.extend((payload.len() as u64).to_le_bytes());
    out.extend(crc32fast::hash(&payload).to_le_bytes());
    out.extend(payload);
    out
}

/// Decodes an entry; `None` when anything is off. Never panics.
pub(crate) fn decode(data: &[u8]) -> Option<ElfSymbols> {
    let (magic, rest) = data.split_first_chunk::<8>()?;
    let (version, rest) = rest.split_first_chunk::<4>()?;
    let (len, rest) = rest.split_first_chunk::<8>()?;
    let (crc, payload) = rest.split_first_chunk::<4>()?;
    if magic != MAGIC || u32::from_le_bytes(*version) != VERSION {
        return None;
    }
    if u64::from_le_bytes(*len) != payload.len() as u64
        || u32::from_le_bytes(*crc) != crc32fast::hash(payload)
    {
        return None;
    }
    ElfSymbols::from_bytes(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_symbols() -> ElfSymbols {
        ElfSymbols::open(&std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn round_trip_and_corruption() {
        let syms = own_symbols();
        let bytes = encode(&syms);
        let back = decode(&bytes).expect("round trip");
        assert_eq!(back.to_bytes(), syms.to_bytes());
        assert_eq!(back.len(), syms.len());

        // Truncations and bit flips are rejected, never a panic.
        for len in (0..bytes.len()).step_by(bytes.len() / 50 + 1) {
            assert!(decode(&bytes[..len]).is_none());
        }
        for i in (0..bytes.len()).step_by(bytes.len() / 200 + 1) {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b).is_none(), "flip at {i}");
        }
        // A payload with a valid checksum but garbage content is rejected too.
        for garbage in [vec![0xffu8; 64], vec![0u8; 3], vec![1u8; 100]] {
            let mut e = Vec::new();
            e.extend(MAGIC);
            e.extend(VERSION.to_le_bytes());
            e.extend((garbage.len() as u64).to_le_bytes());
            e.extend(crc32fast::hash(&garbage).to_le_bytes());
            e.extend(&garbage);
            let _ = decode(&e);
        }
    }

    #[test]
    fn truncated_entry_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path());
        assert_eq!(cache.load("abc.main"), Lookup::Miss);
        let syms = own_symbols();
        cache.store("abc.main", &syms);
        assert!(matches!(cache.load("abc.main"), Lookup::Hit(_)));
        let p = cache.path("abc.main");
        let len = fs::metadata(&p).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        assert_eq!(cache.load("abc.main"), Lookup::Corrupt);
        cache.store("abc.main", &syms);
        assert!(matches!(cache.load("abc.main"), Lookup::Hit(_)));
        // Hostile keys stay inside the directory.
        assert!(cache.path("../../etc/passwd").starts_with(&cache.dir));
    }
}
