/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
/*
 * What the native unwinder and the runtime programs share within one sample: the trace under
 * construction, the unwinder's per-CPU state (which survives tail calls), the maps every
 * program of the set reaches, and the code that finishes a sample.
 *
 * Every program object (the native sampler and each runtime's) includes this header, so each
 * declares the same shared maps; the loader creates them once, for the native object, and
 * hands the same maps to every runtime object by name (they are pinned in a private bpffs
 * directory while the objects load).
 *
 * FS_LEGACY selects the build for kernels without bpf_loop (5.10 to 5.16): loops become
 * bounded loops of inlined steps, and the native unwinder walks a few frames per program run,
 * tail-calling itself to go on.
 */
#ifndef FERROSCOPE_STATE_H
#define FERROSCOPE_STATE_H

#include "abi.h"

#ifndef FS_LEGACY
#error "build with -DFS_LEGACY=0 (kernels with bpf_loop) or -DFS_LEGACY=1"
#endif

/* What starts a sample, the entry the object is built for (-DFS_ENTRY=...): the CPU
 * sampler's perf event, the sched_switch raw tracepoint (off-CPU), or a uprobe. A program
 * reached by tail call must be of its caller's type, so every program of the set is built
 * once per entry, and each entry has its own tail-call table (FS_PROGS). Their maps are
 * shared. */
#define FS_ENTRY_CPU 0
#define FS_ENTRY_SWITCH 1
#define FS_ENTRY_PROBE 2
#ifndef FS_ENTRY
#define FS_ENTRY FS_ENTRY_CPU
#endif
/* The entry's context type: a macro, not a typedef, so that CO-RE relocations name the
 * kernel's struct (a typedef of ours is not in the kernel's BTF, and aya poisons the access). */
#if FS_ENTRY == FS_ENTRY_CPU
#define fs_ctx_t struct bpf_perf_event_data
#define FS_SEC "perf_event"
#define FS_PROGS fs_progs
#elif FS_ENTRY == FS_ENTRY_SWITCH
#define fs_ctx_t void
#define FS_SEC "raw_tracepoint/sched_switch"
#define FS_PROGS fs_progs_switch
#elif FS_ENTRY == FS_ENTRY_PROBE
#define fs_ctx_t struct pt_regs
#define FS_SEC "uprobe"
#define FS_PROGS fs_progs_probe
#else
#error "FS_ENTRY must be FS_ENTRY_CPU, FS_ENTRY_SWITCH or FS_ENTRY_PROBE"
#endif

/* Runtime frames a runtime program can queue for splicing, per sample (all runtimes). */
#define FS_QUEUE_FRAMES 192
/* Bytes of scratch memory for the runtime program that runs now. */
#define FS_RT_SCRATCH_BYTES 256
/* Tail calls a sample may make (the kernel allows 33, or 32 before 5.17). */
#define FS_TAIL_CALL_BUDGET 30

/* Bounded loops. FS_LOOP(n, fn, ctx) calls fn(i, ctx) for i < n until it returns non-zero; fn
 * is declared with FS_CALLBACK. With bpf_loop the callback is a subprogram verified once;
 * without it, it is inlined into a loop the verifier walks iteration by iteration, so keep
 * legacy counts small.
 *
 * Keep whatever a callback reads and writes in a map value (the unwinder state, its scratch
 * area), never on the caller's stack: verifiers before Linux 6.7 check a callback as if it
 * ran once, with the caller's stack as it was before the loop, and remove as dead the code
 * that this state makes look unreachable. Pass NULL as ctx.
 *
 * Keep a step straight-line, with one way out (compute the result, return it once): the x86
 * JIT of kernels before 5.12 gives up on a program whose jumps keep changing size between its
 * passes (early returns in an inlined legacy loop do that), and the program then runs
 * interpreted, which the tail-call table refuses (seen on 5.10 with the CPython walker). */
