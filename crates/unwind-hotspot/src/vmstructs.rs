//! The JVM's description of itself: the `gHotSpotVMStructs`, `gHotSpotVMTypes`,
//! `gHotSpotVMIntConstants` and `gHotSpotVMLongConstants` tables that every HotSpot
//! `libjvm.so` exports for its serviceability agent, read from the process's memory.
//!
//! Each table is an array of entries whose layout the library also exports (the stride and the
//! offset of each member, in `gHotSpotVM*Entry*` variables), ending at an entry with a null
//! type (or name) pointer. The structs table gives every listed field's offset in its class,
//! or for a static field its address; the types table every listed class's size; the
//! constants tables named integers.

use std::collections::HashMap;

use ferroscope_unwind_api::{ElfFile, ProcessMemory};

use crate::Error;

/// Most entries read from one table (real ones hold about 2,000).
pub const MAX_ENTRIES: usize = 1 << 15;
/// Largest entry stride accepted (real entries are 24 to 56 bytes).
pub const MAX_STRIDE: u64 = 256;
/// Longest name read.
const MAX_NAME: usize = 256;
/// Entries read at once.
const BLOCK: usize = 64;

/// The exported variables that describe one table: where its base pointer is, and the
/// variables holding its stride and member offsets (virtual addresses in `libjvm.so`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableSymbols {
    /// The variable holding the table's address.
    pub base: u64,
    /// `...EntryArrayStride`.
    pub stride: u64,
    /// `...TypeNameOffset` (structs, types) or `...NameOffset` (constants).
    pub name: u64,
    /// `...FieldNameOffset` (structs only).
    pub field: u64,
    /// `...IsStaticOffset` (structs only).
    pub is_static: u64,
    /// `...OffsetOffset` (structs), `...SizeOffset` (types), `...ValueOffset` (constants).
    pub value: u64,
    /// `...AddressOffset` (structs only).
    pub address: u64,
    /// `...TypeStringOffset` (structs only).
    pub type_string: u64,
}

/// The four tables' variables in one `libjvm.so`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IntrospectionSymbols {
    /// `gHotSpotVMStructs` and its entry layout.
    pub structs: TableSymbols,
    /// `gHotSpotVMTypes` and its entry layout.
    pub types: TableSymbols,
    /// `gHotSpotVMIntConstants` and its entry layout.
    pub int_constants: TableSymbols,
    /// `gHotSpotVMLongConstants` and its entry layout.
    pub long_constants: TableSymbols,
}

impl IntrospectionSymbols {
    /// The variables from a file's `.dynsym`; `None` when any is missing (not a HotSpot
    /// `libjvm.so`, or one built without the serviceability tables).
    pub fn from_elf(file: &dyn ElfFile) -> Option<Self> {
        let s = |name: &str| file.exported_symbol(name).map(|s| s.address);
        let e = |table: &str, member: &str| s(&format!("gHotSpotVM{table}Entry{member}"));
        Some(IntrospectionSymbols {
            structs: TableSymbols {
                base: s("gHotSpotVMStructs")?,
                stride: e("Struct", "ArrayStride")?,
                name: e("Struct", "TypeNameOffset")?,
                field: e("Struct", "FieldNameOffset")?,
                is_static: e("Struct", "IsStaticOffset")?,
                value: e("Struct", "OffsetOffset")?,
                address: e("Struct", "AddressOffset")?,
                type_string: e("Struct", "TypeStringOffset")?,
            },
            types: TableSymbols {
                base: s("gHotSpotVMTypes")?,
                stride: e("Type", "ArrayStride")?,
                name: e("Type", "TypeNameOffset")?,
                value: e("Type", "SizeOffset")?,
                ..TableSymbols::default()
            },
            int_constants: TableSymbols {
                base: s("gHotSpotVMIntConstants")?,
                stride: e("IntConstant", "ArrayStride")?,
                name: e("IntConstant", "NameOffset")?,
                value: e("IntConstant", "ValueOffset")?,
                ..TableSymbols::default()
            },
            long_constants: TableSymbols {
                base: s("gHotSpotVMLongConstants")?,
                stride: e("LongConstant", "ArrayStride")?,
                name: e("LongConstant", "NameOffset")?,
                value: e("LongConstant", "ValueOffset")?,
                ..TableSymbols::default()
            },
        })
    }
}

/// A field of a class in the structs table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// An instance field at this byte offset.
    Offset(u64),
    /// A static field at this process address.
    Address(u64),
}

/// The four tables of one JVM process.
#[derive(Debug, Clone, Default)]
pub struct VmStructs {
    fields: HashMap<(String, String), (Field, String)>,
    sizes: HashMap<String, u64>,
    ints: HashMap<String, i64>,
    longs: HashMap<String, u64>,
}

