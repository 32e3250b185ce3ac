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
struct fs_interp_proc *const volatile fs_abi_interp_proc = 0;
const volatile enum fs_frame_kind fs_abi_frame_kind = FS_FRAME_PYTHON;
const volatile enum fs_interp_kind fs_abi_interp_kind = FS_INTERP_PYTHON;
const volatile enum fs_py_frame_model fs_abi_py_frame_model = FS_PY_FRAMES_INTERPRETER;
const volatile enum fs_py_entry_kind fs_abi_py_entry_kind = FS_PY_ENTRY_SHIM;

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

/* Processes that run an interpreter, and what its walker needs to know (key: PID). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* resized by the loader */
	__type(key, __u32);
	__type(value, struct fs_interp_proc);
} fs_interp_procs SEC(".maps");

/* A thread's Python thread state, found by walking the interpreter's thread list once and
 * checked on every use (key: TID). */
struct fs_py_thread {
	__u64 tstate; /* 0: the thread had none when last looked for */
	__u64 fsbase; /* the thread's pthread_self() when it was looked up */
	__u64 ktime_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct fs_py_thread);
} fs_py_threads SEC(".maps");

/* One interpreter frame's bytes, read at once. */
struct fs_frame_buf {
	__u8 b[FS_INTERP_FRAME_READ];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fs_frame_buf);
} fs_frame_scratch SEC(".maps");

/* Most bytes read at once from a frame's save area (saved RBP up to the return address). */
#define FS_SAVE_AREA_READ 64
/* A thread without a thread state is looked for again at most this often. */
#define FS_PY_NEGATIVE_NS 1000000000ULL
/* Most interpreters and thread states visited looking for a thread's state. */
#define FS_PY_SEARCH_STEPS 512
#define FS_NO_FIELD 0xffff

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
	/* Interpreter: its eval loop's code (no range when loop_end[0] == 0). */
	__u64 loop_start[FS_INTERP_RANGES];
	__u64 loop_end[FS_INTERP_RANGES];
	/* The next interpreter frame to emit (0: none left or not found). */
	__u64 py_frame;
	/* Emitting the interpreter frames of the eval-loop frame at pc. */
	__u32 py_emitting;
	/* Interpreter frames emitted for that eval-loop frame. */
	__u32 py_emitted;
	/* The eval-loop frame at pc was handled: do not divert again; do not record its PC
	 * when its interpreter frames replaced it. */
	__u32 py_done;
	__u32 py_hide_pc;
	/* Python frames emitted in this stack (counted once at the end). */
	__u32 py_frames;
	/* Eval-loop frames met in this stack (counted once at the end). */
	__u32 py_attempts;
	/* The process's offsets, copied here once per sample. */
	struct fs_py_proc py;
};

/* The unwinder's state lives in a per-CPU map rather than on the stack: the verifier then
 * treats its fields as unknown values, so the bpf_loop callback's states converge at once
 * instead of being explored per combination of flag values. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fs_unwinder);
} fs_unwind_state SEC(".maps");

static __always_inline long unwind_fail(struct fs_unwinder *st, __u32 error)
{
	st->error = error;
	return 1;
}

static __always_inline __u64 buf_u64(const struct fs_frame_buf *buf, __u32 off)
{
	__u64 v = 0;
	if (off <= FS_INTERP_FRAME_READ - 8)
		__builtin_memcpy(&v, &buf->b[off], 8);
	return v;
}

static __always_inline __u32 buf_u32(const struct fs_frame_buf *buf, __u32 off)
{
	__u32 v = 0;
	if (off <= FS_INTERP_FRAME_READ - 4)
		__builtin_memcpy(&v, &buf->b[off], 4);
	return v;
}

static __always_inline __u8 buf_u8(const struct fs_frame_buf *buf, __u32 off)
{
	if (off > FS_INTERP_FRAME_READ - 1)
		return 0;
	return buf->b[off];
}

/* The end of one eval-loop frame's interpreter frames: back to native unwinding at pc. */
static __always_inline long py_finish(struct fs_unwinder *st)
{
	if (st->py_emitted == 0)
		count(FS_CNT_PY_ERR_NO_FRAME);
	st->py_emitting = 0;
	st->py_done = 1;
	st->py_hide_pc = st->py_emitted > 0;
	return 0;
}

/* One step of the CPython walker: emits the frame at st->py_frame (or skips a shim frame)
 * and says whether the eval-loop call it belongs to has more. */
