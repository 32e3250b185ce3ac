// SPDX-License-Identifier: GPL-2.0-only
/*
 * The CPU sampler: runs on a software cpu-clock perf event on every online CPU and sends one
 * fs_trace_event per sample (kernel stack, user stack, identity) to userspace.
 *
 * User stacks are unwound here from stack-delta tables that userspace's process manager
 * loads (fs_pid_mappings -> fs_delta_pages -> fs_delta_entries -> fs_unwind_infos), one frame
 * per bpf_loop iteration, into a per-CPU scratch event (it does not fit the 512-byte stack).
 * A process whose tables are not loaded yet is reported through fs_pid_events (rate limited)
 * and, for that sample, gets the kernel's frame-pointer walk instead (FS_TRACE_USER_FP).
 * With fs_unwinder_enabled == 0 every user stack is the frame-pointer walk.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "ferroscope.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader before load: when non-zero only PIDs in fs_pid_filter are sampled. */
const volatile __u32 fs_filter_pids = 0;
/* Set by the loader before load: when non-zero user stacks are unwound from the tables. */
const volatile __u32 fs_unwinder_enabled = 0;

/* Never read: they make clang emit BTF for the ABI types, which the layout test checks. */
struct fs_trace_event *const volatile fs_abi_trace_event = 0;
struct fs_pid_event *const volatile fs_abi_pid_event = 0;
struct fs_pid_mapping_key *const volatile fs_abi_pid_mapping_key = 0;
struct fs_pid_mapping *const volatile fs_abi_pid_mapping = 0;
struct fs_delta_page_key *const volatile fs_abi_delta_page_key = 0;
struct fs_delta_page *const volatile fs_abi_delta_page = 0;
struct fs_delta_entry *const volatile fs_abi_delta_entry = 0;
struct fs_unwind_info *const volatile fs_abi_unwind_info = 0;
const volatile enum fs_counter fs_abi_counter = FS_CNT_MAX;
const volatile enum fs_unwind_error fs_abi_unwind_error = FS_UNWIND_ERR_MAX;
const volatile enum fs_pid_event_kind fs_abi_pid_event_kind = FS_PID_EXIT;
const volatile enum fs_unwind_kind fs_abi_unwind_kind = FS_UNWIND_FRAME_POINTER;

/* Lowest address that can hold code; return addresses below it end the stack. */
#define FS_MIN_PC 0x1000
/* A process is reported again at most this often: as new (loading is costly), and for a
 * rescan (dlopen; userspace defers rescans that come too soon). */
#define FS_REPORT_INTERVAL_NS 1000000000ULL
#define FS_RESCAN_INTERVAL_NS 100000000ULL

/* The rt_sigframe layout (x86-64): after the handler returns into the restorer, RSP points
 * at the ucontext, whose uc_mcontext holds the interrupted registers. */
_Static_assert(__builtin_offsetof(struct ucontext, uc_mcontext) == 40, "ucontext layout");
_Static_assert(__builtin_offsetof(struct sigcontext_64, bp) == 80, "sigcontext layout");
_Static_assert(__builtin_offsetof(struct sigcontext_64, sp) == 120, "sigcontext layout");
_Static_assert(__builtin_offsetof(struct sigcontext_64, ip) == 128, "sigcontext layout");
#define FS_UC_MCONTEXT __builtin_offsetof(struct ucontext, uc_mcontext)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} fs_traces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} fs_pid_events SEC(".maps");

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

/* The trace under construction (bigger than the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fs_trace_event);
} fs_scratch SEC(".maps");

/* Processes whose mappings the process manager loaded (value unused). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* resized by the loader */
	__type(key, __u32);
	__type(value, __u8);
} fs_known_pids SEC(".maps");

/* When each (kind << 32 | pid) was last reported, to rate limit fs_pid_events. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} fs_reported_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144); /* resized by the loader */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fs_pid_mapping_key);
	__type(value, struct fs_pid_mapping);
} fs_pid_mappings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* resized by the loader */
	__type(key, struct fs_delta_page_key);
	__type(value, struct fs_delta_page);
} fs_delta_pages SEC(".maps");

