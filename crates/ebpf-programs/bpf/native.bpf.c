// SPDX-License-Identifier: GPL-2.0-only
/*
 * The samplers and the native unwinder.
 *
 * fs_sample runs on a software cpu-clock perf event on every online CPU; fs_off_cpu on the
 * sched_switch raw tracepoint (off-CPU profiles); fs_probe and fs_probe_ret on the uprobes
 * of the probe links, fs_kprobe and fs_kretprobe on their kernel probes. Each takes the current task's stack the same way: for a process whose
 * tables the process manager loaded (fs_known_pids) it sets up the per-CPU unwinder state
 * and tail-calls fs_native, which walks the user stack from the stack-delta tables
 * (fs_pid_mappings -> fs_delta_pages -> fs_delta_entries -> fs_unwind_infos), one frame per
 * step, and sends the record. Ranges that a runtime owns (fs_pid_mapping.owner) hand the walk
 * to that runtime's program through the entry's tail-call table (see ferroscope/runtime.h),
 * which hands it back. A process whose tables are not loaded yet is reported through
 * fs_pid_events (rate limited) and, for that sample, gets the kernel's frame-pointer walk
 * instead (FS_TRACE_USER_FP).
 *
 * Built twice: with bpf_loop (FS_LEGACY=0, Linux 5.17+) and without (FS_LEGACY=1, 5.10+: a few
 * inlined steps per run of fs_native, which tail-calls itself to go on); and once per entry
 * (FS_ENTRY, see ferroscope/state.h): each entry's object holds fs_native and that entry's
 * programs, and shares the cpu entry's maps.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ferroscope/state.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader before load: when non-zero only PIDs in fs_pid_filter are sampled. */
const volatile __u32 fs_filter_pids = 0;
/* Set by the loader before load: when non-zero (and filtering) a process in fs_pid_filter puts
 * the processes it forks there too, and a process leaves it when its last thread exits. */
const volatile __u32 fs_follow_children = 0;
/* Set by the loader before load: when non-zero user stacks are unwound from the tables. */
const volatile __u32 fs_unwinder_enabled = 0;
/* Set by the loader before load (switch entry): a task leaving the CPU is recorded when
 * bpf_get_prandom_u32() is below this (off_cpu_threshold * 2^32; 2^32 records every one). */
const volatile __u64 fs_off_cpu_threshold = 0;
/* Set by the loader before load (cpu entry): off-CPU profiles are on. */
const volatile __u32 fs_off_cpu_on = 0;
/* Set by the loader before load (probe entry): most probe hits recorded per second per CPU
 * (0: no limit). */
const volatile __u64 fs_probe_rate_limit = 0;

/* Lowest address that can hold code; return addresses below it end the stack. */
#define FS_MIN_PC 0x1000
/* Native steps per run of fs_native in the legacy build. */
#define FS_LEGACY_STEPS 10
/* Steps of the bpf_loop walk: each step records at most one frame, and a spliced native frame
 * takes one step to start the splice and one to unwind it. */
#define FS_WALK_STEPS (3 * FS_MAX_USER_FRAMES + 2)

/* The rt_sigframe layout (x86-64): after the handler returns into the restorer, RSP points
 * at the ucontext, whose uc_mcontext holds the interrupted registers. */
_Static_assert(__builtin_offsetof(struct ucontext, uc_mcontext) == 40, "ucontext layout");
_Static_assert(__builtin_offsetof(struct sigcontext_64, bp) == 80, "sigcontext layout");
_Static_assert(__builtin_offsetof(struct sigcontext_64, sp) == 120, "sigcontext layout");
_Static_assert(__builtin_offsetof(struct sigcontext_64, ip) == 128, "sigcontext layout");
#define FS_UC_MCONTEXT __builtin_offsetof(struct ucontext, uc_mcontext)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024); /* sized by the loader */
	__type(key, __u32);
	__type(value, __u8);
} fs_pid_filter SEC(".maps");

/* A thread recorded as it left the CPU: when (bpf_ktime_get_ns), and the CPU time it had
 * used by then (se.sum_exec_runtime). */
struct fs_off_cpu_start {
	__u64 left_ns;
	__u64 runtime_ns;
};

/* Threads recorded as they left the CPU, by thread ID. A thread's entry goes when it is seen
 * running again; when the map is full, no more switches are recorded. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct fs_off_cpu_start);
} fs_off_cpu_starts SEC(".maps");

/* Reports that thread `tid`, recorded leaving the CPU as `start` says, came back at
 * `back_ns`, and forgets it. */
