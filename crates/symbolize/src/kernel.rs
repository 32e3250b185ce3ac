//! Kernel symbols from `/proc/kallsyms`.
//!
//! Each line is `ADDRESS TYPE NAME [\t[MODULE]]`. Only function symbols (types `t`, `T`, `w`,
//! `W`) are kept, sorted by address; a symbol covers everything up to the next symbol (the
//! file has no sizes), bounded by [`MAX_SYMBOL_SPAN`]. Symbols with a `[module]` suffix belong
//! to that module; JIT-compiled BPF programs appear as `bpf_prog_<tag>_<name>` in the `bpf`
//! pseudo-module.
//!
//! The text is treated as untrusted: malformed lines are skipped (and counted in a `debug`
//! log), never a panic.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use crate::Error;

/// No kernel function is larger than this; an address further than this past the nearest
/// symbol below it is in a gap (between modules, or past the end of text) and is not resolved.
pub const MAX_SYMBOL_SPAN: u64 = 1 << 20;

/// Index into [`KernelSymbols::modules`]; `u32::MAX` means vmlinux.
const VMLINUX: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Sym {
    start: u64,
    name_off: u32,
    name_len: u32,
    module: u32,
}

/// The kernel's function symbols, sorted for lookup by address.
#[derive(Debug, Clone, Default)]
pub struct KernelSymbols {
    syms: Vec<Sym>,
    names: String,
    modules: Vec<String>,
}

/// A kernel symbol that contains a looked-up address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSymbol<'a> {
    /// The symbol's name.
    pub name: &'a str,
    /// The module it belongs to; `None` for vmlinux, `Some("bpf")` for BPF programs.
    pub module: Option<&'a str>,
    /// The symbol's address.
    pub start: u64,
    /// Offset of the looked-up address from `start`.
    pub offset: u64,
}

/// Statistics about one parse, used by [`KernelSymbols::load`] to explain failures.
#[derive(Debug, Default)]
struct ParseReport {
    text_symbols_with_zero_address: usize,
    malformed_lines: usize,
}

impl KernelSymbols {
    /// Reads `/proc/kallsyms`.
    ///
    /// Fails with [`Error::KallsymsRestricted`] when every address reads as zero (the caller
    /// is not root, or `kernel.kptr_restrict` hides addresses even from root).
    pub fn load() -> Result<Self, Error> {
        use std::io::BufRead;
        let path = PathBuf::from("/proc/kallsyms");
        // Read line by line rather than whole: the file is about 5 MiB of text of which only
        // the names are kept, and a whole-file buffer would be a 5-8 MiB transient peak.
        let file = fs::File::open(&path).map_err(|e| Error::from_io(path.clone(), e))?;
        let mut reader = std::io::BufReader::with_capacity(64 * 1024, file);
        let mut line = Vec::new();
        let mut parser = Parser::default();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => parser.line(&String::from_utf8_lossy(&line)),
                Err(e) => return Err(Error::from_io(path, e)),
            }
        }
        let (syms, report) = parser.finish();
        if syms.is_empty() {
            if report.text_symbols_with_zero_address > 0 {
                let kptr_restrict = fs::read_to_string("/proc/sys/kernel/kptr_restrict")
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| "unknown".to_owned());
                return Err(Error::KallsymsRestricted { kptr_restrict });
            }
            return Err(Error::KallsymsEmpty);
        }
        tracing::debug!(
            symbols = syms.len(),
            modules = syms.modules.len(),
            malformed_lines = report.malformed_lines,
            "loaded /proc/kallsyms"
        );
        Ok(syms)
    }

    /// Parses the text of `/proc/kallsyms`, keeping function symbols with non-zero addresses.
    ///
    /// Malformed lines are skipped. Never panics.
    pub fn from_kallsyms(text: &str) -> Self {
        Self::parse(text).0
    }

    fn parse(text: &str) -> (Self, ParseReport) {
        let mut parser = Parser::default();
        for line in text.lines() {
            parser.line(line);
        }
        parser.finish()
    }

    fn name(&self, s: &Sym) -> &str {
        let start = s.name_off as usize;
        self.names
            .get(start..start + s.name_len as usize)
            .unwrap_or("")
    }

    fn symbol(&self, s: &Sym, addr: u64) -> KernelSymbol<'_> {
        KernelSymbol {
            name: self.name(s),
            module: self.modules.get(s.module as usize).map(String::as_str),
            start: s.start,
            offset: addr - s.start,
        }
    }

    /// The symbol containing `addr`, if any.
    pub fn lookup(&self, addr: u64) -> Option<KernelSymbol<'_>> {
        let i = self
            .syms
            .partition_point(|s| s.start <= addr)
            .checked_sub(1)?;
        let s = self.syms.get(i)?;
        (addr - s.start < MAX_SYMBOL_SPAN).then(|| self.symbol(s, addr))
    }

    /// The address of the symbol called `name` (a linear scan; for tests and diagnostics).
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.syms
            .iter()
            .find(|s| self.name(s) == name)
            .map(|s| s.start)
    }

    /// All symbols in address order.
    pub fn iter(&self) -> impl Iterator<Item = KernelSymbol<'_>> {
        self.syms.iter().map(|s| self.symbol(s, s.start))
    }

    /// Number of symbols kept.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// Whether no symbols were kept.
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Builds [`KernelSymbols`] from the lines of `/proc/kallsyms`, one at a time.
#[derive(Default)]
struct Parser {
    out: KernelSymbols,
    report: ParseReport,
    module_ids: HashMap<String, u32>,
    /// More than 4 GiB of names: not a real kallsyms; the rest is ignored.
    full: bool,
}

