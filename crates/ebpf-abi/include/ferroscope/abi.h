/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
/*
 * The ABI between ferroscope's eBPF programs and its userspace.
 *
 * Every structure and constant that crosses the kernel/user boundary is declared here once.
 * The Rust mirror is the crate ferroscope-ebpf-abi (its src directory); its tests compile this header
 * with clang and compare every layout and enum with the BTF clang emitted, so a change here
 * that is not mirrored fails a test instead of corrupting data.
 *
 * Include it after vmlinux.h (it uses the kernel's __u32/__u64). Runtime programs include
 * ferroscope/runtime.h, which includes this header and ferroscope/state.h.
 */
#ifndef FERROSCOPE_ABI_H
#define FERROSCOPE_ABI_H

/* Longest kernel stack recorded per sample. */
#define FS_MAX_KERNEL_FRAMES 64
/* Longest user stack recorded per sample. */
#define FS_MAX_USER_FRAMES 256
/* Length of a task's comm, including the NUL. */
#define FS_COMM_LEN 16
/* Size of the pages the stack-delta tables are split into: 1 << FS_DELTA_PAGE_BITS bytes. */
#define FS_DELTA_PAGE_BITS 16
/* Most distinct unwind rules (fs_unwind_infos), shared by every table: an entry's u16 index. */
#define FS_MAX_UNWIND_INFOS 65536
/* Runtime slots of the tail-call table: slot 0 is the native unwinder, slots 1 to
 * FS_MAX_RUNTIMES - 1 the runtime programs, in the order the loader assigned them. */
#define FS_MAX_RUNTIMES 8
/* Index of the native unwinder in fs_progs. */
#define FS_PROG_NATIVE 0

/* Bits of fs_trace_header.flags. */
/* The sample interrupted the kernel; the record carries its kernel stack. */
#define FS_TRACE_IN_KERNEL 0x1
/* The task has no user address space (a kernel thread). */
#define FS_TRACE_KERNEL_THREAD 0x2
/* The user stack comes from the kernel's frame-pointer walk (the process's unwind tables were
 * not loaded yet): its frames are plain __u64 addresses, not struct fs_frame. */
#define FS_TRACE_USER_FP 0x4
/* An off-CPU record: the task's stack as it left the CPU (at ktime_ns). How long it stayed
 * off comes later, in an FS_PID_OFF_CPU_END report with the same thread and time. */
#define FS_TRACE_OFF_CPU 0x8
/* A probe hit: the stack where the probe fired. The probe's index (the attach cookie; 0 when
 * the kernel has none) is flags >> FS_TRACE_PROBE_SHIFT. */
#define FS_TRACE_PROBE 0x10
#define FS_TRACE_PROBE_SHIFT 16
/* With FS_TRACE_PROBE: a kernel probe's hit (kprobe or kretprobe). The record carries the
 * kernel stack where it fired and the user stack the task entered the kernel from. */
#define FS_TRACE_KPROBE 0x20

/* Why the stack-delta unwinder stopped before the end of the stack (fs_trace_header.user_error).
 * The frames unwound before the error are kept. */
enum fs_unwind_error {
	/* The stack ended normally (a Stop rule, or a zero return address). */
	FS_UNWIND_OK = 0,
	/* The PC lies in no mapping the process manager loaded (JIT code, dlopen not seen yet). */
	FS_UNWIND_ERR_NO_MAPPING = 1,
	/* The PC's file has no table page for it (no CFI covers that code). */
	FS_UNWIND_ERR_NO_PAGE = 2,
	/* The rule in effect at the PC is Invalid (no CFI row). */
	FS_UNWIND_ERR_INVALID_RULE = 3,
	/* Reading the process's stack failed (bad pointer or paged out). */
	FS_UNWIND_ERR_READ_FAILED = 4,
	/* The stack is deeper than FS_MAX_USER_FRAMES. */
	FS_UNWIND_ERR_STACK_LENGTH = 5,
	/* The computed CFA does not move up the stack (corrupt stack or wrong rule). */
	FS_UNWIND_ERR_BAD_CFA = 6,
	/* A return address below 0x1000 (not code). */
	FS_UNWIND_ERR_SMALL_PC = 7,
	/* The user registers of the task could not be read. */
	FS_UNWIND_ERR_NO_REGS = 8,
	/* An unwind table is inconsistent (an index outside its map). */
	FS_UNWIND_ERR_BAD_TABLE = 9,
	/* The sample used up its tail calls (between the native unwinder and runtime programs). */
	FS_UNWIND_ERR_TAIL_CALLS = 10,
	/* A runtime program could not unwind a frame it owns. */
	FS_UNWIND_ERR_RUNTIME = 11,
	FS_UNWIND_ERR_MAX = 12,
};