#if FS_LEGACY
#define FS_CALLBACK static __always_inline long
#define FS_LOOP(n, fn, ctx)                                                                       \
	({                                                                                        \
		for (__u32 __fs_i = 0; __fs_i < (n); __fs_i++) {                                  \
			if (fn(__fs_i, ctx))                                                      \
				break;                                                            \
		}                                                                                 \
	})
#else
#define FS_CALLBACK static long
#define FS_LOOP(n, fn, ctx) bpf_loop((n), (fn), (ctx), 0)
#endif

/* The record under construction (bigger than the 512-byte BPF stack). */
struct fs_trace_buf {
	struct fs_trace_header h;
	__u8 data[FS_TRACE_DATA_BYTES];
};

/* One frame queued by a runtime program, waiting for the native walk to reach the native
 * frame it belongs in. */
struct fs_queued_frame {
	__u64 addr;
	__u64 aux; /* kind << FS_FRAME_KIND_SHIFT | payload, as written to the trace */
};

/* A runtime's part of the queue: queue[first, end), cursor the next frame to splice. */
struct fs_rt_queue {
	__u16 first;
	__u16 end;
	__u16 cursor;
	__u8 state; /* FS_QUEUE_* */
	__u8 reserved;
};

/* fs_rt_queue.state */
#define FS_QUEUE_NONE 0   /* not prepared yet in this sample: hand over to the runtime */
#define FS_QUEUE_READY 1  /* prepared: splice from it */
#define FS_QUEUE_FAILED 2 /* the runtime found nothing: unwind its ranges natively */

/* The unwinder's registers, caches and hand-over state: per CPU, reset by fs_sample for each
 * sample, read and written by every program of the sample's tail-call chain. */
struct fs_unwind_state {
	__u64 pc;
	__u64 sp;
	__u64 bp;
	/* The range of the previous frame (skips the trie while the PC stays inside it). */
	__u64 map_start;
	__u64 map_end;
	__u64 map_file_id;
	__u64 map_bias;
	__u32 map_owner;
	__u32 map_flags;
	/* The delta page of the previous frame. */
	__u64 page_file_id;
	__u64 page;
	__u32 page_first;
	__u32 page_count;
	__u32 pid;
	__u32 tid;
	__u32 n;     /* user frames written */
	__u32 error; /* enum fs_unwind_error */
	/* Look the PC up as is: the leaf, and the frame a signal interrupted. Every other PC
	 * is a return address, looked up at PC - 1 (inside the call). */
	__u32 exact;
	__u32 tail_calls;
	/* The runtime slot to hand over to when the current loop stops (0: none). */
	__u32 next_slot;
	/* A runtime handed this PC back without unwinding it: unwind it natively. */
	__u32 declined_slot;
	__u64 declined_pc;
	/* The slot whose queued segment is being emitted (0: none). */
	__u32 splicing;
	/* The native frame at pc was replaced by a spliced segment: do not record its PC. */
	__u32 hide_pc;
	/* The frame at pc had its segment spliced (possibly an empty one): do not splice at it
	 * again. */
	__u32 skip_owner;
	/* The stack is finished (a stop, or an error in `error`). */
	__u32 done;
	/* Next free entry of queue. */
	__u32 queue_used;
	/* Set by a runtime program that tail-calls itself to go on with its walk (its state is
	 * in `scratch`); cleared when it runs again. */
	__u32 rt_resume;
	/* The thread pointer (FS base), read on first use (0: not read yet). */
	__u64 fsbase;
	struct fs_rt_queue rt[FS_MAX_RUNTIMES];
	/* Everything above is reset for each sample (FS_STATE_RESET_BYTES); what follows is
	 * valid only where the fields above say so. */
	__u8 queue_end[FS_QUEUE_FRAMES]; /* 1: the last frame of its segment */
	struct fs_queued_frame queue[FS_QUEUE_FRAMES];
	/* For the runtime program running now (its walk's cursor across its own tail calls). */
	__u8 scratch[FS_RT_SCRATCH_BYTES];
};