impl Parser {
    /// Adds one line of `/proc/kallsyms` (with or without its newline).
    fn line(&mut self, line: &str) {
        let Parser {
            out,
            report,
            module_ids,
            full,
        } = self;
        if *full {
            return;
        }
        let mut fields = line.split_ascii_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            if !line.trim().is_empty() {
                report.malformed_lines += 1;
            }
            return;
        };
        let module = fields.next();
        if fields.next().is_some() || !matches!(kind, "t" | "T" | "w" | "W") {
            if kind.len() != 1 {
                report.malformed_lines += 1;
            }
            return;
        }
        let Some(start) = parse_hex(addr) else {
            report.malformed_lines += 1;
            return;
        };
        if start == 0 {
            report.text_symbols_with_zero_address += 1;
            return;
        }
        let module = match module {
            None => VMLINUX,
            Some(m) => {
                let Some(m) = m.strip_prefix('[').and_then(|m| m.strip_suffix(']')) else {
                    report.malformed_lines += 1;
                    return;
                };
                match module_ids.get(m) {
                    Some(&id) => id,
                    None => {
                        let id = u32::try_from(out.modules.len()).unwrap_or(VMLINUX);
                        out.modules.push(m.to_owned());
                        module_ids.insert(m.to_owned(), id);
                        id
                    }
                }
            }
        };
        let (Ok(name_off), Ok(name_len)) =
            (u32::try_from(out.names.len()), u32::try_from(name.len()))
        else {
            *full = true;
            return;
        };
        out.names.push_str(name);
        out.syms.push(Sym {
            start,
            name_off,
            name_len,
            module,
        });
    }

    fn finish(self) -> (KernelSymbols, ParseReport) {
        let Parser {
            mut out, report, ..
        } = self;
        // Among aliases at one address keep the most readable name. `name_rank` ends with
        // the name itself, so the order is total and an in-place unstable sort (no scratch
        // buffer the size of the table) gives the same result as a stable one.
        let mut syms = std::mem::take(&mut out.syms);
        syms.sort_unstable_by(|a, b| {
            a.start
                .cmp(&b.start)
                .then_with(|| name_rank(out.name(a)).cmp(&name_rank(out.name(b))))
        });
        out.syms = syms;
        out.syms.dedup_by_key(|s| s.start);
        out.syms.shrink_to_fit();
        // The names were appended one by one; give back the doubling's slack (about 1 MiB).
        out.names.shrink_to_fit();
        (out, report)
    }
}

