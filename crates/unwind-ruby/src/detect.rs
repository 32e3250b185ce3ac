//! Finding what the walker needs in a libruby (or a static `ruby`), with or without symbols.
//!
//! - The version: `ruby_version` (exported by every build), else the file name.
//! - The VM loop (`rb_vm_exec`, the native frame of each C-level call of the VM): its symbol,
//!   else (Debian's 3.3 hides it and has no `.symtab`) the function both `rb_iseq_eval` and
//!   `rb_iseq_eval_main` end by tail-calling, bounded by the `.eh_frame_hdr` table.
//! - The execution context: the thread-local access in `rb_thread_current` (`GET_EC()`),
//!   decoded: a `tls_index` in the GOT for a shared library, an offset from the thread
//!   pointer for a static build; 2.7: the global `ruby_current_execution_context_ptr`.
//! - The symbol table (`ruby_global_symbols`, for C function names and class paths before
//!   3.3): its symbol, else the structure `rb_id2str`'s callee compares and loads, and the
//!   last operator ID from `rb_id2str`'s comparison.

use ferroscope_unwind_api::{ElfFile, SymbolRange};

use crate::code::{self, TlsAccess};
use crate::frames_table::FunctionStarts;
use crate::layout::{Layout, layout};
use crate::{Error, Result, RubyVersion};

/// Bytes of a function decoded to find what it references.
const DECODE_BYTES: usize = 512;
/// Instructions decoded per function.
const DECODE_INSNS: usize = 160;

/// How the walker finds a thread's execution context, as found in the file (addresses are
/// the file's virtual addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcSource {
    /// 2.7: the global at this address.
    Global(u64),
    /// A thread-local variable reached as [`TlsAccess`] says.
    Tls(TlsAccess),
}

/// What detection found in a Ruby file.
#[derive(Debug, Clone)]
pub struct RubyFile {
    /// The version.
    pub version: RubyVersion,
    /// Its layout.
    pub layout: Layout,
    /// `rb_vm_exec`'s range.
    pub vm_exec: (u64, u64),
    /// Where the execution context is.
    pub ec: EcSource,
    /// `ruby_global_symbols` and the last operator ID, when found.
    pub symbols: Option<(u64, u64)>,
    /// How `rb_vm_exec` was found (for logs).
    pub vm_exec_from: &'static str,
}

fn read_code(file: &dyn ElfFile, s: SymbolRange) -> Vec<u8> {
    let n = if s.size > 0 {
        (s.size as usize).min(DECODE_BYTES)
    } else {
        DECODE_BYTES
    };
    // A function near the end of its segment: read less.
    let mut len = n;
    while len >= 16 {
        let mut buf = vec![0u8; len];
        if file.read_vaddr(s.address, &mut buf) {
            return buf;
        }
        len /= 2;
    }
    Vec::new()
}

fn decode_symbol(file: &dyn ElfFile, name: &str) -> Option<(SymbolRange, Vec<code::Insn>)> {
    let s = file.exported_symbol(name)?;
    let bytes = read_code(file, s);
    Some((s, code::decode(&bytes, s.address, DECODE_INSNS)))
}

/// The version from `ruby_version` (`"3.3.8"`).
pub fn version_of(file: &dyn ElfFile) -> Option<RubyVersion> {
    let s = file.exported_symbol("ruby_version")?;
    let mut b = [0u8; 16];
    let n = (1..=16)
        .rev()
        .find(|&n| file.read_vaddr(s.address, &mut b[..n]))?;
    let text = b[..n].split(|&c| c == 0).next()?;
    RubyVersion::parse(std::str::from_utf8(text).ok()?)
}

/// Whether a file looks like Ruby: named `libruby*` or `ruby*`, exporting `ruby_version`.
pub fn looks_like_ruby(file: &dyn ElfFile) -> bool {
    let name = file.path().rsplit('/').next().unwrap_or("");
    (name.starts_with("libruby") || name.starts_with("ruby"))
        && file.exported_symbol("ruby_version").is_some()
}

