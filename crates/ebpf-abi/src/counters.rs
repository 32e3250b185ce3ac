//! The native unwinder's counters and unwind errors, each declared once.

/// Declares an enum mirroring a C counter enum, from one list: each entry's variant, its C
/// enumerator's suffix, its metric name and its documentation. The enum gets `ALL`, `COUNT`,
/// `c_name` and `metric_name`; a test checks it against the enum's BTF.
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($prefix:literal) {
            $( $(#[doc = $doc:literal])* $variant:ident = $c:literal => $metric:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl $name {
            /// Every counter, in index order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// Number of counters (the C enum's `..._MAX`).
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// The name of the C enumerator.
            pub fn c_name(self) -> &'static str {
                match self {
                    $( $name::$variant => concat!($prefix, $c), )*
                }
            }

            /// The metric this counter is published as (the reference profiler's name where
            /// it has one).
            pub fn metric_name(self) -> &'static str {
                match self {
                    $( $name::$variant => $metric, )*
                }
            }
        }
    };
}

counters! {
    /// `enum fs_counter`: indexes of the per-CPU `fs_counters` array.
    pub enum Counter ("FS_CNT_") {
        /// Every run of the sampling program.
        Samples = "SAMPLES" => "SamplerRuns_total",
        /// Samples of the idle task, not recorded.
        Idle = "IDLE" => "SamplerIdle_total",
        /// Samples outside the PID filter.
        Filtered = "FILTERED" => "SamplerFiltered_total",
        /// Samples lost because the ring buffer was full.
        LostRingbufFull = "LOST_RINGBUF_FULL" => "SamplerLostRingbufFull_total",
        /// Failed kernel stack reads.
        KernelStackError = "KERNEL_STACK_ERROR" => "SamplerKernelStackErrors_total",
        /// Failed user stack reads (frame-pointer fallback).
        UserStackError = "USER_STACK_ERROR" => "SamplerUserStackErrors_total",
        /// Samples sent to userspace.
        Sent = "SENT" => "SamplerSent_total",
        /// User stacks the stack-delta unwinder walked.
        UnwindAttempts = "UNWIND_ATTEMPTS" => "UnwindNativeAttempts_total",
        /// User frames it produced (every kind).
        UnwindFrames = "UNWIND_FRAMES" => "UnwindNativeFrames_total",
        /// Stacks that ended normally (Stop rule or zero return address).
        UnwindStop = "UNWIND_STOP" => "UnwindNativeStackDeltaStop_total",
        /// Return addresses below 0x1000.
        UnwindSmallPc = "UNWIND_SMALL_PC" => "UnwindNativeSmallPC_total",
        /// Stacks ended by [`UnwindError::NoMapping`].
        UnwindErrNoMapping = "UNWIND_ERR_NO_MAPPING" => "UnwindNativeErrNoMapping_total",
        /// Stacks ended by [`UnwindError::NoPage`].
        UnwindErrNoPage = "UNWIND_ERR_NO_PAGE" => "UnwindNativeErrStackDeltaPage_total",
        /// Stacks ended by [`UnwindError::InvalidRule`].
        UnwindErrInvalidRule = "UNWIND_ERR_INVALID_RULE" => "UnwindNativeErrInvalidRule_total",
        /// Stacks ended by [`UnwindError::ReadFailed`].
        UnwindErrReadFailed = "UNWIND_ERR_READ_FAILED" => "UnwindNativeErrReadFailed_total",
        /// Stacks ended by [`UnwindError::StackLengthExceeded`].
        UnwindErrStackLength = "UNWIND_ERR_STACK_LENGTH" => "UnwindErrStackLengthExceeded_total",
        /// Stacks ended by [`UnwindError::BadCfa`].
        UnwindErrBadCfa = "UNWIND_ERR_BAD_CFA" => "UnwindNativeErrBadCFA_total",
        /// Stacks ended by [`UnwindError::NoRegisters`].
        UnwindErrNoRegs = "UNWIND_ERR_NO_REGS" => "UnwindNativeErrNoRegs_total",
        /// Stacks ended by [`UnwindError::BadTable`].
        UnwindErrBadTable = "UNWIND_ERR_BAD_TABLE" => "UnwindNativeErrBadTable_total",
        /// Stacks ended by [`UnwindError::TailCalls`].
        UnwindErrTailCalls = "UNWIND_ERR_TAIL_CALLS" => "UnwindErrMaxTailCalls_total",
        /// Stacks ended by [`UnwindError::Runtime`].
        UnwindErrRuntime = "UNWIND_ERR_RUNTIME" => "UnwindErrRuntime_total",
        /// Samples of processes whose tables were not loaded (frame-pointer walk instead).
        PidUnknown = "PID_UNKNOWN" => "UnwindNativePIDUnknown_total",
        /// Reports sent through `fs_pid_events`.
        PidReports = "PID_REPORTS" => "NumGenericPID_total",
        /// Reports lost because `fs_pid_events` was full.
        PidReportsLost = "PID_REPORTS_LOST" => "NumPIDEventsLost_total",
        /// Signal frames unwound.
        UnwindSignalFrames = "UNWIND_SIGNAL_FRAMES" => "UnwindNativeSignalFrames_total",
        /// Tail calls between the native unwinder and runtime programs.
        TailCalls = "TAIL_CALLS" => "UnwindTailCalls_total",
        /// Frames of ranges unwound with the frame pointer.
        FramePointerFrames = "FRAME_POINTER_FRAMES" => "UnwindNativeFramePointerFrames_total",
        /// New processes added to the PID filter because their parent was in it (children
        /// followed).
        ChildrenFollowed = "CHILDREN_FOLLOWED" => "SamplerChildrenFollowed_total",
        /// Children not followed because the PID filter was full.
        ChildrenLost = "CHILDREN_LOST" => "SamplerChildrenLost_total",
        /// Filtered tasks that left the CPU, with off-CPU profiling on.
        OffCpuSwitches = "OFF_CPU_SWITCHES" => "OffCpuSwitches_total",
        /// Of those, the ones recorded (chosen with `off_cpu_threshold`).
        OffCpuSampled = "OFF_CPU_SAMPLED" => "OffCpuSampled_total",
        /// Recorded tasks seen running again (their off-CPU time is known).
        OffCpuEnds = "OFF_CPU_ENDS" => "OffCpuEnds_total",
        /// Their reports lost because `fs_pid_events` was full.
        OffCpuEndsLost = "OFF_CPU_ENDS_LOST" => "OffCpuEndsLost_total",
        /// Of the ends, those of threads found running again (at their next switch or
        /// CPU sample) without their switch back having been seen; dated by the CPU time
        /// they used since.
        OffCpuEndsMissed = "OFF_CPU_ENDS_MISSED" => "OffCpuEndsMissed_total",
        /// Probe hits of filtered processes.
        ProbeHits = "PROBE_HITS" => "ProbeHits_total",
        /// Probe hits not recorded: over the per-CPU rate limit.
        ProbeRateLimited = "PROBE_RATE_LIMITED" => "ProbeRateLimited_total",
    }
}