static __always_inline __attribute__((unused)) void off_cpu_end(__u32 tid, struct fs_off_cpu_start *start, __u64 back_ns)
{
	struct fs_pid_event ev = {
		.pid = tid,
		.kind = FS_PID_OFF_CPU_END,
		.address = start->left_ns,
		.ktime_ns = back_ns,
	};
	bpf_map_delete_elem(&fs_off_cpu_starts, &tid);
	if (bpf_ringbuf_output(&fs_pid_events, &ev, sizeof(ev), BPF_RB_NO_WAKEUP))
		fs_count(FS_CNT_OFF_CPU_ENDS_LOST);
	else
		fs_count(FS_CNT_OFF_CPU_ENDS);
}

/* The current thread (`task`) is running, yet its return to the CPU was not seen (not every
 * switch from the idle task reaches the sched_switch tracepoint): it came back as long ago
 * as the CPU time it has used since it left. */
static __always_inline __attribute__((unused)) void off_cpu_missed_end(__u32 tid, struct task_struct *task, __u64 now)
{
	struct fs_off_cpu_start *start = bpf_map_lookup_elem(&fs_off_cpu_starts, &tid);
	if (!start)
		return;
	__u64 ran = BPF_CORE_READ(task, se.sum_exec_runtime) - start->runtime_ns;
	__u64 back = now - ran;
	if ((__s64)ran < 0 || back < start->left_ns)
		back = start->left_ns;
	fs_count(FS_CNT_OFF_CPU_ENDS_MISSED);
	off_cpu_end(tid, start, back);
}

/* The probe hits of the current second, per CPU (fs_probe_rate_limit). */
struct fs_probe_window {
	__u64 start;
	__u64 hits;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fs_probe_window);
} fs_probe_rate SEC(".maps");

/* Processes whose mappings the process manager loaded (value unused). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* sized by the loader */
	__type(key, __u32);
	__type(value, __u8);
} fs_known_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* sized by the loader */
	__type(key, struct fs_delta_page_key);
	__type(value, struct fs_delta_page);
} fs_delta_pages SEC(".maps");

/* Every loaded table's entries, in ranges userspace allocates; memory-mapped by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 20); /* sized by the loader */
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fs_delta_entry);
} fs_delta_entries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FS_MAX_UNWIND_INFOS);
	__type(key, __u32);
	__type(value, struct fs_unwind_info);
} fs_unwind_infos SEC(".maps");

/* A per-CPU cache of recently found rules, by (file, address): return addresses repeat
 * (the same call sites in every sample, and again and again in a recursion or an
 * interpreter's eval loop), and a hit skips the page lookup and the binary search. It cannot
 * go stale: a file ID is a hash of the file's content, and rule indexes are never reused. */
#define FS_RULE_CACHE_SLOTS 512

struct fs_rule_cache_entry {
	__u64 file_id;
	__u64 vaddr;
	__u32 info_index;
	__u32 valid;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FS_RULE_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct fs_rule_cache_entry);
} fs_rule_cache SEC(".maps");

/* Most bytes read at once from a frame's save area (saved RBP up to the return address). */
#define FS_SAVE_AREA_READ 64
/* The buffer they are read into: twice as large, so that a size masked to its bits is always
 * inside it, whatever the verifier can prove about the checks that follow. */
#define FS_SAVE_BUF 128

struct fs_save_area {
	__u8 b[FS_SAVE_BUF];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fs_save_area);
} fs_save_scratch SEC(".maps");

static __always_inline struct task_struct *current_task(void)
{
	return (struct task_struct *)bpf_get_current_task();
}

/* Finds the rule for file address vaddr of st->map_file_id: the delta page (the previous
 * frame's, or looked up), then a binary search of its entries. Returns an enum
 * fs_unwind_error. */