/// Orders aliases: fewer leading underscores first, then shorter, then alphabetical.
pub(crate) fn name_rank(name: &str) -> (usize, usize, &str) {
    let underscores = name.bytes().take_while(|&b| b == b'_').count();
    (underscores, name.len(), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81000000 T srso_alias_untrain_ret
ffffffff81001000 t do_one_initcall
ffffffff81002000 D some_data
0000000000000000 A fixed_percpu_data
ffffffff81003000 W weak_fn
ffffffff81004000 r read_only
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
ffffffffc0a00000 t ext4_fill_super\t[ext4]
ffffffffc0a00100 T ext4_mount\t[ext4]
ffffffffc0b00000 t bpf_prog_6deef7357e7b4530_sd_fw_egress\t[bpf]
ffffffffc0c00000 t nf_hook\t[nf_tables]
this line is garbage
xyz T bad_address

ffffffffc0c00100 t
";

    #[track_caller]
    fn check(syms: &KernelSymbols, addr: u64, expected: Option<(&str, Option<&str>, u64)>) {
        let got = syms.lookup(addr).map(|s| (s.name, s.module, s.offset));
        assert_eq!(got, expected, "lookup({addr:#x})");
    }

    #[test]
    fn table_of_lookups() {
        let syms = KernelSymbols::from_kallsyms(SAMPLE);
        check(&syms, 0xffffffff80ffffff, None);
        check(
            &syms,
            0xffffffff81000000,
            Some(("srso_alias_untrain_ret", None, 0)),
        );
        check(
            &syms,
            0xffffffff81000fff,
            Some(("srso_alias_untrain_ret", None, 0xfff)),
        );
        check(
            &syms,
            0xffffffff81001010,
            Some(("do_one_initcall", None, 0x10)),
        );
        // Data symbols are not kept: the function before still covers the address.
        check(
            &syms,
            0xffffffff81002000,
            Some(("do_one_initcall", None, 0x1000)),
        );
        check(&syms, 0xffffffff81003004, Some(("weak_fn", None, 4)));
        check(
            &syms,
            0xffffffffc0a00004,
            Some(("ext4_fill_super", Some("ext4"), 4)),
        );
        check(
            &syms,
            0xffffffffc0a00100,
            Some(("ext4_mount", Some("ext4"), 0)),
        );
        check(
            &syms,
            0xffffffffc0b00042,
            Some(("bpf_prog_6deef7357e7b4530_sd_fw_egress", Some("bpf"), 0x42)),
        );
        check(
            &syms,
            0xffffffffc0c00000,
            Some(("nf_hook", Some("nf_tables"), 0)),
        );
        // Far past the last symbol: a gap, not part of nf_hook.
        check(&syms, 0xffffffffc0c00000 + MAX_SYMBOL_SPAN, None);
        assert_eq!(syms.len(), 8);
        assert_eq!(syms.address_of("ext4_mount"), Some(0xffffffffc0a00100));
    }

    #[test]
    fn restricted_kallsyms_yields_no_symbols() {
        let text = "0000000000000000 T _stext\n0000000000000000 t foo\t[ext4]\n";
        let (syms, report) = KernelSymbols::parse(text);
        assert!(syms.is_empty());
        assert_eq!(report.text_symbols_with_zero_address, 2);
    }

    #[test]
    fn load_real_kallsyms_and_find_known_symbols() {
        let syms = match KernelSymbols::load() {
            Ok(s) => s,
            Err(e @ Error::KallsymsRestricted { .. }) => {
                // Not root: the error must say so; nothing else to check.
                assert!(e.to_string().contains("kptr_restrict"));
                return;
            }
            Err(e) => panic!("loading /proc/kallsyms: {e}"),
        };
        assert!(syms.len() > 1000, "only {} symbols", syms.len());
        for name in ["schedule", "do_sys_openat2"] {
            let Some(addr) = syms.address_of(name) else {
                continue;
            };
            let s = syms
                .lookup(addr + 1)
                .unwrap_or_else(|| panic!("{name} at {addr:#x} not found"));
            assert_eq!((s.start, s.offset, s.module), (addr, 1, None), "{name}");
            // Aliases may win over the searched name, but the address is the same.
            assert_eq!(syms.lookup(addr).map(|s| s.start), Some(addr));
        }
        assert!(
            syms.address_of("schedule").is_some(),
            "schedule not in kallsyms"
        );
    }
}