/* The part of fs_unwind_state that fs_sample zeroes for each sample. */
#define FS_STATE_RESET_BYTES __builtin_offsetof(struct fs_unwind_state, queue_end)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* sized by the loader */
} fs_traces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fs_trace_buf);
} fs_trace_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fs_unwind_state);
} fs_unwind_state SEC(".maps");

/* The tail-call tables, one per entry: FS_PROG_NATIVE, then one program per runtime slot. A
 * program uses only its own entry's (FS_PROGS). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, FS_MAX_RUNTIMES);
	__type(key, __u32);
	__type(value, __u32);
} fs_progs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, FS_MAX_RUNTIMES);
	__type(key, __u32);
	__type(value, __u32);
} fs_progs_switch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, FS_MAX_RUNTIMES);
	__type(key, __u32);
	__type(value, __u32);
} fs_progs_probe SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} fs_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FS_MAX_RUNTIMES * FS_RT_COMMON_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} fs_runtime_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144); /* sized by the loader */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fs_pid_mapping_key);
	__type(value, struct fs_pid_mapping);
} fs_pid_mappings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} fs_pid_events SEC(".maps");

/* When each (kind << 32 | pid) was last reported, to rate limit fs_pid_events. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} fs_reported_pids SEC(".maps");

/* A process is reported again at most this often: as new (loading is costly), and for a
 * rescan (userspace remembers ranges it could not load and defers rescans). */
#define FS_REPORT_INTERVAL_NS 1000000000ULL
#define FS_RESCAN_INTERVAL_NS 250000000ULL

static __always_inline void fs_count_n(enum fs_counter which, __u64 n)
{
	__u32 key = which;
	__u64 *v = bpf_map_lookup_elem(&fs_counters, &key);
	if (v)
		*v += n;
}

static __always_inline void fs_count(enum fs_counter which)
{
	fs_count_n(which, 1);
}

static __always_inline void fs_count_runtime(__u32 slot, __u32 which, __u64 n)
{
	__u32 key = slot * FS_RT_COMMON_COUNTERS + which;
	__u64 *v = bpf_map_lookup_elem(&fs_runtime_counters, &key);
	if (v)
		*v += n;
}

static __always_inline struct fs_unwind_state *fs_state(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&fs_unwind_state, &zero);
}

static __always_inline struct fs_trace_buf *fs_trace(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&fs_trace_scratch, &zero);
}

/* The kernel stack of a task (x86-64 THREAD_SIZE without KASAN), for the legacy build's
 * pt_regs (bpf_task_pt_regs is 5.15+). */
#define FS_THREAD_SIZE (4096 << 2)

/* The user registers the current task saved when it entered the kernel (a kernel pointer:
 * read it with bpf_probe_read_kernel), or NULL. */
static __always_inline struct pt_regs *fs_saved_user_regs(void)
{
#if FS_LEGACY
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	void *stack = BPF_CORE_READ(task, stack);
	if (!stack)
		return NULL;
	return (struct pt_regs *)((__u8 *)stack + FS_THREAD_SIZE) - 1;
#else
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
#endif
}

/* A register the current task saved when it entered the kernel (0 when unreadable). */
#define FS_SAVED_USER_REG(reg)                                                                    \
	({                                                                                        \
		__u64 __fs_v = 0;                                                                 \
		struct pt_regs *__fs_regs = fs_saved_user_regs();                                  \
		if (__fs_regs)                                                                    \
			bpf_probe_read_kernel(&__fs_v, sizeof(__fs_v), &__fs_regs->reg);          \
		__fs_v;                                                                           \
	})

/* A register of the context the sample started from, for runtimes that keep interpreter
 * state in registers at the leaf (FS_LEAF_REG(ctx, r13)): the entry's registers (the CPU
 * sampler's are the interrupted ones, the kernel's when it interrupted the kernel: check the
 * PC; a uprobe's are the user ones), or, off CPU and in a kprobe, those the task saved when
 * it entered the kernel. */
