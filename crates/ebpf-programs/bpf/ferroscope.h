/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
/*
 * The ABI shared by ferroscope's eBPF programs and its userspace.
 *
 * This header is the single source of truth for every structure and constant that crosses
 * the kernel/user boundary. The Rust mirror lives in crates/ebpf-programs/src/abi.rs; a test
 * there compares both layouts against the BTF of the compiled object, so a change here that
 * is not mirrored fails the build's tests instead of corrupting data.
 *
 * It may be included by BPF programs (after vmlinux.h) only; it uses the kernel's __u32/__u64.
 */
#ifndef FERROSCOPE_H
#define FERROSCOPE_H

/* Longest kernel stack recorded per sample. */
#define FS_MAX_KERNEL_FRAMES 64
/* Longest user stack recorded per sample (the stack-delta unwinder's limit; the kernel's
 * frame-pointer walk, used for processes not loaded yet, stops at perf_event_max_stack). */
#define FS_MAX_USER_FRAMES 256
/* Length of a task's comm, including the NUL. */
#define FS_COMM_LEN 16
/* Most PIDs a --pid filter can hold. */
#define FS_MAX_FILTER_PIDS 1024
/* Size of the pages the stack-delta tables are split into: 1 << FS_DELTA_PAGE_BITS bytes. */
#define FS_DELTA_PAGE_BITS 16
/* Most distinct unwind rules (fs_unwind_infos), shared by every table: an entry's u16 index. */
#define FS_MAX_UNWIND_INFOS 65536

/* Bits of fs_trace_event.flags. */
/* The sample interrupted the kernel; kernel_frames holds its stack. */
#define FS_TRACE_IN_KERNEL 0x1
/* The task has no user address space (a kernel thread). */
#define FS_TRACE_KERNEL_THREAD 0x2
/* user_frames comes from the kernel's frame-pointer walk (the process's unwind tables were
 * not loaded yet), not from the stack-delta unwinder. */
#define FS_TRACE_USER_FP 0x4

/* Why the stack-delta unwinder stopped before the end of the stack (fs_trace_event.user_error).
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
	FS_UNWIND_ERR_MAX = 10,
};

/* One sampled stack, sent through the fs_traces ring buffer. Frames are leaf first. */
struct fs_trace_event {
	__u32 pid;  /* thread-group ID in the initial PID namespace */
	__u32 tid;  /* thread ID in the initial PID namespace */
	__u64 ktime_ns; /* bpf_ktime_get_ns() at the sample */
	__u32 cpu;
	__u32 flags; /* FS_TRACE_* */
	/* Number of valid entries, or a negative errno from bpf_get_stack. */
	__s32 kernel_len;
	__s32 user_len;
	char comm[FS_COMM_LEN];
	/* enum fs_unwind_error: why the user stack ends early (FS_UNWIND_OK when it does not). */
	__u32 user_error;
	/* Interpreter frames in user_frames (0 when there are none: then user_kinds and
	 * user_aux are not even initialised). */
	__u32 interp_frames;
	__u64 kernel_frames[FS_MAX_KERNEL_FRAMES];
	/* For a native frame (user_kinds FS_FRAME_NATIVE): the leaf is the interrupted PC, every
	 * other entry a return address. For an interpreter frame: what identifies its function
	 * (a CPython code object's address). */
	__u64 user_frames[FS_MAX_USER_FRAMES];
	/* For an interpreter frame: where in its function (for CPython, the raw instruction
	 * offset in the low 32 bits and the code object's fingerprint in the high 32). */
	__u64 user_aux[FS_MAX_USER_FRAMES];
	/* enum fs_frame_kind of each user frame. */
	__u8 user_kinds[FS_MAX_USER_FRAMES];
};

_Static_assert(sizeof(struct fs_trace_event) ==
		       56 + 8 * (FS_MAX_KERNEL_FRAMES + 2 * FS_MAX_USER_FRAMES) + FS_MAX_USER_FRAMES,
	       "fs_trace_event layout changed: update src/abi.rs");

/* What a user frame is (fs_trace_event.user_kinds). Interpreter kinds equal their
 * enum fs_interp_kind. */
enum fs_frame_kind {
	FS_FRAME_NATIVE = 0,
	FS_FRAME_PYTHON = 1,
};

/* Which interpreter unwinder a process needs (fs_interp_proc.kind). */
enum fs_interp_kind {
	FS_INTERP_NONE = 0,
	FS_INTERP_PYTHON = 1,
};

/* Where a CPython frame's instruction pointer lives (fs_py_proc.frame_model). */
enum fs_py_frame_model {
	/* PyFrameObject (3.6-3.10): one per C-level eval call; f_lasti is an int. */
	FS_PY_FRAMES_OBJECT = 0,
	/* _PyInterpreterFrame (3.11+): many per eval call; the instruction is a pointer into
	 * the code object's inline bytecode. */
	FS_PY_FRAMES_INTERPRETER = 1,
};

