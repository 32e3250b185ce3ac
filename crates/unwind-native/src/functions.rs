//! The address ranges of a file's functions as its CFI describes them: one range per FDE of
//! `.eh_frame` and `.debug_frame`. A function the compiler split into parts (a hot part and
//! a `.cold` part placed elsewhere) has one FDE per part, so this also finds the parts of a
//! function whose symbols were stripped.

use gimli::{BaseAddresses, DebugFrame, EhFrame, LittleEndian};

use crate::Error;
use crate::build::{FrameData, eh_frame_offsets};
use crate::cfi::{CfiSection, FdeRef};
use crate::elf::Elf;

/// The ranges `start..end` (virtual addresses) of every FDE of the file's `.eh_frame`
/// (through `.eh_frame_hdr` when present) and `.debug_frame`, sorted by start, duplicates
/// removed. Work is linear in the sections' sizes.
pub(crate) fn function_ranges<'a, R: object::ReadRef<'a>>(
    elf_bytes: R,
) -> Result<Vec<std::ops::Range<u64>>, Error> {
    let elf = Elf::parse(elf_bytes)?;
    let mut fdes: Vec<FdeRef> = Vec::new();
    let text = elf.section_address(".text").unwrap_or(0);
    let got = elf.section_address(".got").unwrap_or(0);
    if let Some(eh) = elf.section(".eh_frame").map(|s| FrameData {
        data: s.data,
        address: s.address,
    }) {
        let bases = BaseAddresses::default()
            .set_eh_frame(eh.address)
            .set_text(text)
            .set_got(got);
        let mut section = EhFrame::new(&eh.data, LittleEndian);
        section.set_address_size(8);
        let mut cfi = CfiSection::new(section, bases);
        match eh_frame_offsets(&elf, &eh, &cfi.bases) {
            Some(offsets) => cfi.at_offsets(offsets, &mut fdes),
            None => cfi.walk(&mut fdes),
        }
    }
    if let Some(df) = elf.section(".debug_frame") {
        let mut section = DebugFrame::new(&df.data, LittleEndian);
        section.set_address_size(8);
        CfiSection::new(section, BaseAddresses::default()).walk(&mut fdes);
    }
    let mut ranges: Vec<std::ops::Range<u64>> = fdes.into_iter().map(|f| f.start..f.end).collect();
    ranges.sort_unstable_by_key(|r| (r.start, r.end));
    ranges.dedup();
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_of_this_test_binary_has_a_range() {
        use object::{Object, ObjectSymbol};
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(exe).unwrap();
        let ranges = function_ranges(&bytes[..]).unwrap();
        assert!(ranges.len() > 100, "{} ranges", ranges.len());
        // Read with pread, the same.
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(crate::function_ranges_file(&file).unwrap(), ranges);
        assert!(ranges.windows(2).all(|w| w[0].start <= w[1].start));
        assert!(ranges.iter().all(|r| r.start < r.end));
        // Every sizeable function symbol starts a range that covers it.
        let file = object::File::parse(&*bytes).unwrap();
        let mut checked = 0;
        for s in file.symbols() {
            if s.kind() != object::SymbolKind::Text || s.size() < 16 {
                continue;
            }
            let i = ranges.partition_point(|r| r.start <= s.address());
            let covering = i.checked_sub(1).map(|i| &ranges[i]);
            assert!(
                covering.is_some_and(|r| r.start == s.address() && s.address() + s.size() <= r.end),
                "{:?} at {:#x}+{} has no FDE of its own: {covering:?}",
                s.name(),
                s.address(),
                s.size()
            );
            checked += 1;
        }
        assert!(checked > 100, "{checked} symbols checked");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(function_ranges(&b"not an elf file"[..]).is_err());
        assert!(function_ranges(&[][..]).is_err());
    }
}