#if FS_ENTRY == FS_ENTRY_CPU
#define FS_LEAF_REG(ctx, reg) ((ctx)->regs.reg)
#elif FS_ENTRY == FS_ENTRY_PROBE
/* Both probe kinds share the entry: a uprobe's context is in user mode (CPL 3 in cs), a
 * kprobe's in the kernel. Both fields are loaded before the choice: a load through a
 * pointer clang selected between ctx offsets is a "modified ctx ptr" to the verifier. */
#define FS_LEAF_REG(ctx, reg)                                                                     \
	({                                                                                        \
		__u64 __fs_cs = (ctx)->cs;                                                        \
		__u64 __fs_r = (ctx)->reg;                                                        \
		asm volatile("" : "+r"(__fs_cs), "+r"(__fs_r));                                   \
		(__fs_cs & 3) ? __fs_r : FS_SAVED_USER_REG(reg);                                  \
	})
#else
#define FS_LEAF_REG(ctx, reg) FS_SAVED_USER_REG(reg)
#endif

/* Stops the walk with an error; returns 1 (a loop step's "stop"). */
static __always_inline long fs_fail(struct fs_unwind_state *st, __u32 error)
{
	st->error = error;
	st->done = 1;
	return 1;
}

/* Appends one user frame; 0 when the stack is full (then the walk stops with an error). */
static __always_inline int fs_push_frame(struct fs_unwind_state *st, struct fs_trace_buf *e,
					 __u64 addr, __u64 aux)
{
	__u32 n = st->n;
	if (n >= FS_MAX_USER_FRAMES) {
		fs_fail(st, FS_UNWIND_ERR_STACK_LENGTH);
		return 0;
	}
	struct fs_frame *f = (struct fs_frame *)&e->data[(n & (FS_MAX_USER_FRAMES - 1)) * sizeof(struct fs_frame)];
	f->addr = addr;
	f->aux = aux;
	st->n = n + 1;
	if (aux >> FS_FRAME_KIND_SHIFT)
		e->h.interp_frames++;
	return 1;
}

/* The range of the current process that holds pc (the LPM trie lookup). */
static __always_inline struct fs_pid_mapping *fs_mapping_at(__u32 pid, __u64 pc)
{
	struct fs_pid_mapping_key key = {
		.prefixlen = 32 + 64,
		.pid = pid,
		.address_be = __builtin_bswap64(pc),
	};
	return bpf_map_lookup_elem(&fs_pid_mappings, &key);
}

/* Reports a process to userspace, at most once per interval per kind. */
static __always_inline void fs_report_pid(__u32 pid, __u32 kind, __u64 address, int rate_limited)
{
	__u64 key = ((__u64)kind << 32) | pid;
	__u64 now = bpf_ktime_get_ns();
	if (rate_limited) {
		__u64 *last = bpf_map_lookup_elem(&fs_reported_pids, &key);
		__u64 interval = kind == FS_PID_RESCAN ? FS_RESCAN_INTERVAL_NS : FS_REPORT_INTERVAL_NS;
		if (last && now - *last < interval)
			return;
		bpf_map_update_elem(&fs_reported_pids, &key, &now, BPF_ANY);
	}
	struct fs_pid_event ev = { .pid = pid, .kind = kind, .address = address, .ktime_ns = now };
	if (bpf_ringbuf_output(&fs_pid_events, &ev, sizeof(ev), BPF_RB_NO_WAKEUP))
		fs_count(FS_CNT_PID_REPORTS_LOST);
	else
		fs_count(FS_CNT_PID_REPORTS);
}