static __always_inline __u32 find_rule(struct fs_unwind_state *st, __u64 vaddr, __u32 *info_index)
{
	__u64 page = vaddr >> FS_DELTA_PAGE_BITS;
	if (page != st->page || st->map_file_id != st->page_file_id || st->page_count == 0) {
		struct fs_delta_page_key key = { .file_id = st->map_file_id, .page = page };
		struct fs_delta_page *p = bpf_map_lookup_elem(&fs_delta_pages, &key);
		if (!p)
			return FS_UNWIND_ERR_NO_PAGE;
		st->page_file_id = st->map_file_id;
		st->page = page;
		st->page_first = p->first;
		st->page_count = p->count;
	}

	/* The last entry whose address_low <= the PC's: the page's first entry is at 0, so
	 * there always is one. A page has at most 65536 entries: 16 halvings. */
	__u32 target = vaddr & ((1 << FS_DELTA_PAGE_BITS) - 1);
	__u32 lo = st->page_first;
	__u32 len = st->page_count;
	struct fs_delta_entry *d;
	for (int i = 0; i < 16; i++) {
		if (len <= 1)
			break;
		__u32 half = len >> 1;
		__u32 mid = lo + half;
		d = bpf_map_lookup_elem(&fs_delta_entries, &mid);
		if (!d)
			return FS_UNWIND_ERR_BAD_TABLE;
		if (d->address_low <= target) {
			lo = mid;
			len -= half;
		} else {
			len = half;
		}
	}
	d = bpf_map_lookup_elem(&fs_delta_entries, &lo);
	if (!d)
		return FS_UNWIND_ERR_BAD_TABLE;
	*info_index = d->info_index;
	return FS_UNWIND_OK;
}

static __always_inline __u64 save_u64(const struct fs_save_area *buf, __u32 off)
{
	__u64 v = 0;
	if (off <= FS_SAVE_BUF - 8)
		__builtin_memcpy(&v, &buf->b[off], 8);
	return v;
}

/* The caller of a frame whose rule says where its CFA is. Returns 1 to stop, 0 to go on. */
static __always_inline long apply_rule(struct fs_unwind_state *st, __u64 pc, struct fs_unwind_info *info)
{
	__u64 cfa;
	__u64 word;
	switch (info->kind) {
	case FS_UNWIND_SP:
		cfa = st->sp + (__s64)info->cfa_offset;
		break;
	case FS_UNWIND_FP:
		cfa = st->bp + (__s64)info->cfa_offset;
		break;
	case FS_UNWIND_SP_DEREF:
		if (bpf_probe_read_user(&word, sizeof(word), (void *)(st->sp + (__s64)info->cfa_offset)))
			return fs_fail(st, FS_UNWIND_ERR_READ_FAILED);
		cfa = word;
		break;
	case FS_UNWIND_FP_DEREF:
		if (bpf_probe_read_user(&word, sizeof(word), (void *)(st->bp + (__s64)info->cfa_offset)))
			return fs_fail(st, FS_UNWIND_ERR_READ_FAILED);
		cfa = word;
		break;
	case FS_UNWIND_PLT:
		cfa = st->sp + 8 + ((pc & 15) >= 11 ? 8 : 0);
		break;
	case FS_UNWIND_FRAME_POINTER:
		cfa = st->bp + 16;
		break;
	case FS_UNWIND_SIGNAL: {
		__u64 mc = st->sp + FS_UC_MCONTEXT;
		__u64 regs[3]; /* bp at 80, then sp at 120 and ip at 128 */
		if (bpf_probe_read_user(&regs[0], 8, (void *)(mc + __builtin_offsetof(struct sigcontext_64, bp))) ||
		    bpf_probe_read_user(&regs[1], 16, (void *)(mc + __builtin_offsetof(struct sigcontext_64, sp))))
			return fs_fail(st, FS_UNWIND_ERR_READ_FAILED);
		fs_count(FS_CNT_UNWIND_SIGNAL_FRAMES);
		st->bp = regs[0];
		st->sp = regs[1];
		st->pc = regs[2];
		st->exact = 1;
		return 0;
	}
	case FS_UNWIND_STOP:
		fs_count(FS_CNT_UNWIND_STOP);
		st->done = 1;
		return 1;
	default:
		return fs_fail(st, FS_UNWIND_ERR_INVALID_RULE);
	}

	/* The caller's frame is above this one, except across a stack switch: Go's vDSO
	 * callers and systemstack (the frame-pointer rule) run on g0's stack, which may lie
	 * above or below the goroutine's. The frame limit bounds a loop there. */
	if (cfa <= st->sp && info->kind != FS_UNWIND_FRAME_POINTER)
		return fs_fail(st, FS_UNWIND_ERR_BAD_CFA);

	__u64 ra;
	if (info->kind == FS_UNWIND_FRAME_POINTER ||
	    ((info->flags & FS_UNWIND_FLAG_FP_SAVED) && info->fp_offset == -16)) {
		/* The usual `push rbp` frame: saved RBP and return address side by side. */
		__u64 pair[2];
		if (bpf_probe_read_user(pair, sizeof(pair), (void *)(cfa - 16)))
			return fs_fail(st, FS_UNWIND_ERR_READ_FAILED);
		st->bp = pair[0];
		ra = pair[1];
	} else if ((info->flags & FS_UNWIND_FLAG_FP_SAVED) && info->fp_offset < -16 &&
		   info->fp_offset >= -(__s32)FS_SAVE_AREA_READ) {
		/* RBP pushed after other callee-saved registers (`push r15; ...; push rbp`): one
		 * read from the saved RBP up to the return address instead of two. */
		__u32 zero = 0;
		struct fs_save_area *buf = bpf_map_lookup_elem(&fs_save_scratch, &zero);
		__u32 len = (__u32)(-info->fp_offset) & (FS_SAVE_BUF - 1);
		/* Keep clang from recomputing the size from the signed offset after the checks:
		 * the verifier must see the bounded value in the call. */
		asm volatile("" : "+r"(len));
		if (!buf || len > FS_SAVE_AREA_READ || len < 24)
			return fs_fail(st, FS_UNWIND_ERR_BAD_TABLE);
		if (bpf_probe_read_user(buf->b, len, (void *)(cfa + (__s64)info->fp_offset)))
			return fs_fail(st, FS_UNWIND_ERR_READ_FAILED);
		st->bp = save_u64(buf, 0);
		__u32 ra_at = len - 8;
		asm volatile("" : "+r"(ra_at)); /* keep save_u64's bounds check */
		ra = save_u64(buf, ra_at);
	} else {
		if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(cfa - 8)))
			return fs_fail(st, FS_UNWIND_ERR_READ_FAILED);
		if (info->flags & FS_UNWIND_FLAG_FP_SAVED) {
			if (bpf_probe_read_user(&word, sizeof(word), (void *)(cfa + (__s64)info->fp_offset)))
				return fs_fail(st, FS_UNWIND_ERR_READ_FAILED);
			st->bp = word;
		}
	}
	st->sp = cfa;
	st->pc = ra;
	st->exact = 0;
	return 0;
}

