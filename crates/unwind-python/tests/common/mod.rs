//! Shared by the integration tests: finding installed CPythons and reading struct layouts
//! from their DWARF.
#![allow(dead_code, clippy::print_stderr)]

pub mod debian;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ferroscope_unwind_api::{ElfFile, SymbolRange};
use ferroscope_unwind_python::{PyVersion, version_from_path};
use gimli::{AttributeValue, EndianSlice, LittleEndian, UnitOffset};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

/// An `ElfFile` over a file read from disk, as the agent's over a mapped file: symbols of
/// `.dynsym`, `.symtab` and, when given, a debug file's `.symtab`; CFI functions from
/// `ferroscope-unwind-native`.
pub struct Elf<'a> {
    path: String,
    file: object::File<'a>,
    debug: Option<object::File<'a>>,
    functions: Vec<std::ops::Range<u64>>,
}

impl<'a> Elf<'a> {
    pub fn new(path: &str, bytes: &'a [u8]) -> Elf<'a> {
        Elf {
            path: path.to_owned(),
            file: object::File::parse(bytes).expect("an ELF file"),
            debug: None,
            functions: ferroscope_unwind_native::function_ranges(bytes).unwrap_or_default(),
        }
    }

    /// With the symbols of a separate debug file too.
    pub fn with_debug_file(mut self, debug: &'a [u8]) -> Elf<'a> {
        self.debug = Some(object::File::parse(debug).expect("an ELF debug file"));
        self
    }
}

fn find_symbol<'d>(
    symbols: impl Iterator<Item = object::Symbol<'d, 'd>>,
    name: &str,
) -> Option<SymbolRange> {
    symbols
        .filter(|s| s.name() == Ok(name) && s.is_definition())
        .map(|s| SymbolRange {
            address: s.address(),
            size: s.size(),
        })
        .next()
}

impl ElfFile for Elf<'_> {
    fn path(&self) -> &str {
        &self.path
    }
    fn symbol(&self, name: &str) -> Option<SymbolRange> {
        self.exported_symbol(name)
            .or_else(|| find_symbol(self.file.symbols(), name))
            .or_else(|| find_symbol(self.debug.as_ref()?.symbols(), name))
    }
    fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
        find_symbol(self.file.dynamic_symbols(), name)
    }
    fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool {
        self.file.segments().any(|seg| {
            let Ok(data) = seg.data() else { return false };
            let start = seg.address();
            if vaddr < start || vaddr - start + buf.len() as u64 > data.len() as u64 {
                return false;
            }
            let off = (vaddr - start) as usize;
            buf.copy_from_slice(&data[off..off + buf.len()]);
            true
        })
    }
    fn cfi_function(&self, vaddr: u64) -> Option<SymbolRange> {
        let i = self
            .functions
            .partition_point(|r| r.start <= vaddr)
            .checked_sub(1)?;
        let r = &self.functions[i];
        (vaddr < r.end).then(|| SymbolRange {
            address: r.start,
            size: r.end - r.start,
        })
    }
}

/// One CPython installation with a shared libpython.
#[derive(Debug, Clone)]
pub struct Installed {
    pub version: PyVersion,
    pub exe: PathBuf,
    pub lib: PathBuf,
}

/// Every CPython 3 under `$FERROSCOPE_PYENV_VERSIONS` (default `/root/.pyenv/versions`).
pub fn installed_pythons() -> Vec<Installed> {
    let root = ferroscope_test_harness::require::pyenv_versions();
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return out;
    };
    for dir in dirs.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        let parts: Vec<u8> = name.split('.').filter_map(|p| p.parse().ok()).collect();
        let [3, minor, micro] = parts[..] else {
            continue;
        };
        let exe = dir.path().join(format!("bin/python3.{minor}"));
        let lib = std::fs::read_dir(dir.path().join("lib"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let f = p.file_name().unwrap_or_default().to_string_lossy();
                f.ends_with(".so.1.0")
                    && version_from_path(&p.to_string_lossy()).is_some_and(|v| v.minor == minor)
            });
        if let Some(lib) = lib
            && exe.exists()
        {
            out.push(Installed {
                version: PyVersion {
                    major: 3,
                    minor,
                    micro,
                },
                exe,
                lib,
            });
        }
    }
    out.sort_by_key(|p| p.version);
    out
}

/// The CPython minor versions the tests check on pyenv builds (3.14 and 3.15 are Debian's:
/// [`debian`]).
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u8> = 6..=13;