/* Every loaded table's entries, in ranges userspace allocates; memory-mapped by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 20); /* resized by the loader */
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

static __always_inline void count_n(enum fs_counter which, __u64 n)
{
	__u32 key = which;
	__u64 *v = bpf_map_lookup_elem(&fs_counters, &key);
	if (v)
		*v += n;
}

static __always_inline void count(enum fs_counter which)
{
	count_n(which, 1);
}

static __always_inline void count_error(__u32 error)
{
	switch (error) {
	case FS_UNWIND_ERR_NO_MAPPING: count(FS_CNT_UNWIND_ERR_NO_MAPPING); break;
	case FS_UNWIND_ERR_NO_PAGE: count(FS_CNT_UNWIND_ERR_NO_PAGE); break;
	case FS_UNWIND_ERR_INVALID_RULE: count(FS_CNT_UNWIND_ERR_INVALID_RULE); break;
	case FS_UNWIND_ERR_READ_FAILED: count(FS_CNT_UNWIND_ERR_READ_FAILED); break;
	case FS_UNWIND_ERR_STACK_LENGTH: count(FS_CNT_UNWIND_ERR_STACK_LENGTH); break;
	case FS_UNWIND_ERR_BAD_CFA: count(FS_CNT_UNWIND_ERR_BAD_CFA); break;
	case FS_UNWIND_ERR_SMALL_PC: break; /* counted as FS_CNT_UNWIND_SMALL_PC */
	case FS_UNWIND_ERR_NO_REGS: count(FS_CNT_UNWIND_ERR_NO_REGS); break;
	default: count(FS_CNT_UNWIND_ERR_BAD_TABLE); break;
	}
}

/* Reports a process to userspace, at most once per FS_REPORT_INTERVAL_NS per kind. */
static __always_inline void report_pid(__u32 pid, __u32 kind, int rate_limited)
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
	struct fs_pid_event ev = { .pid = pid, .kind = kind };
	if (bpf_ringbuf_output(&fs_pid_events, &ev, sizeof(ev), BPF_RB_NO_WAKEUP))
		count(FS_CNT_PID_REPORTS_LOST);
	else
		count(FS_CNT_PID_REPORTS);
}

/* The unwinder's registers and caches, on the sampling program's stack; bpf_loop hands a
 * pointer to it to every step. */
struct fs_unwinder {
	__u64 pc;
	__u64 sp;
	__u64 bp;
	/* The mapping of the previous frame (skips the trie while the PC stays inside it). */
	__u64 map_start;
	__u64 map_end;
	__u64 file_id;
	__u64 bias;
	/* The delta page of the previous frame. */
	__u64 page_file_id;
	__u64 page;
	__u32 page_first;
	__u32 page_count;
	__u32 pid;
	__u32 n;     /* frames written */
	__u32 error; /* enum fs_unwind_error */
	/* Look the PC up as is: the leaf, and the frame a signal interrupted. Every other PC
	 * is a return address, looked up at PC - 1 (inside the call). */
	__u32 exact;
};

static __always_inline long unwind_fail(struct fs_unwinder *st, __u32 error)
{
	st->error = error;
	return 1;
}

/* One frame: record the PC, find its rule, compute the caller's registers. Returns 1 to
 * stop (st->error says why), 0 to go on. */