static __always_inline long py_step(struct fs_unwinder *st, struct fs_trace_event *e)
{
	__u32 zero = 0;
	struct fs_frame_buf *buf = bpf_map_lookup_elem(&fs_frame_scratch, &zero);
	__u64 frame = st->py_frame;
	if (!buf || frame == 0)
		return py_finish(st);
	struct fs_py_proc *py = &st->py;

	__u32 len = py->frame_read_len;
	if (len == 0 || len > FS_INTERP_FRAME_READ)
		return py_finish(st);
	if (bpf_probe_read_user(buf->b, len, (void *)frame)) {
		count(FS_CNT_PY_ERR_READ);
		st->py_frame = 0;
		return py_finish(st);
	}
	__u64 code = buf_u64(buf, py->frame_code) & py->code_mask;
	__u64 previous = buf_u64(buf, py->frame_previous);
	int interp_model = py->frame_model == FS_PY_FRAMES_INTERPRETER;

	if (interp_model && py->entry_kind == FS_PY_ENTRY_SHIM &&
	    buf_u8(buf, py->frame_entry) >= py->owner_cstack) {
		/* The shim that starts this eval call: its frames are all out. */
		st->py_frame = previous;
		return py_finish(st);
	}

	__u32 raw;
	if (interp_model) {
		__u64 instr = buf_u64(buf, py->frame_instr);
		raw = (__u32)(instr - code - py->code_adaptive);
	} else {
		raw = buf_u32(buf, py->frame_instr);
	}
	__u32 fingerprint = 0;
	bpf_probe_read_user(&fingerprint, sizeof(fingerprint), (void *)(code + py->code_firstlineno));

	__u32 n = st->n;
	if (n >= FS_MAX_USER_FRAMES)
		return unwind_fail(st, FS_UNWIND_ERR_STACK_LENGTH);
	e->user_frames[n] = code;
	e->user_aux[n] = ((__u64)fingerprint << 32) | raw;
	e->user_kinds[n] = FS_FRAME_PYTHON;
	e->interp_frames++;
	st->n = n + 1;
	st->py_emitted++;
	st->py_frames++;
	st->py_frame = previous;

	if (!interp_model)
		return py_finish(st); /* one frame per eval call */
	if (py->entry_kind == FS_PY_ENTRY_FLAG && buf_u8(buf, py->frame_entry))
		return py_finish(st);
	if (previous == 0)
		return py_finish(st);
	return 0;
}

/* A per-CPU cache of recently found rules, by (file, address): return addresses repeat
 * (the same call sites in every sample, and again and again in a recursion or an
 * interpreter's eval loop), and a hit skips the page lookup and the binary search. */
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

/* Finds the rule for file address vaddr of st->file_id: the delta page (the previous
 * frame's, or looked up), then a binary search of its entries. Returns an
 * enum fs_unwind_error. */
