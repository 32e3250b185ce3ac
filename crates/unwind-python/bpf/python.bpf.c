// SPDX-License-Identifier: GPL-2.0-only
/*
 * The CPython walker: a splice runtime (see ferroscope/runtime.h). The native unwinder calls
 * it the first time a sample's walk meets the eval loop (_PyEval_EvalFrameDefault and its
 * cold part, ranges the plug-in registers with FS_MAPPING_SPLICE). It finds the thread's
 * PyThreadState, queues the thread's Python frames from the one executing, one segment per
 * C-level call of the eval loop (3.6-3.10: one frame each; 3.11: up to the frame with
 * is_entry; 3.12+: up to the shim frame owned by the C stack), and hands back; the native
 * unwinder splices each segment in place of the eval-loop frame it belongs to.
 *
 * A queued frame is the code object's address, with the raw instruction offset in the low
 * 32 bits of the payload and the low 24 bits of the code object's co_firstlineno (its
 * fingerprint, so that userspace never names a reused address with an old code object) above.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ferroscope/runtime.h"

char LICENSE[] SEC("license") = "GPL";

/* Where a CPython frame's instruction pointer lives (py_proc.frame_model). */
enum py_frame_model {
	/* PyFrameObject (3.6-3.10): one per C-level eval call; f_lasti is an int. */
	PY_FRAMES_OBJECT = 0,
	/* _PyInterpreterFrame (3.11+): many per eval call; the instruction is a pointer into
	 * the code object's inline bytecode. */
	PY_FRAMES_INTERPRETER = 1,
};

/* How the last Python frame of one C-level eval call is marked (py_proc.entry_kind). */
enum py_entry_kind {
	/* 3.6-3.10: every eval call runs exactly one frame. */
	PY_ENTRY_ONE = 0,
	/* 3.11: the frame's is_entry byte is set. */
	PY_ENTRY_FLAG = 1,
	/* 3.12+: a shim frame (owner byte >= owner_cstack) follows it. */
	PY_ENTRY_SHIM = 2,
};

/* Most unbound ranges of the eval loop (src/frame_binding.rs, MAX_UNBOUND). */
#define PY_MAX_UNBOUND 4

/* Offsets into one CPython version's structures (facts from its headers), and where a
 * process keeps its interpreters: the value of py_procs. Offsets are bytes; 0xffff when a
 * field does not exist. */
struct py_proc {
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
	__u8 frame_model;           /* enum py_frame_model */
	__u8 entry_kind;            /* enum py_entry_kind */
	__u8 owner_cstack;          /* owner values from here up are shims (3.12/3.13:
	                             * FRAME_OWNED_BY_CSTACK; 3.14: FRAME_OWNED_BY_INTERPRETER) */
	__u8 native_tid;            /* 1: PyThreadState.native_thread_id (the kernel TID) is the
	                             * word after thread_id (3.11+); 0: no such field */
	__u8 reserved[2];
	/* 3.6-3.10: where the eval loop's entry part is, and the ranges of it, as offsets from
	 * there, in which the thread state does not point at the frame the call runs (before
	 * tstate->frame = f, after tstate->frame = f->f_back); unused ranges are [0, 0). */
	__u64 eval_base;
	__u32 unbound_start[PY_MAX_UNBOUND];
	__u32 unbound_end[PY_MAX_UNBOUND];
};

_Static_assert(sizeof(struct py_proc) == 88, "py_proc layout changed: update src/ebpf.rs");

/* The plug-in's counters (fs_rt_counters); names in src/ebpf.rs, in this order. */
enum py_counter {
	/* A sampled process with a splice range but no py_procs entry. */
	PY_CNT_ERR_NO_PROCESS = 0,
	/* The sampled thread has no Python thread state (not a Python thread, or not found). */
	PY_CNT_ERR_NO_THREAD = 1,
	/* Reading a thread state or frame failed. */
	PY_CNT_ERR_READ = 2,
	/* The queue was full before the outermost Python frame. */
	PY_CNT_ERR_QUEUE_FULL = 3,
	/* Walks of the interpreters' thread lists (a thread state not cached). */
	PY_CNT_THREAD_SEARCHES = 4,
	PY_CNT_MAX = 5,
};

FS_RUNTIME_COUNTERS(PY_CNT_MAX)

/* Never read: they make clang emit BTF for the types the layout test checks. */
struct py_proc *const volatile py_abi_proc = 0;
const volatile enum py_counter py_abi_counter = PY_CNT_MAX;
const volatile enum py_frame_model py_abi_frame_model = PY_FRAMES_INTERPRETER;
const volatile enum py_entry_kind py_abi_entry_kind = PY_ENTRY_SHIM;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* sized by the loader */
	__type(key, __u32);
	__type(value, struct py_proc);
} py_procs SEC(".maps");

