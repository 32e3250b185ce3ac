//! Where CPython's eval loop is in a file: `_PyEval_EvalFrameDefault` and the parts the
//! compiler split off it.
//!
//! GCC with profile feedback or `-freorder-blocks-and-partition` (Debian's builds) moves the
//! blocks it thinks cold into a separate function part in `.text.unlikely`, named
//! `_PyEval_EvalFrameDefault.cold` in `.symtab`. In a stripped file that name is gone, and on
//! Debian's 3.14 and 3.15 the "cold" part is where the interpreter spends its time (the
//! exported symbol covers 1 KiB of set-up code; the 84 KiB part has the instructions). Every
//! part has its own call-frame information entry, and the part that holds the entry point
//! jumps into the others; so without symbols, the parts are the CFI functions that the
//! entry's direct jumps land inside of (not at the start of: a jump to a function's first
//! byte is a tail call).
//!
//! The tail-calling interpreter of 3.14+ built with clang (`--with-tail-call-interp`) runs
//! each instruction in its own function, tail-called from the previous one; those
//! functions run above `_PyEval_EvalFrameDefault`'s frame, which stays on the stack for the
//! whole call (it holds the entry frame). Owning `_PyEval_EvalFrameDefault` alone gives one
//! splice point per eval call there too; the instruction's function shows as the native
//! frame above the Python ones.

use ferroscope_unwind_api::{ElfFile, SymbolRange};
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};

/// The exported entry point.
pub const ENTRY_SYMBOL: &str = "_PyEval_EvalFrameDefault";
/// GCC's name for the split-off part.
pub const COLD_SYMBOL: &str = "_PyEval_EvalFrameDefault.cold";
/// Most parts kept (the entry and the parts it jumps into).
pub const MAX_PARTS: usize = 4;
/// Largest entry part decoded.
pub const MAX_DECODED: u64 = 4 << 20;

/// How the eval loop's parts were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartsFrom {
    /// The entry's symbol only: the function is not split (or its CFI is missing).
    EntrySymbol,
    /// The entry's and the `.cold` part's symbols (`.symtab` or the debug file).
    Symbols,
    /// The entry's symbol, then the file's CFI for the parts its jumps land in.
    Cfi,
}

/// The eval loop's code: the entry part first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalLoop {
    /// Its parts, file virtual addresses.
    pub parts: Vec<SymbolRange>,
    /// How they were found.
    pub from: PartsFrom,
}

/// Finds the eval loop in `file`, `None` when it has no `_PyEval_EvalFrameDefault`.
pub fn find_eval_loop(file: &dyn ElfFile) -> Option<EvalLoop> {
    let entry = file.symbol(ENTRY_SYMBOL)?;
    // The CFI entry of the entry part: its extent when the symbol has no size.
    let entry = match file.cfi_function(entry.address) {
        Some(f) if f.address == entry.address && f.size > entry.size => f,
        _ => entry,
    };
    if let Some(cold) = file.symbol(COLD_SYMBOL) {
        return Some(EvalLoop {
            parts: vec![entry, cold],
            from: PartsFrom::Symbols,
        });
    }
    let mut parts = vec![entry];
    let len = entry.size.min(MAX_DECODED) as usize;
    let mut code = vec![0u8; len];
    if len > 0 && file.read_vaddr(entry.address, &mut code) {
        for target in branch_targets(&code, entry.address) {
            if parts.len() >= MAX_PARTS {
                break;
            }
            if parts.iter().any(|p| contains(p, target)) {
                continue;
            }
            match file.cfi_function(target) {
                // Into the middle of another function: a part of this one.
                Some(f) if f.address != target && !overlaps(&parts, &f) => parts.push(f),
                _ => {}
            }
        }
    }
    let from = if parts.len() > 1 {
        PartsFrom::Cfi
    } else {
        PartsFrom::EntrySymbol
    };
    Some(EvalLoop { parts, from })
}

fn contains(r: &SymbolRange, addr: u64) -> bool {
    r.address <= addr && addr < r.address.saturating_add(r.size.max(1))
}

fn overlaps(parts: &[SymbolRange], f: &SymbolRange) -> bool {
    let end = f.address.saturating_add(f.size);
    parts
        .iter()
        .any(|p| p.address < end && f.address < p.address.saturating_add(p.size))
}