/* A frame of a range that keeps frame pointers (FS_MAPPING_FRAME_POINTER). */
static __always_inline long unwind_frame_pointer(struct fs_unwind_state *st)
{
	__u64 pair[2];
	if (st->bp <= st->sp || bpf_probe_read_user(pair, sizeof(pair), (void *)st->bp))
		return fs_fail(st, FS_UNWIND_ERR_READ_FAILED);
	fs_count(FS_CNT_FRAME_POINTER_FRAMES);
	st->sp = st->bp + 16;
	st->bp = pair[0];
	st->pc = pair[1];
	st->exact = 0;
	return 0;
}

/* Emits the next frame of the segment being spliced. */
static __always_inline long splice_step(struct fs_unwind_state *st, struct fs_trace_buf *e)
{
	__u32 slot = st->splicing & (FS_MAX_RUNTIMES - 1);
	struct fs_rt_queue *q = &st->rt[slot];
	__u32 c = q->cursor;
	if (c >= q->end || c >= FS_QUEUE_FRAMES) {
		st->splicing = 0;
		st->hide_pc = 1;
		st->skip_owner = 1;
		return 0;
	}
	q->cursor = c + 1;
	if (st->queue[c].addr == 0) {
		/* An empty segment: the native frame stays as it is. */
		fs_count_runtime(slot, FS_RT_CNT_NO_FRAMES, 1);
		st->splicing = 0;
		st->skip_owner = 1;
		return 0;
	}
	if (!fs_push_frame(st, e, st->queue[c].addr, st->queue[c].aux))
		return 1;
	fs_count_runtime(slot, FS_RT_CNT_FRAMES, 1);
	if (st->queue_end[c]) {
		/* Back to unwinding the native frame the segment replaces, without its PC. */
		st->splicing = 0;
		st->hide_pc = 1;
		st->skip_owner = 1;
	}
	return 0;
}

/* One step of the walk: emit a spliced frame, or record the frame at pc and compute its
 * caller's registers, or stop to hand over to a runtime (st->next_slot). Returns 1 to stop,
 * 0 to go on. */
