//! The assemblies of a process, as naming needs them: a `Module*` to its metadata (found
//! through the module's simple name, a pointer into its flat-mapped image), its file name,
//! its portable PDB when one lies next to it, and for ReadyToRun images their functions and
//! which method each one is.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferroscope_unwind_api::{MappedRange, ProcessMemory};

use crate::Error;
use crate::layout::Layout;
use crate::metadata::Metadata;
use crate::names::ModuleNames;
use crate::pdb::Pdb;
use crate::pe::{Image, Layout as PeLayout};
use crate::r2r::{self, EntryPoint, Header, RuntimeFunction, Window};

/// Parsed assemblies shared by every process (keyed by MVID: the same file in many
/// processes is parsed once).
#[derive(Debug, Default)]
pub struct SharedModules {
    by_mvid: Mutex<HashMap<[u8; 16], Arc<ModuleNames>>>,
}

/// Most assemblies kept across processes.
const SHARED_LIMIT: usize = 4096;
/// Largest portable PDB read.
const MAX_PDB: u64 = 64 << 20;

impl SharedModules {
    fn get_or_parse(&self, bytes: Vec<u8>) -> Result<Arc<ModuleNames>, Error> {
        let md = Metadata::parse(bytes, &[0; 64])?;
        let Some(mvid) = md.mvid() else {
            return Ok(Arc::new(ModuleNames::new(md)));
        };
        let mut map = self.by_mvid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = map.get(&mvid) {
            return Ok(Arc::clone(m));
        }
        if map.len() >= SHARED_LIMIT {
            map.clear();
        }
        let names = Arc::new(ModuleNames::new(md));
        map.insert(mvid, Arc::clone(&names));
        Ok(names)
    }