/* A thread's PyThreadState, found by walking the interpreter's thread list once and checked
 * on every use (key: TID): its thread_id must still be the thread's pthread_self() and, where
 * the version has it, its native_thread_id the thread's TID. glibc gives a new thread the
 * stack, and so the pthread_self(), of one that ended, and a freed PyThreadState keeps the
 * thread_id it had: without the TID, a dead thread's state would pass the check. */
struct py_thread {
	__u64 tstate; /* 0: the thread had none when last looked for */
	__u64 fsbase; /* the thread's pthread_self() when it was looked up */
	__u64 ktime_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct py_thread);
} py_threads SEC(".maps");

/* Longest frame prefix read at once. */
#define PY_FRAME_READ 128

struct py_frame_buf {
	__u8 b[PY_FRAME_READ];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct py_frame_buf);
} py_frame_scratch SEC(".maps");

/* A thread without a thread state is looked for again at most this often: soon enough that a
 * new thread whose state was not linked yet at its first sample is found at its next one. */
#define PY_NEGATIVE_NS 20000000ULL
/* Most interpreters and thread states visited looking for a thread's state. */
#define PY_SEARCH_STEPS 512
#define PY_NO_FIELD 0xffff

/* The walk over a process's interpreters and their thread states (one per step). */
struct py_search {
	__u64 interp_head; /* address of the head pointer */
	__u64 interp;      /* the interpreter being walked (0: read the head next) */
	__u64 tstate;      /* the next thread state of that interpreter (0: next interpreter) */
	__u64 fsbase;
	__u64 found;
	__u16 interp_next;
	__u16 interp_threads_head;
	__u16 tstate_next;
	__u16 tstate_thread_id;
	__u32 tid;        /* the thread's TID, matched with native_thread_id when native_tid */
	__u32 native_tid; /* py_proc.native_tid */
	__u32 started;
	__u32 failed;
	__u32 done;
};

/* The walk's state, in the unwinder state's scratch area: a map value, never the BPF stack,
 * because verifiers before Linux 6.7 check a bpf_loop callback as if it ran once, with the
 * caller's stack as it is before the loop, and prune as dead whatever that state makes look
 * unreachable (seen on 6.1: the thread search's "found" branch was removed). */
struct py_walk {
	struct py_proc proc;
	__u64 frame; /* the next frame to queue (0: done) */
	struct py_search search;
	__u32 phase;  /* enum py_phase */
	__u32 rounds; /* runs of the program spent in this phase */
};

/* What the program does next; one run may not finish a phase (see PY_*_CHUNK). */
enum py_phase {
	/* Walking the interpreters' thread lists for the thread's state. */
	PY_PHASE_SEARCH = 0,
	/* Queuing the thread's frames. */
	PY_PHASE_QUEUE = 1,
};

/* Steps per run of the program: everything at once with bpf_loop; in the legacy build, loops
 * the verifier walks step by step, so shorter ones and more runs (through fs_continue()). */
#if FS_LEGACY
#define PY_SEARCH_CHUNK 128
#define PY_QUEUE_CHUNK 64
#else
#define PY_SEARCH_CHUNK PY_SEARCH_STEPS
#define PY_QUEUE_CHUNK FS_QUEUE_FRAMES
#endif

_Static_assert(sizeof(struct py_walk) <= FS_RT_SCRATCH_BYTES, "py_walk does not fit the scratch area");

static __always_inline struct py_walk *walk_of(struct fs_unwind_state *st)
{
	return (struct py_walk *)st->scratch;
}

static __always_inline __u64 buf_u64(const struct py_frame_buf *buf, __u32 off)
{
	__u64 v = 0;
	if (off <= PY_FRAME_READ - 8)
		__builtin_memcpy(&v, &buf->b[off], 8);
	return v;
}

static __always_inline __u32 buf_u32(const struct py_frame_buf *buf, __u32 off)
{
	__u32 v = 0;
	if (off <= PY_FRAME_READ - 4)
		__builtin_memcpy(&v, &buf->b[off], 4);
	return v;
}

static __always_inline __u8 buf_u8(const struct py_frame_buf *buf, __u32 off)
{
	if (off > PY_FRAME_READ - 1)
		return 0;
	return buf->b[off];
}

/* Queues the frame at w->frame (or skips a shim frame) and moves to its caller. Returns 1 when
 * the chain is done. */