/// CPython 3.`minor` with its shared libpython, or `None` after a skip (logged; a failure
/// when tests are required, `FERROSCOPE_REQUIRE=1`).
pub fn python(minor: u8) -> Option<Installed> {
    match installed_pythons()
        .into_iter()
        .rev()
        .find(|p| p.version.minor == minor)
    {
        Some(p) => Some(p),
        None => {
            ferroscope_test_harness::skip(format!(
                "no CPython 3.{minor} with a shared libpython under {} (FERROSCOPE_PYENV_VERSIONS)",
                ferroscope_test_harness::require::pyenv_versions().display()
            ));
            None
        }
    }
}

/// Every supported CPython installed here; each missing one is a skip (logged; a failure
/// when tests are required). `_test` names the caller, for older call sites.
pub fn pythons_or_skip(_test: &str) -> Vec<Installed> {
    SUPPORTED_MINORS.filter_map(python).collect()
}

/// A symbol's address (link-time) in `.symtab` or `.dynsym`.
pub fn symbol_address(file: &object::File<'_>, name: &str) -> Option<u64> {
    file.symbols()
        .chain(file.dynamic_symbols())
        .find(|s| s.name() == Ok(name))
        .map(|s| s.address())
}

/// A struct's layout as DWARF describes it.
#[derive(Debug, Clone, Default)]
pub struct StructInfo {
    pub size: Option<u64>,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub name: Option<String>,
    pub offset: u64,
    /// Bit offset inside the containing struct (bit fields only).
    pub bit_offset: Option<u64>,
    pub bit_size: Option<u64>,
    pub ty: Option<Box<StructInfo>>,
}

impl StructInfo {
    /// Member at a dotted path ("interpreters.head"); anonymous members are searched
    /// transparently. Returns (byte offset, member).
    pub fn member(&self, path: &str) -> Option<(u64, &Member)> {
        let (first, rest) = match path.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (path, None),
        };
        for m in &self.members {
            if m.name.as_deref() == Some(first) {
                return match rest {
                    None => Some((m.offset, m)),
                    Some(rest) => {
                        let (o, mm) = m.ty.as_ref()?.member(rest)?;
                        Some((m.offset + o, mm))
                    }
                };
            }
            if m.name.is_none()
                && let Some(ty) = &m.ty
                && let Some((o, mm)) = ty.member(path)
            {
                return Some((m.offset + o, mm));
            }
        }
        None
    }

    pub fn offset(&self, path: &str) -> Option<u64> {
        self.member(path).map(|(o, _)| o)
    }
}

#[derive(Debug, Clone)]
struct Node {
    tag: gimli::DwTag,
    name: Option<String>,
    ty: Option<UnitOffset>,
    loc: Option<u64>,
    bit_off: Option<u64>,
    data_bit_off: Option<u64>,
    bit_size: Option<u64>,
    byte_size: Option<u64>,
    decl: bool,
    children: Vec<UnitOffset>,
}

/// Struct layouts by name (struct tag or typedef name) from a file's DWARF.
pub fn struct_layouts(path: &Path, names: &[&str]) -> HashMap<String, StructInfo> {
    dwarf_info(path, names, &[]).0
}

