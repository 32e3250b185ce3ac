//! Just enough x86-64 decoding to read what a stripped libruby's exported functions reference:
//! where `ruby_current_ec` lives (their thread-local access), which local function they
//! tail-call (`rb_vm_exec`), and which global they read (`ruby_global_symbols`).
//!
//! [`decode`] walks instructions one by one (lengths from the opcode maps of the integer and
//! SSE instructions compilers emit in such functions) and stops at the first byte it does not
//! know, so a pattern is only ever matched on real instruction boundaries. Every function here
//! reads untrusted bytes: none panics, all are bounded by their input (fuzzed).

/// One decoded instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insn {
    /// Its virtual address.
    pub addr: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Where its prefixes end (the REX byte, if any, is the last of them).
    pub opcode_at: usize,
    /// Target of a RIP-relative memory operand.
    pub rip_target: Option<u64>,
    /// Target of a direct call (`e8`).
    pub call: Option<u64>,
    /// Target of a direct unconditional jump (`e9`, `eb`).
    pub jump: Option<u64>,
    /// The instruction's displacement (memory operand), sign-extended.
    pub disp: i64,
    /// Its last immediate, sign-extended.
    pub imm: i64,
}

impl Insn {
    /// The REX prefix, when there is one.
    pub fn rex(&self) -> Option<u8> {
        let b = *self.bytes.get(self.opcode_at.checked_sub(1)?)?;
        (b & 0xf0 == 0x40).then_some(b)
    }

    /// The opcode bytes and what follows (without the prefixes).
    pub fn body(&self) -> &[u8] {
        self.bytes.get(self.opcode_at..).unwrap_or(&[])
    }

    /// Whether a legacy prefix byte is present.
    pub fn has_prefix(&self, p: u8) -> bool {
        self.bytes[..self.opcode_at].contains(&p)
    }

    fn modrm(&self) -> Option<u8> {
        let body = self.body();
        let at = if body.first() == Some(&0x0f) { 2 } else { 1 };
        body.get(at).copied()
    }

    /// `mov r64, [base + disp]` from a register base (no SIB, no RIP): the base register
    /// number (0 = rax) and the displacement.
    pub fn load_from_register(&self) -> Option<(u8, i64)> {
        let rex = self.rex()?;
        if rex & 0x08 == 0 || self.body().first() != Some(&0x8b) || self.rip_target.is_some() {
            return None;
        }
        let m = self.modrm()?;
        let (md, rm) = (m >> 6, m & 7);
        if md == 3 || rm == 4 {
            return None;
        }
        Some((rm | ((rex & 1) << 3), self.disp))
    }
}

const PREFIXES: [u8; 11] = [
    0x66, 0x67, 0xf2, 0xf3, 0x2e, 0x3e, 0x26, 0x36, 0x64, 0x65, 0xf0,
];

/// Immediate sizes of an instruction (operand-size aware).
#[derive(Clone, Copy)]
enum Imm {
    None,
    B1,
    /// 4 bytes, or 2 with the 0x66 prefix.
    Z,
    B2,
    /// `mov r, imm`: 8 bytes with REX.W, else like `Z`.
    V,
}