/// The key of a runtime's common counter (`FS_RT_CNT_*`) in `fs_runtime_counters`.
pub fn runtime_counter_key(slot: u32, which: u32) -> u32 {
    slot * crate::RT_COMMON_COUNTERS + which
}

/// `enum fs_unwind_error`: why the unwinder ended a user stack early.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnwindError {
    /// The PC lies in no loaded mapping (JIT code, or a library loaded since the last scan).
    NoMapping = 1,
    /// The PC's file has no table page there (no CFI covers it).
    NoPage = 2,
    /// The rule in effect at the PC is Invalid.
    InvalidRule = 3,
    /// Reading the process's stack failed.
    ReadFailed = 4,
    /// The stack is deeper than [`crate::MAX_USER_FRAMES`].
    StackLengthExceeded = 5,
    /// The CFA did not move up the stack.
    BadCfa = 6,
    /// A return address below 0x1000.
    SmallPc = 7,
    /// The task's user registers could not be read.
    NoRegisters = 8,
    /// An index in the loaded tables points outside its map.
    BadTable = 9,
    /// The sample used up its tail calls.
    TailCalls = 10,
    /// A runtime's program could not unwind a frame it owns.
    Runtime = 11,
}

impl UnwindError {
    /// Every error, in value order.
    pub const ALL: [UnwindError; 11] = [
        UnwindError::NoMapping,
        UnwindError::NoPage,
        UnwindError::InvalidRule,
        UnwindError::ReadFailed,
        UnwindError::StackLengthExceeded,
        UnwindError::BadCfa,
        UnwindError::SmallPc,
        UnwindError::NoRegisters,
        UnwindError::BadTable,
        UnwindError::TailCalls,
        UnwindError::Runtime,
    ];
    /// `FS_UNWIND_ERR_MAX`.
    pub const COUNT: u32 = 12;

