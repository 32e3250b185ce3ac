//! The vDSO: the kernel's little shared library mapped into every process (`[vdso]`),
//! where `clock_gettime` and `gettimeofday` run. It has CFI like any library, so a sample
//! in it (Go's `nanotime`, Java's `System.nanoTime`) unwinds through it instead of ending
//! the stack. Every 64-bit process of a kernel maps the same image, so the agent reads its
//! own once, from `/proc/self/mem`, and uses its table for all.

use std::os::unix::fs::FileExt;

use ferroscope_symbolize::maps::{MapPath, read_maps};
use ferroscope_unwind_native::{ExtractOptions, StackDeltaTable};

use super::files::{FileFacts, facts_of};

/// The vDSO is a couple of pages; anything much larger is not one.
const MAX_VDSO: u64 = 1 << 20;

/// The vDSO image's identity, segments and table.
#[derive(Debug)]
pub(crate) struct Vdso {
    pub facts: FileFacts,
    pub table: StackDeltaTable,
}

impl Vdso {
    /// This process's vDSO; `None` (logged) when it has none or it cannot be read.
    pub(crate) fn of_this_process() -> Option<Vdso> {
        let entry = read_maps(std::process::id())
            .ok()?
            .into_iter()
            .find(|e| matches!(&e.path, MapPath::Special(s) if s == "[vdso]"))?;
        let len = entry.end.checked_sub(entry.start)?;
        if len == 0 || len > MAX_VDSO {
            return None;
        }
        let mem = std::fs::File::open("/proc/self/mem").ok()?;
        let mut bytes = vec![0u8; len as usize];
        if let Err(e) = mem.read_exact_at(&mut bytes, entry.start) {
            tracing::debug!("cannot read the vDSO: {e}");
            return None;
        }
        let facts = facts_of(&bytes[..])?;
        let table =
            match ferroscope_unwind_native::extract(&bytes, None, &ExtractOptions::default()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!("no unwind table for the vDSO: {e}");
                    return None;
                }
            };
        Some(Vdso { facts, table })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_vdso_with_a_table_for_clock_gettime() {
        let v = Vdso::of_this_process().expect("x86-64 Linux maps a vDSO into every process");
        assert!(v.table.len() > 4, "a handful of functions with CFI");
        assert!(!v.facts.loads.is_empty());
    }
}
