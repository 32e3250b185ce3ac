// SPDX-License-Identifier: GPL-2.0-only
/*
 * The CPU sampler: runs on a software cpu-clock perf event on every online CPU and sends one
 * fs_trace_event per sample (kernel stack, user stack, identity) to userspace.
 *
 * The user stack is still the kernel's frame-pointer walk (bpf_get_stack with
 * BPF_F_USER_STACK); the stack-delta unwinder replaces it behind the same event.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ferroscope.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader before load: when non-zero only PIDs in fs_pid_filter are sampled. */
const volatile __u32 fs_filter_pids = 0;

/* Never read: they make clang emit BTF for the ABI types, which the layout test checks. */
struct fs_trace_event *const volatile fs_abi_trace_event = 0;
const volatile enum fs_counter fs_abi_counter = FS_CNT_MAX;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} fs_traces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} fs_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FS_MAX_FILTER_PIDS);
	__type(key, __u32);
	__type(value, __u8);
} fs_pid_filter SEC(".maps");

static __always_inline void count(enum fs_counter which)
{
	__u32 key = which;
	__u64 *v = bpf_map_lookup_elem(&fs_counters, &key);
	if (v)
		*v += 1;
}

SEC("perf_event")
int fs_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	__u32 tid = (__u32)id;

	count(FS_CNT_SAMPLES);
	if (tid == 0) {
		count(FS_CNT_IDLE);
		return 0;
	}
	if (fs_filter_pids && !bpf_map_lookup_elem(&fs_pid_filter, &pid)) {
		count(FS_CNT_FILTERED);
		return 0;
	}

	struct fs_trace_event *e = bpf_ringbuf_reserve(&fs_traces, sizeof(*e), 0);
	if (!e) {
		count(FS_CNT_LOST_RINGBUF_FULL);
		return 0;
	}

	e->pid = pid;
	e->tid = tid;
	e->ktime_ns = bpf_ktime_get_ns();
	e->cpu = bpf_get_smp_processor_id();
	e->flags = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));

	/* On x86-64 and arm64 the kernel's text lives in the upper half of the address space. */
	int in_kernel = (long)PT_REGS_IP(&ctx->regs) < 0;
	if (in_kernel) {
		e->flags |= FS_TRACE_IN_KERNEL;
		long n = bpf_get_stack(ctx, e->kernel_frames, sizeof(e->kernel_frames), 0);
		if (n < 0) {
			count(FS_CNT_KERNEL_STACK_ERROR);
			e->kernel_len = n;
		} else {
			e->kernel_len = n / sizeof(__u64);
		}
	} else {
		e->kernel_len = 0;
	}

	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	if (!BPF_CORE_READ(task, mm)) {
		e->flags |= FS_TRACE_KERNEL_THREAD;
		e->user_len = 0;
	} else {
		long n = bpf_get_stack(ctx, e->user_frames, sizeof(e->user_frames), BPF_F_USER_STACK);
		if (n < 0) {
			count(FS_CNT_USER_STACK_ERROR);
			e->user_len = n;
		} else {
			e->user_len = n / sizeof(__u64);
		}
	}

	count(FS_CNT_SENT);
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}