FS_CALLBACK queue_step(__u64 index, void *arg)
{
	struct fs_unwind_state *st = fs_state();
	__u32 zero = 0;
	struct py_frame_buf *buf = bpf_map_lookup_elem(&py_frame_scratch, &zero);
	if (!st || !buf)
		return 1;
	struct py_walk *w = walk_of(st);
	struct py_proc *py = &w->proc;
	__u64 frame = w->frame;
	if (frame == 0)
		return 1;

	__u32 len = py->frame_read_len;
	if (len == 0 || len > PY_FRAME_READ) {
		w->frame = 0;
		return 1;
	}
	if (bpf_probe_read_user(buf->b, len, (void *)frame)) {
		fs_rt_count(PY_CNT_ERR_READ);
		w->frame = 0;
		return 1;
	}
	__u64 code = buf_u64(buf, py->frame_code) & py->code_mask;
	__u64 previous = buf_u64(buf, py->frame_previous);
	int interp_model = py->frame_model == PY_FRAMES_INTERPRETER;
	w->frame = previous;

	if (interp_model && py->entry_kind == PY_ENTRY_SHIM &&
	    buf_u8(buf, py->frame_entry) >= py->owner_cstack) {
		/* The shim that starts an eval call: the frames queued before it are that call's. */
		if (!fs_queue_end_segment(st)) {
			fs_rt_count(PY_CNT_ERR_QUEUE_FULL);
			w->frame = 0;
			return 1;
		}
		return previous == 0;
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

	int last = !interp_model || (py->entry_kind == PY_ENTRY_FLAG && buf_u8(buf, py->frame_entry));
	__u64 payload = ((__u64)(fingerprint & 0xffffff) << 32) | raw;
	if (!fs_queue_frame(st, code, payload, last)) {
		fs_rt_count(PY_CNT_ERR_QUEUE_FULL);
		w->frame = 0;
		return 1;
	}
	return previous == 0;
}

FS_CALLBACK search_step(__u64 index, void *arg)
{
	struct fs_unwind_state *st = fs_state();
	if (!st)
		return 1;
	struct py_search *s = &walk_of(st)->search;
	/* One read per step and one way out, so that the step stays a straight line (5.10's
	 * x86 JIT gives up on programs whose jumps keep changing size between its passes). */
	__u64 at;
	if (s->tstate == 0)
		/* The next interpreter (then the head of its thread list). */
		at = s->started ? s->interp + s->interp_next : s->interp_head;
	else
		at = s->tstate + s->tstate_thread_id;
	/* Two words: a pointer (the second ignored), or thread_id and native_thread_id. */
	__u64 word[2] = { 0, 0 };
	long failed = bpf_probe_read_user(word, sizeof(word), (void *)at);
	int native_ok = !s->native_tid || word[1] == s->tid;
	if (s->tstate == 0) {
		s->started = 1;
		s->interp = word[0];
		if (!failed && word[0])
			failed = bpf_probe_read_user(&s->tstate, sizeof(s->tstate),
						     (void *)(word[0] + s->interp_threads_head));
		s->done = failed || word[0] == 0;
	} else if (!failed && word[0] == s->fsbase && native_ok) {
		s->found = s->tstate;
		s->done = 1;
	} else if (!failed) {
		failed = bpf_probe_read_user(&s->tstate, sizeof(s->tstate),
					     (void *)(s->tstate + s->tstate_next));
		s->done = failed != 0;
	} else {
		s->done = 1;
	}
	s->failed = failed != 0;
	return s->done;
}

/* The frame a thread state executes now (0 when none). */
static __always_inline __u64 frame_of(struct py_proc *py, __u64 tstate)
{
	__u64 word;
	if (bpf_probe_read_user(&word, sizeof(word), (void *)(tstate + py->tstate_frame))) {
		fs_rt_count(PY_CNT_ERR_READ);
		return 0;
	}
	if (py->cframe_current_frame != PY_NO_FIELD && word != 0 &&
	    bpf_probe_read_user(&word, sizeof(word), (void *)(word + py->cframe_current_frame))) {
		fs_rt_count(PY_CNT_ERR_READ);
		return 0;
	}
	return word;
}

/* Starts the walk from the thread's PyThreadState: cached per TID, checked on every use
 * against the thread's pthread_self() (its FS base: PyThreadState.thread_id) and, 3.11+, its
 * TID (native_thread_id). Returns 1 when it must be searched for (w->search is set up), else
 * 0 with w->frame set (0 when none). A cached state that passes the checks but executes no
 * frame is searched for again: this program runs because the eval loop is on the thread's
 * stack, so its live state has a frame (but for an instant at the start of an eval call), and
 * one without is most likely a dead thread's whose memory still says what it said. */
static __always_inline int start_walk(struct fs_unwind_state *st, struct py_walk *w)
{
	struct py_proc *py = &w->proc;
	__u32 tid = st->tid;
	__u64 fsbase = fs_thread_pointer(st);
	__u64 word[2] = { 0, 0 };

	w->frame = 0;
	struct py_thread *cached = bpf_map_lookup_elem(&py_threads, &tid);
	if (cached && cached->fsbase == fsbase) {
		if (cached->tstate == 0) {
			if (bpf_ktime_get_ns() - cached->ktime_ns < PY_NEGATIVE_NS) {
				fs_rt_count(PY_CNT_ERR_NO_THREAD);
				return 0;
			}
		} else if (!bpf_probe_read_user(word, sizeof(word), (void *)(cached->tstate + py->tstate_thread_id)) &&
			   word[0] == fsbase && (!py->native_tid || word[1] == tid)) {
			w->frame = frame_of(py, cached->tstate);
			if (w->frame)
				return 0;
		}
	}
	struct py_search *s = &w->search;
	__builtin_memset(s, 0, sizeof(*s));
	s->interp_head = py->interp_head;
	s->fsbase = fsbase;
	s->interp_next = py->interp_next;
	s->interp_threads_head = py->interp_threads_head;
	s->tstate_next = py->tstate_next;
	s->tstate_thread_id = py->tstate_thread_id;
	s->tid = tid;
	s->native_tid = py->native_tid;
	fs_rt_count(PY_CNT_THREAD_SEARCHES);
	return 1;
}

/* The search is over (found, not there, or out of steps): remember its answer. */
static __always_inline void finish_search(struct fs_unwind_state *st, struct py_walk *w)
{
	struct py_search *s = &w->search;
	if (s->failed) {
		fs_rt_count(PY_CNT_ERR_READ);
		return;
	}
	__u32 tid = st->tid;
	struct py_thread v = { .tstate = s->found, .fsbase = s->fsbase, .ktime_ns = bpf_ktime_get_ns() };
	bpf_map_update_elem(&py_threads, &tid, &v, BPF_ANY);
	if (s->found == 0) {
		fs_rt_count(PY_CNT_ERR_NO_THREAD);
		return;
	}
	w->frame = frame_of(&w->proc, s->found);
}

/* 3.6-3.10: when the eval-loop call the walk met is in its entry or exit window, the thread
 * state's frame is its caller's: that call gets an empty segment (it stays a native frame),
 * so that each Python frame is spliced at its own call rather than one call closer to the
 * leaf. */
static __always_inline void skip_unbound_call(struct fs_unwind_state *st, struct py_walk *w)
{
	struct py_proc *py = &w->proc;
	__u64 off = st->pc - py->eval_base;
	int unbound = 0;
#pragma unroll
	for (int i = 0; i < PY_MAX_UNBOUND; i++)
		unbound |= off >= py->unbound_start[i] && off < py->unbound_end[i];
	if (unbound && !fs_queue_end_segment(st))
		fs_rt_count(PY_CNT_ERR_QUEUE_FULL);
}

FS_RUNTIME_PROGRAM(fs_rt_python)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	if (!st || !e)
		return 0;
	struct py_walk *w = walk_of(st);
	if (fs_fresh_start(st)) {
		fs_queue_begin(st);
		__u32 pid = st->pid;
		struct py_proc *proc = bpf_map_lookup_elem(&py_procs, &pid);
		if (!proc) {
			fs_rt_count(PY_CNT_ERR_NO_PROCESS);
			goto done;
		}
		w->proc = *proc;
		w->phase = start_walk(st, w) ? PY_PHASE_SEARCH : PY_PHASE_QUEUE;
		w->rounds = 0;
		if (w->phase == PY_PHASE_QUEUE && w->frame)
			skip_unbound_call(st, w);
	}
	if (w->phase == PY_PHASE_SEARCH) {
		FS_LOOP(PY_SEARCH_CHUNK, search_step, NULL);
		w->rounds++;
		if (!w->search.done && w->rounds < PY_SEARCH_STEPS / PY_SEARCH_CHUNK) {
			fs_continue(ctx, st);
			/* No tail call left: the thread's state stays unknown for this sample. */
			goto done;
		}
		finish_search(st, w);
		w->phase = PY_PHASE_QUEUE;
		w->rounds = 0;
		if (w->frame)
			skip_unbound_call(st, w);
	}
	if (w->frame) {
		FS_LOOP(PY_QUEUE_CHUNK, queue_step, NULL);
		w->rounds++;
		if (w->frame && w->rounds < FS_QUEUE_FRAMES / PY_QUEUE_CHUNK)
			fs_continue(ctx, st); /* returns only when out of tail calls */
	}
done:
	fs_queue_commit(st);
	return fs_handback(ctx, st, e);
}
