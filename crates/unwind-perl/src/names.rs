//! Names from a Perl process's memory: statements (COPs: file and line), subs (CV → GV or
//! name HEK, and the package of its stash), and the strings a `require` was given.
//!
//! Every read is bounded and checked (an SV's type before its body is used), so garbage
//! (a freed and reused address) gives an error, never a panic or an unbounded read.

use ferroscope_unwind_api::ProcessMemory;

use crate::layout::sv;
use crate::{Error, Layout};

/// Longest name (HEK key, C string or PV) read.
pub const MAX_NAME: usize = 4096;
/// Longest statement line taken as real (beyond it the COP is garbage).
pub const MAX_LINE: u32 = 100_000_000;

/// Where a statement is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The source file (`-e`, `(eval 3)`, a path).
    pub file: String,
    /// The line.
    pub line: u32,
}

/// A sub's name and where its code starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubName {
    /// The package the sub's name lives in (`main`, `Foo::Bar`); `None` when its stash has no
    /// name (deleted).
    pub package: Option<String>,
    /// The name in that package (`run`, `__ANON__`).
    pub name: String,
    /// An anonymous sub (`sub { ... }`).
    pub anonymous: bool,
    /// The line of its first statement (0: an XS sub, or not found).
    pub start_line: u32,
}

impl SubName {
    /// `Package::name` (`__ANON__::name` when the stash is gone, as Perl's `caller` does).
    pub fn qualified(&self) -> String {
        format!(
            "{}::{}",
            self.package.as_deref().unwrap_or("__ANON__"),
            self.name
        )
    }
}

/// Reads Perl data of one process.
pub struct Reader<'a> {
    mem: &'a dyn ProcessMemory,
    layout: &'a Layout,
    threaded: bool,
}

impl std::fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("pid", &self.mem.pid())
            .field("version", &self.layout.version)
            .field("threaded", &self.threaded)
            .finish()
    }
}

impl<'a> Reader<'a> {
    /// A reader of `mem` with `layout`; `threaded` builds keep a COP's file as a C string,
    /// others as a GV named `_<FILE`.
    pub fn new(mem: &'a dyn ProcessMemory, layout: &'a Layout, threaded: bool) -> Self {
        Reader {
            mem,
            layout,
            threaded,
        }
    }

    fn bytes<const N: usize>(&self, what: &'static str, addr: u64) -> Result<[u8; N], Error> {
        let mut b = [0u8; N];
        self.mem
            .read_exact_at(addr, &mut b)
            .map_err(Error::read(what, addr))?;
        Ok(b)
    }

    fn u64_at(&self, what: &'static str, addr: u64) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.bytes(what, addr)?))
    }

    fn u32_at(&self, what: &'static str, addr: u64) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.bytes(what, addr)?))
    }

    fn nonzero(what: &'static str, addr: u64) -> Result<u64, Error> {
        if addr == 0 {
            Err(Error::invalid(what, addr, "a NULL pointer"))
        } else {
            Ok(addr)
        }
    }

    /// The SV at `addr` when its type is `ty`: its body (`sv_any`) and flags.
    fn sv_of_type(&self, what: &'static str, addr: u64, ty: u32) -> Result<(u64, u32), Error> {
        let addr = Self::nonzero(what, addr)?;
        let head: [u8; 16] = self.bytes(what, addr)?;
        let any = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let flags = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
        if flags & sv::TYPE_MASK != ty {
            return Err(Error::invalid(
                what,
                addr,
                format!(
                    "its SV type is {}, not {ty} (freed, or reused for another value)",
                    flags & sv::TYPE_MASK
                ),
            ));
        }
        Ok((Self::nonzero(what, any)?, flags))
    }

    /// A HEK's key (`hek_len` bytes, UTF-8 when its flags say so, else Latin-1).
    pub fn hek(&self, addr: u64) -> Result<String, Error> {
        let addr = Self::nonzero("name (HEK)", addr)?;
        let len = self.u32_at("name (HEK)", addr + u64::from(self.layout.hek_len))? as i32;
        if len < 0 || len as usize > MAX_NAME {
            return Err(Error::invalid(
                "name (HEK)",
                addr,
                format!("a length of {len}"),
            ));
        }
        // The key, its NUL and the flags byte.
        let mut key = vec![0u8; len as usize + 2];
        self.mem
            .read_exact_at(addr + u64::from(self.layout.hek_key), &mut key)
            .map_err(Error::read("name (HEK)", addr))?;
        let flags = key[len as usize + 1];
        key.truncate(len as usize);
        Ok(decode(key, flags & sv::HEK_UTF8 != 0))
    }