static __always_inline __u32 find_rule(struct fs_unwinder *st, __u64 vaddr, __u32 *info_index)
{
	__u64 page = vaddr >> FS_DELTA_PAGE_BITS;
	if (page != st->page || st->file_id != st->page_file_id || st->page_count == 0) {
		struct fs_delta_page_key key = { .file_id = st->file_id, .page = page };
		struct fs_delta_page *p = bpf_map_lookup_elem(&fs_delta_pages, &key);
		if (!p)
			return FS_UNWIND_ERR_NO_PAGE;
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

/* One frame: record the PC, find its rule, compute the caller's registers. Returns 1 to
 * stop (st->error says why), 0 to go on. */
static long unwind_step(__u64 index, void *arg)
{
	__u32 zero = 0;
	struct fs_unwinder *st = bpf_map_lookup_elem(&fs_unwind_state, &zero);
	if (!st)
		return 1;
	struct fs_trace_event *e = bpf_map_lookup_elem(&fs_scratch, &zero);
	if (!e)
		return unwind_fail(st, FS_UNWIND_ERR_BAD_TABLE);

	if (st->py_emitting)
		return py_step(st, e);

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
	__u64 at = pc - (st->exact ? 0 : 1); /* inside the call for a return address */
	if (!st->py_done && st->loop_end[0] &&
	    ((at >= st->loop_start[0] && at < st->loop_end[0]) ||
	     (at >= st->loop_start[1] && at < st->loop_end[1]))) {
		/* The interpreter's eval loop: its interpreter frames come first, from the next
		 * iterations; then this frame is unwound natively. */
		st->py_attempts++;
		st->py_emitting = 1;
		st->py_emitted = 0;
		return 0;
	}
	if (!st->py_hide_pc) {
		__u32 n = st->n;
		if (n >= FS_MAX_USER_FRAMES)
			return unwind_fail(st, FS_UNWIND_ERR_STACK_LENGTH);
		e->user_frames[n] = pc;
		e->user_kinds[n] = FS_FRAME_NATIVE;
		st->n = n + 1;
	}
	st->py_done = 0;
	st->py_hide_pc = 0;

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
	/* The rule for this address: from the per-CPU cache of recent lookups, else from the
	 * file's table (then remembered). A file's rules never change while its ID is the same
	 * (the ID is a hash of its content; rule indexes are never reused). */
	__u32 slot = (__u32)(vaddr ^ (vaddr >> 12) ^ st->file_id) & (FS_RULE_CACHE_SLOTS - 1);
	struct fs_rule_cache_entry *c = bpf_map_lookup_elem(&fs_rule_cache, &slot);
	__u32 info_index;
	if (c && c->valid && c->vaddr == vaddr && c->file_id == st->file_id) {
		info_index = c->info_index;
	} else {
		__u32 error = find_rule(st, vaddr, &info_index);
		if (error)
			return unwind_fail(st, error);
		if (c) {
			c->file_id = st->file_id;
			c->vaddr = vaddr;
			c->info_index = info_index;
			c->valid = 1;
		}
	}
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
	} else if ((info->flags & FS_UNWIND_FLAG_FP_SAVED) && info->fp_offset < -16 &&
		   info->fp_offset >= -(__s32)FS_SAVE_AREA_READ) {
		/* RBP pushed after other callee-saved registers (`push r15; ...; push rbp`): one
		 * read from the saved RBP up to the return address instead of two. */
		__u32 zero = 0;
		struct fs_frame_buf *buf = bpf_map_lookup_elem(&fs_frame_scratch, &zero);
		__u32 len = (__u32)(-info->fp_offset) & (FS_INTERP_FRAME_READ - 1);
		/* Keep clang from recomputing the size from the signed offset after the checks:
		 * the verifier must see the bounded value in the call. */
		asm volatile("" : "+r"(len));
		if (!buf || len > FS_SAVE_AREA_READ || len < 24)
			return unwind_fail(st, FS_UNWIND_ERR_BAD_TABLE);
		if (bpf_probe_read_user(buf->b, len, (void *)(cfa + (__s64)info->fp_offset)))
			return unwind_fail(st, FS_UNWIND_ERR_READ_FAILED);
		st->bp = buf_u64(buf, 0);
		__u32 ra_at = len - 8;
		asm volatile("" : "+r"(ra_at)); /* keep buf_u64's bounds check */
		ra = buf_u64(buf, ra_at);
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

/* The walk over a process's interpreters and their thread states (one per bpf_loop step). */
struct fs_py_search {
	__u64 interp_head; /* address of the head pointer */
	__u64 interp;      /* the interpreter being walked (0: read the head next) */
	__u64 tstate;      /* the next thread state of that interpreter (0: next interpreter) */
	__u64 fsbase;
	__u64 found;
	__u16 interp_next;
	__u16 interp_threads_head;
	__u16 tstate_next;
	__u16 tstate_thread_id;
	__u32 started;
	__u32 failed;
};

static long py_search_step(__u64 index, void *arg)
{
	struct fs_py_search *s = arg;
	__u64 word;
	if (s->tstate == 0) {
		/* The next interpreter. */
		__u64 at = s->started ? s->interp + s->interp_next : s->interp_head;
		s->started = 1;
		if (bpf_probe_read_user(&word, sizeof(word), (void *)at)) {
			s->failed = 1;
			return 1;
		}
		if (word == 0)
			return 1;
		s->interp = word;
		if (bpf_probe_read_user(&s->tstate, sizeof(s->tstate), (void *)(word + s->interp_threads_head))) {
			s->failed = 1;
			return 1;
		}
		return 0;
	}
	if (bpf_probe_read_user(&word, sizeof(word), (void *)(s->tstate + s->tstate_thread_id))) {
		s->failed = 1;
		return 1;
	}
	if (word == s->fsbase) {
		s->found = s->tstate;
		return 1;
	}
	if (bpf_probe_read_user(&s->tstate, sizeof(s->tstate), (void *)(s->tstate + s->tstate_next))) {
		s->failed = 1;
		return 1;
	}
	return 0;
}

/* Finds the current thread's Python frame chain: its thread state (cached per TID, checked
 * against the thread's pthread_self() on every use) and the frame executing now. */
static __always_inline void py_prepare(struct fs_unwinder *st, struct fs_interp_proc *ip, __u32 tid)
{
	struct fs_py_proc *py = &ip->py;
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 fsbase = BPF_CORE_READ(task, thread.fsbase);
	__u64 now = bpf_ktime_get_ns();
	__u64 tstate = 0;
	__u64 word;

	struct fs_py_thread *cached = bpf_map_lookup_elem(&fs_py_threads, &tid);
	if (cached && cached->fsbase == fsbase) {
		if (cached->tstate == 0) {
			if (now - cached->ktime_ns < FS_PY_NEGATIVE_NS) {
				count(FS_CNT_PY_ERR_NO_THREAD);
				return;
			}
		} else if (!bpf_probe_read_user(&word, sizeof(word), (void *)(cached->tstate + py->tstate_thread_id)) &&
			   word == fsbase) {
			tstate = cached->tstate;
		}
	}
	if (tstate == 0) {
		struct fs_py_search s = {
			.interp_head = py->interp_head,
			.fsbase = fsbase,
			.interp_next = py->interp_next,
			.interp_threads_head = py->interp_threads_head,
			.tstate_next = py->tstate_next,
			.tstate_thread_id = py->tstate_thread_id,
		};
		bpf_loop(FS_PY_SEARCH_STEPS, py_search_step, &s, 0);
		if (s.failed) {
			count(FS_CNT_PY_ERR_READ);
			return;
		}
		tstate = s.found;
		struct fs_py_thread v = { .tstate = tstate, .fsbase = fsbase, .ktime_ns = now };
		bpf_map_update_elem(&fs_py_threads, &tid, &v, BPF_ANY);
		if (tstate == 0) {
			count(FS_CNT_PY_ERR_NO_THREAD);
			return;
		}
	}
	if (bpf_probe_read_user(&word, sizeof(word), (void *)(tstate + py->tstate_frame))) {
		count(FS_CNT_PY_ERR_READ);
		return;
	}
	if (py->cframe_current_frame != FS_NO_FIELD && word != 0 &&
	    bpf_probe_read_user(&word, sizeof(word), (void *)(word + py->cframe_current_frame))) {
		count(FS_CNT_PY_ERR_READ);
		return;
	}
	st->py_frame = word;
}

/* Unwinds the current task's user stack into e->user_frames. */
static __always_inline void unwind_user(struct bpf_perf_event_data *ctx, struct fs_trace_event *e,
					__u32 pid, __u32 tid, int in_kernel)
{
	__u32 zero = 0;
	struct fs_unwinder *st = bpf_map_lookup_elem(&fs_unwind_state, &zero);
	if (!st) {
		e->user_error = FS_UNWIND_ERR_BAD_TABLE;
		e->user_len = 0;
		return;
	}
	__builtin_memset(st, 0, sizeof(*st));
	st->pid = pid;
	st->exact = 1;
	struct fs_interp_proc *ip = bpf_map_lookup_elem(&fs_interp_procs, &pid);
	if (ip && ip->kind == FS_INTERP_PYTHON) {
		st->loop_start[0] = ip->loop_start[0];
		st->loop_end[0] = ip->loop_end[0];
		st->loop_start[1] = ip->loop_start[1];
		st->loop_end[1] = ip->loop_end[1];
		st->py = ip->py;
		py_prepare(st, ip, tid);
	}
	if (!in_kernel) {
		st->pc = PT_REGS_IP(&ctx->regs);
		st->sp = PT_REGS_SP(&ctx->regs);
		st->bp = PT_REGS_FP(&ctx->regs);
	} else {
		/* The user registers saved when the task entered the kernel. */
		struct task_struct *task = bpf_get_current_task_btf();
		struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
		if (!regs || bpf_probe_read_kernel(&st->pc, sizeof(st->pc), &regs->ip) ||
		    bpf_probe_read_kernel(&st->sp, sizeof(st->sp), &regs->sp) ||
		    bpf_probe_read_kernel(&st->bp, sizeof(st->bp), &regs->bp)) {
			st->error = FS_UNWIND_ERR_NO_REGS;
		}
	}
	count(FS_CNT_UNWIND_ATTEMPTS);
	if (st->error == FS_UNWIND_OK) {
		/* One more iteration than frames, so that a full stack still sees its end. */
		bpf_loop(FS_MAX_USER_FRAMES + 1, unwind_step, NULL, 0);
	}
	count_n(FS_CNT_UNWIND_FRAMES, st->n);
	if (st->py_attempts) {
		count_n(FS_CNT_PY_ATTEMPTS, st->py_attempts);
		count_n(FS_CNT_PY_FRAMES, st->py_frames);
	}
	if (st->error != FS_UNWIND_OK) {
		count_error(st->error);
		if (st->error == FS_UNWIND_ERR_NO_MAPPING)
			report_pid(pid, FS_PID_RESCAN, 1);
	}
	e->user_error = st->error;
	e->user_len = st->n;
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
	e->interp_frames = 0;
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
		unwind_user(ctx, e, pid, tid, in_kernel);
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