impl VmStructs {
    /// Reads the tables of a process that maps `libjvm.so` at `bias` (process address of
    /// virtual address `v` is `v + bias`). Fails when the tables are not set up yet (the
    /// library's static initialisers have not run) or hold garbage.
    pub fn read(
        mem: &dyn ProcessMemory,
        symbols: &IntrospectionSymbols,
        bias: u64,
    ) -> Result<VmStructs, Error> {
        let mut names = Names::default();
        let mut out = VmStructs::default();
        for e in read_table(mem, &symbols.structs, bias, true, &mut names)? {
            let Some(field) = e.field else { continue };
            let f = if e.is_static {
                Field::Address(e.address)
            } else {
                Field::Offset(e.value)
            };
            out.fields.insert((e.name, field), (f, e.type_string));
        }
        for e in read_table(mem, &symbols.types, bias, false, &mut names)? {
            out.sizes.insert(e.name, e.value);
        }
        for e in read_table(mem, &symbols.int_constants, bias, false, &mut names)? {
            out.ints.insert(e.name, i64::from(e.value as u32 as i32));
        }
        for e in read_table(mem, &symbols.long_constants, bias, false, &mut names)? {
            out.longs.insert(e.name, e.value);
        }
        if out.fields.is_empty() || out.sizes.is_empty() {
            return Err(Error::invalid(
                "VMStructs tables",
                symbols.structs.base.wrapping_add(bias),
                "they are empty",
            ));
        }
        Ok(out)
    }

    /// A table built from lists (tests and fuzzing).
    pub fn from_parts(
        fields: impl IntoIterator<Item = ((String, String), (Field, String))>,
        sizes: impl IntoIterator<Item = (String, u64)>,
        ints: impl IntoIterator<Item = (String, i64)>,
    ) -> VmStructs {
        VmStructs {
            fields: fields.into_iter().collect(),
            sizes: sizes.into_iter().collect(),
            ints: ints.into_iter().collect(),
            longs: HashMap::new(),
        }
    }

    /// The tables as text, one entry per line, sorted (`F class field type offset` for an
    /// instance field, `S class field type address` for a static one, `T type size`,
    /// `I name value`, `L name value`; spaces in types written `~`): what tests keep of a
    /// real JVM's tables.
    pub fn to_text(&self) -> String {
        let mut lines: Vec<String> = Vec::new();
        for ((class, field), (f, ty)) in &self.fields {
            let ty = if ty.is_empty() { "-" } else { ty.as_str() };
            let ty = ty.replace(' ', "~");
            lines.push(match f {
                Field::Offset(o) => format!("F {class} {field} {ty} {o}"),
                Field::Address(a) => format!("S {class} {field} {ty} {a:#x}"),
            });
        }
        lines.extend(
            self.sizes
                .iter()
                .map(|(t, s)| format!("T {} {s}", t.replace(' ', "~"))),
        );
        lines.extend(self.ints.iter().map(|(n, v)| format!("I {n} {v}")));
        lines.extend(self.longs.iter().map(|(n, v)| format!("L {n} {v}")));
        lines.sort();
        lines.join("\n") + "\n"
    }