/// What follows one opcode: whether it has a ModRM byte, and its immediate.
fn one_byte(op: u8, modrm_reg: Option<u8>) -> Option<(bool, Imm)> {
    Some(match op {
        0x00..=0x3f => match op & 7 {
            0..=3 => (true, Imm::None),
            4 => (false, Imm::B1),
            5 => (false, Imm::Z),
            _ => return None,
        },
        0x50..=0x5f => (false, Imm::None),
        0x63 => (true, Imm::None),
        0x68 => (false, Imm::Z),
        0x69 => (true, Imm::Z),
        0x6a => (false, Imm::B1),
        0x6b => (true, Imm::B1),
        0x70..=0x7f => (false, Imm::B1),
        0x80 | 0x83 => (true, Imm::B1),
        0x81 => (true, Imm::Z),
        0x84..=0x8f => (true, Imm::None),
        0x90..=0x99 | 0x9b..=0x9f => (false, Imm::None),
        0xa8 => (false, Imm::B1),
        0xa9 => (false, Imm::Z),
        0xb0..=0xb7 => (false, Imm::B1),
        0xb8..=0xbf => (false, Imm::V),
        0xc0 | 0xc1 | 0xc6 => (true, Imm::B1),
        0xc2 => (false, Imm::B2),
        0xc3 | 0xc9 | 0xcc => (false, Imm::None),
        0xc7 => (true, Imm::Z),
        0xd0..=0xd3 => (true, Imm::None),
        0xe8 | 0xe9 => (false, Imm::Z),
        0xeb => (false, Imm::B1),
        0xf4 | 0xf5 | 0xf8..=0xfd => (false, Imm::None),
        0xf6 => (true, if modrm_reg? <= 1 { Imm::B1 } else { Imm::None }),
        0xf7 => (true, if modrm_reg? <= 1 { Imm::Z } else { Imm::None }),
        0xfe | 0xff => (true, Imm::None),
        _ => return None,
    })
}

fn two_byte(op: u8) -> Option<(bool, Imm)> {
    Some(match op {
        0x05 | 0x0b | 0xa2 | 0xc8..=0xcf => (false, Imm::None),
        0x1e | 0x1f | 0x10..=0x17 | 0x28..=0x2f => (true, Imm::None),
        0x40..=0x4f | 0x50..=0x6f | 0x74..=0x7f => (true, Imm::None),
        0x70..=0x73 => (true, Imm::B1),
        0x80..=0x8f => (false, Imm::Z),
        0x90..=0x9f => (true, Imm::None),
        0xa3 | 0xa5 | 0xab | 0xad | 0xaf | 0xb0 | 0xb1 | 0xb3 | 0xb6 | 0xb7 | 0xbb..=0xbf => {
            (true, Imm::None)
        }
        0xa4 | 0xac | 0xba => (true, Imm::B1),
        0xc0 | 0xc1 | 0xc7 | 0xd0..=0xff => (true, Imm::None),
        0xc2 | 0xc4..=0xc6 => (true, Imm::B1),
        _ => return None,
    })
}

fn sext(bytes: &[u8]) -> i64 {
    match bytes.len() {
        1 => bytes[0] as i8 as i64,
        2 => i16::from_le_bytes([bytes[0], bytes[1]]) as i64,
        4 => i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as i64,
        8 => i64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])),
        _ => 0,
    }
}