/* How the last Python frame of one C-level eval call is marked (fs_py_proc.entry_kind). */
enum fs_py_entry_kind {
	/* 3.6-3.10: every eval call runs exactly one frame. */
	FS_PY_ENTRY_ONE = 0,
	/* 3.11: the frame's is_entry byte is set. */
	FS_PY_ENTRY_FLAG = 1,
	/* 3.12+: a shim frame (owner byte >= owner_cstack) follows it. */
	FS_PY_ENTRY_SHIM = 2,
};

/* Offsets into one CPython version's structures (facts from its headers), and where a
 * process keeps its interpreters. Offsets are bytes; 0xffff when a field does not exist. */
struct fs_py_proc {
	/* Address of the pointer to the first PyInterpreterState
	 * (&_PyRuntime.interpreters.head, or 3.6's interp_head). */
	__u64 interp_head;
	/* The frame's code pointer is ANDed with this (3.14 tags _PyStackRef's low bits). */
	__u64 code_mask;
	__u16 interp_next;
	__u16 interp_threads_head;
	__u16 tstate_next;
	__u16 tstate_thread_id;
	__u16 tstate_frame;         /* frame, cframe or current_frame */
	__u16 cframe_current_frame; /* 3.11/3.12: _PyCFrame.current_frame */
	__u16 frame_code;           /* f_code / f_executable */
	__u16 frame_previous;       /* f_back / previous */
	__u16 frame_instr;          /* f_lasti (int) / prev_instr or instr_ptr (pointer) */
	__u16 frame_entry;          /* is_entry or owner (a byte) */
	__u16 frame_read_len;       /* bytes read per frame, covering every field above */
	__u16 code_firstlineno;     /* the fingerprint: an int */
	__u16 code_adaptive;        /* 3.11+: co_code_adaptive, where the bytecode starts */
	__u8 frame_model;           /* enum fs_py_frame_model */
	__u8 entry_kind;            /* enum fs_py_entry_kind */
	__u8 owner_cstack;          /* owner values from here up are shims (3.12/3.13:
	                             * FRAME_OWNED_BY_CSTACK; 3.14: FRAME_OWNED_BY_INTERPRETER) */
	__u8 reserved[3];
};

_Static_assert(sizeof(struct fs_py_proc) == 48, "fs_py_proc layout changed: update src/abi.rs");

/* Most code ranges of one interpreter's eval loop (the function and its cold part). */
#define FS_INTERP_RANGES 2
/* Longest frame prefix an interpreter walker reads at once. */
#define FS_INTERP_FRAME_READ 128

/* Value of fs_interp_procs (key: PID): a process that runs an interpreter. */
struct fs_interp_proc {
	__u32 kind; /* enum fs_interp_kind */
	__u32 reserved;
	/* Process addresses [start, end) of the interpreter's eval loop: a native frame there
	 * is replaced by the interpreter's frames of that call. */
	__u64 loop_start[FS_INTERP_RANGES];
	__u64 loop_end[FS_INTERP_RANGES];
	struct fs_py_proc py;
};

_Static_assert(sizeof(struct fs_interp_proc) == 88,
	       "fs_interp_proc layout changed: update src/abi.rs");

/* What a fs_pid_events record reports. */
enum fs_pid_event_kind {
	/* A process whose tables are not loaded was sampled: load it. */
	FS_PID_NEW = 0,
	/* A known process ran code outside its loaded mappings (dlopen): read its maps again. */
	FS_PID_RESCAN = 1,
	/* A known process exited: unload it once its last traces were processed. */
	FS_PID_EXIT = 2,
};

/* One report through the fs_pid_events ring buffer. */
struct fs_pid_event {
	__u32 pid;
	__u32 kind; /* enum fs_pid_event_kind */
};

_Static_assert(sizeof(struct fs_pid_event) == 8, "fs_pid_event layout changed: update src/abi.rs");

/* Key of fs_pid_mappings (LPM trie): prefixlen counts the bits of pid and address that
 * must match, so 32 + the prefix length of the address range. */
struct fs_pid_mapping_key {
	__u32 prefixlen;
	__u32 pid;
	__u64 address_be; /* big-endian, so that the trie matches from the top bit */
};

_Static_assert(sizeof(struct fs_pid_mapping_key) == 16,
	       "fs_pid_mapping_key layout changed: update src/abi.rs");

/* Value of fs_pid_mappings: which file a range of a process maps, and where. */
struct fs_pid_mapping {
	__u64 file_id;
	/* The file's virtual address of process address A is A - bias. */
	__u64 bias;
	/* The whole mapping [start, end), so that the unwinder can skip the trie for the next
	 * frame in the same mapping. */
	__u64 start;
	__u64 end;
};