/// The targets of the direct jumps (`jmp` and `jcc`, not `call`) in `code`, decoded as
/// 64-bit x86 from `ip`, that leave `code`; in order of first appearance, each once.
pub fn branch_targets(code: &[u8], ip: u64) -> Vec<u64> {
    let end = ip.saturating_add(code.len() as u64);
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut out: Vec<u64> = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() || instr.op0_kind() != OpKind::NearBranch64 {
            continue;
        }
        if instr.mnemonic() == Mnemonic::Call {
            continue;
        }
        let target = instr.near_branch_target();
        if (target < ip || target >= end) && !out.contains(&target) {
            out.push(target);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroscope_unwind_api::TlsTemplate;

    /// A file with symbols, CFI functions and code bytes.
    struct Fake {
        symbols: Vec<(&'static str, SymbolRange)>,
        functions: Vec<SymbolRange>,
        code: Vec<(u64, Vec<u8>)>,
    }

    impl ElfFile for Fake {
        fn path(&self) -> &str {
            "/usr/bin/python3.14"
        }
        fn symbol(&self, name: &str) -> Option<SymbolRange> {
            self.symbols
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, r)| *r)
        }
        fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
            self.symbol(name)
        }
        fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool {
            self.code.iter().any(|(at, bytes)| {
                let Some(off) = vaddr.checked_sub(*at) else {
                    return false;
                };
                let Some(src) = bytes.get(off as usize..off as usize + buf.len()) else {
                    return false;
                };
                buf.copy_from_slice(src);
                true
            })
        }
        fn tls_template(&self) -> Option<TlsTemplate> {
            None
        }
        fn cfi_function(&self, vaddr: u64) -> Option<SymbolRange> {
            self.functions.iter().copied().find(|f| contains(f, vaddr))
        }
    }

    fn r(address: u64, size: u64) -> SymbolRange {
        SymbolRange { address, size }
    }

    /// `jmp rel32` at `at` to `to`.
    fn jmp(at: u64, to: u64) -> Vec<u8> {
        let rel = (to as i64 - (at as i64 + 5)) as i32;
        let mut b = vec![0xe9];
        b.extend_from_slice(&rel.to_le_bytes());
        b
    }

    /// `jne rel32` at `at` to `to`.
    fn jne(at: u64, to: u64) -> Vec<u8> {
        let rel = (to as i64 - (at as i64 + 6)) as i32;
        let mut b = vec![0x0f, 0x85];
        b.extend_from_slice(&rel.to_le_bytes());
        b
    }

    #[test]
    fn jumps_are_found_and_calls_and_inner_jumps_are_not() {
        let base = 0x1000;
        let mut code = Vec::new();
        code.extend(jmp(base, 0x9010)); // out: a part
        code.extend([0xe8, 0, 0, 0, 0]); // call next
        code.extend(jne(base + 10, base)); // back to the start: inside
        code.extend(jne(base + 16, 0x5000)); // out
        code.extend([0x48, 0x8b, 0x07]); // mov rax, [rdi]
        code.extend([0xff, 0xe0]); // jmp rax: indirect
        code.extend(jmp(base + 27, 0x9010)); // the same target again
        code.push(0xc3);
        assert_eq!(branch_targets(&code, base), vec![0x9010, 0x5000]);
    }

    #[test]
    fn the_cold_part_is_the_function_the_entry_jumps_into() {
        let entry = r(0x1000, 0x40);
        let cold = r(0x9000, 0x800);
        let other = r(0x5000, 0x100);
        let mut code = jmp(0x1000, 0x9123); // into the middle of the cold part
        code.extend(jmp(0x1005, 0x5000)); // a tail call: the start of another function
        code.resize(0x40, 0x90);
        let fake = Fake {
            symbols: vec![(ENTRY_SYMBOL, entry)],
            functions: vec![entry, other, cold],
            code: vec![(0x1000, code)],
        };
        let found = find_eval_loop(&fake).unwrap();
        assert_eq!(found.parts, vec![entry, cold]);
        assert_eq!(found.from, PartsFrom::Cfi);
    }

    #[test]
    fn symbols_win_and_an_unsplit_loop_is_one_part() {
        let entry = r(0x1000, 0x40);
        let cold = r(0x9000, 0x800);
        let fake = Fake {
            symbols: vec![(ENTRY_SYMBOL, entry), (COLD_SYMBOL, cold)],
            functions: vec![entry, cold],
            code: vec![(0x1000, vec![0x90; 0x40])],
        };
        assert_eq!(
            find_eval_loop(&fake).unwrap(),
            EvalLoop {
                parts: vec![entry, cold],
                from: PartsFrom::Symbols
            }
        );
        let fake = Fake {
            symbols: vec![(ENTRY_SYMBOL, entry)],
            functions: vec![entry],
            code: vec![(0x1000, vec![0x90; 0x40])],
        };
        let found = find_eval_loop(&fake).unwrap();
        assert_eq!(
            (found.parts, found.from),
            (vec![entry], PartsFrom::EntrySymbol)
        );
        let none = Fake {
            symbols: vec![],
            functions: vec![],
            code: vec![],
        };
        assert!(find_eval_loop(&none).is_none());
    }

    #[test]
    fn a_sizeless_entry_takes_its_cfi_extent() {
        let fake = Fake {
            symbols: vec![(ENTRY_SYMBOL, r(0x1000, 0))],
            functions: vec![r(0x1000, 0x40)],
            code: vec![(0x1000, vec![0x90; 0x40])],
        };
        assert_eq!(find_eval_loop(&fake).unwrap().parts, vec![r(0x1000, 0x40)]);
    }

    #[test]
    fn garbage_code_decodes_without_panicking() {
        let code: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let targets = branch_targets(&code, u64::MAX - 100);
        assert!(targets.len() <= code.len());
    }
}
