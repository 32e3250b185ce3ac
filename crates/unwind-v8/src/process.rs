//! One V8 process: the ranges the plug-in owns in it (JIT code, the builtins and their
//! copy), the walker's per-process data, and naming.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferroscope_unwind_api::{
    AttachContext, InterpretedFrame, InterpreterError, InterpreterProcess, MapWrite, MappedRange,
    MappingsChanged, OwnedRange, ProcessUpdate, RangeMode, RawFrame, SharedMemory,
};

use crate::builtins::BLOB_PROBE;
use crate::ebpf::{PROCS_MAP, V8Proc, slot};
use crate::interpreter::{Counters, NAME, V8File};
use crate::naming::{Binary, Namer};

/// How often the process's mappings are read again for new JIT code.
const REFRESH: Duration = Duration::from_secs(1);
/// User-space addresses end here on x86-64 (the `[vsyscall]` page is above).
const USER_END: u64 = 1 << 47;

pub(crate) struct V8Process {
    pid: u32,
    memory: SharedMemory,
    file: V8File,
    bias: u64,
    namer: Namer,
    ranges: Vec<OwnedRange>,
    published: Option<V8Proc>,
    remap: Option<(u64, u64)>,
    counters: Arc<Counters>,
    reported: (u64, u64),
}

/// One line of `/proc/PID/maps`, as far as ranges need it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    executable: bool,
    path: String,
}

fn from_mapped(m: &MappedRange) -> Mapping {
    Mapping {
        start: m.start,
        end: m.end,
        executable: m.executable,
        path: m.path.clone(),
    }
}

/// Parses `/proc/PID/maps` (executable mappings only).
fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_ascii_whitespace();
            let range = parts.next()?;
            let perms = parts.next()?;
            let (_offset, _dev, _inode) = (parts.next()?, parts.next()?, parts.next()?);
            let path: Vec<&str> = parts.collect();
            let (s, e) = range.split_once('-')?;
            let path = path.join(" ");
            let special = path.starts_with('[');
            Some(Mapping {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                executable: perms.as_bytes().get(2) == Some(&b'x'),
                path: if special { format!("\0{path}") } else { path },
            })
        })
        .filter(|m| m.executable)
        .collect()
}

impl V8Process {
    pub(crate) fn new(file: V8File, context: &AttachContext<'_>, counters: Arc<Counters>) -> Self {
        let binary = Binary {
            layout: Arc::clone(&file.layout),
            builtins: file.builtins.clone(),
            bytecode_sizes: file.bytecode_sizes.clone(),
            bias: context.bias,
            remap: None,
        };
        let mut p = V8Process {
            pid: context.pid,
            memory: Arc::clone(&context.memory),
            bias: context.bias,
            namer: Namer::new(binary),
            ranges: Vec::new(),
            published: None,
            remap: None,
            counters,
            reported: (0, 0),
            file,
        };
        let mappings: Vec<Mapping> = context.mappings.iter().map(from_mapped).collect();
        p.ranges = p.ranges_of(&mappings);
        p
    }

    /// The builtins in the file, in process addresses.
    fn blob(&self) -> Option<(u64, u64)> {
        self.file.builtins.as_ref().map(|b| {
            (
                b.start.wrapping_add(self.bias),
                b.end.wrapping_add(self.bias),
            )
        })
    }

    /// The ranges to own: the builtins (in the file, and their copy), and every anonymous
    /// executable mapping (JIT code; not the vDSO).
    fn ranges_of(&mut self, mappings: &[Mapping]) -> Vec<OwnedRange> {
        let mut out = Vec::new();
        let blob = self.blob();
        if let Some((start, end)) = blob {
            out.push(OwnedRange {
                start,
                end,
                mode: RangeMode::Takeover,
                frame_pointer: true,
            });
        }
        if let Some((s, e)) = self.file.frame_pointer_code {
            out.push(OwnedRange {
                start: s.wrapping_add(self.bias),
                end: e.wrapping_add(self.bias),
                mode: RangeMode::Takeover,
                frame_pointer: true,
            });
        }
        self.remap = self.find_remap(mappings, blob);
        self.namer.set_remap(self.remap);
        if let Some((start, end)) = self.remap {
            out.push(OwnedRange {
                start,
                end,
                mode: RangeMode::Takeover,
                frame_pointer: true,
            });
        }
        for m in mappings {
            if !m.executable || !m.path.is_empty() || m.end > USER_END || m.start >= m.end {
                continue;
            }
            // The vDSO is an ELF image (maps name it, MappedRange does not).
            let mut magic = [0u8; 4];
            if self.memory.read_exact_at(m.start, &mut magic).is_ok() && magic == *b"\x7fELF" {
                continue;
            }
            out.push(OwnedRange {
                start: m.start,
                end: m.end,
                mode: RangeMode::Takeover,
                frame_pointer: true,
            });
        }
        out
    }