    /// Parses [`VmStructs::to_text`]'s format; lines it does not understand are skipped.
    pub fn from_text(text: &str) -> VmStructs {
        let mut out = VmStructs::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let num = |s: &str| match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => s.parse().ok(),
            };
            let ty = |s: &str| {
                if s == "-" {
                    String::new()
                } else {
                    s.replace('~', " ")
                }
            };
            match f.as_slice() {
                ["F", c, n, t, v] => {
                    if let Some(v) = num(v) {
                        out.fields
                            .insert((c.to_string(), n.to_string()), (Field::Offset(v), ty(t)));
                    }
                }
                ["S", c, n, t, v] => {
                    if let Some(v) = num(v) {
                        out.fields
                            .insert((c.to_string(), n.to_string()), (Field::Address(v), ty(t)));
                    }
                }
                ["T", t, v] => {
                    if let Some(v) = num(v) {
                        out.sizes.insert(t.replace('~', " "), v);
                    }
                }
                ["I", n, v] => {
                    if let Ok(v) = v.parse() {
                        out.ints.insert(n.to_string(), v);
                    }
                }
                ["L", n, v] => {
                    if let Ok(v) = v.parse() {
                        out.longs.insert(n.to_string(), v);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The offset of an instance field.
    pub fn offset(&self, class: &str, field: &str) -> Option<u64> {
        match self.fields.get(&(class.to_owned(), field.to_owned()))?.0 {
            Field::Offset(o) => Some(o),
            Field::Address(_) => None,
        }
    }

    /// The C++ type of a field as the table spells it (`int`, `int16_t`, `u2`...).
    pub fn type_of(&self, class: &str, field: &str) -> Option<&str> {
        self.fields
            .get(&(class.to_owned(), field.to_owned()))
            .map(|(_, t)| t.as_str())
    }

    /// The address of a static field.
    pub fn address(&self, class: &str, field: &str) -> Option<u64> {
        match self.fields.get(&(class.to_owned(), field.to_owned()))?.0 {
            Field::Address(a) => Some(a),
            Field::Offset(_) => None,
        }
    }

    /// Every static field of a class (name, address), sorted by name.
    pub fn statics_of(&self, class: &str) -> Vec<(&str, u64)> {
        let mut out: Vec<(&str, u64)> = self
            .fields
            .iter()
            .filter(|((c, _), _)| c == class)
            .filter_map(|((_, f), (v, _))| match v {
                Field::Address(a) => Some((f.as_str(), *a)),
                Field::Offset(_) => None,
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// The size of a type.
    pub fn size(&self, type_name: &str) -> Option<u64> {
        self.sizes.get(type_name).copied()
    }

    /// A named int constant.
    pub fn int_constant(&self, name: &str) -> Option<i64> {
        self.ints.get(name).copied()
    }

    /// A named long constant.
    pub fn long_constant(&self, name: &str) -> Option<u64> {
        self.longs.get(name).copied()
    }

    /// Entries of the structs table.
    pub fn field_count(&self) -> usize {
        self.fields.len()
    }
}

/// One entry, decoded.
struct Entry {
    name: String,
    field: Option<String>,
    type_string: String,
    is_static: bool,
    value: u64,
    address: u64,
}

/// Names read so far, by address (type names repeat in every entry of a class).
#[derive(Default)]
struct Names(HashMap<u64, String>);

impl Names {
    fn get(&mut self, mem: &dyn ProcessMemory, addr: u64) -> Result<String, Error> {
        if let Some(s) = self.0.get(&addr) {
            return Ok(s.clone());
        }
        let s = mem
            .read_c_string(addr, MAX_NAME)
            .map_err(Error::read("VMStructs name", addr))?;
        self.0.insert(addr, s.clone());
        Ok(s)
    }
}

fn read_u64(mem: &dyn ProcessMemory, addr: u64, what: &'static str) -> Result<u64, Error> {
    mem.read_u64(addr).map_err(Error::read(what, addr))
}

fn word(bytes: &[u8], off: u64) -> u64 {
    usize::try_from(off)
        .ok()
        .and_then(|o| bytes.get(o..o.checked_add(8)?))
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

fn read_table(
    mem: &dyn ProcessMemory,
    t: &TableSymbols,
    bias: u64,
    structs: bool,
    names: &mut Names,
) -> Result<Vec<Entry>, Error> {
    const WHAT: &str = "VMStructs table layout";
    let var = |v: u64| read_u64(mem, v.wrapping_add(bias), WHAT);
    let base = var(t.base)?;
    let stride = var(t.stride)?;
    let name_off = var(t.name)?;
    let value_off = var(t.value)?;
    let (field_off, static_off, address_off, type_off) = if structs {
        (
            var(t.field)?,
            var(t.is_static)?,
            var(t.address)?,
            var(t.type_string)?,
        )
    } else {
        (0, 0, 0, 0)
    };
    let offsets = [
        name_off,
        value_off,
        field_off,
        static_off,
        address_off,
        type_off,
    ];
    if base == 0
        || !(8..=MAX_STRIDE).contains(&stride)
        || offsets.iter().any(|&o| o.saturating_add(8) > stride)
    {
        return Err(Error::invalid(
            "VMStructs table",
            base,
            format!(
                "stride {stride} and member offsets {offsets:?} do not fit (the JVM may not \
                 have initialised its tables yet)"
            ),
        ));
    }
    let stride_us = stride as usize;
    let mut out = Vec::new();
    let mut block = vec![0u8; stride_us * BLOCK];
    let mut at = base;
    'blocks: while out.len() < MAX_ENTRIES {
        // A block may run past the table's end into unmapped memory: then entry by entry.
        let got = if mem.read_exact_at(at, &mut block).is_ok() {
            BLOCK
        } else {
            mem.read_exact_at(at, &mut block[..stride_us])
                .map_err(Error::read("VMStructs entry", at))?;
            1
        };
        for i in 0..got {
            let e = &block[i * stride_us..(i + 1) * stride_us];
            let name_ptr = word(e, name_off);
            if name_ptr == 0 {
                break 'blocks;
            }
            let name = names.get(mem, name_ptr)?;
            let field = if structs {
                let p = word(e, field_off);
                if p == 0 {
                    None
                } else {
                    Some(names.get(mem, p)?)
                }
            } else {
                None
            };
            let type_string = match word(e, type_off) {
                p if structs && p != 0 => names.get(mem, p)?,
                _ => String::new(),
            };
            out.push(Entry {
                name,
                field,
                type_string,
                is_static: structs && (word(e, static_off) as u32) != 0,
                value: word(e, value_off),
                address: if structs { word(e, address_off) } else { 0 },
            });
            if out.len() >= MAX_ENTRIES {
                break 'blocks;
            }
        }
        at = at.wrapping_add((got * stride_us) as u64);
    }
    Ok(out)
}
