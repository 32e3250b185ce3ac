/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
/*
 * What a runtime's eBPF program builds on. A runtime program is one program,
 * FS_RUNTIME_PROGRAM(name), in its own object (built once per entry: see FS_ENTRY), reached by tail call from the native unwinder
 * when the walk meets a range the runtime owns (fs_pid_mapping.owner == its slot):
 *
 * - A splice runtime (an interpreter loop; its ranges have FS_MAPPING_SPLICE) is called once
 *   per sample, the first time the walk meets one of its ranges: it queues the thread's
 *   frames with fs_queue_frame(), one segment per native frame of its loop (the last frame
 *   of each segment marked), commits or abandons the queue, and hands back. The native
 *   unwinder then splices the segments in, each one in place of a native frame of the loop.
 * - A takeover runtime (JIT code) is called whenever the walk enters one of its ranges: it
 *   records its frames with fs_emit(), moving st->pc/sp/bp to each caller, until the PC
 *   leaves its ranges, and hands back with fs_handback(). When it cannot unwind the frame at
 *   st->pc, it calls fs_decline() first: the native unwinder then tries that frame itself.
 *
 * The loader sets fs_rt_slot (the runtime's slot: its frames' kind) before loading. A runtime
 * declares its own counters with FS_RUNTIME_COUNTERS(n), an enum starting at 0, and its own
 * per-process maps.
 */
#ifndef FERROSCOPE_RUNTIME_H
#define FERROSCOPE_RUNTIME_H

#include "state.h"

/* This runtime's slot, set by the loader (the kind of the frames it records). */
const volatile __u32 fs_rt_slot = 0;

/* The runtime's program, of the type of the entry it is built for (see FS_ENTRY in state.h). */
#define FS_RUNTIME_PROGRAM(name) SEC(FS_SEC) int name(fs_ctx_t *ctx)

/* The runtime's own counters: a per-CPU array of n __u64, read by the loader by this name. */
#define FS_RUNTIME_COUNTERS(n)                                                                    \
	struct {                                                                                  \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                          \
		__uint(max_entries, (n));                                                         \
		__type(key, __u32);                                                               \
		__type(value, __u64);                                                             \
	} fs_rt_counters SEC(".maps");                                                            \
	static __always_inline void fs_rt_count_n(__u32 which, __u64 by)                         \
	{                                                                                         \
		__u64 *v = bpf_map_lookup_elem(&fs_rt_counters, &which);                          \
		if (v)                                                                            \
			*v += by;                                                                 \
	}                                                                                         \
	static __always_inline void fs_rt_count(__u32 which)                                      \
	{                                                                                         \
		fs_rt_count_n(which, 1);                                                          \
	}

/* The aux word of one of this runtime's frames. */
static __always_inline __u64 fs_rt_aux(__u64 payload)
{
	return ((__u64)fs_rt_slot << FS_FRAME_KIND_SHIFT) | (payload & FS_FRAME_PAYLOAD_MASK);
}

/* Records one of this runtime's frames in the trace (takeover runtimes); 0 when the stack is
 * full. */
static __always_inline int fs_emit(struct fs_unwind_state *st, struct fs_trace_buf *e, __u64 addr,
				   __u64 payload)
{
	if (!fs_push_frame(st, e, addr, fs_rt_aux(payload)))
		return 0;
	fs_count_runtime(fs_rt_slot, FS_RT_CNT_FRAMES, 1);
	return 1;
}

/* Starts this runtime's queue (splice runtimes). Until fs_queue_commit() the queue counts as
 * failed, so a program that stops early leaves the runtime's ranges to native unwinding. */
static __always_inline void fs_queue_begin(struct fs_unwind_state *st)
{
	__u32 slot = fs_rt_slot & (FS_MAX_RUNTIMES - 1);
	__u32 used = st->queue_used;
	if (used > FS_QUEUE_FRAMES)
		used = FS_QUEUE_FRAMES;
	st->rt[slot].first = used;
	st->rt[slot].end = used;
	st->rt[slot].cursor = used;
	st->rt[slot].state = FS_QUEUE_FAILED;
}

/* Queues one frame; `last` marks the end of its segment (the frames of one native frame of
 * the loop). addr 0 is reserved for the empty-segment marker. 0 when the queue is full. */