static long unwind_step(__u64 index, void *arg)
{
	struct fs_unwinder *st = arg;
	__u32 zero = 0;
	struct fs_trace_event *e = bpf_map_lookup_elem(&fs_scratch, &zero);
	if (!e)
		return unwind_fail(st, FS_UNWIND_ERR_BAD_TABLE);

	__u64 pc = st->pc;
	if (pc < FS_MIN_PC) {
		count(FS_CNT_UNWIND_SMALL_PC);
		if (pc == 0) {
			/* A zero return address: the outermost frame of code without a Stop rule. */
			count(FS_CNT_UNWIND_STOP);
			return 1;
		}
		return unwind_fail(st, FS_UNWIND_ERR_SMALL_PC);
	}
	__u32 n = st->n;
	if (n >= FS_MAX_USER_FRAMES)
		return unwind_fail(st, FS_UNWIND_ERR_STACK_LENGTH);
	e->user_frames[n] = pc;
	st->n = n + 1;

	if (pc < st->map_start || pc >= st->map_end) {
		struct fs_pid_mapping_key key = {
			.prefixlen = 32 + 64,
			.pid = st->pid,
			.address_be = bpf_cpu_to_be64(pc),
		};
		struct fs_pid_mapping *m = bpf_map_lookup_elem(&fs_pid_mappings, &key);
		if (!m)
			return unwind_fail(st, FS_UNWIND_ERR_NO_MAPPING);
		st->map_start = m->start;
		st->map_end = m->end;
		st->file_id = m->file_id;
		st->bias = m->bias;
	}

	__u64 vaddr = pc - st->bias - (st->exact ? 0 : 1);
	__u64 page = vaddr >> FS_DELTA_PAGE_BITS;
	if (page != st->page || st->file_id != st->page_file_id || st->page_count == 0) {
		struct fs_delta_page_key key = { .file_id = st->file_id, .page = page };
		struct fs_delta_page *p = bpf_map_lookup_elem(&fs_delta_pages, &key);
		if (!p)
			return unwind_fail(st, FS_UNWIND_ERR_NO_PAGE);
		st->page_file_id = st->file_id;
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
			return unwind_fail(st, FS_UNWIND_ERR_BAD_TABLE);
		if (d->address_low <= target) {
			lo = mid;
			len -= half;
		} else {
			len = half;
		}
	}
	d = bpf_map_lookup_elem(&fs_delta_entries, &lo);
	if (!d)
		return unwind_fail(st, FS_UNWIND_ERR_BAD_TABLE);
	__u32 info_index = d->info_index;
	struct fs_unwind_info *info = bpf_map_lookup_elem(&fs_unwind_infos, &info_index);
	if (!info)
		return unwind_fail(st, FS_UNWIND_ERR_BAD_TABLE);

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
			return unwind_fail(st, FS_UNWIND_ERR_READ_FAILED);
		cfa = word;
		break;
	case FS_UNWIND_FP_DEREF:
		if (bpf_probe_read_user(&word, sizeof(word), (void *)(st->bp + (__s64)info->cfa_offset)))
			return unwind_fail(st, FS_UNWIND_ERR_READ_FAILED);
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
			return unwind_fail(st, FS_UNWIND_ERR_READ_FAILED);
		count(FS_CNT_UNWIND_SIGNAL_FRAMES);
		st->bp = regs[0];
		st->sp = regs[1];
		st->pc = regs[2];
		st->exact = 1;
		return 0;
	}
	case FS_UNWIND_STOP:
		count(FS_CNT_UNWIND_STOP);
		return 1;
	default:
		return unwind_fail(st, FS_UNWIND_ERR_INVALID_RULE);
	}

	if (cfa <= st->sp)
		return unwind_fail(st, FS_UNWIND_ERR_BAD_CFA);

	__u64 ra;
	if (info->kind == FS_UNWIND_FRAME_POINTER ||
	    ((info->flags & FS_UNWIND_FLAG_FP_SAVED) && info->fp_offset == -16)) {
		/* The usual `push rbp` frame: saved RBP and return address side by side. */
		__u64 pair[2];
		if (bpf_probe_read_user(pair, sizeof(pair), (void *)(cfa - 16)))
			return unwind_fail(st, FS_UNWIND_ERR_READ_FAILED);
		st->bp = pair[0];
		ra = pair[1];
	} else {
		if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(cfa - 8)))
			return unwind_fail(st, FS_UNWIND_ERR_READ_FAILED);
		if (info->flags & FS_UNWIND_FLAG_FP_SAVED) {
			if (bpf_probe_read_user(&word, sizeof(word), (void *)(cfa + (__s64)info->fp_offset)))
				return unwind_fail(st, FS_UNWIND_ERR_READ_FAILED);
			st->bp = word;
		}
	}
	st->sp = cfa;
	st->pc = ra;
	st->exact = 0;
	return 0;
}