/* The fixed part of one sampled stack, sent through the fs_traces ring buffer. It is followed
 * by user_len user frames (struct fs_frame, or __u64 with FS_TRACE_USER_FP), leaf first, then
 * kernel_len kernel frames (__u64), leaf first. A negative length is a bpf_get_stack errno and
 * means no frames. */
struct fs_trace_header {
	__u32 pid;  /* thread-group ID in the initial PID namespace */
	__u32 tid;  /* thread ID in the initial PID namespace */
	__u64 ktime_ns; /* bpf_ktime_get_ns() at the sample */
	/* The process's start time (its leader's start_boottime, ns): with pid, the process's
	 * identity across PID reuse. */
	__u64 start_ns;
	__u32 cpu;
	__u32 flags; /* FS_TRACE_* */
	__s32 kernel_len;
	__s32 user_len;
	char comm[FS_COMM_LEN];
	/* enum fs_unwind_error: why the user stack ends early (FS_UNWIND_OK when it does not). */
	__u32 user_error;
	/* User frames that a runtime recorded (kind != FS_FRAME_NATIVE). */
	__u32 interp_frames;
};

_Static_assert(sizeof(struct fs_trace_header) == 64, "fs_trace_header layout changed");

/* One user frame. aux's top 8 bits are the frame's kind (FS_FRAME_NATIVE, or the runtime slot
 * whose program recorded it); its low 56 bits mean what the frame's kind says. */
struct fs_frame {
	/* Native: the PC (leaf, or a frame a signal interrupted) or a return address. A runtime's
	 * frame: what identifies its function (a code object, a method). */
	__u64 addr;
	__u64 aux;
};

_Static_assert(sizeof(struct fs_frame) == 16, "fs_frame layout changed");

#define FS_FRAME_KIND_SHIFT 56
#define FS_FRAME_PAYLOAD_MASK ((1ULL << FS_FRAME_KIND_SHIFT) - 1)
/* Kind of a native frame. Runtime frames have their runtime's slot (1 to FS_MAX_RUNTIMES - 1). */
#define FS_FRAME_NATIVE 0
/* Native aux bit: addr is the exact instruction (the leaf, a frame a signal interrupted), not a
 * return address. */
#define FS_NATIVE_EXACT 0x1

/* Largest record: the header, every user frame and every kernel frame. */
#define FS_TRACE_DATA_BYTES (FS_MAX_USER_FRAMES * 16 + FS_MAX_KERNEL_FRAMES * 8)

/* What a fs_pid_events record reports. */
enum fs_pid_event_kind {
	/* A process whose tables are not loaded was sampled: load it. */
	FS_PID_NEW = 0,
	/* A known process ran code outside its loaded mappings (dlopen): read its maps again. */
	FS_PID_RESCAN = 1,
	/* A known process exited: unload it once its last traces were processed. */
	FS_PID_EXIT = 2,
	/* A known process called exec: its mappings are new. */
	FS_PID_EXEC = 3,
	/* A thread whose stack was recorded as it left the CPU (FS_TRACE_OFF_CPU) runs again:
	 * pid is its thread ID, address the time it left (its record's ktime_ns), ktime_ns the
	 * time it came back. */
	FS_PID_OFF_CPU_END = 4,
};

/* One report through the fs_pid_events ring buffer. */
struct fs_pid_event {
	__u32 pid;
	__u32 kind; /* enum fs_pid_event_kind */
	/* The address that was not in any loaded mapping (FS_PID_RESCAN), else 0. */
	__u64 address;
	/* When it happened (bpf_ktime_get_ns, as a trace's ktime_ns): userspace puts a report
	 * in time order among the traces of the same pass. */
	__u64 ktime_ns;
};

_Static_assert(sizeof(struct fs_pid_event) == 24, "fs_pid_event layout changed");

/* Key of fs_pid_mappings (LPM trie): prefixlen counts the bits of pid and address that
 * must match, so 32 + the prefix length of the address range. */
