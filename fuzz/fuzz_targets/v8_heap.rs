//! V8 frames named from arbitrary process memory (SharedFunctionInfos, ScopeInfos, scripts,
//! strings, code objects, deoptimization data, position tables), and position tables and
//! Sparkplug offset tables decoded from arbitrary bytes: no panics, bounded output. The
//! layouts are Node 18's, 22's and 26's, from their real `v8dbg_*` constants
//! (`fixtures/node/v8dbg/`).
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use ferroscope_unwind_api::{ElfFile, RawFrame, SnapshotMemory, SymbolRange};
use ferroscope_unwind_v8::positions::{
    BytecodeSizes, TableFormat, baseline_bytecode_offset, position_at, position_entries,
};
use ferroscope_unwind_v8::{Binary, Constants, Layout, Namer, V8Version};
use libfuzzer_sys::fuzz_target;

/// Where the fuzzer's bytes are mapped in the fake process. Pointers inside the data that
/// fall in [BASE, BASE + len) lead back into it.
const BASE: u64 = 0x10000;

/// A binary that has only `v8dbg_*` constants, read from a fixture.
struct Constants32 {
    names: HashMap<String, usize>,
    values: Vec<i32>,
}

impl Constants32 {
    fn parse(text: &str) -> Self {
        let mut names = HashMap::new();
        let mut values = Vec::new();
        for line in text.lines() {
            if let Some((name, value)) = line.split_once(' ') {
                names.insert(format!("v8dbg_{name}"), values.len());
                values.push(value.parse().unwrap_or(0));
            }
        }
        Constants32 { names, values }
    }
}

impl ElfFile for Constants32 {
    fn path(&self) -> &str {
        "node"
    }
    fn symbol(&self, name: &str) -> Option<SymbolRange> {
        self.names.get(name).map(|&i| SymbolRange {
            address: i as u64 * 4,
            size: 4,
        })
    }
    fn exported_symbol(&self, name: &str) -> Option<SymbolRange> {
        self.symbol(name)
    }
    fn read_vaddr(&self, vaddr: u64, buf: &mut [u8]) -> bool {
        let Some(v) = self.values.get((vaddr / 4) as usize) else {
            return false;
        };
        let bytes = v.to_le_bytes();
        let n = buf.len().min(4);
        buf[..n].copy_from_slice(&bytes[..n]);
        true
    }
}

fn layouts() -> &'static [Arc<Layout>] {
    static LAYOUTS: OnceLock<Vec<Arc<Layout>>> = OnceLock::new();
    LAYOUTS.get_or_init(|| {
        [
            (
                include_str!("../../fixtures/node/v8dbg/node-18.txt"),
                V8Version::new(10, 2, 154, 26),
            ),
            (
                include_str!("../../fixtures/node/v8dbg/node-22.txt"),
                V8Version::new(12, 4, 254, 21),
            ),
            (
                include_str!("../../fixtures/node/v8dbg/node-26.txt"),
                V8Version::new(14, 6, 202, 34),
            ),
        ]
        .into_iter()
        .map(|(text, version)| {
            let file = Constants32::parse(text);
            Arc::new(Layout::from_constants(version, &mut Constants::new(&file)).expect("layout"))
        })
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    // The first 16 bytes are the recorded frame (address, payload); the rest is memory.
    if data.len() < 17 {
        return;
    }
    let (frame, memory) = data.split_at(16);
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let (address, aux) = (word(&frame[..8]), word(&frame[8..]) & ((1 << 56) - 1));
    let mut mem = SnapshotMemory::new(1);
    mem.add_region(BASE, memory.to_vec());
    // The address points into the memory when it is small.
    let address = if address < memory.len() as u64 {
        BASE + address
    } else {
        address
    };
    for layout in layouts() {
        let mut namer = Namer::new(Binary {
            layout: Arc::clone(layout),
            builtins: None,
            bytecode_sizes: None,
            bias: 0,
            remap: None,
        });
        let raw = RawFrame {
            runtime: 1,
            address,
            aux,
        };
        let mut out = Vec::new();
        let _ = namer.name(&mem, &raw, &mut out);
        // Twice: the second comes from the caches.
        let _ = namer.name(&mem, &raw, &mut out);
        assert!(out.len() <= 2 * 70, "{} frames", out.len());
    }
    for format in [TableFormat::Signed, TableFormat::Flagged] {
        assert!(position_entries(format, memory).count() <= memory.len());
        for offset in [-1, 0, 7, 1000, i64::MAX] {
            let _ = position_at(format, memory, offset);
        }
    }
    if let Some(sizes) =
        BytecodeSizes::new(memory.iter().take(3 * 200).map(|&b| b % 8 + 1).collect())
    {
        for pc in [0, 1, 100, u64::MAX] {
            let _ = baseline_bytecode_offset(memory, memory, &sizes, pc);
        }
    }
});
