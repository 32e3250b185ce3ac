//! Extraction: listing the functions of every source, ordering them, evaluating their
//! rules and assembling the table.

use gimli::{BaseAddresses, DebugFrame, EhFrame, EhFrameHdr, LittleEndian, UnwindContext};

use crate::cfi::{self, CfiSection, FdeRef, Stats};
use crate::elf::Elf;
use crate::golang::GoPclntab;
use crate::{Error, ExtractOptions, Kind, StackDelta, StackDeltaTable, UnwindInfo};

/// Below this many CFI functions in the file, the debug file's `.debug_frame` is used too.
const FEW_FUNCTIONS: usize = 8;

/// Sources in priority order: where two overlap, the earlier one wins.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Go = 0,
    EhFrame = 1,
    DebugFrame = 2,
    DebugFileFrame = 3,
}

/// One function-sized range of one source.
#[derive(Copy, Clone, Debug)]
struct Block {
    start: u64,
    end: u64,
    source: Source,
    /// FDE offset in its section, or Go function index.
    index: usize,
}

/// Assembles the table from blocks given in ascending start order.
struct Builder {
    deltas: Vec<StackDelta>,
    /// End of the area covered by blocks so far (None before the first block).
    covered_end: Option<u64>,
    threshold: u64,
    clip: u64,
    block_end: u64,
    pending: Option<UnwindInfo>,
}

impl Builder {
    fn new(threshold: u64) -> Self {
        Builder {
            deltas: Vec::new(),
            covered_end: None,
            threshold,
            clip: 0,
            block_end: 0,
            pending: None,
        }
    }

    /// Starts a block; false when it adds nothing (empty, or inside earlier blocks).
    fn begin(&mut self, start: u64, end: u64) -> bool {
        if end <= start {
            return false;
        }
        self.clip = start;
        if let Some(covered) = self.covered_end {
            if end <= covered {
                return false;
            }
            if start > covered {
                if start - covered > self.threshold {
                    self.push(covered, UnwindInfo::INVALID);
                }
            } else {
                // Overlaps the previous block: the earlier block keeps its bytes.
                self.clip = covered;
            }
        }
        self.block_end = end;
        self.pending = None;
        true
    }

    /// A rule of the current block from `addr` on.
    fn row(&mut self, addr: u64, info: UnwindInfo) {
        if addr >= self.block_end {
            return;
        }
        if addr <= self.clip {
            self.pending = Some(info);
            return;
        }
        if let Some(p) = self.pending.take() {
            self.push(self.clip, p);
        }
        self.push(addr, info);
    }

    fn end_block(&mut self) {
        if let Some(p) = self.pending.take() {
            self.push(self.clip, p);
        }
        self.covered_end = Some(self.block_end);
    }

    fn push(&mut self, address: u64, info: UnwindInfo) {
        if let Some(last) = self.deltas.last_mut() {
            if address < last.address {
                return;
            }
            if address == last.address {
                last.info = info;
                let n = self.deltas.len();
                if n >= 2 && self.deltas[n - 2].info == info {
                    self.deltas.pop();
                }
                return;
            }
            if last.info == info {
                return;
            }
        }
        self.deltas.push(StackDelta { address, info });
    }

    fn finish(mut self) -> Vec<StackDelta> {
        if let Some(end) = self.covered_end {
            self.push(end, UnwindInfo::INVALID);
        }
        self.deltas
    }
}

/// `.eh_frame` or `.debug_frame` of one file, with its bytes owned or borrowed.
pub(crate) struct FrameData<'a> {
    pub(crate) data: std::borrow::Cow<'a, [u8]>,
    pub(crate) address: u64,
}

pub(crate) fn eh_frame_offsets<'a, R: object::ReadRef<'a>>(
    elf: &Elf<'a, R>,
    eh: &FrameData<'_>,
    bases: &BaseAddresses,
) -> Option<Vec<usize>> {
    let hdr = elf.section(".eh_frame_hdr")?;
    let hdr_section = EhFrameHdr::new(&hdr.data, LittleEndian);
    let bases = bases.clone().set_eh_frame_hdr(hdr.address);
    let parsed = hdr_section.parse(&bases, 8).ok()?;
    // The search table is only usable for the .eh_frame we parse.
    if parsed.eh_frame_ptr().direct().ok()? != eh.address {
        return None;
    }
    let table = parsed.table()?;
    let mut offsets = Vec::new();
    let mut iter = table.iter(&bases);
    // Each entry takes at least 2 bytes of the header, which bounds the loop.
    loop {
        match iter.next() {
            Ok(Some((_, fde))) => {
                // Our own subtraction: gimli's `pointer_to_offset` does not check for
                // pointers below the section (found by the fuzzer).
                let offset = fde.direct().ok()?.checked_sub(eh.address)?;
                let offset = usize::try_from(offset)
                    .ok()
                    .filter(|&o| o < eh.data.len())?;
                offsets.push(offset);
            }
            Ok(None) => break,
            Err(_) => return None,
        }
    }
    (!offsets.is_empty()).then_some(offsets)
}

