//! Who unwinds which address of a process: the process's file mappings (native tables) and
//! the ranges runtimes own (eval loops inside files, JIT code in anonymous memory), turned
//! into the non-overlapping pieces the eBPF mapping trie holds, each as the minimal set of
//! address prefixes that covers it.
//!
//! Each piece's value carries the piece's own bounds, so the unwinder's "same range as the
//! previous frame" shortcut never skips over a range with another owner.

use std::collections::BTreeMap;

use ferroscope_ebpf_abi::{MAPPING_FRAME_POINTER, MAPPING_SPLICE, PidMapping};
use ferroscope_unwind_api::{OwnedRange, RangeMode};

use super::FileId;

/// An executable file mapping of a process whose table is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileRange {
    pub start: u64,
    pub end: u64,
    pub file_id: FileId,
    pub bias: u64,
    /// No table (yet): unwound by frame pointer until there is one.
    pub frame_pointer: bool,
}

/// A range a runtime (at `slot`) owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub slot: u32,
    pub range: OwnedRange,
}

/// The trie's entries for a process: prefix `(address, length)` → value.
pub(crate) type Prefixes = BTreeMap<PrefixKey, PidMapping>;

/// The pieces of a process: every address covered by a file mapping or an owned range gets
/// one value; adjacent addresses with the same meaning share a piece. Owned ranges win over
/// the file mapping they lie in (keeping its file and bias, so that their native frames can
/// still be unwound from its table); where owned ranges overlap, the first listed wins.
pub(crate) fn pieces(files: &[FileRange], owned: &[SlotRange]) -> Vec<PidMapping> {
    let mut bounds: Vec<u64> = files
        .iter()
        .flat_map(|f| [f.start, f.end])
        .chain(owned.iter().flat_map(|o| [o.range.start, o.range.end]))
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut out: Vec<PidMapping> = Vec::new();
    for w in bounds.windows(2) {
        let (start, end) = (w[0], w[1]);
        let file = files.iter().find(|f| f.start <= start && end <= f.end);
        let owner = owned
            .iter()
            .find(|o| o.range.start <= start && end <= o.range.end && o.range.start < o.range.end);
        let value = match (file, owner) {
            (None, None) => continue,
            (file, owner) => {
                let mut flags = 0;
                if owner.is_none() && file.is_some_and(|f| f.frame_pointer) {
                    flags |= MAPPING_FRAME_POINTER;
                }
                if let Some(o) = owner {
                    if o.range.mode == RangeMode::Splice {
                        flags |= MAPPING_SPLICE;
                    }
                    if o.range.frame_pointer {
                        flags |= MAPPING_FRAME_POINTER;
                    }
                }
                PidMapping {
                    file_id: file.map_or(0, |f| f.file_id.0),
                    bias: file.map_or(0, |f| f.bias),
                    start,
                    end,
                    owner: owner.map_or(0, |o| o.slot),
                    flags,
                }
            }
        };
        match out.last_mut() {
            Some(last)
                if last.end == start
                    && (last.file_id, last.bias, last.owner, last.flags)
                        == (value.file_id, value.bias, value.owner, value.flags) =>
            {
                last.end = end;
            }
            _ => out.push(value),
        }
    }
    out
}

/// The prefixes `(address, prefix length)` that exactly cover `[start, end)`.
pub fn covering_prefixes(start: u64, end: u64) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let align = if at == 0 {
            63
        } else {
            at.trailing_zeros().min(63)
        };
        let mut bits = align;
        while bits > 0 && (1u64 << bits) > end - at {
            bits -= 1;
        }
        out.push((at, 64 - bits));
        match at.checked_add(1u64 << bits) {
            Some(next) => at = next,
            None => break,
        }
    }
    out
}

/// A trie entry: prefix `(address, length)`.
pub(crate) type PrefixKey = (u64, u32);

/// The trie entries of a set of pieces.
pub(crate) fn prefixes_of(pieces: &[PidMapping]) -> Prefixes {
    let mut out = Prefixes::new();
    for p in pieces {
        for key in covering_prefixes(p.start, p.end) {
            out.insert(key, *p);
        }
    }
    out
}