    /// The error with this value; `None` for 0 (no error) and unknown values.
    pub fn from_raw(value: u32) -> Option<UnwindError> {
        Self::ALL.iter().copied().find(|e| *e as u32 == value)
    }

    /// The name of the C enumerator.
    pub fn c_name(self) -> &'static str {
        match self {
            UnwindError::NoMapping => "FS_UNWIND_ERR_NO_MAPPING",
            UnwindError::NoPage => "FS_UNWIND_ERR_NO_PAGE",
            UnwindError::InvalidRule => "FS_UNWIND_ERR_INVALID_RULE",
            UnwindError::ReadFailed => "FS_UNWIND_ERR_READ_FAILED",
            UnwindError::StackLengthExceeded => "FS_UNWIND_ERR_STACK_LENGTH",
            UnwindError::BadCfa => "FS_UNWIND_ERR_BAD_CFA",
            UnwindError::SmallPc => "FS_UNWIND_ERR_SMALL_PC",
            UnwindError::NoRegisters => "FS_UNWIND_ERR_NO_REGS",
            UnwindError::BadTable => "FS_UNWIND_ERR_BAD_TABLE",
            UnwindError::TailCalls => "FS_UNWIND_ERR_TAIL_CALLS",
            UnwindError::Runtime => "FS_UNWIND_ERR_RUNTIME",
        }
    }

    /// A short description, for the frame that ends such a stack.
    pub fn describe(self) -> &'static str {
        match self {
            UnwindError::NoMapping => "no mapping",
            UnwindError::NoPage => "no unwind table",
            UnwindError::InvalidRule => "no unwind rule",
            UnwindError::ReadFailed => "stack read failed",
            UnwindError::StackLengthExceeded => "stack too deep",
            UnwindError::BadCfa => "bad CFA",
            UnwindError::SmallPc => "small PC",
            UnwindError::NoRegisters => "no user registers",
            UnwindError::BadTable => "bad table",
            UnwindError::TailCalls => "out of tail calls",
            UnwindError::Runtime => "runtime frame not unwound",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_numbered_in_declaration_order_with_distinct_names() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        let mut metrics: Vec<&str> = Counter::ALL.iter().map(|c| c.metric_name()).collect();
        metrics.sort_unstable();
        metrics.dedup();
        assert_eq!(metrics.len(), Counter::ALL.len(), "metric names repeat");
        assert!(metrics.iter().all(|m| m.ends_with("_total")));
    }

    #[test]
    fn errors_round_trip_and_zero_is_no_error() {
        assert_eq!(UnwindError::from_raw(0), None);
        for e in UnwindError::ALL {
            assert_eq!(UnwindError::from_raw(e as u32), Some(e));
        }
        assert_eq!(UnwindError::from_raw(UnwindError::COUNT), None);
    }
}