pub(crate) fn extract<'a, R: object::ReadRef<'a>>(
    elf_bytes: R,
    debug_bytes: Option<R>,
    opts: &ExtractOptions,
) -> Result<StackDeltaTable, Error> {
    let elf = Elf::parse(elf_bytes)?;
    let debug = match debug_bytes {
        Some(bytes) => match Elf::parse(bytes) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the debug file");
                None
            }
        },
        None => None,
    };
    let mut stats = Stats::default();
    let mut blocks: Vec<Block> = Vec::new();

    // Go.
    let text_address = elf.section_address(".text").unwrap_or(0);
    let gopclntab = elf.section(".gopclntab");
    let go = gopclntab
        .as_ref()
        .and_then(|s| match GoPclntab::parse(&s.data, text_address) {
            Ok(g) => Some(g),
            Err(why) => {
                tracing::warn!(why, "ignoring .gopclntab");
                None
            }
        });
    if let Some(go) = &go {
        for i in 0..go.len() {
            if let Some(f) = go.func(i) {
                blocks.push(Block {
                    start: f.start,
                    end: f.end,
                    source: Source::Go,
                    index: i,
                });
            }
        }
    }

    // .eh_frame.
    let got = elf.section_address(".got").unwrap_or(0);
    let eh = elf.section(".eh_frame").map(|s| FrameData {
        data: s.data,
        address: s.address,
    });
    let mut eh_section = eh.as_ref().map(|eh| {
        let bases = BaseAddresses::default()
            .set_eh_frame(eh.address)
            .set_text(text_address)
            .set_got(got);
        let mut section = EhFrame::new(&eh.data, LittleEndian);
        section.set_address_size(8);
        CfiSection::new(section, bases)
    });
    let mut fdes: Vec<FdeRef> = Vec::new();
    let sigreturn_at = |start: u64| elf.bytes_at(start, 9) == Some(&cfi::SIGRETURN_CODE[..]);
    let list = |fdes: &mut Vec<FdeRef>, source: Source, blocks: &mut Vec<Block>| {
        for mut f in fdes.drain(..) {
            // A trampoline found by its code starts one byte early: the walker looks up the
            // return address minus one, and the kernel's return address is its first byte.
            if f.end - f.start == 9 && sigreturn_at(f.start) {
                f.start -= 1;
            }
            blocks.push(Block {
                start: f.start,
                end: f.end,
                source,
                index: f.offset,
            });
        }
    };
    if let (Some(eh), Some(section)) = (eh.as_ref(), eh_section.as_mut()) {
        match eh_frame_offsets(&elf, eh, &section.bases) {
            Some(offsets) => section.at_offsets(offsets, &mut fdes),
            None => section.walk(&mut fdes),
        }
        list(&mut fdes, Source::EhFrame, &mut blocks);
    }

    // .debug_frame of the file, then of the debug file when the file has little CFI.
    fn frame_section<'a, R: object::ReadRef<'a>>(e: &Elf<'a, R>) -> Option<FrameData<'a>> {
        e.section(".debug_frame").map(|s| FrameData {
            data: s.data,
            address: s.address,
        })
    }
    let df = frame_section(&elf);
    let mut df_section = df.as_ref().map(|d| {
        let mut section = DebugFrame::new(&d.data, LittleEndian);
        section.set_address_size(8);
        CfiSection::new(section, BaseAddresses::default())
    });
    if let Some(section) = df_section.as_mut() {
        section.walk(&mut fdes);
        list(&mut fdes, Source::DebugFrame, &mut blocks);
    }
    let cfi_functions = blocks.iter().filter(|b| b.source != Source::Go).count();
    let ddf = debug
        .as_ref()
        .filter(|_| cfi_functions < FEW_FUNCTIONS)
        .and_then(frame_section);
    let mut ddf_section = ddf.as_ref().map(|d| {
        let mut section = DebugFrame::new(&d.data, LittleEndian);
        section.set_address_size(8);
        CfiSection::new(section, BaseAddresses::default())
    });
    if let Some(section) = ddf_section.as_mut() {
        section.walk(&mut fdes);
        list(&mut fdes, Source::DebugFileFrame, &mut blocks);
    }

    if blocks.is_empty() {
        return Err(Error::NoUnwindInfo {
            detail: format!(
                ".gopclntab {}, .eh_frame {}, .debug_frame {}, debug file {}",
                presence(gopclntab.is_some()),
                presence(eh.is_some()),
                presence(df.is_some()),
                if debug.is_some() {
                    "given"
                } else {
                    "not given"
                },
            ),
        });
    }

    blocks.sort_unstable_by_key(|b| (b.start, b.source, b.index));

    // Work budget: each FDE costs its length in bytes; real files never need more than
    // their section size, crafted ones with overlapping FDEs are cut off.
    let section_budget = |len: usize| (len as u64).saturating_mul(4).saturating_add(1 << 20);
    let mut budgets = [
        elf_bytes
            .len()
            .unwrap_or(0)
            .saturating_mul(2)
            .saturating_add(1 << 20),
        section_budget(eh.as_ref().map_or(0, |d| d.data.len())),
        section_budget(df.as_ref().map_or(0, |d| d.data.len())),
        section_budget(ddf.as_ref().map_or(0, |d| d.data.len())),
    ];
    let mut ctx: Box<UnwindContext<usize>> = Box::new(UnwindContext::new());
    let mut builder = Builder::new(opts.invalid_gap_threshold);
    let is_sigreturn = |start: u64, end: u64| {
        end.checked_sub(9)
            .is_some_and(|s| (s == start || s == start + 1) && sigreturn_at(s))
    };
    for block in &blocks {
        if !builder.begin(block.start, block.end) {
            continue;
        }
        let mut emit = |addr: u64, info: UnwindInfo| builder.row(addr, info);
        let fde = FdeRef {
            start: block.start,
            end: block.end,
            offset: block.index,
        };
        let budget = &mut budgets[block.source as usize];
        match block.source {
            Source::Go => {
                if let Some(f) = go
                    .as_ref()
                    .and_then(|g| g.func(block.index).map(|f| (g, f)))
                {
                    f.0.rows(&f.1, budget, &mut emit);
                }
            }
            Source::EhFrame => {
                if let Some(s) = eh_section.as_mut() {
                    s.rows(&fde, &mut ctx, &mut stats, budget, &is_sigreturn, &mut emit);
                }
            }
            Source::DebugFrame => {
                if let Some(s) = df_section.as_mut() {
                    s.rows(&fde, &mut ctx, &mut stats, budget, &is_sigreturn, &mut emit);
                }
            }
            Source::DebugFileFrame => {
                if let Some(s) = ddf_section.as_mut() {
                    s.rows(&fde, &mut ctx, &mut stats, budget, &is_sigreturn, &mut emit);
                }
            }
        }
        builder.end_block();
    }
    drop(blocks);
    let mut deltas = builder.finish();
    if opts.merge_push_pop {
        merge_push_pop(&mut deltas, &|addr, len| elf.bytes_at(addr, len));
    }
    let mut unsupported: Vec<_> = stats.unsupported.iter().collect();
    unsupported.sort();
    tracing::debug!(
        fdes = stats.fdes,
        rows = stats.rows,
        fde_errors = stats.fde_errors,
        ?unsupported,
        go_functions = go.as_ref().map_or(0, |g| g.len()),
        entries = deltas.len(),
        "extracted stack deltas"
    );
    Ok(StackDeltaTable { deltas })
}