struct fs_pid_mapping_key {
	__u32 prefixlen;
	__u32 pid;
	__u64 address_be; /* big-endian, so that the trie matches from the top bit */
};

_Static_assert(sizeof(struct fs_pid_mapping_key) == 16, "fs_pid_mapping_key layout changed");

/* Bits of fs_pid_mapping.flags. */
/* The owner is a runtime whose frames live on the heap (an interpreter loop): its program
 * prepares a queue of frames, and each native frame in this range is replaced by the next
 * segment of that queue before it is unwound natively. */
#define FS_MAPPING_SPLICE 0x1
/* The range has no unwind table: unwind it with the frame pointer (JIT code that keeps one). */
#define FS_MAPPING_FRAME_POINTER 0x2

/* Value of fs_pid_mappings: what one range of a process is and who unwinds it. */
struct fs_pid_mapping {
	/* The mapped file's ID (0: none, an anonymous range). */
	__u64 file_id;
	/* The file's virtual address of process address A is A - bias. */
	__u64 bias;
	/* The whole range [start, end) with this value, so that the unwinder can skip the trie
	 * for the next frame in the same range. */
	__u64 start;
	__u64 end;
	/* The runtime slot that owns the range (FS_PROG_NATIVE: the native unwinder). */
	__u32 owner;
	__u32 flags; /* FS_MAPPING_* */
};

_Static_assert(sizeof(struct fs_pid_mapping) == 40, "fs_pid_mapping layout changed");

/* Key of fs_delta_pages: one 64 KiB page of one file's virtual addresses. */
struct fs_delta_page_key {
	__u64 file_id;
	__u64 page; /* vaddr >> FS_DELTA_PAGE_BITS */
};

_Static_assert(sizeof(struct fs_delta_page_key) == 16, "fs_delta_page_key layout changed");

/* Value of fs_delta_pages: the page's entries are fs_delta_entries[first, first + count).
 * The first entry has address_low 0 (the rule in effect where the page starts). */
struct fs_delta_page {
	__u32 first;
	__u32 count;
};

_Static_assert(sizeof(struct fs_delta_page) == 8, "fs_delta_page layout changed");

/* One stack delta: from page offset address_low to the next entry's, rule info_index. */
struct fs_delta_entry {
	__u16 address_low;
	__u16 info_index; /* index into fs_unwind_infos */
};

_Static_assert(sizeof(struct fs_delta_entry) == 4, "fs_delta_entry layout changed");

/* How to find the caller (fs_unwind_info.kind). The return address is always at CFA - 8
 * (x86-64). */
enum fs_unwind_kind {
	FS_UNWIND_SP = 0,       /* CFA = RSP + cfa_offset */
	FS_UNWIND_FP = 1,       /* CFA = RBP + cfa_offset */
	FS_UNWIND_SP_DEREF = 2, /* CFA = *(RSP + cfa_offset) */
	FS_UNWIND_FP_DEREF = 3, /* CFA = *(RBP + cfa_offset) */
	FS_UNWIND_PLT = 4,      /* CFA = RSP + 8, + 8 when (RIP & 15) >= 11 */
	FS_UNWIND_SIGNAL = 5,   /* registers from the ucontext at RSP (rt_sigreturn trampoline) */
	FS_UNWIND_STOP = 6,     /* the outermost frame */
	FS_UNWIND_INVALID = 7,  /* no rule */
	FS_UNWIND_FRAME_POINTER = 8, /* CFA = RBP + 16, caller's RBP at CFA - 16 */
};

/* Bits of fs_unwind_info.flags. */
/* The caller's RBP is saved at CFA + fp_offset (otherwise RBP is unchanged). */
#define FS_UNWIND_FLAG_FP_SAVED 0x1

/* One unwind rule, shared by every table (fs_unwind_infos, deduplicated by userspace). */
struct fs_unwind_info {
	__u8 kind;  /* enum fs_unwind_kind */
	__u8 flags; /* FS_UNWIND_FLAG_* */
	__u16 reserved;
	__s32 cfa_offset;
	__s32 fp_offset;
	__u32 reserved2;
};

_Static_assert(sizeof(struct fs_unwind_info) == 16, "fs_unwind_info layout changed");