/// Decodes one instruction at the start of `code` (at virtual address `addr`).
pub fn decode_one(code: &[u8], addr: u64) -> Option<Insn> {
    let mut i = 0;
    let mut opsize16 = false;
    while i < code.len() && i < 14 && PREFIXES.contains(&code[i]) {
        opsize16 |= code[i] == 0x66;
        i += 1;
    }
    let mut rex_w = false;
    if let Some(&b) = code.get(i)
        && b & 0xf0 == 0x40
    {
        rex_w = b & 0x08 != 0;
        i += 1;
    }
    let opcode_at = i;
    let op = *code.get(i)?;
    i += 1;
    let (has_modrm, imm) = if op == 0x0f {
        let op2 = *code.get(i)?;
        i += 1;
        match op2 {
            0x38 => {
                i += 1;
                (true, Imm::None)
            }
            0x3a => {
                i += 1;
                (true, Imm::B1)
            }
            _ => two_byte(op2)?,
        }
    } else {
        let reg = code.get(i).map(|m| (m >> 3) & 7);
        one_byte(op, reg)?
    };
    let mut rip_target = None;
    let mut disp = 0;
    let mut disp_at = None;
    if has_modrm {
        let m = *code.get(i)?;
        i += 1;
        let (md, rm) = (m >> 6, m & 7);
        let mut disp_len = match md {
            1 => 1,
            2 => 4,
            _ => 0,
        };
        if md != 3 && rm == 4 {
            let sib = *code.get(i)?;
            i += 1;
            if md == 0 && sib & 7 == 5 {
                disp_len = 4;
            }
        }
        let rip = md == 0 && rm == 5;
        if rip {
            disp_len = 4;
        }
        disp_at = Some((i, disp_len, rip));
        disp = sext(code.get(i..i + disp_len)?);
        i += disp_len;
    }
    let imm_len = match imm {
        Imm::None => 0,
        Imm::B1 => 1,
        Imm::B2 => 2,
        Imm::Z => {
            if opsize16 && op != 0xe8 && op != 0xe9 && op != 0x0f {
                2
            } else {
                4
            }
        }
        Imm::V => {
            if rex_w {
                8
            } else if opsize16 {
                2
            } else {
                4
            }
        }
    };
    let imm_bytes = code.get(i..i + imm_len)?;
    let imm_value = sext(imm_bytes);
    i += imm_len;
    let next = addr.wrapping_add(i as u64);
    if let Some((_, _, true)) = disp_at {
        rip_target = Some(next.wrapping_add(disp as u64));
    }
    let body_op = (op, code.get(opcode_at + 1).copied());
    let call = (op == 0xe8).then(|| next.wrapping_add(imm_value as u64));
    let jump = (op == 0xe9 || op == 0xeb).then(|| next.wrapping_add(imm_value as u64));
    let _ = body_op;
    Some(Insn {
        addr,
        bytes: code.get(..i)?.to_vec(),
        opcode_at,
        rip_target,
        call,
        jump,
        disp,
        imm: imm_value,
    })
}

/// Decodes instructions from the start of `code` until the first one that is not known, a
/// `ret`, or `max` instructions.
pub fn decode(code: &[u8], addr: u64, max: usize) -> Vec<Insn> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while out.len() < max && at < code.len() {
        let Some(insn) = decode_one(&code[at..], addr.wrapping_add(at as u64)) else {
            break;
        };
        at += insn.bytes.len();
        let ret = insn.body().first() == Some(&0xc3);
        out.push(insn);
        if ret {
            break;
        }
    }
    out
}

/// How a function reaches a thread-local variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsAccess {
    /// General or local dynamic (`__tls_get_addr` with the `tls_index` at `got`, in the GOT:
    /// the module ID, then the offset in its block); the variable is at `disp` from the
    /// address returned.
    Dynamic {
        /// Virtual address of the `tls_index`.
        got: u64,
        /// Displacement of the load from the returned address.
        disp: i64,
    },
    /// A TLS descriptor at `desc` (its second word, once resolved for static TLS, is the
    /// offset from the thread pointer), then `disp` from there.
    Descriptor {
        /// Virtual address of the descriptor.
        desc: u64,
        /// Displacement.
        disp: i64,
    },
    /// Initial exec: the GOT entry at `got` holds the offset from the thread pointer.
    InitialExec {
        /// Virtual address of the GOT entry.
        got: u64,
        /// Displacement.
        disp: i64,
    },
    /// Local exec: at this offset from the thread pointer.
    LocalExec {
        /// The offset.
        offset: i64,
    },
}