    /// Assemblies held.
    pub fn parsed(&self) -> usize {
        self.by_mvid.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// One assembly of a process.
#[derive(Debug)]
pub struct Module {
    /// Its names.
    pub names: Arc<ModuleNames>,
    /// Its file name (`hello.dll`).
    pub file: Arc<str>,
    /// Its portable PDB, when one is next to it.
    pub pdb: Option<Arc<Pdb>>,
}

/// A ReadyToRun image of a process.
#[derive(Debug)]
pub struct ReadyToRunImage {
    /// The assembly.
    pub module: Arc<Module>,
    /// Its functions, sorted.
    pub functions: Vec<RuntimeFunction>,
    /// Function index → method, sorted by function.
    pub methods: Vec<EntryPoint>,
}

/// Where a ReadyToRun image's `RUNTIME_FUNCTION` table is: (address, count).
pub fn runtime_function_table(mem: &dyn ProcessMemory, base: u64) -> Result<(u64, u32), Error> {
    let image = Image::read(mem, base, PeLayout::Mapped)?;
    let header = r2r_header(mem, &image)?;
    let (rva, size) = header
        .section(r2r::SECTION_RUNTIME_FUNCTIONS)
        .ok_or_else(|| Error::format("ReadyToRun header", "no RuntimeFunctions section"))?;
    Ok((base.wrapping_add(u64::from(rva)), size / 12))
}

fn r2r_header(mem: &dyn ProcessMemory, image: &Image) -> Result<Header, Error> {
    let at = image.cli.native_header.rva;
    if at == 0 {
        return Err(Error::format("CLI header", "no ReadyToRun header"));
    }
    let head = image.read_rva(mem, at, 16)?;
    let n = crate::metadata::le_u32(&head, 12).unwrap_or(0);
    Header::parse(&image.read_rva(mem, at, Header::size(n))?)
}

/// A process's mapped files, from the mappings the agent gave (and `/proc/PID/maps` when a
/// module was mapped since).
#[derive(Debug)]
pub struct Mappings {
    pid: u32,
    known: Vec<MappedRange>,
}

impl Mappings {
    /// The mappings of `pid` as last seen.
    pub fn new(pid: u32, known: &[MappedRange]) -> Mappings {
        Mappings {
            pid,
            known: known.to_vec(),
        }
    }

    /// Replaces them.
    pub fn update(&mut self, known: &[MappedRange]) {
        self.known = known.to_vec();
    }

    fn find(&self, addr: u64) -> Option<(u64, String)> {
        let i = self
            .known
            .iter()
            .position(|m| m.start <= addr && addr < m.end && !m.path.is_empty())?;
        // The mapping's start, or that of the adjacent mappings of the same file before it.
        let mut start = self.known[i].start;
        let path = self.known[i].path.clone();
        for m in self.known[..i].iter().rev() {
            if m.end == start && m.path == path {
                start = m.start;
            } else {
                break;
            }
        }
        Some((start, path))
    }

    /// The file mapping holding `addr`: (where the file's mapping starts, its path).
    fn file_at(&mut self, addr: u64) -> Option<(u64, String)> {
        if let Some(f) = self.find(addr) {
            return Some(f);
        }
        let text = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).ok()?;
        self.known = parse_maps(&text);
        self.find(addr)
    }
}

/// `/proc/PID/maps` lines as mappings.
pub fn parse_maps(text: &str) -> Vec<MappedRange> {
    text.lines()
        .filter_map(|l| {
            // Five fields, then the path (which may hold spaces).
            let mut rest = l.trim_start();
            let mut fields = [""; 5];
            for f in &mut fields {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                *f = &rest[..end];
                rest = rest[end..].trim_start();
            }
            let (s, e) = fields[0].split_once('-')?;
            Some(MappedRange {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                path: rest.trim_end().to_owned(),
                executable: fields[1].contains('x'),
            })
        })
        .collect()
}

/// The assemblies and ReadyToRun images of one process, cached.
#[derive(Debug)]
pub struct Modules {
    shared: Arc<SharedModules>,
    by_module: HashMap<u64, Arc<Module>>,
    failed: HashMap<u64, String>,
    images: HashMap<u64, Arc<ReadyToRunImage>>,
    pdbs: HashMap<String, Option<Arc<Pdb>>>,
    /// The process's mappings.
    pub mappings: Mappings,
}

/// Most modules, images and failures remembered per process.
const PER_PROCESS_LIMIT: usize = 8192;

impl Modules {
    /// Empty caches for a process.
    pub fn new(shared: Arc<SharedModules>, mappings: Mappings) -> Modules {
        Modules {
            shared,
            by_module: HashMap::new(),
            failed: HashMap::new(),
            images: HashMap::new(),
            pdbs: HashMap::new(),
            mappings,
        }
    }

    /// The assembly of `Module*` `module`.
    pub fn module(
        &mut self,
        mem: &dyn ProcessMemory,
        layout: &Layout,
        module: u64,
    ) -> Result<Arc<Module>, Error> {
        if let Some(m) = self.by_module.get(&module) {
            return Ok(Arc::clone(m));
        }
        if let Some(why) = self.failed.get(&module) {
            return Err(Error::format("module", why));
        }
        match self.load(mem, layout, module) {
            Ok(m) => {
                if self.by_module.len() >= PER_PROCESS_LIMIT {
                    self.by_module.clear();
                }
                self.by_module.insert(module, Arc::clone(&m));
                Ok(m)
            }
            Err(e) => {
                if self.failed.len() >= PER_PROCESS_LIMIT {
                    self.failed.clear();
                }
                self.failed.insert(module, e.to_string());
                Err(e)
            }
        }
    }

    fn load(
        &mut self,
        mem: &dyn ProcessMemory,
        layout: &Layout,
        module: u64,
    ) -> Result<Arc<Module>, Error> {
        let name = crate::method::module_name_address(mem, layout, module)?;
        let (start, path) = self.mappings.file_at(name).ok_or_else(|| {
            Error::format(
                "module",
                "its simple name is in no mapped file (an assembly loaded from bytes?)",
            )
        })?;
        let image = Image::detect(mem, start)?;
        let names = self.shared.get_or_parse(image.metadata(mem)?)?;
        let file: Arc<str> = Arc::from(path.rsplit('/').next().unwrap_or(&path));
        let pdb = self.pdb(mem.pid(), &path);
        Ok(Arc::new(Module { names, file, pdb }))
    }