static __always_inline long native_step(struct fs_unwind_state *st, struct fs_trace_buf *e)
{
	if (st->done)
		return 1;
	if (st->splicing)
		return splice_step(st, e);

	__u64 pc = st->pc;
	if (pc < FS_MIN_PC) {
		fs_count(FS_CNT_UNWIND_SMALL_PC);
		if (pc == 0) {
			/* A zero return address: the outermost frame of code without a Stop rule. */
			fs_count(FS_CNT_UNWIND_STOP);
			st->done = 1;
			return 1;
		}
		return fs_fail(st, FS_UNWIND_ERR_SMALL_PC);
	}
	__u64 at = pc - (st->exact ? 0 : 1); /* inside the call for a return address */

	if (at < st->map_start || at >= st->map_end) {
		struct fs_pid_mapping *m = fs_mapping_at(st->pid, at);
		if (!m) {
			if (!fs_push_frame(st, e, pc, st->exact ? FS_NATIVE_EXACT : 0))
				return 1;
			return fs_fail(st, FS_UNWIND_ERR_NO_MAPPING);
		}
		st->map_start = m->start;
		st->map_end = m->end;
		st->map_file_id = m->file_id;
		st->map_bias = m->bias;
		st->map_owner = m->owner;
		st->map_flags = m->flags;
	}

	__u32 owner = st->map_owner & (FS_MAX_RUNTIMES - 1);
	if (owner != FS_PROG_NATIVE && !st->skip_owner &&
	    !(st->declined_slot == owner && st->declined_pc == pc)) {
		if (st->map_flags & FS_MAPPING_SPLICE) {
			struct fs_rt_queue *q = &st->rt[owner];
			if (q->state == FS_QUEUE_NONE) {
				/* The runtime queues its frames (FS_QUEUE_FAILED until it commits). */
				q->state = FS_QUEUE_FAILED;
				st->next_slot = owner;
				return 1;
			}
			if (q->state == FS_QUEUE_READY && q->cursor < q->end) {
				fs_count_runtime(owner, FS_RT_CNT_ATTEMPTS, 1);
				st->splicing = owner;
				return 0;
			}
			if (q->state == FS_QUEUE_READY)
				fs_count_runtime(owner, FS_RT_CNT_NO_FRAMES, 1);
		} else {
			fs_count_runtime(owner, FS_RT_CNT_ATTEMPTS, 1);
			st->next_slot = owner;
			return 1;
		}
	}

	if (!st->hide_pc && !fs_push_frame(st, e, pc, st->exact ? FS_NATIVE_EXACT : 0))
		return 1;
	st->hide_pc = 0;
	st->skip_owner = 0;

	if (st->map_flags & FS_MAPPING_FRAME_POINTER)
		return unwind_frame_pointer(st);
	if (st->map_file_id == 0)
		return fs_fail(st, owner ? FS_UNWIND_ERR_RUNTIME : FS_UNWIND_ERR_NO_PAGE);

	__u64 vaddr = at - st->map_bias;
	/* The rule for this address: from the per-CPU cache of recent lookups, else from the
	 * file's table (then remembered). */
	__u32 slot = (__u32)(vaddr ^ (vaddr >> 12) ^ st->map_file_id) & (FS_RULE_CACHE_SLOTS - 1);
	struct fs_rule_cache_entry *c = bpf_map_lookup_elem(&fs_rule_cache, &slot);
	__u32 info_index;
	if (c && c->valid && c->vaddr == vaddr && c->file_id == st->map_file_id) {
		info_index = c->info_index;
	} else {
		__u32 error = find_rule(st, vaddr, &info_index);
		if (error)
			return fs_fail(st, error);
		if (c) {
			c->file_id = st->map_file_id;
			c->vaddr = vaddr;
			c->info_index = info_index;
			c->valid = 1;
		}
	}
	struct fs_unwind_info *info = bpf_map_lookup_elem(&fs_unwind_infos, &info_index);
	if (!info)
		return fs_fail(st, FS_UNWIND_ERR_BAD_TABLE);
	return apply_rule(st, pc, info);
}

#if !FS_LEGACY
static long native_step_cb(__u64 index, void *arg)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	if (!st || !e)
		return 1;
	return native_step(st, e);
}
#endif

/* Tail-calls program `slot` of the entry's table, counted against the sample's budget. Returns only
 * when the call could not be made (then the walk has failed). */
static __always_inline void hand_over(fs_ctx_t *ctx, struct fs_unwind_state *st, __u32 slot)
{
	if (st->tail_calls >= FS_TAIL_CALL_BUDGET) {
		fs_fail(st, FS_UNWIND_ERR_TAIL_CALLS);
		return;
	}
	st->tail_calls++;
	fs_count(FS_CNT_TAIL_CALLS);
	bpf_tail_call(ctx, &FS_PROGS, slot & (FS_MAX_RUNTIMES - 1));
	/* An empty slot: the runtime's program is not loaded, yet a range names it. */
	fs_fail(st, slot == FS_PROG_NATIVE ? FS_UNWIND_ERR_TAIL_CALLS : FS_UNWIND_ERR_RUNTIME);
}