fn presence(present: bool) -> &'static str {
    if present { "present" } else { "absent" }
}

/// Whether `code` starts with exactly one `push r64`/`pop r64` instruction of `len` bytes,
/// and which (+8 for push, -8 for pop).
pub(crate) fn push_pop_effect(code: &[u8], len: usize) -> Option<i32> {
    let op = match (len, code) {
        (1, [op, ..]) => *op,
        // REX.B prefix (r8-r15); REX.W is allowed too (it does not change push/pop).
        (2, [rex, op, ..]) if (0x41..=0x49).contains(rex) && rex & 1 == 1 => *op,
        _ => return None,
    };
    match op {
        0x50..=0x57 => Some(8),
        0x58..=0x5f => Some(-8),
        _ => None,
    }
}

/// The lossy push/pop merge described on [`ExtractOptions::merge_push_pop`].
fn merge_push_pop<'c>(deltas: &mut Vec<StackDelta>, code: &dyn Fn(u64, usize) -> Option<&'c [u8]>) {
    let mut out: Vec<StackDelta> = Vec::with_capacity(deltas.len());
    let mut i = 0;
    while i < deltas.len() {
        let d = deltas[i];
        if let Some(next) = deltas.get(i + 1) {
            let gap = next.address - d.address;
            let mergeable = d.info.kind == Kind::Sp
                && next.info.kind == Kind::Sp
                && (1..=2).contains(&gap)
                && code(d.address, gap as usize)
                    .and_then(|c| push_pop_effect(c, gap as usize))
                    .is_some_and(|effect| {
                        next.info.cfa_offset.checked_sub(d.info.cfa_offset) == Some(effect)
                    });
            if mergeable {
                // Drop `d`: the next rule starts at d.address, unless that equals the rule
                // before it, in which case the earlier entry simply extends.
                let moved = StackDelta {
                    address: d.address,
                    info: next.info,
                };
                if out.last().is_none_or(|l| l.info != moved.info) {
                    out.push(moved);
                }
                i += 2;
                continue;
            }
        }
        if out.last().is_none_or(|l| l.info != d.info) {
            out.push(d);
        }
        i += 1;
    }
    *deltas = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(off: i32) -> UnwindInfo {
        UnwindInfo::sp(off, None)
    }

    type Rows<'a> = &'a [(u64, UnwindInfo)];

    fn build(blocks: &[(u64, u64, Rows<'_>)], threshold: u64) -> Vec<(u64, UnwindInfo)> {
        let mut b = Builder::new(threshold);
        for (start, end, rows) in blocks {
            if b.begin(*start, *end) {
                for (a, i) in *rows {
                    b.row(*a, *i);
                }
                b.end_block();
            }
        }
        b.finish()
            .into_iter()
            .map(|d| (d.address, d.info))
            .collect()
    }

    #[test]
    fn padding_gap_extends_previous_and_long_gap_is_invalid() {
        let r = build(
            &[
                (0x100, 0x110, &[(0x100, sp(8)), (0x101, sp(16))]),
                // 15-byte gap: padding.
                (0x11f, 0x130, &[(0x11f, sp(8))]),
                // 16-byte gap: Invalid.
                (0x140, 0x150, &[(0x140, sp(8))]),
            ],
            15,
        );
        assert_eq!(
            r,
            vec![
                (0x100, sp(8)),
                (0x101, sp(16)),
                (0x11f, sp(8)),
                (0x130, UnwindInfo::INVALID),
                (0x140, sp(8)),
                (0x150, UnwindInfo::INVALID),
            ]
        );
    }

    #[test]
    fn overlapping_block_is_clipped_and_nested_block_dropped() {
        let r = build(
            &[
                (0x100, 0x120, &[(0x100, sp(8)), (0x110, sp(16))]),
                (0x104, 0x108, &[(0x104, sp(24))]),
                (0x118, 0x130, &[(0x118, sp(32)), (0x124, sp(40))]),
            ],
            15,
        );
        assert_eq!(
            r,
            vec![
                (0x100, sp(8)),
                (0x110, sp(16)),
                (0x120, sp(32)),
                (0x124, sp(40)),
                (0x130, UnwindInfo::INVALID)
            ]
        );
    }

    #[test]
    fn rows_at_the_same_address_keep_the_last_and_stay_deduplicated() {
        let r = build(
            &[(
                0x100,
                0x110,
                &[(0x100, sp(8)), (0x104, sp(16)), (0x104, sp(8))],
            )],
            15,
        );
        assert_eq!(r, vec![(0x100, sp(8)), (0x110, UnwindInfo::INVALID)]);
    }

    #[test]
    fn push_pop_recognition() {
        assert_eq!(push_pop_effect(&[0x55], 1), Some(8)); // push %rbp
        assert_eq!(push_pop_effect(&[0x5d], 1), Some(-8)); // pop %rbp
        assert_eq!(push_pop_effect(&[0x41, 0x57], 2), Some(8)); // push %r15
        assert_eq!(push_pop_effect(&[0x41, 0x5c], 2), Some(-8)); // pop %r12
        assert_eq!(push_pop_effect(&[0xff, 0xd0], 2), None); // call *%rax
        assert_eq!(push_pop_effect(&[0x55], 2), None);
        assert_eq!(push_pop_effect(&[0x40, 0x55], 2), None);
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        assert!(matches!(
            extract(&b""[..], None, &ExtractOptions::default()),
            Err(Error::Elf { .. })
        ));
        assert!(matches!(
            extract(
                &b"\x7fELF\x02\x01\x01"[..],
                None,
                &ExtractOptions::default()
            ),
            Err(Error::Elf { .. })
        ));
        let mut libc = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        // Truncations and byte flips anywhere must never panic.
        for cut in [64, 4096, libc.len() / 3, libc.len() - 1] {
            let _ = extract(&libc[..cut], None, &ExtractOptions::default());
        }
        let mut state = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % libc.len() as u64) as usize;
            libc[at] ^= (state >> 32) as u8 | 1;
        }
        let _ = extract(
            &libc[..],
            Some(&libc[..]),
            &ExtractOptions {
                merge_push_pop: true,
                ..Default::default()
            },
        );
    }

    #[test]
    fn a_32_bit_file_is_rejected_with_its_machine() {
        let mut header = [0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 1; // ELFCLASS32
        header[5] = 1;
        header[6] = 1;
        header[18] = 3; // EM_386
        let err = extract(&header[..], None, &ExtractOptions::default()).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedArchitecture { machine: 3, .. }),
            "{err}"
        );
    }
}
