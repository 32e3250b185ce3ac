//! Reading a `zend_function` from process memory, and naming it as PHP users read it:
//! `App\Cart::checkout`, `App\probe_fn`, `{closure}` (with its class when it has one),
//! `<main>` for a script's top-level code, `<include>` for an included file's, `<eval>` for
//! eval'd code, and internal functions (`hash`, `DateTime::format`) by their names alone.
//!
//! Every read is bounded and checked: garbage gives an error, never a panic (fuzzed:
//! `fuzz/fuzz_targets/php_function.rs`).

use ferroscope_unwind_api::ProcessMemory;

use crate::Error;
use crate::ebpf::{FLAG_CODE, FLAG_TOP, fingerprint};
use crate::layout::{FUNCTION_EVAL, FUNCTION_INTERNAL, FUNCTION_USER, Layout};

/// Longest name or file name read (bytes); longer ones are cut there.
pub const MAX_STRING_BYTES: usize = 4096;

/// What a frame's function is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FunctionKind {
    /// Written in C (a function of PHP or an extension): no file or line.
    Internal,
    /// PHP code: a function, a method, a closure, or a file's top-level code.
    User,
    /// Code run by `eval()`.
    Eval,
}

/// A `zend_function`, read once and cached by its address and fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Its kind.
    pub kind: FunctionKind,
    /// `function_name`: `None` for top-level and eval'd code.
    pub name: Option<String>,
    /// Its class's name (`scope`), for methods and closures declared in a class.
    pub class: Option<String>,
    /// `filename` (user and eval'd code).
    pub file: Option<String>,
    /// `line_start` (user and eval'd code; 0 for internal functions).
    pub line_start: u32,
    /// [`fingerprint`] of its `opcodes` (0 for internal functions).
    pub fingerprint: u32,
}