/* The native unwinder: walks from st's registers until the stack ends, fails, or a runtime's
 * range is met (then that runtime's program runs and hands back here). */
SEC(FS_SEC)
int fs_native(fs_ctx_t *ctx)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	if (!st || !e)
		return 0;
	if (!st->done) {
#if FS_LEGACY
		for (int i = 0; i < FS_LEGACY_STEPS; i++) {
			if (native_step(st, e))
				break;
		}
#else
		bpf_loop(FS_WALK_STEPS, native_step_cb, NULL, 0);
		if (!st->done && !st->next_slot)
			fs_fail(st, FS_UNWIND_ERR_STACK_LENGTH);
#endif
	}
	if (!st->done) {
		__u32 slot = st->next_slot;
		st->next_slot = 0;
		/* A runtime's range, or (legacy) the next steps of this walk. */
		hand_over(ctx, st, slot);
	}
	fs_finish(ctx, st, e);
	return 0;
}

/* The user registers at the sample: those of the entry's context (`regs`, when the task
 * was in user mode), or those the task saved when it entered the kernel. */
static __always_inline int user_registers(struct pt_regs *regs, struct fs_unwind_state *st)
{
	if (regs) {
		st->pc = PT_REGS_IP(regs);
		st->sp = PT_REGS_SP(regs);
		st->bp = PT_REGS_FP(regs);
		return 1;
	}
	struct pt_regs *saved = fs_saved_user_regs();
	if (!saved || bpf_probe_read_kernel(&st->pc, sizeof(st->pc), &saved->ip) ||
	    bpf_probe_read_kernel(&st->sp, sizeof(st->sp), &saved->sp) ||
	    bpf_probe_read_kernel(&st->bp, sizeof(st->bp), &saved->bp))
		return 0;
	return 1;
}

/* Records the current task's stacks (pid/tid, already past the filter) and sends the record:
 * the kernel stack with FS_TRACE_IN_KERNEL in `flags`, the user stack from the tables when
 * the process is known, else from the kernel's frame-pointer walk. `user_regs` are the
 * entry's user-mode registers, or NULL when the task is in the kernel. */
static __always_inline void sample_current(fs_ctx_t *ctx, __u32 pid, __u32 tid, __u64 ktime_ns,
					   __u32 flags, struct pt_regs *user_regs)
{
	struct fs_trace_buf *e = fs_trace();
	if (!e)
		return;
	struct task_struct *task = current_task();
	e->h.pid = pid;
	e->h.tid = tid;
	e->h.ktime_ns = ktime_ns;
	e->h.start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	e->h.cpu = bpf_get_smp_processor_id();
	e->h.flags = flags;
	e->h.user_error = FS_UNWIND_OK;
	e->h.interp_frames = 0;
	e->h.kernel_len = 0;
	e->h.user_len = 0;
	bpf_get_current_comm(e->h.comm, sizeof(e->h.comm));

	if (!BPF_CORE_READ(task, mm)) {
		e->h.flags |= FS_TRACE_KERNEL_THREAD;
		fs_send(ctx, e, 0);
		return;
	}

	if (fs_unwinder_enabled && bpf_map_lookup_elem(&fs_known_pids, &pid)) {
		struct fs_unwind_state *st = fs_state();
		if (!st)
			return;
		__builtin_memset(st, 0, FS_STATE_RESET_BYTES);
		st->pid = pid;
		st->tid = tid;
		st->exact = 1;
		fs_count(FS_CNT_UNWIND_ATTEMPTS);
		if (user_registers(user_regs, st))
			hand_over(ctx, st, FS_PROG_NATIVE);
		else
			fs_fail(st, FS_UNWIND_ERR_NO_REGS);
		fs_finish(ctx, st, e);
		return;
	}

	if (fs_unwinder_enabled) {
		fs_count(FS_CNT_PID_UNKNOWN);
		fs_report_pid(pid, FS_PID_NEW, 0, 1);
	}
	e->h.flags |= FS_TRACE_USER_FP;
	long n = bpf_get_stack(ctx, e->data, FS_MAX_USER_FRAMES * 8, BPF_F_USER_STACK);
	__u32 user_bytes = 0;
	if (n < 0) {
		fs_count(FS_CNT_USER_STACK_ERROR);
		e->h.user_len = n;
	} else {
		user_bytes = n & (FS_MAX_USER_FRAMES * 8 * 2 - 1);
		if (user_bytes > FS_MAX_USER_FRAMES * 8)
			user_bytes = FS_MAX_USER_FRAMES * 8;
		e->h.user_len = user_bytes / 8;
	}
	fs_send(ctx, e, user_bytes);
}

