//! Helpers shared by the integration tests: an independent translation of gimli rows, a
//! symbol table over `object`, and ELF file discovery.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ferroscope_unwind_native::{Kind, UnwindInfo};
use gimli::{CfaRule, EndianSlice, LittleEndian, RegisterRule, UnwindSection, X86_64};
use object::{Object, ObjectSection, ObjectSymbol};

pub type R<'a> = EndianSlice<'a, LittleEndian>;

/// What the table must say for a gimli row, stated from the DWARF meaning of the row
/// (independently of the crate's translation code).
pub fn expected_info<'a, S: UnwindSection<R<'a>>>(
    row: &gimli::UnwindTableRow<usize>,
    section: &S,
    signal: bool,
) -> UnwindInfo {
    if signal {
        return UnwindInfo::SIGNAL;
    }
    let invalid = UnwindInfo::INVALID;
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => return UnwindInfo::STOP,
        Some(RegisterRule::Offset(-8)) => {}
        _ => return invalid,
    }
    let (kind, off) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RSP => {
            (Kind::Sp, *offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RBP => {
            (Kind::Fp, *offset)
        }
        CfaRule::RegisterAndOffset { .. } => return invalid,
        CfaRule::Expression(e) => {
            let bytes = e.get(section).unwrap().0.slice().to_vec();
            // Evaluate the expression's shape with gimli's own operation parser.
            let mut ops =
                gimli::Expression(R::new(&bytes, LittleEndian)).operations(gimli::Encoding {
                    format: gimli::Format::Dwarf32,
                    version: 4,
                    address_size: 8,
                });
            let mut list = Vec::new();
            while let Ok(Some(op)) = ops.next() {
                list.push(op);
            }
            match list.as_slice() {
                [
                    gimli::Operation::RegisterOffset {
                        register, offset, ..
                    },
                    gimli::Operation::Deref { .. },
                ] if *register == X86_64::RBP => (Kind::FpDeref, *offset),
                [
                    gimli::Operation::RegisterOffset {
                        register, offset, ..
                    },
                    gimli::Operation::Deref { .. },
                ] if *register == X86_64::RSP => (Kind::SpDeref, *offset),
                [
                    gimli::Operation::RegisterOffset {
                        register: sp,
                        offset: 8,
                        ..
                    },
                    gimli::Operation::RegisterOffset {
                        register: ip,
                        offset: 0,
                        ..
                    },
                    gimli::Operation::UnsignedConstant { value: 15 },
                    gimli::Operation::And,
                    gimli::Operation::UnsignedConstant { value: 11 },
                    gimli::Operation::Ge,
                    gimli::Operation::UnsignedConstant { value: 3 },
                    gimli::Operation::Shl,
                    gimli::Operation::Plus,
                ] if *sp == X86_64::RSP && *ip == X86_64::RA => return UnwindInfo::PLT,
                _ => return invalid,
            }
        }
    };
    let Ok(cfa_offset) = i32::try_from(off) else {
        return invalid;
    };
    let fp_offset = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => None,
        Some(RegisterRule::Offset(o)) => Some(i32::try_from(o).unwrap()),
        Some(_) => return invalid,
    };
    UnwindInfo {
        kind,
        cfa_offset,
        fp_offset,
    }
}

/// Function symbols of an ELF file (and of its debug file when found by build id).
pub struct Symbols {
    /// (start, end, name), sorted.
    syms: Vec<(u64, u64, String)>,
}

/// The separate debug file of `elf` under /usr/lib/debug/.build-id, if installed.
pub fn debug_file_for(data: &[u8]) -> Option<PathBuf> {
    debug_path_for(data).filter(|p| p.exists())
}

/// Where the separate debug file of an ELF file with a build ID is installed (whether or
/// not it is).
pub fn debug_path_for(data: &[u8]) -> Option<PathBuf> {
    let file = object::File::parse(data).ok()?;
    let id = file.build_id().ok()??;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    Some(ferroscope_test_harness::files::build_id_debug_path(&hex))
}