/// Detects Ruby in one file; `Ok(None)` when it is not a Ruby runtime.
pub fn detect(file: &dyn ElfFile) -> Result<Option<RubyFile>> {
    if !looks_like_ruby(file) {
        return Ok(None);
    }
    let Some(version) = version_of(file) else {
        return Err(Error::Detect(format!(
            "{}: `ruby_version` is not a version string",
            file.path()
        )));
    };
    let layout =
        layout(version.major, version.minor).ok_or(Error::UnsupportedVersion { version })?;
    let mut starts = None;
    let mut table = || -> Option<FunctionStarts> {
        if starts.is_none() {
            starts = Some(FunctionStarts::read(file));
        }
        starts.clone().flatten()
    };
    let (vm_exec, vm_exec_from) = match file.symbol("rb_vm_exec") {
        Some(s) if s.size > 0 => ((s.address, s.address + s.size), "its symbol"),
        Some(s) => (
            table()
                .and_then(|t| t.function_at(s.address))
                .ok_or_else(|| no_vm_exec(file, "the symbol has no size and no unwind table bounds it"))?,
            "its symbol and the unwind table",
        ),
        None => (
            vm_exec_from_callers(file, table().as_ref())
                .ok_or_else(|| no_vm_exec(file, "no symbol, and rb_iseq_eval and rb_iseq_eval_main do not end with a call to the same function"))?,
            "the tail calls of rb_iseq_eval and rb_iseq_eval_main",
        ),
    };
    let ec = if version.major == 2 {
        let s = file
            .symbol("ruby_current_execution_context_ptr")
            .ok_or_else(|| {
                Error::Detect(format!(
                    "{}: no `ruby_current_execution_context_ptr`",
                    file.path()
                ))
            })?;
        EcSource::Global(s.address)
    } else {
        EcSource::Tls(tls_of_ec(file)?)
    };
    let symbols = symbols_of(file);
    Ok(Some(RubyFile {
        version,
        layout,
        vm_exec,
        ec,
        symbols,
        vm_exec_from,
    }))
}

fn no_vm_exec(file: &dyn ElfFile, why: &str) -> Error {
    Error::Detect(format!("{}: rb_vm_exec not found: {why}", file.path()))
}

/// The function `rb_iseq_eval` and `rb_iseq_eval_main` both tail-call (`rb_vm_exec`, whose
/// call `vm_exec(ec)` ends both), bounded by the unwind table.
pub fn vm_exec_from_callers(
    file: &dyn ElfFile,
    table: Option<&FunctionStarts>,
) -> Option<(u64, u64)> {
    let table = table?;
    let mut common: Option<Vec<u64>> = None;
    for name in ["rb_iseq_eval", "rb_iseq_eval_main"] {
        let (s, insns) = decode_symbol(file, name)?;
        let (start, end) = table.function_at(s.address)?;
        let targets = code::tail_calls(&insns, start, end);
        common = Some(match common {
            None => targets,
            Some(c) => c.into_iter().filter(|t| targets.contains(t)).collect(),
        });
    }
    let common = common?;
    let [target] = common.as_slice() else {
        return None;
    };
    table.function_at(*target)
}

/// Where `ruby_current_ec` is, from `rb_thread_current` (else `rb_current_receiver`), which
/// read it first.
pub fn tls_of_ec(file: &dyn ElfFile) -> Result<TlsAccess> {
    for name in ["rb_thread_current", "rb_current_receiver"] {
        if let Some((_, insns)) = decode_symbol(file, name)
            && let Some(access) = code::tls_access(&insns)
        {
            return Ok(access);
        }
    }
    Err(Error::Detect(format!(
        "{}: the thread-local access of ruby_current_ec was not recognised in rb_thread_current \
         or rb_current_receiver",
        file.path()
    )))
}

/// `ruby_global_symbols` and `tLAST_OP_ID`.
pub fn symbols_of(file: &dyn ElfFile) -> Option<(u64, u64)> {
    let (_, insns) = decode_symbol(file, "rb_id2str")?;
    let last_op = code::first_compare_immediate(&insns)? as u64;
    if let Some(s) = file.symbol("ruby_global_symbols") {
        return Some((s.address, last_op));
    }
    let target = insns.last()?.jump?;
    let sym = SymbolRange {
        address: target,
        size: 0,
    };
    let bytes = read_code(file, sym);
    let callee = code::decode(&bytes, target, DECODE_INSNS);
    Some((code::symbols_global(&callee)?, last_op))
}