static __always_inline int fs_queue_frame(struct fs_unwind_state *st, __u64 addr, __u64 payload,
					  int last)
{
	__u32 slot = fs_rt_slot & (FS_MAX_RUNTIMES - 1);
	__u32 at = st->rt[slot].end;
	if (at >= FS_QUEUE_FRAMES)
		return 0;
	st->queue[at].addr = addr;
	st->queue[at].aux = fs_rt_aux(payload);
	st->queue_end[at] = last ? 1 : 0;
	st->rt[slot].end = at + 1;
	return 1;
}

/* Ends the segment being queued, when what ends it is known only after its frames were
 * queued (a marker frame between two calls of the loop). A segment with no frames (the loop
 * was entered but runs none of the runtime's frames yet) is queued as an empty marker: its
 * native frame is then kept as it is. 0 when the queue is full. */
static __always_inline int fs_queue_end_segment(struct fs_unwind_state *st)
{
	__u32 slot = fs_rt_slot & (FS_MAX_RUNTIMES - 1);
	__u32 end = st->rt[slot].end;
	if (end > FS_QUEUE_FRAMES)
		return 0;
	if (end > st->rt[slot].first && !st->queue_end[(end - 1) & 255]) {
		st->queue_end[(end - 1) & 255] = 1;
		return 1;
	}
	return fs_queue_frame(st, 0, 0, 1);
}

/* Publishes the queue: READY when it holds frames, else FAILED (the runtime's ranges are then
 * unwound natively for the rest of the sample). */
static __always_inline void fs_queue_commit(struct fs_unwind_state *st)
{
	__u32 slot = fs_rt_slot & (FS_MAX_RUNTIMES - 1);
	struct fs_rt_queue *q = &st->rt[slot];
	if (q->end > q->first) {
		__u32 end = q->end;
		if (end <= FS_QUEUE_FRAMES)
			st->queue_end[(end - 1) & 255] = 1;
		q->state = FS_QUEUE_READY;
		st->queue_used = q->end;
	} else {
		q->state = FS_QUEUE_FAILED;
	}
}

/* The native unwinder unwinds the frame at st->pc itself (this runtime could not). */
static __always_inline void fs_decline(struct fs_unwind_state *st)
{
	st->declined_slot = fs_rt_slot;
	st->declined_pc = st->pc;
}

/* Hands the walk back to the native unwinder. Call it as `return fs_handback(...)`. When no
 * tail call is left, the sample is sent as it is. */
static __always_inline int fs_handback(fs_ctx_t *ctx, struct fs_unwind_state *st,
				       struct fs_trace_buf *e)
{
	if (!st->done) {
		if (st->tail_calls < FS_TAIL_CALL_BUDGET) {
			st->tail_calls++;
			fs_count(FS_CNT_TAIL_CALLS);
			bpf_tail_call(ctx, &FS_PROGS, FS_PROG_NATIVE);
		}
		/* No tail call left (or the native program is gone). */
		fs_fail(st, FS_UNWIND_ERR_TAIL_CALLS);
	}
	fs_finish(ctx, st, e);
	return 0;
}

/* Whether this run of the runtime's program starts its work for the sample (rather than
 * going on after fs_continue()). Call it once, first. */
static __always_inline int fs_fresh_start(struct fs_unwind_state *st)
{
	int fresh = !st->rt_resume;
	st->rt_resume = 0;
	return fresh;
}

/* Runs this runtime's program again, to go on with a walk longer than one run may verify (the
 * legacy build's loops are short); its state must be in st->scratch. Returns only when no
 * tail call is left (then finish as the walk stands). */
static __always_inline void fs_continue(fs_ctx_t *ctx, struct fs_unwind_state *st)
{
	/* Keep one tail call to hand back. */
	if (st->tail_calls + 1 >= FS_TAIL_CALL_BUDGET)
		return;
	st->tail_calls++;
	st->rt_resume = 1;
	fs_count(FS_CNT_TAIL_CALLS);
	bpf_tail_call(ctx, &FS_PROGS, fs_rt_slot & (FS_MAX_RUNTIMES - 1));
	st->rt_resume = 0;
}

/* The current thread's thread pointer (FS base on x86-64: glibc's and musl's pthread_self()),
 * read once per sample. */
static __always_inline __u64 fs_thread_pointer(struct fs_unwind_state *st)
{
	if (st->fsbase == 0) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		st->fsbase = BPF_CORE_READ(task, thread.fsbase);
	}
	return st->fsbase;
}

/* Reads a word of user memory; 0 on failure (callers treat 0 as "none"). */
static __always_inline __u64 fs_read_u64(__u64 addr)
{
	__u64 v = 0;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)addr))
		return 0;
	return v;
}

#endif /* FERROSCOPE_RUNTIME_H */
