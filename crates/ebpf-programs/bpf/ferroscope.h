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
/* Longest user stack recorded per sample (the kernel's perf_event_max_stack default is 127). */
#define FS_MAX_USER_FRAMES 127
/* Length of a task's comm, including the NUL. */
#define FS_COMM_LEN 16
/* Most PIDs a --pid filter can hold. */
#define FS_MAX_FILTER_PIDS 1024

/* Bits of fs_trace_event.flags. */
/* The sample interrupted the kernel; kernel_frames holds its stack. */
#define FS_TRACE_IN_KERNEL 0x1
/* The task has no user address space (a kernel thread). */
#define FS_TRACE_KERNEL_THREAD 0x2

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
	__u64 kernel_frames[FS_MAX_KERNEL_FRAMES];
	__u64 user_frames[FS_MAX_USER_FRAMES];
};

_Static_assert(sizeof(struct fs_trace_event) ==
		       48 + 8 * (FS_MAX_KERNEL_FRAMES + FS_MAX_USER_FRAMES),
	       "fs_trace_event layout changed: update src/abi.rs");

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
	/* bpf_get_stack failed for the user stack. */
	FS_CNT_USER_STACK_ERROR = 5,
	/* Samples sent to userspace. */
	FS_CNT_SENT = 6,
	FS_CNT_MAX = 7,
};

#endif /* FERROSCOPE_H */
