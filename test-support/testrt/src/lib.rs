//! Test runtimes for the runtime seam, in test binaries only (never in the product):
//!
//! - [`TestJit`]: the "JIT" of `fixtures/seam/jit_embed.c`, a C program that embeds CPython
//!   and runs code it put in anonymous executable memory. The plug-in finds the code's range
//!   in the process (`ferroscope_testjit_registry`), owns it as a takeover range unwound with
//!   the frame pointer, follows it (the range is released when the program frees the code),
//!   and names its frames. With CPython in the same process, that is two runtimes in one
//!   process, one of them owning anonymous memory.
//! - [`TestJit::rejected`]: the same plug-in with a program no kernel accepts, to show that a
//!   rejected runtime turns off alone.
//!
//! The binaries `ferroscope-testrt` and `ferroscope-rejected` are ferroscope's command line
//! with CPython and one of these linked.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use ferroscope_unwind_api::{
    AttachContext, EbpfProgram, ElfFile, FileData, InterpretedFrame, Interpreter, InterpreterError,
    InterpreterProcess, MappedRange, MappingsChanged, OwnedRange, ProcessUpdate, RangeMode,
    RawFrame, SharedMemory,
};

/// The registry's first word when the fixture filled it in.
const MAGIC: u64 = 0x7465_6a69_7472_6567;
/// The symbol the fixture publishes its code's range in.
const REGISTRY: &str = "ferroscope_testjit_registry";

/// The test JIT runtime.
#[derive(Debug)]
pub struct TestJit {
    name: &'static str,
    metric: &'static str,
    program: EbpfProgram,
}

impl TestJit {
    /// The working one (`testjit`).
    pub fn working() -> TestJit {
        TestJit {
            name: "testjit",
            metric: "Testjit",
            program: EbpfProgram {
                program: "fs_rt_testjit",
                objects: ferroscope_ebpf_abi::include_objects!("testjit.bpf"),
                pid_maps: &[],
                counters: &["ErrReadFailed"],
            },
        }
    }

    /// One whose program every kernel rejects (`rejected`).
    pub fn rejected() -> TestJit {
        TestJit {
            name: "rejected",
            metric: "Rejected",
            program: EbpfProgram {
                program: "fs_rt_rejected",
                objects: ferroscope_ebpf_abi::include_objects!("rejected.bpf"),
                pid_maps: &[],
                counters: &[],
            },
        }
    }
}

fn error(message: &str) -> InterpreterError {
    InterpreterError::Runtime {
        runtime: "testjit",
        source: message.to_owned().into(),
    }
}

impl Interpreter for TestJit {
    fn name(&self) -> &'static str {
        self.name
    }

    fn metric_name(&self) -> &'static str {
        self.metric
    }

    fn ebpf(&self) -> Option<EbpfProgram> {
        Some(self.program)
    }

    fn detect(&self, file: &dyn ElfFile) -> Result<Option<FileData>, InterpreterError> {
        Ok(file
            .symbol(REGISTRY)
            .map(|s| Arc::new(s.address) as FileData))
    }

    fn attach(
        &self,
        data: &FileData,
        context: &AttachContext<'_>,
    ) -> Result<Box<dyn InterpreterProcess>, InterpreterError> {
        let vaddr = data
            .downcast_ref::<u64>()
            .ok_or_else(|| error("file data of another plug-in"))?;
        Ok(Box::new(JitProcess {
            registry: vaddr.wrapping_add(context.bias),
            memory: context.memory.clone(),
            range: None,
        }))
    }
}

struct JitProcess {
    registry: u64,
    memory: SharedMemory,
    range: Option<(u64, u64)>,
}

impl JitProcess {
    /// The code's range as the process publishes it now (`None`: no code).
    fn read(&self) -> Result<Option<(u64, u64)>, InterpreterError> {
        let magic = self.memory.read_u64(self.registry)?;
        if magic != MAGIC {
            return Ok(None);
        }
        let start = self.memory.read_u64(self.registry + 8)?;
        let end = self.memory.read_u64(self.registry + 16)?;
        Ok((start != 0 && end > start).then_some((start, end)))
    }

    fn ranges(&self) -> Vec<OwnedRange> {
        self.range
            .iter()
            .map(|&(start, end)| OwnedRange {
                start,
                end,
                mode: RangeMode::Takeover,
                frame_pointer: true,
            })
            .collect()
    }
}

impl InterpreterProcess for JitProcess {
    fn start(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        self.range = self.read()?;
        Ok(ProcessUpdate {
            map_writes: Vec::new(),
            ranges: Some(self.ranges()),
        })
    }

    fn mappings_changed(&mut self, _mappings: &[MappedRange]) -> MappingsChanged {
        MappingsChanged::Keep(ProcessUpdate::default())
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(100))
    }

    fn refresh(&mut self) -> Result<ProcessUpdate, InterpreterError> {
        let now = self.read()?;
        if now == self.range {
            return Ok(ProcessUpdate::default());
        }
        self.range = now;
        Ok(ProcessUpdate {
            map_writes: Vec::new(),
            ranges: Some(self.ranges()),
        })
    }

    fn symbolize(
        &mut self,
        frame: &RawFrame,
        out: &mut Vec<InterpretedFrame>,
    ) -> Result<(), InterpreterError> {
        out.push(InterpretedFrame {
            function: Arc::from(format!("jit_code+{:#x}", frame.aux)),
            file: Arc::from("[testjit]"),
            line: 0,
            start_line: 0,
        });
        Ok(())
    }
}
