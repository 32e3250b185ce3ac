//! A small reader of BTF type information, enough to check ABI mirrors in tests against
//! what clang actually compiled (struct sizes, member offsets, array lengths, enum values).
//! Runtime crates use it to check their own kernel-side structures.
//!
//! It is written for objects our build produced, not for hostile input: malformed BTF gives
//! `None`, never a panic.

use object::{Object, ObjectSection};

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// A struct member.
#[derive(Debug)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// Offset from the struct's start, in bits.
    pub bit_offset: u32,
    /// Element count when the member is an array.
    pub array_len: Option<u32>,
}

/// A struct's size and members.
#[derive(Debug)]
pub struct StructLayout {
    /// Size in bytes.
    pub size: u32,
    /// Members in declaration order.
    pub members: Vec<Member>,
}

#[derive(Debug)]
enum Type {
    Array {
        nelems: u32,
    },
    Struct {
        name: String,
        size: u32,
        members: Vec<(String, u32, u32)>,
    },
    Enum {
        name: String,
        values: Vec<(String, i64)>,
    },
    Other,
}

/// The types of one BTF blob.
#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>, // index = type id - 1
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl Btf {
    /// The BTF of an ELF object (its `.BTF` section).
    pub fn from_elf(elf: &[u8]) -> Option<Btf> {
        let file = object::File::parse(elf).ok()?;
        let data = file.section_by_name(".BTF")?.data().ok()?;
        Btf::parse(data)
    }

    /// Parses raw BTF.
    pub fn parse(b: &[u8]) -> Option<Btf> {
        if u16_at(b, 0)? != BTF_MAGIC {
            return None;
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types = b.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
        let strings = b.get(hdr_len + str_off..hdr_len + str_off + str_len)?;
        let name = |off: u32| -> String {
            let s = strings.get(off as usize..).unwrap_or(&[]);
            let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < types.len() {
            let name_off = u32_at(types, pos)?;
            let info = u32_at(types, pos + 4)?;
            let size = u32_at(types, pos + 8)?;
            pos += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 == 1;
            let ty = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => {
                    pos += 4;
                    Type::Other
                }
                KIND_ARRAY => {
                    let nelems = u32_at(types, pos + 8)?;
                    pos += 12;
                    Type::Array { nelems }
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let m_name = u32_at(types, pos)?;
                        let m_type = u32_at(types, pos + 4)?;
                        let mut off = u32_at(types, pos + 8)?;
                        if kflag {
                            off &= 0x00ff_ffff; // the top byte holds a bitfield size
                        }
                        members.push((name(m_name), m_type, off));
                        pos += 12;
                    }
                    Type::Struct {
                        name: name(name_off),
                        size,
                        members,
                    }
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let v = u32_at(types, pos + 4)?;
                        let v = if kflag {
                            i64::from(v as i32)
                        } else {
                            i64::from(v)
                        };
                        values.push((name(u32_at(types, pos)?), v));
                        pos += 8;
                    }
                    Type::Enum {
                        name: name(name_off),
                        values,
                    }
                }
                KIND_FUNC_PROTO => {
                    pos += 8 * vlen;
                    Type::Other
                }
                KIND_DATASEC | KIND_ENUM64 => {
                    pos += 12 * vlen;
                    Type::Other
                }
                _ => Type::Other, // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG: no tail
            };
            out.push(ty);
        }
        Some(Btf { types: out })
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// The layout of the struct named `wanted`.
    pub fn struct_layout(&self, wanted: &str) -> Option<StructLayout> {
        self.types.iter().find_map(|t| match t {
            Type::Struct {
                name,
                size,
                members,
            } if name == wanted => Some(StructLayout {
                size: *size,
                members: members
                    .iter()
                    .map(|(n, ty, off)| Member {
                        name: n.clone(),
                        bit_offset: *off,
                        array_len: match self.get(*ty) {
                            Some(Type::Array { nelems }) => Some(*nelems),
                            _ => None,
                        },
                    })
                    .collect(),
            }),
            _ => None,
        })
    }

    /// The enumerators of the enum named `wanted`.
    pub fn enum_values(&self, wanted: &str) -> Option<Vec<(String, i64)>> {
        self.types.iter().find_map(|t| match t {
            Type::Enum { name, values } if name == wanted => Some(values.clone()),
            _ => None,
        })
    }
}

impl Btf {
    /// Checks a Rust mirror against the struct `c_name`: its size, and the byte offset of
    /// each named field (every C member must be listed, in order). The error says what
    /// differs.
    pub fn check_struct(
        &self,
        c_name: &str,
        rust_size: usize,
        rust_fields: &[(&str, usize)],
    ) -> Result<(), String> {
        let layout = self
            .struct_layout(c_name)
            .ok_or_else(|| format!("struct {c_name} is not in the object's BTF"))?;
        if layout.size as usize != rust_size {
            return Err(format!(
                "struct {c_name}: C has {} bytes, the Rust mirror {rust_size}",
                layout.size
            ));
        }
        let c: Vec<(&str, usize)> = layout
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.bit_offset as usize / 8))
            .collect();
        if c != rust_fields {
            return Err(format!(
                "struct {c_name}: C members (name, offset) {c:?} differ from the Rust mirror's {rust_fields:?}"
            ));
        }
        Ok(())
    }

    /// Checks that the enum `c_name` has exactly these enumerators and values.
    pub fn check_enum(&self, c_name: &str, expected: &[(&str, i64)]) -> Result<(), String> {
        let values = self
            .enum_values(c_name)
            .ok_or_else(|| format!("enum {c_name} is not in the object's BTF"))?;
        let got: Vec<(&str, i64)> = values.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        if got != expected {
            return Err(format!(
                "enum {c_name}: C has {got:?}, the Rust mirror {expected:?}"
            ));
        }
        Ok(())
    }

    /// The element count of member `member` of struct `c_name`, when it is an array.
    pub fn array_len(&self, c_name: &str, member: &str) -> Option<u32> {
        self.struct_layout(c_name)?
            .members
            .into_iter()
            .find(|m| m.name == member)?
            .array_len
    }
}
