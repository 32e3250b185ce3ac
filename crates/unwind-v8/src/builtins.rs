//! V8's embedded builtins: the machine code of the interpreter, of the builtins written in
//! Torque, CSA and assembly, linked into the binary's text (no unwind tables: they keep
//! frame pointers). With short builtin calls (x64 machines with 4 GB or more) V8 also maps a
//! copy of them into its code range and runs that copy.
//!
//! Names come from `builtin_metadata` (V8's table of builtin names, in `.symtab`) and the
//! `Builtins_<name>` symbol of each: their addresses and sizes, sorted, name any PC in the
//! blob. Builds without `.symtab` (Debian's libnode) have neither: their builtins range is
//! unknown and their interpreted frames are not found.

use std::sync::Arc;

use ferroscope_unwind_api::ElfFile;

/// Most builtins read (V8 14.6 has about 2,400).
const MAX_BUILTINS: usize = 8192;
/// Bytes of the blob compared to find its copy in a process.
pub const BLOB_PROBE: usize = 64;

/// The builtins of one binary, by file virtual address.
#[derive(Debug, Clone)]
pub struct Builtins {
    /// (start, end, name), sorted by start.
    entries: Vec<(u64, u64, Arc<str>)>,
    /// The blob: from the first builtin to the end of the last.
    pub start: u64,
    /// See [`Builtins::start`].
    pub end: u64,
    /// The blob's first bytes, to recognise its copy in a process.
    pub probe: [u8; BLOB_PROBE],
    /// The bytecode handlers (the interpreter's code), from `WideHandler` (the first
    /// bytecode's) on: (start, end), when found.
    pub handlers: Option<(u64, u64)>,
}

/// The mangled names `builtin_metadata` has had.
const METADATA: &[&str] = &[
    "_ZN2v88internal12_GLOBAL__N_1L16builtin_metadataE",
    "_ZN2v88internal12_GLOBAL__N_116builtin_metadataE",
];

/// Size of one `builtin_metadata` entry: a name pointer, a kind, a union of 8 bytes.
const METADATA_ENTRY: u64 = 24;

fn c_string(file: &dyn ElfFile, addr: u64) -> Option<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 16];
    while out.len() < 256 {
        let at = addr + out.len() as u64;
        if !file.read_vaddr(at, &mut b) {
            // The end of a segment: byte by byte.
            let mut one = [0u8; 1];
            if !file.read_vaddr(at, &mut one) {
                return None;
            }
            if one[0] == 0 {
                break;
            }
            out.push(one[0]);
            continue;
        }
        if let Some(nul) = b.iter().position(|&c| c == 0) {
            out.extend_from_slice(&b[..nul]);
            return String::from_utf8(out).ok();
        }
        out.extend_from_slice(&b);
    }
    String::from_utf8(out).ok()
}

impl Builtins {
    /// The builtins of `file`, when it has the symbols to find them.
    pub fn of(file: &dyn ElfFile) -> Option<Builtins> {
        let meta = METADATA.iter().find_map(|n| file.symbol(n))?;
        let count = (meta.size / METADATA_ENTRY) as usize;
        if count == 0 || count > MAX_BUILTINS {
            return None;
        }
        let mut entries: Vec<(u64, u64, Arc<str>)> = Vec::with_capacity(count);
        for i in 0..count as u64 {
            let mut p = [0u8; 8];
            if !file.read_vaddr(meta.address + i * METADATA_ENTRY, &mut p) {
                return None;
            }
            let Some(name) = c_string(file, u64::from_le_bytes(p)) else {
                continue;
            };
            if let Some(s) = file.symbol(&format!("Builtins_{name}")) {
                entries.push((s.address, s.address + s.size.max(1), Arc::from(name)));
            }
        }
        if entries.len() < count / 2 {
            tracing::debug!(
                path = file.path(),
                found = entries.len(),
                count,
                "few builtins have symbols; not using them"
            );
            return None;
        }
        entries.sort_by_key(|e| e.0);
        let start = entries.first()?.0;
        let end = entries.iter().map(|e| e.1).max()?;
        let mut probe = [0u8; BLOB_PROBE];
        if !file.read_vaddr(start, &mut probe) {
            return None;
        }
        // Bytecode handlers are laid out in bytecode order, `Wide` first, all named
        // `<Bytecode>Handler` (and `...WideHandler`, `...ExtraWideHandler`).
        let handlers = entries
            .iter()
            .position(|e| &*e.2 == "WideHandler")
            .map(|first| {
                let run = entries[first..]
                    .iter()
                    .take_while(|e| e.2.ends_with("Handler"))
                    .count();
                let last = &entries[first + run - 1];
                (entries[first].0, last.1)
            });
        Some(Builtins {
            entries,
            start,
            end,
            probe,
            handlers,
        })
    }

    /// The builtin whose code holds the file address `vaddr`.
    pub fn name_at(&self, vaddr: u64) -> Option<&Arc<str>> {
        let i = self.entries.partition_point(|e| e.0 <= vaddr);
        let (start, end, name) = self.entries.get(i.checked_sub(1)?)?;
        (*start <= vaddr && vaddr < *end).then_some(name)
    }

    /// How many builtins there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