    /// The name of the stash (package hash) at `hv`; `None` when it has none.
    pub fn stash_name(&self, hv: u64) -> Result<Option<String>, Error> {
        let l = self.layout;
        let (body, flags) = self.sv_of_type("stash", hv, sv::PVHV)?;
        if flags & sv::OOK == 0 {
            return Ok(None);
        }
        let aux = match l.hv_aux {
            crate::HvAux::InBody(off) => body + u64::from(off),
            crate::HvAux::AfterBuckets => {
                let array = self.u64_at("stash", hv + u64::from(l.sv_u))?;
                let max = self.u64_at("stash", body + u64::from(l.xhv_max))?;
                if max > 1 << 32 {
                    return Err(Error::invalid("stash", hv, format!("{max} buckets")));
                }
                Self::nonzero("stash buckets", array)? + (max + 1) * 8
            }
        };
        let name_u = self.u64_at("stash name", aux + u64::from(l.hvaux_name))?;
        let count = self.u32_at("stash name", aux + u64::from(l.hvaux_name_count))? as i32;
        if name_u == 0 {
            return Ok(None);
        }
        let hek = if count == 0 {
            name_u
        } else {
            // An array of HEKs: the name first (NULL when the stash lost it).
            self.u64_at("stash names", name_u)?
        };
        if hek == 0 {
            return Ok(None);
        }
        self.hek(hek).map(Some)
    }

    /// A GV's name and package (following `gp_egv` for an aliased glob, as `caller` does).
    pub fn gv_name(&self, gv: u64) -> Result<(Option<String>, String), Error> {
        let l = self.layout;
        let (body, _) = self.sv_of_type("glob (GV)", gv, sv::PVGV)?;
        let gp = self.u64_at("glob (GV)", gv + u64::from(l.sv_u))?;
        let egv = if gp == 0 {
            0
        } else {
            self.u64_at("glob (GP)", gp + u64::from(l.gp_egv))?
        };
        // An aliased glob names the original, as `caller` does; a bad one is ignored.
        let body = if egv != 0 && egv != gv {
            self.sv_of_type("glob (EGV)", egv, sv::PVGV)
                .map_or(body, |(b, _)| b)
        } else {
            body
        };
        let name = self.hek(self.u64_at("glob (GV)", body + u64::from(l.xgv_namehek))?)?;
        let stash = self.u64_at("glob (GV)", body + u64::from(l.xgv_stash))?;
        let package = if stash == 0 {
            None
        } else {
            self.stash_name(stash)?
        };
        Ok((package, name))
    }

    /// A sub's name: its GV's, or its name HEK and stash when it has no GV (`CVf_NAMED`:
    /// lexical subs, and subs Perl stores in their stash without a glob).
    pub fn sub_name(&self, cv: u64) -> Result<SubName, Error> {
        let l = self.layout;
        let (body, _) = self.sv_of_type("sub (CV)", cv, sv::PVCV)?;
        let flags = self.u32_at("sub (CV)", body + u64::from(l.xcv_flags))?;
        let gv_u = self.u64_at("sub (CV)", body + u64::from(l.xcv_gv))?;
        let (package, name) = if flags & sv::CVF_NAMED != 0 {
            let stash = self.u64_at("sub (CV)", body + u64::from(l.xcv_stash))?;
            let package = if stash == 0 {
                None
            } else {
                self.stash_name(stash)?
            };
            (package, self.hek(gv_u)?)
        } else {
            self.gv_name(gv_u)?
        };
        let start_line = if flags & sv::CVF_ISXSUB != 0 {
            0
        } else {
            let start = self.u64_at("sub (CV)", body + u64::from(l.xcv_start))?;
            self.statement_line(start).unwrap_or(0)
        };
        Ok(SubName {
            package,
            anonymous: flags & sv::CVF_ANON != 0 || name == "__ANON__",
            name,
            start_line,
        })
    }

