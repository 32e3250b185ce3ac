//! Java methods as a profile names them, read from a JVM's metaspace: the holder class's
//! name, the method's name and signature (constant pool entries), the source file and the
//! line number table.
//!
//! `Method` → `_constMethod` (`ConstMethod`: name and signature indexes, bytecode size,
//! flags; the bytecodes and then the compressed line table follow it) → `_constants`
//! (`ConstantPool`: its slots follow it; `_pool_holder` the class) → `Klass::_name`, a
//! `Symbol` (a length, then the bytes, modified UTF-8).

use ferroscope_unwind_api::ProcessMemory;

use crate::Error;
use crate::layout::Layout;
use crate::stream;

/// Longest symbol read (HotSpot's own limit is 65535 bytes).
pub const MAX_SYMBOL: usize = 65535;
/// Largest line table read, in bytes.
pub const MAX_LINE_TABLE: usize = 1 << 16;

/// What a profile needs of one method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodInfo {
    /// The holder class, dotted (`com.example.Shop`; a hidden class without its address
    /// suffix).
    pub class: String,
    /// The method's name (`checkout`, `<init>`, `lambda$main$0`).
    pub name: String,
    /// The method's descriptor (`(I)J`).
    pub signature: String,
    /// The source file's name (`Shop.java`), empty when the class has none.
    pub file: String,
    /// The line number table: (first bytecode index, line) pairs.
    pub lines: Vec<(u32, u32)>,
    /// The smallest line of the table (0 without one).
    pub first_line: u32,
    /// The method's `ConstMethod` (its identity check).
    pub const_method: u64,
}

impl MethodInfo {
    /// `com.example.Shop.checkout`.
    pub fn qualified_name(&self) -> String {
        if self.class.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.class, self.name)
        }
    }

    /// The source line of the bytecode at `bci`; the method's first line when the index is
    /// unknown or before every entry, 0 without a table.
    pub fn line(&self, bci: Option<u32>) -> u32 {
        bci.and_then(|b| stream::line_for_bci(&self.lines, b))
            .unwrap_or(self.first_line)
    }
}

fn u16_at(b: &[u8], off: u64) -> u16 {
    usize::try_from(off)
        .ok()
        .and_then(|o| b.get(o..o.checked_add(2)?))
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: u64) -> u32 {
    usize::try_from(off)
        .ok()
        .and_then(|o| b.get(o..o.checked_add(4)?))
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: u64) -> u64 {
    usize::try_from(off)
        .ok()
        .and_then(|o| b.get(o..o.checked_add(8)?))
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}

fn read_vec(
    mem: &dyn ProcessMemory,
    addr: u64,
    len: u64,
    what: &'static str,
) -> Result<Vec<u8>, Error> {
    let mut b = vec![0u8; len as usize];
    mem.read_exact_at(addr, &mut b)
        .map_err(Error::read(what, addr))?;
    Ok(b)
}

/// The `ConstMethod` of the `Method` at `method`.
pub fn const_method_of(mem: &dyn ProcessMemory, l: &Layout, method: u64) -> Result<u64, Error> {
    if method < 0x1000 {
        return Err(Error::invalid("Method", method, "not a pointer"));
    }
    let at = method.wrapping_add(l.method_const_method);
    let cm = mem
        .read_u64(at)
        .map_err(Error::read("Method::_constMethod", at))?;
    if cm < 0x1000 {
        return Err(Error::invalid("Method", method, "no ConstMethod"));
    }
    Ok(cm)
}