_Static_assert(sizeof(struct fs_pid_mapping) == 32,
	       "fs_pid_mapping layout changed: update src/abi.rs");

/* Key of fs_delta_pages: one 64 KiB page of one file's virtual addresses. */
struct fs_delta_page_key {
	__u64 file_id;
	__u64 page; /* vaddr >> FS_DELTA_PAGE_BITS */
};

_Static_assert(sizeof(struct fs_delta_page_key) == 16,
	       "fs_delta_page_key layout changed: update src/abi.rs");

/* Value of fs_delta_pages: the page's entries are fs_delta_entries[first, first + count).
 * The first entry has address_low 0 (the rule in effect where the page starts). */
struct fs_delta_page {
	__u32 first;
	__u32 count;
};

_Static_assert(sizeof(struct fs_delta_page) == 8, "fs_delta_page layout changed: update src/abi.rs");

/* One stack delta: from page offset address_low to the next entry's, rule info_index. */
struct fs_delta_entry {
	__u16 address_low;
	__u16 info_index; /* index into fs_unwind_infos */
};

_Static_assert(sizeof(struct fs_delta_entry) == 4, "fs_delta_entry layout changed: update src/abi.rs");

/* enum fs_unwind_kind: how to find the caller (fs_unwind_info.kind). The return address is
 * always at CFA - 8 (x86-64). */
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

_Static_assert(sizeof(struct fs_unwind_info) == 16, "fs_unwind_info layout changed: update src/abi.rs");

/* Indexes of the per-CPU fs_counters array. */
enum fs_counter {
	/* Every time the sampling program ran. */
	FS_CNT_SAMPLES = 0,
	/* Samples of the idle task (PID 0), not recorded. */
	FS_CNT_IDLE = 1,
	/* Samples of processes outside the PID filter. */
	FS_CNT_FILTERED = 2,
	/* Samples lost because the ring buffer was full. */
	FS_CNT_LOST_RINGBUF_FULL = 3,
	/* bpf_get_stack failed for the kernel stack. */
	FS_CNT_KERNEL_STACK_ERROR = 4,
	/* bpf_get_stack failed for the user stack (frame-pointer fallback). */
	FS_CNT_USER_STACK_ERROR = 5,
	/* Samples sent to userspace. */
	FS_CNT_SENT = 6,
	/* User stacks the stack-delta unwinder walked. */
	FS_CNT_UNWIND_ATTEMPTS = 7,
	/* User frames it produced. */
	FS_CNT_UNWIND_FRAMES = 8,
	/* Stacks that ended at a Stop rule or a zero return address. */
	FS_CNT_UNWIND_STOP = 9,
	/* Return addresses below 0x1000. */
	FS_CNT_UNWIND_SMALL_PC = 10,
	/* Stacks that ended with each error (FS_UNWIND_ERR_*). */
	FS_CNT_UNWIND_ERR_NO_MAPPING = 11,
	FS_CNT_UNWIND_ERR_NO_PAGE = 12,
	FS_CNT_UNWIND_ERR_INVALID_RULE = 13,
	FS_CNT_UNWIND_ERR_READ_FAILED = 14,
	FS_CNT_UNWIND_ERR_STACK_LENGTH = 15,
	FS_CNT_UNWIND_ERR_BAD_CFA = 16,
	FS_CNT_UNWIND_ERR_NO_REGS = 17,
	FS_CNT_UNWIND_ERR_BAD_TABLE = 18,
	/* Samples of processes whose tables were not loaded: frame-pointer walk instead. */
	FS_CNT_PID_UNKNOWN = 19,
	/* Reports sent through fs_pid_events (new, rescan, exit). */
	FS_CNT_PID_REPORTS = 20,
	/* Reports lost because fs_pid_events was full. */
	FS_CNT_PID_REPORTS_LOST = 21,
	/* Signal frames unwound. */
	FS_CNT_UNWIND_SIGNAL_FRAMES = 22,
	/* Native eval-loop frames whose Python frames were looked for. */
	FS_CNT_PY_ATTEMPTS = 23,
	/* Python frames recorded. */
	FS_CNT_PY_FRAMES = 24,
	/* The sampled thread has no Python thread state (not a Python thread, or not found). */
	FS_CNT_PY_ERR_NO_THREAD = 25,
	/* Reading a thread state or frame failed. */
	FS_CNT_PY_ERR_READ = 26,
	/* An eval-loop frame with no Python frame left for it. */
	FS_CNT_PY_ERR_NO_FRAME = 27,
	FS_CNT_MAX = 28,
};

#endif /* FERROSCOPE_H */
