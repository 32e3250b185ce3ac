//! The sampler's writable maps as the process manager and the runtime plug-ins write them.

use ferroscope_ebpf_abi::{DeltaEntry, DeltaPage, DeltaPageKey, PidMapping, UnwindInfoRaw};
use ferroscope_ebpf_programs::{Error, UnwindWriter};

use crate::interp::RuntimeMaps;
use crate::process::UnwindBackend;

/// The writer, lent to the manager and the plug-ins for one round of work.
pub(super) struct Kernel<'a>(pub(super) &'a mut UnwindWriter);

impl UnwindBackend for Kernel<'_> {
    fn entries_capacity(&self) -> u32 {
        self.0.unwind_maps_ref().entries_capacity()
    }
    fn write_entries(&mut self, first: u32, entries: &[DeltaEntry]) -> Result<(), Error> {
        self.0.unwind_maps().write_entries(first, entries)
    }
    fn set_info(&mut self, index: u32, info: UnwindInfoRaw) -> Result<(), Error> {
        self.0.unwind_maps().set_info(index, info)
    }
    fn insert_page(&mut self, key: DeltaPageKey, page: DeltaPage) -> Result<(), Error> {
        self.0.unwind_maps().insert_page(key, page)
    }
    fn remove_page(&mut self, key: &DeltaPageKey) -> Result<(), Error> {
        self.0.unwind_maps().remove_page(key)
    }
    fn insert_mapping_prefix(
        &mut self,
        pid: u32,
        address: u64,
        prefix_len: u32,
        value: PidMapping,
    ) -> Result<(), Error> {
        self.0
            .unwind_maps()
            .insert_mapping_prefix(pid, address, prefix_len, value)
    }
    fn remove_mapping_prefix(
        &mut self,
        pid: u32,
        address: u64,
        prefix_len: u32,
    ) -> Result<(), Error> {
        self.0
            .unwind_maps()
            .remove_mapping_prefix(pid, address, prefix_len)
    }
    fn set_pid_known(&mut self, pid: u32) -> Result<(), Error> {
        self.0.unwind_maps().set_pid_known(pid)
    }
    fn forget_pid(&mut self, pid: u32) -> Result<(), Error> {
        self.0.unwind_maps().forget_pid(pid)
    }
}

impl RuntimeMaps for Kernel<'_> {
    fn write_runtime_map(
        &mut self,
        slot: u32,
        map: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        self.0
            .write_runtime_map(slot, map, key, value)
            .map_err(|e| crate::error::Chain(&e).to_string())
    }

    fn forget_runtime_pid(&mut self, slot: u32, pid: u32) {
        if let Err(e) = self.0.forget_runtime_pid(slot, pid) {
            tracing::debug!(
                pid,
                slot,
                "cannot delete the process from a runtime's maps: {}",
                crate::error::Chain(&e)
            );
        }
    }
}