/// Reads the `Symbol` at `addr` (lossy UTF-8: modified UTF-8 differs only for NUL and
/// characters outside the BMP).
pub fn read_symbol(mem: &dyn ProcessMemory, l: &Layout, addr: u64) -> Result<String, Error> {
    const WHAT: &str = "Symbol";
    if addr < 0x1000 {
        return Err(Error::invalid(WHAT, addr, "not a pointer"));
    }
    let head = read_vec(mem, addr, l.symbol_length + 2, WHAT)?;
    let len = u16_at(&head, l.symbol_length) as usize;
    let body = read_vec(
        mem,
        addr.wrapping_add(l.symbol_body),
        len.min(MAX_SYMBOL) as u64,
        WHAT,
    )?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The symbol in slot `index` of the constant pool at `cp`.
fn cp_symbol(mem: &dyn ProcessMemory, l: &Layout, cp: u64, index: u16) -> Result<String, Error> {
    let slot = cp
        .wrapping_add(l.cp_size)
        .wrapping_add(8 * u64::from(index));
    let sym = mem
        .read_u64(slot)
        .map_err(Error::read("constant pool slot", slot))?;
    read_symbol(mem, l, sym & !1)
}

/// A class name as Java writes it: dots for slashes, and a hidden class without its
/// `+0x...` address suffix (a new one per class definition, which would make every run's
/// names differ).
pub fn java_class_name(internal: &str) -> String {
    let base = match internal.find("+0x") {
        Some(i) => &internal[..i],
        None => internal,
    };
    base.replace('/', ".")
}

/// Reads the method at `method`. Every read is bounded; garbage gives an error.
pub fn read_method(mem: &dyn ProcessMemory, l: &Layout, method: u64) -> Result<MethodInfo, Error> {
    let cm = const_method_of(mem, l, method)?;
    let head = read_vec(mem, cm, l.const_method_size, "ConstMethod")?;
    let cp = u64_at(&head, l.cm_constants);
    let code_size = u64::from(u16_at(&head, l.cm_code_size));
    let name_index = u16_at(&head, l.cm_name_index);
    let signature_index = u16_at(&head, l.cm_signature_index);
    let flags = if l.cm_flags_width == 4 {
        u32_at(&head, l.cm_flags)
    } else {
        u32::from(u16_at(&head, l.cm_flags))
    };
    if cp < 0x1000 {
        return Err(Error::invalid("ConstMethod", cm, "no constant pool"));
    }
    let cp_head = read_vec(mem, cp, l.cp_size, "ConstantPool")?;
    let holder = u64_at(&cp_head, l.cp_pool_holder);
    let name = cp_symbol(mem, l, cp, name_index)?;
    let signature = cp_symbol(mem, l, cp, signature_index).unwrap_or_default();
    let class = if holder < 0x1000 {
        String::new()
    } else {
        let at = holder.wrapping_add(l.klass_name);
        let sym = mem.read_u64(at).map_err(Error::read("Klass::_name", at))?;
        java_class_name(&read_symbol(mem, l, sym)?)
    };
    let source_index = match (l.cp_source_file, l.ik_source_file) {
        (Some(off), _) => Some(u16_at(&cp_head, off)),
        (None, Some(off)) if holder >= 0x1000 => {
            let b = read_vec(mem, holder.wrapping_add(off), 2, "InstanceKlass")?;
            Some(u16_at(&b, 0))
        }
        _ => None,
    };
    let file = match source_index {
        Some(i) if i != 0 => cp_symbol(mem, l, cp, i).unwrap_or_default(),
        _ => String::new(),
    };
    let lines = if flags & l.cm_has_line_table != 0 {
        let at = cm.wrapping_add(l.const_method_size).wrapping_add(code_size);
        read_line_table(mem, l, at)
    } else {
        Vec::new()
    };
    let first_line = lines.iter().map(|&(_, line)| line).min().unwrap_or(0);
    Ok(MethodInfo {
        class,
        name,
        signature,
        file,
        lines,
        first_line,
        const_method: cm,
    })
}

/// The compressed line table at `at`, read in growing pieces until its terminator (it may
/// end right before unmapped memory, so never more than needed).
fn read_line_table(mem: &dyn ProcessMemory, l: &Layout, at: u64) -> Vec<(u32, u32)> {
    let mut bytes = Vec::new();
    let mut chunk = 128usize;
    while bytes.len() < MAX_LINE_TABLE {
        let mut b = vec![0u8; chunk];
        if mem
            .read_exact_at(at.wrapping_add(bytes.len() as u64), &mut b)
            .is_err()
        {
            // Maybe a shorter read reaches the end.
            if chunk <= 8 {
                break;
            }
            chunk /= 4;
            continue;
        }
        bytes.extend_from_slice(&b);
        let (pairs, end) = stream::line_table(&bytes, l.unsigned5_x);
        if end.is_some() {
            return pairs;
        }
        chunk = (chunk * 2).min(8192);
    }
    stream::line_table(&bytes, l.unsigned5_x).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_dotted_and_hidden_classes_lose_their_address() {
        assert_eq!(java_class_name("com/example/Shop"), "com.example.Shop");
        assert_eq!(
            java_class_name("com/example/Shop$$Lambda+0x0000000800c03000"),
            "com.example.Shop$$Lambda"
        );
        assert_eq!(java_class_name("Inner$1"), "Inner$1");
    }
}