/* Whether the current thread is one to record: not the idle task, and (when filtering) of a
 * process in the PID filter. */
static __always_inline int wanted(__u32 pid, __u32 tid)
{
	if (tid == 0)
		return 0;
	return !fs_filter_pids || bpf_map_lookup_elem(&fs_pid_filter, &pid);
}

#if FS_ENTRY == FS_ENTRY_CPU

SEC("perf_event")
int fs_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	__u32 tid = (__u32)id;

	fs_count(FS_CNT_SAMPLES);
	if (tid == 0) {
		fs_count(FS_CNT_IDLE);
		return 0;
	}
	if (!wanted(pid, tid)) {
		fs_count(FS_CNT_FILTERED);
		return 0;
	}
	__u64 now = bpf_ktime_get_ns();
	if (fs_off_cpu_on)
		/* On CPU, so not off it: a return the off-CPU program did not see. */
		off_cpu_missed_end(tid, current_task(), now);
	/* On x86-64 and arm64 the kernel's text lives in the upper half of the address space. */
	int in_kernel = (long)PT_REGS_IP(&ctx->regs) < 0;
	sample_current(ctx, pid, tid, now, in_kernel ? FS_TRACE_IN_KERNEL : 0,
		       in_kernel ? NULL : (struct pt_regs *)&ctx->regs);
	return 0;
}

/* A process's last thread exits: tell userspace, which unloads it after its last traces; a
 * followed process leaves the PID filter (its PID may name an unrelated process next). */
SEC("raw_tracepoint/sched_process_exit")
int fs_process_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	int known = fs_unwinder_enabled && bpf_map_lookup_elem(&fs_known_pids, &pid);
	int followed = fs_filter_pids && fs_follow_children &&
		       bpf_map_lookup_elem(&fs_pid_filter, &pid);
	if (!known && !followed)
		return 0;
	/* Only when the whole thread group is gone: a main thread that calls pthread_exit leaves
	 * the others running. */
	struct task_struct *task = current_task();
	struct signal_struct *signal = BPF_CORE_READ(task, signal);
	if (BPF_CORE_READ(signal, live.counter) > 0)
		return 0;
	if (followed)
		bpf_map_delete_elem(&fs_pid_filter, &pid);
	if (known)
		fs_report_pid(pid, FS_PID_EXIT, 0, 0);
	return 0;
}

/* A process in the PID filter forked: with children followed, the child joins the filter at
 * once, in the kernel, so that a child that lives for a millisecond is sampled too. The
 * tracepoint runs in the parent; a new thread (same thread group) needs nothing. */
SEC("raw_tracepoint/sched_process_fork")
int fs_process_fork(void *ctx)
{
	if (!fs_filter_pids || !fs_follow_children)
		return 0;
	__u32 parent = bpf_get_current_pid_tgid() >> 32;
	if (!bpf_map_lookup_elem(&fs_pid_filter, &parent))
		return 0;
	/* The context is the tracepoint's arguments as u64s (parent, child). Not through
	 * struct bpf_raw_tracepoint_args: its args[] has no bounds, which CO-RE refuses. */
	struct task_struct *child = (struct task_struct *)((__u64 *)ctx)[1];
	__u32 tgid = BPF_CORE_READ(child, tgid);
	if (tgid == parent || tgid != (__u32)BPF_CORE_READ(child, pid))
		return 0;
	__u8 followed = 2;
	if (bpf_map_update_elem(&fs_pid_filter, &tgid, &followed, BPF_ANY))
		fs_count(FS_CNT_CHILDREN_LOST);
	else
		fs_count(FS_CNT_CHILDREN_FOLLOWED);
	return 0;
}

/* A known process called exec: its old mappings are gone. */
SEC("raw_tracepoint/sched_process_exec")
int fs_process_exec(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	if (!fs_unwinder_enabled || !bpf_map_lookup_elem(&fs_known_pids, &pid))
		return 0;
	fs_report_pid(pid, FS_PID_EXEC, 0, 0);
	return 0;
}

