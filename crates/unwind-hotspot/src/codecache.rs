//! Where a JVM's code is: its code heaps (`CodeCache::_heaps`, each a reserved range with a
//! segment map) and the interpreter's codelets (`AbstractInterpreter::_code`), read from the
//! process's memory once the JVM has set them up.

use ferroscope_unwind_api::ProcessMemory;

use crate::layout::Layout;
use crate::{Error, HS_MAX_HEAPS};

/// One code heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeHeap {
    /// Start of its reserved range (`_memory._low_boundary`); segment 0 starts here.
    pub low: u64,
    /// End of its reserved range.
    pub high: u64,
    /// Start of its segment map (`_segmap._low_boundary`): one byte per segment.
    pub segmap: u64,
    /// log2 of its segment size.
    pub segment_shift: u8,
}

/// The code of one JVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeCache {
    /// Its code heaps (one to three).
    pub heaps: Vec<CodeHeap>,
    /// The interpreter's codelets, `[start, end)`.
    pub interpreter: (u64, u64),
}

impl CodeCache {
    /// Whether `addr` is in one of the heaps.
    pub fn contains(&self, addr: u64) -> bool {
        self.heaps.iter().any(|h| h.low <= addr && addr < h.high)
    }
}

/// Largest code heap accepted (the JVM's limit on the reserved code cache is 2 GiB).
const MAX_HEAP: u64 = 4 << 30;

/// Reads the code heaps and the interpreter's range; [`Error::NotReady`] while the JVM has
/// not set them up yet (early in its start-up).
pub fn read_code_cache(mem: &dyn ProcessMemory, l: &Layout) -> Result<CodeCache, Error> {
    let u64_at =
        |addr: u64, what: &'static str| mem.read_u64(addr).map_err(Error::read(what, addr));
    let u32_at = |addr: u64, what: &'static str| -> Result<u32, Error> {
        let mut b = [0u8; 4];
        mem.read_exact_at(addr, &mut b)
            .map_err(Error::read(what, addr))?;
        Ok(u32::from_le_bytes(b))
    };
    let array = u64_at(l.code_cache_heaps, "CodeCache::_heaps")?;
    if array == 0 {
        return Err(Error::NotReady("the code cache"));
    }
    let len = u32_at(array.wrapping_add(l.growable_len), "code heap array")? as i32;
    if len <= 0 {
        return Err(Error::NotReady("the code heaps"));
    }
    if len as usize > HS_MAX_HEAPS {
        return Err(Error::invalid(
            "code heap array",
            array,
            format!("{len} heaps (at most {HS_MAX_HEAPS} are followed)"),
        ));
    }
    let data = u64_at(array.wrapping_add(l.growable_data), "code heap array")?;
    let mut heaps = Vec::new();
    for i in 0..len as u64 {
        let heap = u64_at(data + 8 * i, "code heap pointer")?;
        let memory = heap + l.heap_memory;
        let low = u64_at(memory + l.vs_low_boundary, "CodeHeap::_memory")?;
        let high = u64_at(memory + l.vs_high_boundary, "CodeHeap::_memory")?;
        let segmap = u64_at(
            heap + l.heap_segmap + l.vs_low_boundary,
            "CodeHeap::_segmap",
        )?;
        let shift = u32_at(
            heap + l.heap_log2_segment_size,
            "CodeHeap::_log2_segment_size",
        )?;
        if low == 0
            || high <= low
            || high - low > MAX_HEAP
            || segmap == 0
            || !(4..=16).contains(&shift)
        {
            return Err(Error::invalid(
                "code heap",
                heap,
                format!("range {low:#x}-{high:#x}, segment map {segmap:#x}, segment shift {shift}"),
            ));
        }
        heaps.push(CodeHeap {
            low,
            high,
            segmap,
            segment_shift: shift as u8,
        });
    }
    heaps.sort_by_key(|h| h.low);
    if heaps.windows(2).any(|w| w[0].high > w[1].low) {
        return Err(Error::invalid("code heaps", array, "they overlap"));
    }
    if heaps
        .iter()
        .any(|h| h.segment_shift != heaps[0].segment_shift)
    {
        return Err(Error::invalid(
            "code heaps",
            array,
            "their segment sizes differ",
        ));
    }
    let queue = u64_at(l.interpreter_code, "AbstractInterpreter::_code")?;
    if queue == 0 {
        return Err(Error::NotReady("the interpreter"));
    }
    let start = u64_at(
        queue.wrapping_add(l.stub_queue_buffer),
        "StubQueue::_stub_buffer",
    )?;
    let size = u32_at(
        queue.wrapping_add(l.stub_queue_limit),
        "StubQueue::_buffer_limit",
    )? as i32;
    let cache = CodeCache {
        heaps,
        interpreter: (start, start.wrapping_add(size.max(0) as u64)),
    };
    if start == 0 || size <= 0 || !cache.contains(start) {
        return Err(Error::NotReady("the interpreter's code"));
    }
    Ok(cache)
}