/// Struct layouts by name and the values of the named enumerators seen while looking for them
/// (the search stops once every struct is found).
pub fn dwarf_info(
    path: &Path,
    names: &[&str],
    enumerators: &[&str],
) -> (HashMap<String, StructInfo>, HashMap<String, i64>) {
    let mut enums: HashMap<String, i64> = HashMap::new();
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let file =
        object::File::parse(&*data).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
        Ok(file
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[])))
    };
    let owned = gimli::DwarfSections::load(load).expect("dwarf");
    let dwarf = owned.borrow(|s| EndianSlice::new(s, LittleEndian));
    let mut found: HashMap<String, StructInfo> = HashMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next().expect("unit header") {
        if found.len() == names.len() {
            break;
        }
        let unit = dwarf.unit(header).expect("unit");
        let mut nodes: HashMap<UnitOffset, Node> = HashMap::new();
        let mut parents: Vec<Option<UnitOffset>> = Vec::new();
        let mut cursor = unit.entries();
        while let Some(e) = cursor.next_dfs().expect("dfs") {
            let depth = e.depth() as usize;
            parents.truncate(depth);
            let tag = e.tag();
            let keep = matches!(
                tag,
                gimli::DW_TAG_structure_type
                    | gimli::DW_TAG_union_type
                    | gimli::DW_TAG_typedef
                    | gimli::DW_TAG_member
                    | gimli::DW_TAG_const_type
                    | gimli::DW_TAG_volatile_type
                    | gimli::DW_TAG_atomic_type
            );
            let parent = parents.last().copied().flatten();
            if tag == gimli::DW_TAG_enumerator
                && let Some(name) = e
                    .attr_value(gimli::DW_AT_name)
                    .and_then(|v| dwarf.attr_string(&unit, v).ok())
                && let Ok(name) = name.to_string()
                && enumerators.contains(&name)
                && let Some(v) = e.attr_value(gimli::DW_AT_const_value)
            {
                let v = v.sdata_value().or(v.udata_value().map(|u| u as i64));
                if let Some(v) = v {
                    enums.insert(name.to_string(), v);
                }
            }
            if keep {
                let mut n = Node {
                    tag,
                    name: None,
                    ty: None,
                    loc: None,
                    bit_off: None,
                    data_bit_off: None,
                    bit_size: None,
                    byte_size: None,
                    decl: false,
                    children: Vec::new(),
                };
                let udata = |v: Option<AttributeValue<_>>| v.and_then(|v| v.udata_value());
                n.name = e
                    .attr_value(gimli::DW_AT_name)
                    .and_then(|v| dwarf.attr_string(&unit, v).ok())
                    .map(|s| s.to_string_lossy().into_owned());
                n.ty = match e.attr_value(gimli::DW_AT_type) {
                    Some(AttributeValue::UnitRef(o)) => Some(o),
                    _ => None,
                };
                n.loc = udata(e.attr_value(gimli::DW_AT_data_member_location));
                n.data_bit_off = udata(e.attr_value(gimli::DW_AT_data_bit_offset));
                n.bit_off = udata(e.attr_value(gimli::DW_AT_bit_offset));
                n.bit_size = udata(e.attr_value(gimli::DW_AT_bit_size));
                n.byte_size = udata(e.attr_value(gimli::DW_AT_byte_size));
                n.decl = e.attr_value(gimli::DW_AT_declaration).is_some();
                let off = e.offset();
                if let Some(p) = parent
                    && let Some(pn) = nodes.get_mut(&p)
                {
                    pn.children.push(off);
                }
                nodes.insert(off, n);
                parents.push(Some(off));
            } else {
                parents.push(None);
            }
        }
        for &want in names {
            if found.contains_key(want) {
                continue;
            }
            let hit = nodes.iter().find_map(|(&off, n)| {
                if n.name.as_deref() != Some(want) {
                    return None;
                }
                let def = resolve(&nodes, off)?;
                let d = &nodes[&def];
                (!d.decl && !d.children.is_empty()).then_some(def)
            });
            if let Some(def) = hit {
                found.insert(want.to_string(), build(&nodes, def, 0));
            }
        }
    }
    (found, enums)
}

/// Follows typedef/const/volatile to a struct or union definition.
fn resolve(nodes: &HashMap<UnitOffset, Node>, mut off: UnitOffset) -> Option<UnitOffset> {
    for _ in 0..8 {
        let n = nodes.get(&off)?;
        match n.tag {
            gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type => return Some(off),
            _ => off = n.ty?,
        }
    }
    None
}

fn build(nodes: &HashMap<UnitOffset, Node>, off: UnitOffset, depth: u32) -> StructInfo {
    let n = &nodes[&off];
    let members = n
        .children
        .iter()
        .filter_map(|c| nodes.get(c))
        .filter(|m| m.tag == gimli::DW_TAG_member)
        .map(|m| {
            let ty = (depth < 4)
                .then(|| m.ty.and_then(|t| resolve(nodes, t)))
                .flatten()
                .map(|t| Box::new(build(nodes, t, depth + 1)));
            let storage = m.byte_size.unwrap_or(4);
            let bit_offset = m.data_bit_off.or_else(|| {
                // DWARF 4: bits counted from the most significant bit of the storage unit.
                m.bit_off
                    .map(|b| m.loc.unwrap_or(0) * 8 + storage * 8 - b - m.bit_size.unwrap_or(0))
            });
            Member {
                name: m.name.clone(),
                offset: m.loc.unwrap_or_else(|| bit_offset.unwrap_or(0) / 8),
                bit_offset,
                bit_size: m.bit_size,
                ty,
            }
        })
        .collect();
    StructInfo {
        size: n.byte_size,
        members,
    }
}

/// Run-time address of libpython's first byte (its load bias) in process `pid`.
pub fn load_bias(pid: u32, lib: &std::path::Path, file: &object::File<'_>) -> u64 {
    let lib = std::fs::canonicalize(lib).expect("canonical lib path");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let start = maps
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 6
                && f[5] == lib.to_string_lossy()
                && u64::from_str_radix(f[2], 16) == Ok(0))
            .then(|| u64::from_str_radix(f[0].split('-').next()?, 16).ok())
            .flatten()
        })
        .unwrap_or_else(|| panic!("{} not mapped at offset 0 in {pid}", lib.display()));
    let first_vaddr = file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
    start - first_vaddr
}