#endif /* FS_ENTRY == FS_ENTRY_CPU */

#if FS_ENTRY == FS_ENTRY_SWITCH

/* A context switch: the task coming in ends its off-CPU time if it was recorded leaving; the
 * task going out (the current one) is recorded with probability fs_off_cpu_threshold. Its
 * stack is taken now, as it leaves (it does not change until it runs again), and its weight
 * (the time off CPU) is reported when it comes back. Kernel threads are left out. */
SEC("raw_tracepoint/sched_switch")
int fs_off_cpu(void *ctx)
{
	/* The tracepoint's arguments as u64s: (preempt, prev, next, ...). Most switches are of
	 * threads nobody asked for: two hash lookups and out. */
	struct task_struct *next = (struct task_struct *)((__u64 *)ctx)[2];
	__u32 next_tid = BPF_CORE_READ(next, pid);
	struct fs_off_cpu_start *start = bpf_map_lookup_elem(&fs_off_cpu_starts, &next_tid);
	__u64 now = 0;
	if (start) {
		now = bpf_ktime_get_ns();
		off_cpu_end(next_tid, start, now);
	}

	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	__u32 tid = (__u32)id;
	if (!wanted(pid, tid))
		return 0;
	struct task_struct *task = current_task();
	if (!BPF_CORE_READ(task, mm))
		return 0;
	if (!now)
		now = bpf_ktime_get_ns();
	/* Leaving again, its return unseen: end the previous record first. */
	off_cpu_missed_end(tid, task, now);
	fs_count(FS_CNT_OFF_CPU_SWITCHES);
	if ((__u64)bpf_get_prandom_u32() >= fs_off_cpu_threshold)
		return 0;
	struct fs_off_cpu_start left = {
		.left_ns = now,
		.runtime_ns = BPF_CORE_READ(task, se.sum_exec_runtime),
	};
	if (bpf_map_update_elem(&fs_off_cpu_starts, &tid, &left, BPF_ANY))
		return 0;
	fs_count(FS_CNT_OFF_CPU_SAMPLED);
	sample_current(ctx, pid, tid, now, FS_TRACE_IN_KERNEL | FS_TRACE_OFF_CPU, NULL);
	return 0;
}

#endif /* FS_ENTRY == FS_ENTRY_SWITCH */

#if FS_ENTRY == FS_ENTRY_PROBE

/* A probe hit (a uprobe, uretprobe, kprobe or kretprobe of a probe link): the stack where it
 * fired, counted against the per-CPU rate limit. The attach cookie says which uprobe link
 * (5.15+). A kernel probe's record has the kernel stack, then the user stack the task
 * entered the kernel from (none for a kernel thread). */
static __always_inline int probe_hit(struct pt_regs *ctx, int kernel)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	__u32 tid = (__u32)id;
	if (!wanted(pid, tid))
		return 0;
	fs_count(FS_CNT_PROBE_HITS);
	__u64 now = bpf_ktime_get_ns();
	if (fs_probe_rate_limit) {
		__u32 zero = 0;
		struct fs_probe_window *w = bpf_map_lookup_elem(&fs_probe_rate, &zero);
		if (!w)
			return 0;
		if (now - w->start >= 1000000000ULL) {
			w->start = now;
			w->hits = 0;
		}
		if (w->hits >= fs_probe_rate_limit) {
			fs_count(FS_CNT_PROBE_RATE_LIMITED);
			return 0;
		}
		w->hits++;
	}
	__u32 flags = FS_TRACE_PROBE;
#if !FS_LEGACY
	flags |= (__u32)(bpf_get_attach_cookie(ctx) << FS_TRACE_PROBE_SHIFT);
#endif
	if (kernel)
		flags |= FS_TRACE_KPROBE | FS_TRACE_IN_KERNEL;
	sample_current(ctx, pid, tid, now, flags, kernel ? NULL : ctx);
	return 0;
}

SEC("uprobe")
int fs_probe(struct pt_regs *ctx)
{
	return probe_hit(ctx, 0);
}

SEC("uretprobe")
int fs_probe_ret(struct pt_regs *ctx)
{
	return probe_hit(ctx, 0);
}

SEC("kprobe")
int fs_kprobe(struct pt_regs *ctx)
{
	return probe_hit(ctx, 1);
}

SEC("kretprobe")
int fs_kretprobe(struct pt_regs *ctx)
{
	return probe_hit(ctx, 1);
}

#endif /* FS_ENTRY == FS_ENTRY_PROBE */