/// Reads a `zend_string`'s bytes (at most [`MAX_STRING_BYTES`]), lossy UTF-8.
pub fn read_string(mem: &dyn ProcessMemory, l: &Layout, addr: u64) -> Result<String, Error> {
    let len = mem
        .read_u64(addr.wrapping_add(u64::from(l.string_len)))
        .map_err(Error::read("zend_string", addr))?;
    if len > 1 << 30 {
        return Err(Error::invalid(
            "zend_string",
            addr,
            format!("its length {len} is not a string's"),
        ));
    }
    let mut buf = vec![0u8; (len as usize).min(MAX_STRING_BYTES)];
    mem.read_exact_at(addr.wrapping_add(u64::from(l.string_val)), &mut buf)
        .map_err(Error::read("zend_string", addr))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn u64_at(b: &[u8], off: u32) -> u64 {
    let off = off as usize;
    b.get(off..off + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}

fn u32_at(b: &[u8], off: u32) -> u32 {
    let off = off as usize;
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
}

/// Reads the `zend_function` at `addr`.
pub fn read_function(
    mem: &dyn ProcessMemory,
    l: &Layout,
    addr: u64,
) -> Result<FunctionInfo, Error> {
    if addr == 0 {
        return Err(Error::invalid("zend_function", addr, "a NULL pointer"));
    }
    let mut b = vec![0u8; l.func_name_read_len() as usize];
    let internal_len = (l.func_scope + 8) as usize;
    // An internal function may be smaller than a user one's prefix: read its common part
    // first, then the rest only for user code.
    mem.read_exact_at(addr, &mut b[..internal_len])
        .map_err(Error::read("zend_function", addr))?;
    let kind = match b[l.func_type as usize] {
        FUNCTION_INTERNAL => FunctionKind::Internal,
        FUNCTION_USER => FunctionKind::User,
        FUNCTION_EVAL => FunctionKind::Eval,
        t => {
            return Err(Error::invalid(
                "zend_function",
                addr,
                format!("its type {t} is not a function's (1, 2 or 4)"),
            ));
        }
    };
    if kind != FunctionKind::Internal {
        mem.read_exact_at(addr + internal_len as u64, &mut b[internal_len..])
            .map_err(Error::read("zend_op_array", addr))?;
    }
    let string = |ptr: u64| -> Result<Option<String>, Error> {
        if ptr == 0 {
            Ok(None)
        } else {
            read_string(mem, l, ptr).map(Some)
        }
    };
    let name = string(u64_at(&b, l.func_name))?;
    let scope = u64_at(&b, l.func_scope);
    let class = if scope == 0 {
        None
    } else {
        let name_ptr = mem
            .read_u64(scope.wrapping_add(u64::from(l.class_name)))
            .map_err(Error::read("zend_class_entry", scope))?;
        string(name_ptr)?
    };
    let (file, line_start, fp) = match kind {
        FunctionKind::Internal => (None, 0, 0),
        FunctionKind::User | FunctionKind::Eval => (
            string(u64_at(&b, l.op_filename))?,
            u32_at(&b, l.op_line_start),
            fingerprint(u64_at(&b, l.op_opcodes)),
        ),
    };
    if kind == FunctionKind::Internal && name.is_none() {
        return Err(Error::invalid(
            "zend_function",
            addr,
            "an internal function without a name",
        ));
    }
    Ok(FunctionInfo {
        kind,
        name,
        class,
        file,
        line_start,
        fingerprint: fp,
    })
}

/// Whether `name` (as `function_name` holds it) is a closure's: `{closure}` (with its
/// namespace before PHP 8.4: `App\{closure}`) or `{closure:App\Cart::checkout():12}` (8.4+).
pub fn is_closure(name: &str) -> bool {
    name.starts_with("{closure")
        || name
            .rsplit('\\')
            .next()
            .is_some_and(|last| last.starts_with("{closure"))
}

/// The name of code without a function name: `<eval>` for eval'd code, `<include>` for an
/// included file's top-level code (a `ZEND_CALL_CODE` call the VM made itself), `<main>` for
/// the script's (called from C: `ZEND_CALL_TOP`).
pub fn top_level_name(kind: FunctionKind, flags: u8) -> &'static str {
    match kind {
        FunctionKind::Eval => "<eval>",
        _ if flags & FLAG_CODE != 0 && flags & FLAG_TOP == 0 => "<include>",
        _ => "<main>",
    }
}

impl FunctionInfo {
    /// The function's name as PHP users read it, for a frame whose call had `flags`
    /// ([`FLAG_TOP`], [`FLAG_CODE`]).
    pub fn display_name(&self, flags: u8) -> String {
        let Some(name) = &self.name else {
            return top_level_name(self.kind, flags).into();
        };
        if is_closure(name) {
            // PHP spells closures `App\{closure}` before 8.4 and `{closure:App\f():12}`
            // since: both are `{closure}`, qualified by their class when they have one; the
            // frame's file and line say which closure it is.
            return match &self.class {
                Some(class) => format!("{class}::{{closure}}"),
                None => "{closure}".into(),
            };
        }
        match &self.class {
            Some(class) => format!("{class}::{name}"),
            None => name.clone(),
        }
    }

    /// The source file (empty for internal functions).
    pub fn file_name(&self) -> &str {
        self.file.as_deref().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PhpVersion;
    use crate::layout;
    use ferroscope_unwind_api::SnapshotMemory;

    fn zstr(s: &str) -> Vec<u8> {
        let mut b = vec![0u8; 24];
        b[16..24].copy_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
        b.push(0);
        b
    }

    fn info(name: Option<&str>, class: Option<&str>, kind: FunctionKind) -> FunctionInfo {
        FunctionInfo {
            kind,
            name: name.map(Into::into),
            class: class.map(Into::into),
            file: Some("/app/x.php".into()),
            line_start: 3,
            fingerprint: 0,
        }
    }

    #[test]
    fn names_as_users_read_them() {
        let u = FunctionKind::User;
        let n = |name, class, flags| info(name, class, u).display_name(flags);
        assert_eq!(
            n(Some("checkout"), Some("App\\Cart"), 0),
            "App\\Cart::checkout"
        );
        assert_eq!(n(Some("App\\probe_fn"), None, 0), "App\\probe_fn");
        assert_eq!(
            n(Some("App\\{closure}"), Some("App\\Cart"), 0),
            "App\\Cart::{closure}"
        );
        assert_eq!(n(Some("App\\{closure}"), None, 0), "{closure}");
        assert_eq!(n(Some("{closure}"), None, 0), "{closure}");
        assert_eq!(
            n(
                Some("{closure:App\\Cart::checkout():6}"),
                Some("App\\Cart"),
                0
            ),
            "App\\Cart::{closure}"
        );
        assert_eq!(n(Some("{closure:/app/x.php:9}"), None, 0), "{closure}");
        assert_eq!(n(None, None, FLAG_TOP | FLAG_CODE), "<main>");
        assert_eq!(n(None, None, FLAG_CODE), "<include>");
        assert_eq!(
            info(None, None, FunctionKind::Eval).display_name(FLAG_CODE),
            "<eval>"
        );
        assert_eq!(
            info(Some("format"), Some("DateTime"), FunctionKind::Internal).display_name(0),
            "DateTime::format"
        );
    }

    #[test]
    fn reads_a_user_function_and_refuses_garbage() {
        let l = layout::layout(PhpVersion::new(8, 2, 0)).unwrap();
        let mut mem = SnapshotMemory::new(1);
        let mut f = vec![0u8; l.func_name_read_len() as usize];
        f[0] = FUNCTION_USER;
        f[8..16].copy_from_slice(&0x2000u64.to_le_bytes());
        f[16..24].copy_from_slice(&0x3000u64.to_le_bytes());
        let o = l.op_opcodes as usize;
        f[o..o + 8].copy_from_slice(&0x7f00_0000_1238u64.to_le_bytes());
        let o = l.op_filename as usize;
        f[o..o + 8].copy_from_slice(&0x4000u64.to_le_bytes());
        let o = l.op_line_start as usize;
        f[o..o + 4].copy_from_slice(&11u32.to_le_bytes());
        mem.add_region(0x1000, f);
        mem.add_region(0x2000, zstr("checkout"));
        let mut ce = vec![0u8; 16];
        ce[8..16].copy_from_slice(&0x5000u64.to_le_bytes());
        mem.add_region(0x3000, ce);
        mem.add_region(0x4000, zstr("/app/cart.php"));
        mem.add_region(0x5000, zstr("App\\Cart"));
        let got = read_function(&mem, l, 0x1000).unwrap();
        assert_eq!(
            got,
            FunctionInfo {
                kind: FunctionKind::User,
                name: Some("checkout".into()),
                class: Some("App\\Cart".into()),
                file: Some("/app/cart.php".into()),
                line_start: 11,
                fingerprint: fingerprint(0x7f00_0000_1238),
            }
        );
        assert_eq!(got.display_name(0), "App\\Cart::checkout");

        let mut bad = SnapshotMemory::new(1);
        bad.add_region(0x1000, vec![9u8; 256]);
        assert!(read_function(&bad, l, 0x1000).is_err());
        assert!(read_function(&bad, l, 0).is_err());
        assert!(read_function(&bad, l, 0x9000).is_err());
    }
}
