//! DWARF CFI (`.eh_frame`, `.debug_frame`): listing FDEs and translating gimli's
//! evaluated rows into [`UnwindInfo`]s.

use std::collections::HashMap;

use gimli::{
    BaseAddresses, CfaRule, CommonInformationEntry, EndianSlice, LittleEndian, Reader,
    RegisterRule, UnwindContext, UnwindSection, UnwindTableRow, X86_64,
};

use crate::{Kind, UnwindInfo};

pub(crate) type R<'a> = EndianSlice<'a, LittleEndian>;

/// Code of an x86-64 signal trampoline without 'S' CFI: `mov $15,%rax; syscall`
/// (glibc's and musl's `__restore_rt`; rt_sigreturn is syscall 15).
pub(crate) const SIGRETURN_CODE: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// The CFA expression GCC and binutils emit for 16-byte `.plt` entries:
/// `DW_OP_breg7 (rsp) 8; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and; DW_OP_lit11;
/// DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus`.
pub(crate) const PLT_EXPRESSION: [u8; 11] = [
    0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
];

/// Why a row became Invalid (counted for the extraction summary).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Unsupported {
    /// CFA = some other register + offset.
    CfaRegister,
    /// CFA offset does not fit in i32.
    CfaOffset,
    /// CFA expression of another shape.
    CfaExpression,
    /// RA rule other than "at CFA-8" or "undefined".
    ReturnAddress,
    /// RBP saved by an expression or into a register.
    RbpRule,
}

/// Counters for one extraction.
#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub fdes: u64,
    pub rows: u64,
    pub fde_errors: u64,
    pub unsupported: HashMap<Unsupported, u64>,
}

/// Parses an expression of the form `DW_OP_bregN <sleb>; DW_OP_deref`, returning N and the
/// offset.
fn breg_deref(expr: &[u8]) -> Option<(u8, i64)> {
    let (&op, rest) = expr.split_first()?;
    if !(0x70..=0x8f).contains(&op) {
        return None;
    }
    let mut reader = R::new(rest, LittleEndian);
    let offset = reader.read_sleb128().ok()?;
    let tail = reader.slice();
    (tail == [0x06]).then_some((op - 0x70, offset))
}

/// Translates a CFA expression.
pub(crate) fn translate_cfa_expression(expr: &[u8]) -> Result<(Kind, i32), Unsupported> {
    if expr == PLT_EXPRESSION {
        return Ok((Kind::Plt, 0));
    }
    match breg_deref(expr) {
        Some((6, off)) => i32::try_from(off)
            .map(|o| (Kind::FpDeref, o))
            .map_err(|_| Unsupported::CfaOffset),
        Some((7, off)) => i32::try_from(off)
            .map(|o| (Kind::SpDeref, o))
            .map_err(|_| Unsupported::CfaOffset),
        _ => Err(Unsupported::CfaExpression),
    }
}

/// Translates one evaluated CFI row.
pub(crate) fn translate_row<'a, S: UnwindSection<R<'a>>>(
    row: &UnwindTableRow<usize>,
    section: &S,
) -> Result<UnwindInfo, Unsupported> {
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => return Ok(UnwindInfo::STOP),
        Some(RegisterRule::Offset(-8)) => {}
        _ => return Err(Unsupported::ReturnAddress),
    }
    let (kind, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let kind = match *register {
                X86_64::RSP => Kind::Sp,
                X86_64::RBP => Kind::Fp,
                _ => return Err(Unsupported::CfaRegister),
            };
            (
                kind,
                i32::try_from(*offset).map_err(|_| Unsupported::CfaOffset)?,
            )
        }
        CfaRule::Expression(expr) => {
            let expr = expr.get(section).map_err(|_| Unsupported::CfaExpression)?;
            translate_cfa_expression(expr.0.slice())?
        }
    };
    if kind == Kind::Plt {
        return Ok(UnwindInfo::PLT);
    }
    let fp_offset = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => None,
        Some(RegisterRule::Offset(off)) => {
            Some(i32::try_from(off).map_err(|_| Unsupported::RbpRule)?)
        }
        // Undefined: the caller's RBP is not recoverable; leave it as is (it is only
        // seen on outermost frames).
        Some(RegisterRule::Undefined) => None,
        Some(_) => return Err(Unsupported::RbpRule),
    };
    Ok(UnwindInfo {
        kind,
        cfa_offset,
        fp_offset,
    })
}

/// Where one FDE is, as found while listing a section.
#[derive(Copy, Clone, Debug)]
pub(crate) struct FdeRef {
    pub start: u64,
    pub end: u64,
    pub offset: usize,
}

/// A CFI section with what is needed to parse its entries.
pub(crate) struct CfiSection<'a, S> {
    pub section: S,
    pub bases: BaseAddresses,
    cies: HashMap<usize, CommonInformationEntry<R<'a>>>,
    _marker: std::marker::PhantomData<&'a ()>,
}