    /// The line of the op at `op` when it is a statement (`nextstate` or `dbstate`).
    fn statement_line(&self, op: u64) -> Option<u32> {
        let l = self.layout;
        if op == 0 {
            return None;
        }
        let word: [u8; 2] = self.bytes("op", op + u64::from(l.op_type)).ok()?;
        let ty = u16::from_le_bytes(word) & 0x1ff;
        if ty != l.op_nextstate && ty != l.op_dbstate {
            return None;
        }
        let line = self
            .u32_at("statement (COP)", op + u64::from(l.cop_line))
            .ok()?;
        (line <= MAX_LINE).then_some(line)
    }

    /// The file and line of the statement (COP) at `cop`.
    pub fn statement(&self, cop: u64) -> Result<Statement, Error> {
        let l = self.layout;
        let cop = Self::nonzero("statement (COP)", cop)?;
        let line = self.u32_at("statement (COP)", cop + u64::from(l.cop_line))?;
        if line > MAX_LINE {
            return Err(Error::invalid(
                "statement (COP)",
                cop,
                format!("line {line}"),
            ));
        }
        let file_at = self.u64_at("statement (COP)", cop + u64::from(l.cop_file))?;
        let file = if self.threaded {
            let at = Self::nonzero("statement's file", file_at)?;
            self.mem
                .read_c_string(at, MAX_NAME)
                .map_err(Error::read("statement's file", at))?
        } else {
            // The GV `main::_<FILE`.
            let (_, name) = self.gv_name(file_at)?;
            name.strip_prefix("_<").map(str::to_owned).unwrap_or(name)
        };
        Ok(Statement { file, line })
    }

    /// The string value of a PV (a `require`'s name).
    pub fn pv(&self, sv_addr: u64) -> Result<String, Error> {
        let l = self.layout;
        let addr = Self::nonzero("string (SV)", sv_addr)?;
        let head: [u8; 24] = self.bytes("string (SV)", addr)?;
        let any = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let flags = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
        let pv = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
        if flags & (sv::POK | sv::P_POK) == 0 || any == 0 || pv == 0 {
            return Err(Error::invalid("string (SV)", addr, "not a string"));
        }
        let len = self.u64_at("string (SV)", any + u64::from(l.xpv_cur))?;
        if len as usize > MAX_NAME {
            return Err(Error::invalid(
                "string (SV)",
                addr,
                format!("{len} bytes long"),
            ));
        }
        let mut b = vec![0u8; len as usize];
        self.mem
            .read_exact_at(pv, &mut b)
            .map_err(Error::read("string (SV)", pv))?;
        Ok(decode(b, true))
    }
}

/// Bytes as text: UTF-8 (lossy), or Latin-1.
fn decode(bytes: Vec<u8>, utf8: bool) -> String {
    if utf8 {
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    } else {
        bytes.into_iter().map(char::from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_unwind_api::SnapshotMemory;

    fn layout() -> &'static Layout {
        crate::layout(36).unwrap()
    }

    fn hek(key: &[u8], flags: u8) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        b[4..8].copy_from_slice(&(key.len() as u32).to_le_bytes());
        b.extend_from_slice(key);
        b.push(0);
        b.push(flags);
        b
    }

    #[test]
    fn heks_decode_utf8_and_latin1_and_refuse_absurd_lengths() {
        let mut m = SnapshotMemory::new(1);
        m.add_region(0x1000, hek("café".as_bytes(), sv::HEK_UTF8))
            .add_region(0x2000, hek(&[b'n', 0xe9], 0))
            .add_region(0x3000, {
                let mut b = vec![0u8; 16];
                b[4..8].copy_from_slice(&(-5i32).to_le_bytes());
                b
            });
        let r = Reader::new(&m, layout(), true);
        assert_eq!(r.hek(0x1000).unwrap(), "café");
        assert_eq!(r.hek(0x2000).unwrap(), "né");
        assert!(r.hek(0x3000).is_err());
        assert!(r.hek(0).is_err());
        assert!(r.hek(0x9000).is_err());
    }

    #[test]
    fn an_sv_of_another_type_is_not_taken_for_a_sub() {
        let mut m = SnapshotMemory::new(1);
        let mut head = vec![0u8; 24];
        head[..8].copy_from_slice(&0x5000u64.to_le_bytes());
        head[12..16].copy_from_slice(&sv::PVHV.to_le_bytes());
        m.add_region(0x1000, head);
        let r = Reader::new(&m, layout(), true);
        let e = r.sub_name(0x1000).unwrap_err().to_string();
        assert!(e.contains("SV type is 12"), "{e}");
    }
}