static __always_inline void fs_count_error(__u32 error)
{
	switch (error) {
	case FS_UNWIND_ERR_NO_MAPPING: fs_count(FS_CNT_UNWIND_ERR_NO_MAPPING); break;
	case FS_UNWIND_ERR_NO_PAGE: fs_count(FS_CNT_UNWIND_ERR_NO_PAGE); break;
	case FS_UNWIND_ERR_INVALID_RULE: fs_count(FS_CNT_UNWIND_ERR_INVALID_RULE); break;
	case FS_UNWIND_ERR_READ_FAILED: fs_count(FS_CNT_UNWIND_ERR_READ_FAILED); break;
	case FS_UNWIND_ERR_STACK_LENGTH: fs_count(FS_CNT_UNWIND_ERR_STACK_LENGTH); break;
	case FS_UNWIND_ERR_BAD_CFA: fs_count(FS_CNT_UNWIND_ERR_BAD_CFA); break;
	case FS_UNWIND_ERR_SMALL_PC: break; /* counted as FS_CNT_UNWIND_SMALL_PC */
	case FS_UNWIND_ERR_NO_REGS: fs_count(FS_CNT_UNWIND_ERR_NO_REGS); break;
	case FS_UNWIND_ERR_TAIL_CALLS: fs_count(FS_CNT_UNWIND_ERR_TAIL_CALLS); break;
	case FS_UNWIND_ERR_RUNTIME: fs_count(FS_CNT_UNWIND_ERR_RUNTIME); break;
	default: fs_count(FS_CNT_UNWIND_ERR_BAD_TABLE); break;
	}
}

/* Adds the kernel stack after the user frames and sends the record. user_bytes is the size of
 * the user frames already in e->data. */
static __always_inline void fs_send(fs_ctx_t *ctx, struct fs_trace_buf *e,
				    __u32 user_bytes)
{
	if (user_bytes > FS_MAX_USER_FRAMES * sizeof(struct fs_frame))
		user_bytes = FS_MAX_USER_FRAMES * sizeof(struct fs_frame);
	/* Keep clang from re-deriving the offset from an unbounded value after the check. */
	asm volatile("" : "+r"(user_bytes));
	__u32 kernel_bytes = 0;
	if (e->h.flags & FS_TRACE_IN_KERNEL) {
		long got = bpf_get_stack(ctx, &e->data[user_bytes],
					 FS_MAX_KERNEL_FRAMES * 8, 0);
		if (got < 0) {
			fs_count(FS_CNT_KERNEL_STACK_ERROR);
			e->h.kernel_len = got;
		} else {
			kernel_bytes = got & (FS_MAX_KERNEL_FRAMES * 8 * 2 - 1);
			if (kernel_bytes > FS_MAX_KERNEL_FRAMES * 8)
				kernel_bytes = FS_MAX_KERNEL_FRAMES * 8;
			e->h.kernel_len = kernel_bytes / 8;
		}
	} else {
		e->h.kernel_len = 0;
	}
	__u64 size = sizeof(struct fs_trace_header) + user_bytes + kernel_bytes;
	if (size > sizeof(struct fs_trace_buf))
		size = sizeof(struct fs_trace_buf);
	asm volatile("" : "+r"(size));
	if (bpf_ringbuf_output(&fs_traces, e, size, BPF_RB_NO_WAKEUP)) {
		fs_count(FS_CNT_LOST_RINGBUF_FULL);
		return;
	}
	fs_count(FS_CNT_SENT);
}

/* Ends a stack-delta walk: counts it and sends the record. */
static __always_inline void fs_finish(fs_ctx_t *ctx, struct fs_unwind_state *st,
				      struct fs_trace_buf *e)
{
	__u32 n = st->n;
	if (n > FS_MAX_USER_FRAMES)
		n = FS_MAX_USER_FRAMES;
	fs_count_n(FS_CNT_UNWIND_FRAMES, n);
	if (st->error != FS_UNWIND_OK) {
		fs_count_error(st->error);
		if (st->error == FS_UNWIND_ERR_NO_MAPPING)
			fs_report_pid(st->pid, FS_PID_RESCAN, st->pc, 1);
	}
	e->h.user_error = st->error;
	e->h.user_len = n;
	fs_send(ctx, e, n * sizeof(struct fs_frame));
}

#endif /* FERROSCOPE_STATE_H */