/// The first thread-local access of a function, and the displacement of the first load
/// through its result (where the function reads the variable).
pub fn tls_access(insns: &[Insn]) -> Option<TlsAccess> {
    for (i, insn) in insns.iter().enumerate() {
        let body = insn.body();
        // fs-relative loads: mov r64, fs:disp32 (local exec) or mov r64, fs:[reg] (after a
        // GOT load: initial exec; after a descriptor call: TLSDESC).
        if insn.has_prefix(0x64) && body.first() == Some(&0x8b) && insn.rex().is_some() {
            let m = body.get(1).copied()?;
            if m & 0xc7 == 0x04 && body.get(2) == Some(&0x25) {
                return Some(TlsAccess::LocalExec { offset: insn.disp });
            }
            continue;
        }
        // lea rdi, [rip + X]; call __tls_get_addr; (mov r, [rax + d])
        if body.first() == Some(&0x8d)
            && insn.rex().is_some_and(|r| r & 0x08 != 0)
            && let Some(target) = insn.rip_target
        {
            let m = body.get(1).copied()?;
            let reg = (m >> 3) & 7;
            let next = insns.get(i + 1)?;
            if reg == 7 && next.call.is_some() {
                let disp = insns[i + 2..]
                    .iter()
                    .take(3)
                    .find_map(|l| l.load_from_register().filter(|(b, _)| *b == 0))
                    .map(|(_, d)| d)?;
                return Some(TlsAccess::Dynamic { got: target, disp });
            }
            // lea rax, [rip + X]; call *(%rax): a TLS descriptor.
            if reg == 0 && next.body().starts_with(&[0xff, 0x10]) {
                let disp = fs_load_after(&insns[i + 2..])?;
                return Some(TlsAccess::Descriptor { desc: target, disp });
            }
        }
        // mov r64, [rip + X]; mov r64, fs:[r] (initial exec)
        if body.first() == Some(&0x8b)
            && insn.rex().is_some_and(|r| r & 0x08 != 0)
            && let Some(target) = insn.rip_target
            && let Some(disp) = fs_load_after(&insns[i + 1..])
        {
            return Some(TlsAccess::InitialExec { got: target, disp });
        }
    }
    None
}

/// The displacement of an fs-relative load through a register within the next instructions.
fn fs_load_after(insns: &[Insn]) -> Option<i64> {
    insns.iter().take(3).find_map(|l| {
        let body = l.body();
        let m = *body.get(1)?;
        (l.has_prefix(0x64) && body.first() == Some(&0x8b) && m >> 6 != 3 && m & 7 != 4)
            .then_some(l.disp)
    })
}

/// Targets of the direct unconditional jumps that leave `[start, end)` (tail calls).
pub fn tail_calls(insns: &[Insn], start: u64, end: u64) -> Vec<u64> {
    insns
        .iter()
        .filter_map(|i| i.jump)
        .filter(|t| *t < start || *t >= end)
        .collect()
}

/// The immediate of the first `cmp r64, imm32` (`rb_id2str`'s comparison with the last
/// operator ID).
pub fn first_compare_immediate(insns: &[Insn]) -> Option<i64> {
    insns.iter().find_map(|i| {
        let body = i.body();
        let m = *body.get(1)?;
        (i.rex().is_some_and(|r| r & 0x08 != 0)
            && body.first() == Some(&0x81)
            && (m >> 3) & 7 == 7
            && m >> 6 == 3)
            .then_some(i.imm)
    })
}