    /// The portable PDB next to the assembly at `path` (read through the process's root).
    fn pdb(&mut self, pid: u32, path: &str) -> Option<Arc<Pdb>> {
        if let Some(p) = self.pdbs.get(path) {
            return p.clone();
        }
        let pdb_path = match path.rsplit_once('.') {
            Some((stem, _)) => format!("{stem}.pdb"),
            None => format!("{path}.pdb"),
        };
        let rooted = PathBuf::from(format!("/proc/{pid}/root{pdb_path}"));
        let read = |p: &std::path::Path| -> Option<Vec<u8>> {
            let meta = std::fs::metadata(p).ok()?;
            if meta.len() > MAX_PDB {
                return None;
            }
            std::fs::read(p).ok()
        };
        let pdb = read(&rooted)
            .or_else(|| read(std::path::Path::new(&pdb_path)))
            .and_then(|bytes| match Pdb::parse(bytes) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    tracing::debug!(
                        pid,
                        path = pdb_path,
                        "the PDB next to an assembly is not used: {e}"
                    );
                    None
                }
            });
        if self.pdbs.len() >= PER_PROCESS_LIMIT {
            self.pdbs.clear();
        }
        self.pdbs.insert(path.to_owned(), pdb.clone());
        pdb
    }

    /// The ReadyToRun image at `base` (a code range's start) of `Module*` `module`.
    pub fn image(
        &mut self,
        mem: &dyn ProcessMemory,
        layout: &Layout,
        base: u64,
        module: u64,
    ) -> Result<Arc<ReadyToRunImage>, Error> {
        if let Some(i) = self.images.get(&base) {
            return Ok(Arc::clone(i));
        }
        let m = self.module(mem, layout, module)?;
        let image = Image::read(mem, base, PeLayout::Mapped)?;
        let header = r2r_header(mem, &image)?;
        let section = |kind| -> Result<Option<(u32, Vec<u8>)>, Error> {
            match header.section(kind) {
                Some((rva, size)) => Ok(Some((rva, image.read_rva(mem, rva, size)?))),
                None => Ok(None),
            }
        };
        let functions = match section(r2r::SECTION_RUNTIME_FUNCTIONS)? {
            Some((_, b)) => r2r::runtime_functions(&b),
            None => Vec::new(),
        };
        let mut entries = Vec::new();
        if let Some((rva, bytes)) = section(r2r::SECTION_METHODDEF_ENTRYPOINTS)? {
            entries.extend(r2r::method_def_entry_points(Window { bytes: &bytes, rva }));
        }
        if let Some((rva, bytes)) = section(r2r::SECTION_INSTANCE_ENTRYPOINTS)? {
            entries.extend(r2r::instance_entry_points(Window { bytes: &bytes, rva }));
        }
        let img = Arc::new(ReadyToRunImage {
            module: m,
            functions,
            methods: r2r::method_map(entries),
        });
        if self.images.len() >= PER_PROCESS_LIMIT {
            self.images.clear();
        }
        self.images.insert(base, Arc::clone(&img));
        Ok(img)
    }

    /// Forgets the ReadyToRun images whose ranges went away.
    pub fn retain_images(&mut self, keep: impl Fn(u64) -> bool) {
        self.images.retain(|&base, _| keep(base));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_become_mappings() {
        let text = "7f2e19200000-7f2e19e2d000 r--s 00000000 fe:00 967334   /d/System.Private.CoreLib.dll\n\
                    7f2ea04e1000-7f2ea04e2000 r-xp 00001000 fe:00 10085137                   /tmp/dn/hello world.dll\n\
                    7ffd0000-7ffd1000 rw-p 00000000 00:00 0\n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].path, "/d/System.Private.CoreLib.dll");
        assert_eq!(
            (m[0].start, m[0].end, m[0].executable),
            (0x7f2e19200000, 0x7f2e19e2d000, false)
        );
        assert_eq!(m[1].path, "/tmp/dn/hello world.dll");
        assert!(m[1].executable);
        assert_eq!(m[2].path, "");
    }
}