/*
 * Indexes of the per-CPU fs_counters array. One list (an X-macro): the enum below is made from
 * it, and the Rust mirror (ferroscope_ebpf_abi::Counter) is checked against the enum's BTF.
 */
#define FS_NATIVE_COUNTERS(X)                                                                     \
	X(SAMPLES)                 /* every run of the sampling program */                       \
	X(IDLE)                    /* samples of the idle task, not recorded */                  \
	X(FILTERED)                /* samples of processes outside the PID filter */             \
	X(LOST_RINGBUF_FULL)       /* samples lost: the ring buffer was full */                  \
	X(KERNEL_STACK_ERROR)      /* bpf_get_stack failed for the kernel stack */               \
	X(USER_STACK_ERROR)        /* bpf_get_stack failed for the user stack (FP walk) */       \
	X(SENT)                    /* samples sent to userspace */                               \
	X(UNWIND_ATTEMPTS)         /* user stacks the stack-delta unwinder walked */             \
	X(UNWIND_FRAMES)           /* user frames it produced (all kinds) */                     \
	X(UNWIND_STOP)             /* stacks ended at a Stop rule or a zero return address */   \
	X(UNWIND_SMALL_PC)         /* return addresses below 0x1000 */                           \
	X(UNWIND_ERR_NO_MAPPING)                                                                  \
	X(UNWIND_ERR_NO_PAGE)                                                                     \
	X(UNWIND_ERR_INVALID_RULE)                                                                \
	X(UNWIND_ERR_READ_FAILED)                                                                 \
	X(UNWIND_ERR_STACK_LENGTH)                                                                \
	X(UNWIND_ERR_BAD_CFA)                                                                     \
	X(UNWIND_ERR_NO_REGS)                                                                     \
	X(UNWIND_ERR_BAD_TABLE)                                                                   \
	X(UNWIND_ERR_TAIL_CALLS)                                                                  \
	X(UNWIND_ERR_RUNTIME)                                                                     \
	X(PID_UNKNOWN)             /* samples of processes not loaded yet: FP walk instead */    \
	X(PID_REPORTS)             /* reports sent through fs_pid_events */                      \
	X(PID_REPORTS_LOST)        /* reports lost: fs_pid_events was full */                    \
	X(UNWIND_SIGNAL_FRAMES)    /* signal frames unwound */                                   \
	X(TAIL_CALLS)              /* tail calls into runtime programs and back */               \
	X(FRAME_POINTER_FRAMES)    /* frames of FS_MAPPING_FRAME_POINTER ranges */              \
	X(CHILDREN_FOLLOWED)       /* new processes added to the PID filter by their parent */  \
	X(CHILDREN_LOST)           /* children not added: the PID filter was full */       \
	X(OFF_CPU_SWITCHES)        /* filtered tasks that left the CPU (off-CPU on) */         \
	X(OFF_CPU_SAMPLED)         /* of those, recorded (chosen by off_cpu_threshold) */      \
	X(OFF_CPU_ENDS)            /* recorded tasks seen running again */                     \
	X(OFF_CPU_ENDS_LOST)       /* their reports lost: fs_pid_events was full */            \
	X(OFF_CPU_ENDS_MISSED)     /* of the ends, those found running again without a switch */ \
	X(PROBE_HITS)              /* probe hits of filtered processes */                      \
	X(PROBE_RATE_LIMITED)      /* hits not recorded: over the per-CPU rate limit */

#define FS_COUNTER_ENUM_ENTRY(name) FS_CNT_##name,
enum fs_counter {
	FS_NATIVE_COUNTERS(FS_COUNTER_ENUM_ENTRY)
	FS_CNT_MAX,
};
#undef FS_COUNTER_ENUM_ENTRY

/* Per-runtime counters every runtime has (fs_runtime_counters, key slot * FS_RT_COMMON_COUNTERS
 * + index); each runtime's own counters are in its object's fs_rt_counters map. */
enum fs_rt_common_counter {
	/* Times the runtime's frames were looked for (a splice or a hand-over to its program). */
	FS_RT_CNT_ATTEMPTS = 0,
	/* Frames of the runtime recorded. */
	FS_RT_CNT_FRAMES = 1,
	/* A native frame of the runtime's splice range with no frames queued for it. */
	FS_RT_CNT_NO_FRAMES = 2,
	FS_RT_COMMON_COUNTERS = 3,
};

#endif /* FERROSCOPE_ABI_H */