impl Symbols {
    pub fn load(path: &Path) -> Symbols {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let mut syms = Vec::new();
        let mut add = |data: &[u8]| {
            let file = object::File::parse(data).unwrap();
            for s in file.symbols().chain(file.dynamic_symbols()) {
                if let (object::SymbolKind::Text, true, Ok(name)) =
                    (s.kind(), s.size() > 0, s.name())
                {
                    syms.push((s.address(), s.address() + s.size(), name.to_string()));
                }
            }
        };
        add(&data);
        if let Some(debug) = debug_file_for(&data) {
            add(&std::fs::read(debug).unwrap());
        }
        syms.sort();
        syms.dedup_by(|a, b| a.0 == b.0);
        Symbols { syms }
    }

    pub fn lookup(&self, vaddr: u64) -> Option<&str> {
        let i = self.syms.partition_point(|s| s.0 <= vaddr).checked_sub(1)?;
        let (start, end, name) = &self.syms[i];
        (*start <= vaddr && vaddr < *end).then_some(name.as_str())
    }
}

/// FDE ranges of a file's `.eh_frame`, evaluated by gimli at given addresses.
pub struct GimliCfi<'a> {
    pub eh_frame: gimli::EhFrame<R<'a>>,
    pub bases: gimli::BaseAddresses,
    pub fdes: Vec<gimli::FrameDescriptionEntry<R<'a>>>,
}

impl<'a> GimliCfi<'a> {
    pub fn new(data: &'a [u8]) -> GimliCfi<'a> {
        let file = object::File::parse(data).unwrap();
        let eh = file.section_by_name(".eh_frame").expect(".eh_frame");
        let text = file.section_by_name(".text").map_or(0, |s| s.address());
        let got = file.section_by_name(".got").map_or(0, |s| s.address());
        let bases = gimli::BaseAddresses::default()
            .set_eh_frame(eh.address())
            .set_text(text)
            .set_got(got);
        let mut eh_frame = gimli::EhFrame::new(eh.data().unwrap(), LittleEndian);
        eh_frame.set_address_size(8);
        let mut fdes = Vec::new();
        let mut entries = eh_frame.entries(&bases);
        while let Some(entry) = entries.next().unwrap() {
            if let gimli::CieOrFde::Fde(partial) = entry {
                let fde = partial.parse(gimli::EhFrame::cie_from_offset).unwrap();
                if fde.len() > 0 && fde.initial_address() != 0 {
                    fdes.push(fde);
                }
            }
        }
        fdes.sort_by_key(|f| f.initial_address());
        // Keep FDEs that overlap no other one: for those the table must agree everywhere.
        let mut keep = Vec::new();
        for (i, f) in fdes.iter().enumerate() {
            let prev_end = i.checked_sub(1).map_or(0, |j| fdes[j].end_address());
            let next_start = fdes.get(i + 1).map_or(u64::MAX, |n| n.initial_address());
            if prev_end <= f.initial_address() && f.end_address() <= next_start {
                keep.push(f.clone());
            }
        }
        GimliCfi {
            eh_frame,
            bases,
            fdes: keep,
        }
    }

    /// gimli's rule at `addr` inside FDE `i`, translated by `expected_info`.
    pub fn expected(
        &self,
        i: usize,
        addr: u64,
        ctx: &mut gimli::UnwindContext<usize>,
    ) -> UnwindInfo {
        let fde = &self.fdes[i];
        let row = fde
            .unwind_info_for_address(&self.eh_frame, &self.bases, ctx, addr)
            .unwrap();
        expected_info(row, &self.eh_frame, fde.is_signal_trampoline())
    }
}

/// A scratch directory for compiled programs.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("unwind-native-test")
        .tempdir()
        .unwrap()
}