impl<'a, S: UnwindSection<R<'a>>> CfiSection<'a, S>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    pub fn new(section: S, bases: BaseAddresses) -> Self {
        CfiSection {
            section,
            bases,
            cies: HashMap::new(),
            _marker: std::marker::PhantomData,
        }
    }

    fn parse_fde(&mut self, offset: usize) -> gimli::Result<gimli::FrameDescriptionEntry<R<'a>>> {
        let CfiSection {
            section,
            bases,
            cies,
            ..
        } = self;
        let get_cie = |s: &S, b: &BaseAddresses, o: S::Offset| -> gimli::Result<_> {
            let key: usize = gimli::UnwindOffset::into(o);
            if let Some(cie) = cies.get(&key) {
                return Ok(cie.clone());
            }
            let cie = s.cie_from_offset(b, o)?;
            // The cache is bounded by the number of distinct CIE offsets, at most one per
            // 8 bytes of section.
            cies.insert(key, cie.clone());
            Ok(cie)
        };
        section.fde_from_offset(bases, S::Offset::from(offset), get_cie)
    }

    fn fde_ref(&mut self, offset: usize) -> Option<FdeRef> {
        match self.parse_fde(offset) {
            Ok(fde) => {
                let start = fde.initial_address();
                let end = start.checked_add(fde.len())?;
                // A zero start is a discarded function (linkers leave such FDEs in
                // .debug_frame); empty ranges describe nothing.
                (start != 0 && end > start).then_some(FdeRef { start, end, offset })
            }
            Err(e) => {
                tracing::debug!(offset, error = %e, "skipping unparseable FDE");
                None
            }
        }
    }

    /// Lists FDEs by walking the section entry by entry.
    pub fn walk(&mut self, out: &mut Vec<FdeRef>) {
        let mut offsets = Vec::new();
        {
            let mut entries = self.section.entries(&self.bases);
            loop {
                match entries.next() {
                    Ok(Some(gimli::CieOrFde::Fde(partial))) => {
                        offsets.push(partial.offset());
                    }
                    Ok(Some(gimli::CieOrFde::Cie(_))) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "CFI section is damaged; using the entries before the damage");
                        break;
                    }
                }
            }
        }
        for offset in offsets {
            if let Some(r) = self.fde_ref(offset) {
                out.push(r);
            }
        }
    }

    /// Lists FDEs at the given offsets (from `.eh_frame_hdr`), each once.
    pub fn at_offsets(&mut self, mut offsets: Vec<usize>, out: &mut Vec<FdeRef>) {
        offsets.sort_unstable();
        offsets.dedup();
        for offset in offsets {
            if let Some(r) = self.fde_ref(offset) {
                out.push(r);
            }
        }
    }

    /// Evaluates the FDE at `offset` and hands each row to `emit`, charging its length
    /// against `budget`. `is_sigreturn` tells whether code at an address range is a
    /// sigreturn trampoline.
    pub fn rows(
        &mut self,
        fde: &FdeRef,
        ctx: &mut UnwindContext<usize>,
        stats: &mut Stats,
        budget: &mut u64,
        is_sigreturn: &dyn Fn(u64, u64) -> bool,
        emit: &mut dyn FnMut(u64, UnwindInfo),
    ) {
        let parsed = match self.parse_fde(fde.offset) {
            Ok(p) => p,
            Err(_) => {
                emit(fde.start, UnwindInfo::INVALID);
                return;
            }
        };
        let cost = parsed.entry_len() as u64;
        let cost = cost
            .saturating_add(parsed.cie().entry_len() as u64)
            .saturating_add(16);
        if *budget < cost {
            emit(fde.start, UnwindInfo::INVALID);
            return;
        }
        *budget -= cost;
        stats.fdes += 1;
        if parsed.is_signal_trampoline() || is_sigreturn(fde.start, fde.end) {
            emit(fde.start, UnwindInfo::SIGNAL);
            return;
        }
        let mut table = match parsed.rows(&self.section, &self.bases, ctx) {
            Ok(t) => t,
            Err(_) => {
                stats.fde_errors += 1;
                emit(fde.start, UnwindInfo::INVALID);
                return;
            }
        };
        let mut last_end = fde.start;
        loop {
            match table.next_row() {
                Ok(Some(row)) => {
                    stats.rows += 1;
                    let info = translate_row(row, &self.section).unwrap_or_else(|why| {
                        *stats.unsupported.entry(why).or_default() += 1;
                        UnwindInfo::INVALID
                    });
                    last_end = row.end_address();
                    emit(row.start_address(), info);
                }
                Ok(None) => break,
                Err(_) => {
                    stats.fde_errors += 1;
                    emit(last_end, UnwindInfo::INVALID);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfa_expressions() {
        // gcc's stack realignment: DW_OP_breg6 (rbp) -8; DW_OP_deref.
        assert_eq!(
            translate_cfa_expression(&[0x76, 0x78, 0x06]),
            Ok((Kind::FpDeref, -8))
        );
        // DW_OP_breg7 (rsp) 16; DW_OP_deref.
        assert_eq!(
            translate_cfa_expression(&[0x77, 0x10, 0x06]),
            Ok((Kind::SpDeref, 16))
        );
        assert_eq!(
            translate_cfa_expression(&PLT_EXPRESSION),
            Ok((Kind::Plt, 0))
        );
        // A PLT-like expression with other constants is not the PLT rule.
        let mut other = PLT_EXPRESSION;
        other[6] = 0x3a; // DW_OP_lit10
        assert_eq!(
            translate_cfa_expression(&other),
            Err(Unsupported::CfaExpression)
        );
        // breg10 (r10) deref, trailing ops, truncated sleb.
        assert_eq!(
            translate_cfa_expression(&[0x7a, 0x00, 0x06]),
            Err(Unsupported::CfaExpression)
        );
        assert_eq!(
            translate_cfa_expression(&[0x76, 0x78, 0x06, 0x23, 0x08]),
            Err(Unsupported::CfaExpression)
        );
        assert_eq!(
            translate_cfa_expression(&[0x76, 0x80]),
            Err(Unsupported::CfaExpression)
        );
        assert_eq!(
            translate_cfa_expression(&[]),
            Err(Unsupported::CfaExpression)
        );
    }
}