/* Unwinds the current task's user stack into e->user_frames. */
static __always_inline void unwind_user(struct bpf_perf_event_data *ctx, struct fs_trace_event *e,
					__u32 pid, int in_kernel)
{
	struct fs_unwinder st = {};
	st.pid = pid;
	st.exact = 1;
	if (!in_kernel) {
		st.pc = PT_REGS_IP(&ctx->regs);
		st.sp = PT_REGS_SP(&ctx->regs);
		st.bp = PT_REGS_FP(&ctx->regs);
	} else {
		/* The user registers saved when the task entered the kernel. */
		struct task_struct *task = bpf_get_current_task_btf();
		struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
		if (!regs || bpf_probe_read_kernel(&st.pc, sizeof(st.pc), &regs->ip) ||
		    bpf_probe_read_kernel(&st.sp, sizeof(st.sp), &regs->sp) ||
		    bpf_probe_read_kernel(&st.bp, sizeof(st.bp), &regs->bp)) {
			st.error = FS_UNWIND_ERR_NO_REGS;
		}
	}
	count(FS_CNT_UNWIND_ATTEMPTS);
	if (st.error == FS_UNWIND_OK) {
		/* One more iteration than frames, so that a full stack still sees its end. */
		bpf_loop(FS_MAX_USER_FRAMES + 1, unwind_step, &st, 0);
	}
	count_n(FS_CNT_UNWIND_FRAMES, st.n);
	if (st.error != FS_UNWIND_OK) {
		count_error(st.error);
		if (st.error == FS_UNWIND_ERR_NO_MAPPING)
			report_pid(pid, FS_PID_RESCAN, 1);
	}
	e->user_error = st.error;
	e->user_len = st.n;
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

	__u32 zero = 0;
	struct fs_trace_event *e = bpf_map_lookup_elem(&fs_scratch, &zero);
	if (!e)
		return 0;

	e->pid = pid;
	e->tid = tid;
	e->ktime_ns = bpf_ktime_get_ns();
	e->cpu = bpf_get_smp_processor_id();
	e->flags = 0;
	e->user_error = FS_UNWIND_OK;
	e->reserved = 0;
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

	struct task_struct *task = bpf_get_current_task_btf();
	if (!task->mm) {
		e->flags |= FS_TRACE_KERNEL_THREAD;
		e->user_len = 0;
	} else if (fs_unwinder_enabled && bpf_map_lookup_elem(&fs_known_pids, &pid)) {
		unwind_user(ctx, e, pid, in_kernel);
	} else {
		if (fs_unwinder_enabled) {
			count(FS_CNT_PID_UNKNOWN);
			report_pid(pid, FS_PID_NEW, 1);
		}
		e->flags |= FS_TRACE_USER_FP;
		long n = bpf_get_stack(ctx, e->user_frames, sizeof(e->user_frames), BPF_F_USER_STACK);
		if (n < 0) {
			count(FS_CNT_USER_STACK_ERROR);
			e->user_len = n;
		} else {
			e->user_len = n / sizeof(__u64);
		}
	}

	if (bpf_ringbuf_output(&fs_traces, e, sizeof(*e), BPF_RB_NO_WAKEUP)) {
		count(FS_CNT_LOST_RINGBUF_FULL);
		return 0;
	}
	count(FS_CNT_SENT);
	return 0;
}

/* A process's main thread exits: tell userspace, which unloads it after its last traces. */
SEC("raw_tracepoint/sched_process_exit")
int fs_process_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	if (!fs_unwinder_enabled || pid != (__u32)id)
		return 0;
	if (!bpf_map_lookup_elem(&fs_known_pids, &pid))
		return 0;
	report_pid(pid, FS_PID_EXIT, 0);
	return 0;
}