    /// The copy of the builtins V8 made in its code range (short builtin calls): a mapping
    /// of the binary other than its own text that starts with the builtins' bytes.
    fn find_remap(&self, mappings: &[Mapping], blob: Option<(u64, u64)>) -> Option<(u64, u64)> {
        let builtins = self.file.builtins.as_ref()?;
        let (blob_start, _) = blob?;
        let size = builtins.end - builtins.start;
        mappings
            .iter()
            .filter(|m| m.executable && m.path == self.file.path)
            .filter(|m| !(m.start <= blob_start && blob_start < m.end))
            .filter(|m| m.end - m.start >= size)
            .find(|m| {
                let mut b = [0u8; BLOB_PROBE];
                self.memory.read_exact_at(m.start, &mut b).is_ok() && b == builtins.probe
            })
            .map(|m| (m.start, m.start + size))
    }

    fn ebpf(&self) -> V8Proc {
        let l = &self.file.layout;
        let (blob_start, blob_end) = self.blob().unwrap_or((0, 0));
        let (remap_start, remap_end) = self.remap.unwrap_or((0, 0));
        let (handlers_start, handlers_end) = self
            .file
            .builtins
            .as_ref()
            .and_then(|b| b.handlers)
            .map_or((0, 0), |(s, e)| {
                (s.wrapping_add(self.bias), e.wrapping_add(self.bias))
            });
        let (native_start, native_end) = self.file.frame_pointer_code.map_or((0, 0), |(s, e)| {
            (s.wrapping_add(self.bias), e.wrapping_add(self.bias))
        });
        V8Proc {
            blob_start,
            blob_end,
            remap_start,
            remap_end,
            handlers_start,
            handlers_end,
            native_start,
            native_end,
            emit_types: l.recorded_frame_types(),
            sfi_map: self.namer.sfi_map,
            bytecode_array_map: self.namer.bytecode_array_map,
            slot_context: slot(l.fp_context),
            slot_function: slot(l.fp_function),
            slot_bytecode_array: slot(l.fp_bytecode_array),
            slot_bytecode_offset: slot(l.fp_bytecode_offset),
            jsfunction_shared: l.jsfunction_shared,
            sfi_name_or_scope_info: l.sfi_name_or_scope_info,
            sfi_script: l.sfi_script,
            map_instance_type: l.map_instance_type,
            type_sfi: l.types.shared_function_info,
            type_bytecode_array: l.types.bytecode_array,
        }
    }

    /// The map write for the walker's data when it changed.
    fn proc_write(&mut self) -> Vec<MapWrite> {
        let p = self.ebpf();
        if self.published == Some(p) {
            return Vec::new();
        }
        self.published = Some(p);
        vec![MapWrite {
            map: PROCS_MAP,
            key: self.pid.to_ne_bytes().to_vec(),
            value: Some(p.to_bytes()),
        }]
    }

    fn update(&mut self, mappings: &[Mapping]) -> ProcessUpdate {
        let ranges = self.ranges_of(mappings);
        let changed = ranges != self.ranges;
        if changed {
            self.ranges = ranges;
        }
        ProcessUpdate {
            map_writes: self.proc_write(),
            ranges: changed.then(|| self.ranges.clone()),
        }
    }

    fn report_stats(&mut self) {
        let s = self.namer.stats();
        let (h, m) = self.reported;
        self.counters
            .cache_hits
            .fetch_add(s.hits - h, Ordering::Relaxed);
        self.counters
            .cache_misses
            .fetch_add(s.misses - m, Ordering::Relaxed);
        self.reported = (s.hits, s.misses);
    }
}

impl InterpreterProcess for V8Process {
    fn start(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        Ok(ProcessUpdate {
            map_writes: self.proc_write(),
            ranges: Some(self.ranges.clone()),
        })
    }

    fn mappings_changed(&mut self, mappings: &[MappedRange]) -> MappingsChanged {
        let still = mappings.iter().any(|m| m.path == self.file.path);
        if !still {
            return MappingsChanged::Detach;
        }
        let mappings: Vec<Mapping> = mappings.iter().map(from_mapped).collect();
        MappingsChanged::Keep(self.update(&mappings))
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(REFRESH)
    }

    fn refresh(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        self.report_stats();
        // New JIT code pages appear as new (or grown) anonymous mappings.
        let text = match std::fs::read_to_string(format!("/proc/{}/maps", self.pid)) {
            Ok(t) => t,
            Err(_) => {
                return Ok(ProcessUpdate {
                    map_writes: self.proc_write(),
                    ranges: None,
                });
            }
        };
        let mappings = parse_maps(&text);
        Ok(self.update(&mappings))
    }

    fn symbolize(
        &mut self,
        frame: &RawFrame,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<(), InterpreterError> {
        self.namer
            .name(&*self.memory, frame, out)
            .map_err(|e| InterpreterError::Runtime {
                runtime: NAME,
                source: Box::new(e),
            })
    }

    fn detach(mut self: Box<Self>) {
        self.report_stats();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let text = "00400000-00b6f000 r--p 00000000 fe:00 1197233 /opt/node\n\
                    7ff3677c3000-7ff3677ff000 rwxp 00000000 00:00 0 \n\
                    7ff387600000-7ff387792000 r-xp 014c4000 fe:00 1197233 /opt/my node\n\
                    7fdc5fbec000-7fdc5fbee000 r-xp 00000000 00:00 0                          [vdso]\n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].path, "");
        assert_eq!(m[0].start, 0x7ff3677c3000);
        assert_eq!(m[1].path, "/opt/my node");
        assert!(
            m[2].path.starts_with('\0'),
            "special mappings are not anonymous"
        );
    }
}