/// The address of a structure read as a 32-bit compare at `A` and a 64-bit load at `A + 16`
/// (`global_symbols.last_id` and `global_symbols.ids`).
pub fn symbols_global(insns: &[Insn]) -> Option<u64> {
    let compares: Vec<u64> = insns
        .iter()
        .filter(|i| {
            let op = i.body().first().copied();
            (op == Some(0x39) || op == Some(0x3b)) && i.rex().is_none_or(|r| r & 0x08 == 0)
        })
        .filter_map(|i| i.rip_target)
        .collect();
    insns
        .iter()
        .filter(|i| i.body().first() == Some(&0x8b) && i.rex().is_some_and(|r| r & 0x08 != 0))
        .filter_map(|i| i.rip_target)
        .find_map(|t| {
            let a = t.wrapping_sub(16);
            compares.contains(&a).then_some(a)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn general_dynamic_access_of_ruby_3_3() {
        // rb_thread_current of Debian's libruby-3.3.so.3.3.8 at 0x235ab0.
        let code = hex(
            "f3 0f 1e fa 48 83 ec 08 66 48 8d 3d 10 50 22 00 66 66 48 e8 38 9c e0 ff \
             48 8b 00 48 8b 40 30 48 8b 40 10 48 83 c4 08 c3",
        );
        let insns = decode(&code, 0x235ab0, 32);
        assert_eq!(insns.len(), 9);
        assert_eq!(insns[2].rip_target, Some(0x45aad0));
        assert_eq!(
            tls_access(&insns),
            Some(TlsAccess::Dynamic {
                got: 0x45aad0,
                disp: 0
            })
        );
    }

    #[test]
    fn local_dynamic_access_keeps_the_displacement() {
        // rb_current_receiver of 3.3: lea rdi,[rip+..]; call; mov rax,[rax+0x10]
        let code = hex(
            "f3 0f 1e fa 48 83 ec 08 48 8d 3d 51 a2 1e 00 e8 ec f2 dc ff 48 8b 80 10 00 00 00 \
             48 85 c0 74 12",
        );
        let insns = decode(&code, 0x270400, 32);
        assert_eq!(
            tls_access(&insns),
            Some(TlsAccess::Dynamic {
                got: 0x45a660,
                disp: 0x10
            })
        );
    }

    #[test]
    fn static_accesses() {
        // mov rax, fs:0xfffffffffffffff0; ret
        let le = decode(&hex("64 48 8b 04 25 f0 ff ff ff c3"), 0x1000, 8);
        assert_eq!(tls_access(&le), Some(TlsAccess::LocalExec { offset: -16 }));
        // mov rax,[rip+0x100]; mov rax, fs:[rax]; ret
        let ie = decode(&hex("48 8b 05 00 01 00 00 64 48 8b 00 c3"), 0x1000, 8);
        assert_eq!(
            tls_access(&ie),
            Some(TlsAccess::InitialExec {
                got: 0x1107,
                disp: 0
            })
        );
        // lea rax,[rip+0x20]; call *(%rax); mov rax, fs:[rax]; ret
        let desc = decode(&hex("48 8d 05 20 00 00 00 ff 10 64 48 8b 00 c3"), 0x1000, 8);
        assert_eq!(
            tls_access(&desc),
            Some(TlsAccess::Descriptor {
                desc: 0x1027,
                disp: 0
            })
        );
    }

    #[test]
    fn tail_call_and_symbols_of_ruby_3_3() {
        // The end of rb_iseq_eval: mov rdi,rbx; pop rbx; ...; jmp 0x27dfa0
        let code = hex("48 89 df 5b 5d 41 5c 41 5d 41 5e 41 5f e9 8d f5 ff ff");
        let insns = decode(&code, 0x27ea01, 16);
        assert_eq!(tail_calls(&insns, 0x27e980, 0x27ea30), vec![0x27dfa0]);
        // rb_id2str: mov rax,rdi; xor esi,esi; shr rax,4; cmp rdi,0xa9; cmova rdi,rax; jmp
        let id2str = decode(
            &hex(
                "f3 0f 1e fa 48 89 f8 31 f6 48 c1 e8 04 48 81 ff a9 00 00 00 48 0f 47 f8 e9 63 e1 ff ff",
            ),
            0x22bae0,
            16,
        );
        assert_eq!(first_compare_immediate(&id2str), Some(0xa9));
        assert_eq!(id2str.last().unwrap().jump, Some(0x229c60));
        // get_id_serial_entry: cmp [rip+..],edi; jb; mov rdi,[rip+..]
        let entry = decode(
            &hex("39 3d c3 14 23 00 72 71 48 8b 3d ca 14 23 00"),
            0x229c97,
            8,
        );
        assert_eq!(symbols_global(&entry), Some(0x45b160));
    }

    #[test]
    fn unknown_bytes_stop_the_walk() {
        assert!(decode(&[0x06, 0xc3], 0, 8).is_empty());
        assert!(decode(&[], 0, 8).is_empty());
        assert!(decode_one(&[0x48], 0).is_none());
    }
}