/// What to do to the trie to go from `old` to `new`: prefixes to delete, then prefixes to
/// insert or update.
pub(crate) fn diff(
    old: &Prefixes,
    new: &Prefixes,
) -> (Vec<PrefixKey>, Vec<(PrefixKey, PidMapping)>) {
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .copied()
        .collect();
    let changed = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    (removed, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(start: u64, end: u64, id: u64) -> FileRange {
        FileRange {
            start,
            end,
            file_id: FileId(id),
            bias: start - 0x1000,
            frame_pointer: false,
        }
    }

    fn owned(slot: u32, start: u64, end: u64, mode: RangeMode, frame_pointer: bool) -> SlotRange {
        SlotRange {
            slot,
            range: OwnedRange {
                start,
                end,
                mode,
                frame_pointer,
            },
        }
    }

    #[test]
    fn a_file_waiting_for_its_table_is_unwound_by_frame_pointer_unless_a_runtime_owns_it() {
        let waiting = FileRange {
            frame_pointer: true,
            ..file(0x10000, 0x20000, 0)
        };
        let p = pieces(
            &[waiting, file(0x30000, 0x40000, 7)],
            &[owned(1, 0x18000, 0x20000, RangeMode::Splice, false)],
        );
        let flags: Vec<(u64, u64, u32)> = p.iter().map(|m| (m.start, m.end, m.flags)).collect();
        assert_eq!(
            flags,
            vec![
                (0x10000, 0x18000, MAPPING_FRAME_POINTER),
                (0x18000, 0x20000, MAPPING_SPLICE),
                (0x30000, 0x40000, 0),
            ]
        );
    }

    #[test]
    fn prefixes_cover_exactly_the_range() {
        for (start, end) in [
            (0x1000u64, 0x2000u64),
            (0x40_1000, 0x40_9000),
            (0x7f12_3456_7000, 0x7f12_3460_0000),
            (0, 0x1000),
        ] {
            let p = covering_prefixes(start, end);
            let mut at = start;
            for &(addr, len) in &p {
                assert_eq!(addr, at, "prefixes are contiguous");
                assert_eq!(addr & ((1u64 << (64 - len)) - 1), 0, "aligned");
                at += 1u64 << (64 - len);
            }
            assert_eq!(at, end);
            assert!(p.len() <= 2 * 64);
        }
        assert_eq!(covering_prefixes(0x1000, 0x2000), vec![(0x1000, 52)]);
    }

    #[test]
    fn an_eval_loop_splits_its_file_into_three_pieces_that_keep_the_file() {
        let f = file(0x40_0000, 0x50_0000, 7);
        let eval = owned(1, 0x44_0000, 0x44_8000, RangeMode::Splice, false);
        let p = pieces(&[f], &[eval]);
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].start, p[0].end, p[0].owner),
            (0x40_0000, 0x44_0000, 0)
        );
        assert_eq!(
            (p[1].start, p[1].end, p[1].owner),
            (0x44_0000, 0x44_8000, 1)
        );
        assert_eq!(p[1].flags, MAPPING_SPLICE);
        assert_eq!(
            (p[2].start, p[2].end, p[2].owner),
            (0x44_8000, 0x50_0000, 0)
        );
        assert!(
            p.iter().all(|x| x.file_id == 7 && x.bias == f.bias),
            "{p:?}"
        );
    }

    #[test]
    fn anonymous_jit_code_has_no_file_and_two_runtimes_share_a_process() {
        let f = file(0x40_0000, 0x50_0000, 7);
        let eval = owned(1, 0x44_0000, 0x44_8000, RangeMode::Splice, false);
        let jit = owned(
            2,
            0x7f00_0000_0000,
            0x7f00_0010_0000,
            RangeMode::Takeover,
            true,
        );
        let p = pieces(&[f], &[eval, jit]);
        let j = p.iter().find(|x| x.owner == 2).unwrap();
        assert_eq!((j.file_id, j.bias, j.flags), (0, 0, MAPPING_FRAME_POINTER));
        assert_eq!((j.start, j.end), (0x7f00_0000_0000, 0x7f00_0010_0000));
        assert_eq!(p.iter().filter(|x| x.owner == 1).count(), 1);
    }

    #[test]
    fn the_first_owner_wins_where_ranges_overlap_and_adjacent_equal_pieces_merge() {
        let a = owned(1, 0x1000, 0x3000, RangeMode::Takeover, false);
        let b = owned(2, 0x2000, 0x4000, RangeMode::Takeover, false);
        let p = pieces(&[], &[a, b]);
        assert_eq!(
            p.iter()
                .map(|x| (x.start, x.end, x.owner))
                .collect::<Vec<_>>(),
            [(0x1000, 0x3000, 1), (0x3000, 0x4000, 2)]
        );
        let c = owned(1, 0x3000, 0x5000, RangeMode::Takeover, false);
        let merged = pieces(&[], &[a, c]);
        assert_eq!(merged.len(), 1, "{merged:?}");
        assert_eq!((merged[0].start, merged[0].end), (0x1000, 0x5000));
    }

    #[test]
    fn diffs_remove_what_is_gone_and_write_only_what_changed() {
        let f = file(0x40_0000, 0x50_0000, 7);
        let before = prefixes_of(&pieces(&[f], &[]));
        let eval = owned(1, 0x44_0000, 0x44_8000, RangeMode::Splice, false);
        let after = prefixes_of(&pieces(&[f], &[eval]));
        let (removed, changed) = diff(&before, &after);
        // Every prefix of the new set is either unchanged or written; every old one not in
        // the new set is removed.
        for k in &removed {
            assert!(!after.contains_key(k));
        }
        for (k, v) in &changed {
            assert_eq!(after.get(k), Some(v));
        }
        assert!(changed.iter().any(|(_, v)| v.owner == 1));
        let (removed, changed) = diff(&after, &after);
        assert!(removed.is_empty() && changed.is_empty());
        let (removed, changed) = diff(&after, &Prefixes::new());
        assert_eq!(removed.len(), after.len());
        assert!(changed.is_empty());
    }
}
