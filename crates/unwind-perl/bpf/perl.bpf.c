// SPDX-License-Identifier: GPL-2.0-only
/*
 * The Perl 5 walker: a splice runtime (see ferroscope/runtime.h). The native unwinder calls it
 * the first time a sample's walk meets the runops loop (Perl_runops_standard, a range the
 * plug-in registers with FS_MAPPING_SPLICE). It finds the thread's interpreter, walks its
 * context stack from the innermost sub, eval or require outwards, across nested runlevels
 * (a sort block, a signal handler, a tie or overload method: each runs in a stackinfo of its
 * own, linked to the one it interrupted by si_prev), and queues one frame per sub, format,
 * string eval, require and `do FILE`, then the file-level code of the main program. Each
 * frame carries the statement (COP) it executes: the innermost one PL_curcop, every outer one
 * the statement that made the call (blk_oldcop of the context above it).
 *
 * Segments: each call of the runops loop is one native frame. A new call starts where C code
 * entered Perl code: a sub or string eval whose context has no return op (retop == NULL: call_sv,
 * eval_sv, a sort sub, a MULTICALL block, a signal handler), a sort block (a CXt_NULL context
 * at the bottom of its stackinfo), and the main program (perl_run). The frames from one such
 * entry up to the next one are one segment, spliced in place of that runops frame. When the
 * innermost level is between two calls of its block (C code of sort or of an XS MULTICALL
 * runs, PL_op is NULL), that level has no runops frame: its frames are not queued. PL_op is
 * NULL too while a string eval or require compiles its code; then the innermost context is
 * that eval, with a return op, and its frames are queued as usual.
 *
 * A queued frame is {COP address, kind << 48 | pointer}: the CV of a sub or format, the name SV
 * of a require, the source SV of a string eval, nothing for the main program. Bit 55 marks a
 * string eval or require whose code is being compiled: its statement is PL_compiling, whose
 * line moves as the parser reads on, so the payload holds that line instead of a pointer.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ferroscope/runtime.h"

char LICENSE[] SEC("license") = "GPL";

/* Where a thread finds its interpreter (perl_proc.interp_kind). */
enum perl_interp_kind {
	/* Threaded, libperl in the executable: PL_current_context is a thread-local variable of
	 * the executable, at a fixed offset from the thread pointer (interp_at, signed). */
	PERL_INTERP_TLS = 0,
	/* Threaded, libperl a shared library (or a Perl before 5.36): the interpreter is the
	 * value of the pthread key PL_thr_key (interp_at: the key's address), read from glibc's
	 * struct pthread: thread pointer + tsd_data + 16 * key. */
	PERL_INTERP_TSD = 1,
	/* Several interpreters without threads: PL_curinterp (interp_at: its address). */
	PERL_INTERP_POINTER = 2,
	/* Not threaded: PL_curcop, PL_curstackinfo and PL_op are globals (their addresses are in
	 * curcop, curstackinfo and op). */
	PERL_INTERP_GLOBALS = 3,
};

/* What a queued frame is (bits 48 to 54 of its payload). */
enum perl_frame_kind {
	PERL_FRAME_SUB = 1,     /* pointer: the CV */
	PERL_FRAME_FORMAT = 2,  /* pointer: the format's CV */
	PERL_FRAME_EVAL = 3,    /* pointer: the source SV (cur_text) */
	PERL_FRAME_REQUIRE = 4, /* pointer: the name SV (old_namesv) */
	PERL_FRAME_DOFILE = 5,  /* pointer: the name SV */
	PERL_FRAME_MAIN = 6,    /* the main program's file-level code; no pointer */
};

/* One Perl version's offsets (facts from its headers, checked by the crate's tests against
 * the headers of every installed Perl) and where a process keeps its interpreter: the value
 * of perl_procs. Offsets are bytes; PERL_NO_FIELD when the version has no such field. */
struct perl_proc {
	__u64 interp_at;    /* see enum perl_interp_kind */
	__u64 curcop;       /* offset of PL_curcop in the interpreter (GLOBALS: its address) */
	__u64 curstackinfo; /* PL_curstackinfo, likewise */
	__u64 op;           /* PL_op, likewise */
	__u16 tsd_data;     /* TSD: the value of key 0 from the thread pointer (glibc: 0x318) */
	__u16 si_cxstack;
	__u16 si_prev;
	__u16 si_cxix;
	__u16 si_cxsubix; /* 5.32+: the innermost sub/eval/format; PERL_NO_FIELD: read every context */
	__u16 si_type;
	__u16 cx_size;     /* sizeof(PERL_CONTEXT) */
	__u16 cx_read_len; /* bytes read per context, covering every field below */
	__u16 cx_oldcop;
	__u16 cx_retop;
	__u16 cx_subix; /* old_cxsubix: the next sub/eval/format outwards (5.32+) */
	__u16 cx_cv;
	__u16 cx_namesv;
	__u16 cx_text;
	__u16 op_require; /* OP_REQUIRE and OP_DOFILE: what pushed an eval context that is not */
	__u16 op_dofile;  /* a string eval (blk_u16 >> 7) */
	__u16 cop_line;   /* COP: cop_line (read when sampled for a statement being compiled) */
	__u8 interp_kind; /* enum perl_interp_kind */
	__u8 reserved[5];
};

_Static_assert(sizeof(struct perl_proc) == 72, "perl_proc layout changed: update src/ebpf.rs");

/* The plug-in's counters (fs_rt_counters); names in src/ebpf.rs, in this order. */
enum perl_counter {
	/* A sampled process with a splice range but no perl_procs entry. */
	PERL_CNT_ERR_NO_PROCESS = 0,
	/* The sampled thread has no interpreter (not a Perl thread). */
	PERL_CNT_ERR_NO_INTERPRETER = 1,
	/* Reading the interpreter, a stackinfo or a context failed. */
	PERL_CNT_ERR_READ = 2,
	/* The queue was full before the outermost Perl frame. */
	PERL_CNT_ERR_QUEUE_FULL = 3,
	/* The context stack was not consistent (a sub index that does not go down). */
	PERL_CNT_ERR_BAD_CONTEXT = 4,
	/* The walk took more steps than allowed. */
	PERL_CNT_ERR_TOO_DEEP = 5,
	/* The innermost level was between two calls of a sort or MULTICALL block (PL_op NULL). */
	PERL_CNT_IDLE_LEVELS = 6,
	/* Nested runlevels crossed (stackinfos after the first). */
	PERL_CNT_RUNLEVELS = 7,
	PERL_CNT_MAX = 8,
};

FS_RUNTIME_COUNTERS(PERL_CNT_MAX)

/* Never read: they make clang emit BTF for the types the layout test checks. */
struct perl_proc *const volatile perl_abi_proc = 0;
const volatile enum perl_counter perl_abi_counter = PERL_CNT_MAX;
const volatile enum perl_interp_kind perl_abi_interp_kind = PERL_INTERP_GLOBALS;
const volatile enum perl_frame_kind perl_abi_frame_kind = PERL_FRAME_MAIN;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* sized by the loader */
	__type(key, __u32);
	__type(value, struct perl_proc);
} perl_procs SEC(".maps");

/* Longest read of a context or a stackinfo. */
#define PERL_READ 128

struct perl_buf {
	__u8 b[PERL_READ];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct perl_buf);
} perl_scratch SEC(".maps");

#define PERL_NO_FIELD 0xffff
#define PERL_PTR_MASK ((1ULL << 48) - 1)
#define PERL_KIND_SHIFT 48
#define PERL_COMPILING_BIT (1ULL << 55) /* the top bit of the kind's byte */
/* glibc keeps the values of keys 0 to 31 in struct pthread itself. */
#define PERL_TSD_KEYS 32
#define PERL_TSD_STRIDE 16

/* Context types and flags (cop.h; the same in 5.28 to 5.42). */
#define PERL_CXTYPEMASK 0xf
#define PERL_CXt_NULL 0
#define PERL_CXt_SUB 9
#define PERL_CXt_FORMAT 10
#define PERL_CXt_EVAL 11
#define PERL_CXp_SUB_RE_FAKE 0x80 /* a sub context faked for (?{ }): its fields are stale */
#define PERL_CXp_REAL 0x20        /* a string eval */
#define PERL_CXp_EVALBLOCK 0x40   /* eval { } (CXp_TRYBLOCK before 5.34) */
#define PERL_CXp_TRY 0x80         /* try { } (5.34+) */
#define PERL_SI_MAIN 1            /* PERLSI_MAIN */

/* Steps of the walk (one context, or the bottom of one stackinfo, each). */
#define PERL_MAX_STEPS 512
#if FS_LEGACY
#define PERL_CHUNK 32
#else
#define PERL_CHUNK PERL_MAX_STEPS
#endif

/* The walk's state, in the unwinder state's scratch area: a map value, never the BPF stack
 * (see FS_LOOP). */
struct perl_walk {
	struct perl_proc proc;
	__u64 si;      /* the stackinfo being walked (0: the walk is over) */
	__u64 cxstack; /* its si_cxstack */
	__u64 si_prev; /* its si_prev: the runlevel it interrupted */
	__u64 cop;     /* the statement the next frame executes */
	__s32 ix;      /* the next context to read (< 0: the stackinfo's bottom is next) */
	__s32 cxix;    /* the stackinfo's innermost context */
	__s32 si_type;
	__u32 skip;    /* the innermost level has no runops frame: drop its frames */
	__u32 pending; /* a context entered from C was queued: its segment ends before the next
	                * frame, or at the bottom of its runlevel */
	__u32 steps; /* steps taken */
	__u32 rounds;
	__u32 compiling; /* the innermost frame is an eval or require being compiled */
	__u32 line;      /* then: the line PL_compiling is at */
};

_Static_assert(sizeof(struct perl_walk) <= FS_RT_SCRATCH_BYTES, "perl_walk does not fit the scratch area");

static __always_inline struct perl_walk *walk_of(struct fs_unwind_state *st)
{
	return (struct perl_walk *)st->scratch;
}

static __always_inline __u64 buf_u64(const struct perl_buf *buf, __u32 off)
{
	__u64 v = 0;
	if (off <= PERL_READ - 8)
		__builtin_memcpy(&v, &buf->b[off], 8);
	return v;
}

static __always_inline __u32 buf_u32(const struct perl_buf *buf, __u32 off)
{
	__u32 v = 0;
	if (off <= PERL_READ - 4)
		__builtin_memcpy(&v, &buf->b[off], 4);
	return v;
}

static __always_inline __u16 buf_u16(const struct perl_buf *buf, __u32 off)
{
	__u16 v = 0;
	if (off <= PERL_READ - 2)
		__builtin_memcpy(&v, &buf->b[off], 2);
	return v;
}

/* Ends the segment of one runops call (an empty one when no frame was queued since the
 * last). 0 when the queue is full. */
static __always_inline int end_segment(struct fs_unwind_state *st, struct perl_walk *w)
{
	w->pending = 0;
	if (w->skip) {
		w->skip = 0;
		return 1;
	}
	if (!fs_queue_end_segment(st)) {
		fs_rt_count(PERL_CNT_ERR_QUEUE_FULL);
		return 0;
	}
	return 1;
}

/* Queues one frame for the statement w->cop (unless the level is dropped), after ending the
 * segment of a context entered from C queued before. 0 when the queue is full. */
static __always_inline int emit(struct fs_unwind_state *st, struct perl_walk *w, __u64 kind,
				__u64 ptr)
{
	if (w->pending && !end_segment(st, w))
		return 0;
	if (w->skip)
		return 1;
	/* Address 0 marks an empty segment: a frame without a statement gets 1 (named as such). */
	__u64 cop = w->cop ? w->cop : 1;
	__u64 payload = (kind << PERL_KIND_SHIFT) | (ptr & PERL_PTR_MASK);
	/* PL_compiling is the statement of every compilation: its line is kept now, in place
	 * of the pointer. */
	if (w->compiling)
		payload = (kind << PERL_KIND_SHIFT) | PERL_COMPILING_BIT | w->line;
	w->compiling = 0;
	if (!fs_queue_frame(st, cop, payload, 0)) {
		fs_rt_count(PERL_CNT_ERR_QUEUE_FULL);
		return 0;
	}
	return 1;
}

/* Reads the stackinfo at si and starts walking it. 0 when the read failed. */
static __always_inline int enter_stackinfo(struct perl_walk *w, struct perl_buf *buf, __u64 si)
{
	struct perl_proc *p = &w->proc;
	if (bpf_probe_read_user(buf->b, 48, (void *)si)) {
		fs_rt_count(PERL_CNT_ERR_READ);
		return 0;
	}
	w->si = si;
	w->cxstack = buf_u64(buf, p->si_cxstack);
	w->si_prev = buf_u64(buf, p->si_prev);
	w->cxix = (__s32)buf_u32(buf, p->si_cxix);
	w->si_type = (__s32)buf_u32(buf, p->si_type);
	if (p->si_cxsubix != PERL_NO_FIELD)
		w->ix = (__s32)buf_u32(buf, p->si_cxsubix);
	else
		w->ix = w->cxix;
	if (w->ix > w->cxix)
		w->ix = w->cxix;
	return 1;
}

/* One context: a sub, format, string eval, require or `do FILE` is queued (for the pending
 * statement), the statement that called it becomes the pending one, and a context entered
 * from C (no return op) ends its segment. 0 to stop. */
static __always_inline int context_step(struct fs_unwind_state *st, struct perl_walk *w,
					struct perl_buf *buf)
{
	struct perl_proc *p = &w->proc;
	__u32 len = p->cx_read_len;
	__u64 at = w->cxstack + (__u64)(__u32)w->ix * p->cx_size;
	int chain = p->si_cxsubix != PERL_NO_FIELD;
	int ok = 1;
	if (len == 0 || len >= PERL_READ || bpf_probe_read_user(buf->b, len & (PERL_READ - 1), (void *)at)) {
		fs_rt_count(PERL_CNT_ERR_READ);
		ok = 0;
	}
	__s32 next = -1;
	if (ok) {
		__u8 type = buf->b[0] & PERL_CXTYPEMASK;
		__u8 flags = buf->b[0] & ~PERL_CXTYPEMASK;
		__u64 kind = 0, ptr = 0;
		if ((type == PERL_CXt_SUB || type == PERL_CXt_FORMAT) && !(flags & PERL_CXp_SUB_RE_FAKE)) {
			kind = type == PERL_CXt_SUB ? PERL_FRAME_SUB : PERL_FRAME_FORMAT;
			ptr = buf_u64(buf, p->cx_cv);
		} else if (type == PERL_CXt_EVAL && !(flags & (PERL_CXp_EVALBLOCK | PERL_CXp_TRY))) {
			__u16 op_type = buf_u16(buf, 2) >> 7;
			kind = PERL_FRAME_EVAL;
			if (!(flags & PERL_CXp_REAL) && op_type == p->op_require)
				kind = PERL_FRAME_REQUIRE;
			else if (!(flags & PERL_CXp_REAL) && op_type == p->op_dofile)
				kind = PERL_FRAME_DOFILE;
			ptr = buf_u64(buf, kind == PERL_FRAME_EVAL ? p->cx_text : p->cx_namesv);
		} else if (chain && type != PERL_CXt_EVAL) {
			/* Only subs, formats and evals are chained: the stack changed under us. */
			fs_rt_count(PERL_CNT_ERR_BAD_CONTEXT);
			ok = 0;
		}
		next = chain ? (__s32)buf_u32(buf, p->cx_subix) : w->ix - 1;
		if (ok && kind) {
			ok = emit(st, w, kind, ptr);
			w->cop = buf_u64(buf, p->cx_oldcop);
			/* Entered from C (no return op): its runops call ends below it, unless it
			 * was the last op of a sort block (the block's runops call then ends at
			 * the bottom of the runlevel, see bottom_step). */
			if (buf_u64(buf, p->cx_retop) == 0)
				w->pending = 1;
		}
		if (ok && next >= w->ix) {
			fs_rt_count(PERL_CNT_ERR_BAD_CONTEXT);
			ok = 0;
		}
	}
	w->ix = next;
	return ok;
}

/* The bottom of a stackinfo: the main program's frame at the bottom of the main runlevel,
 * else the end of a sort block's segment, then the runlevel this one interrupted. 0 to
 * stop. */
static __always_inline int bottom_step(struct fs_unwind_state *st, struct perl_walk *w,
				       struct perl_buf *buf)
{
	struct perl_proc *p = &w->proc;
	__u32 len = p->cx_read_len;
	int ok = 1;
	int entered_from_c = 0, own_runops = 0;
	if (w->cxix >= 0) {
		if (len == 0 || len >= PERL_READ ||
		    bpf_probe_read_user(buf->b, len & (PERL_READ - 1), (void *)w->cxstack)) {
			fs_rt_count(PERL_CNT_ERR_READ);
			ok = 0;
		}
		__u8 type = buf->b[0] & PERL_CXTYPEMASK;
		__u8 flags = buf->b[0] & ~PERL_CXTYPEMASK;
		int fake = (type == PERL_CXt_SUB) && (flags & PERL_CXp_SUB_RE_FAKE);
		/* call_sv, eval_sv and friends: their runops call is the segment already ended. */
		entered_from_c = !fake && buf_u64(buf, p->cx_retop) == 0 &&
				 (type == PERL_CXt_SUB || type == PERL_CXt_FORMAT || type == PERL_CXt_EVAL);
		/* A sort block, or a regex code block: a runops call of its own. */
		own_runops = type == PERL_CXt_NULL || fake;
	}
	int last = w->si_type == PERL_SI_MAIN || w->si_prev == 0;
	if (ok && last && w->si_type == PERL_SI_MAIN && !entered_from_c) {
		/* perl_run's runops call: the main program. */
		ok = emit(st, w, PERL_FRAME_MAIN, 0);
		if (ok)
			ok = end_segment(st, w);
	} else if (ok && (w->pending || (!last && own_runops))) {
		/* The runops call of the context entered from C, or of the sort block, ends
		 * here: one call when a sort block's last op called the sub. */
		ok = end_segment(st, w);
	}
	if (ok && !last) {
		fs_rt_count(PERL_CNT_RUNLEVELS);
		ok = enter_stackinfo(w, buf, w->si_prev);
	}
	return ok && !last;
}

/* One step of the walk. Returns 1 when it is over. */
FS_CALLBACK walk_step(__u64 index, void *arg)
{
	struct fs_unwind_state *st = fs_state();
	__u32 zero = 0;
	struct perl_buf *buf = bpf_map_lookup_elem(&perl_scratch, &zero);
	long over = 1;
	if (st && buf) {
		struct perl_walk *w = walk_of(st);
		int go_on = 0;
		if (w->si != 0) {
			if (w->ix >= 0)
				go_on = context_step(st, w, buf);
			else
				go_on = bottom_step(st, w, buf);
			w->steps++;
		}
		if (!go_on)
			w->si = 0;
		over = w->si == 0;
	}
	return over;
}

/* The thread's interpreter (0 when it has none or it cannot be read). */
static __always_inline __u64 interpreter(struct fs_unwind_state *st, struct perl_proc *p)
{
	__u64 at = 0;
	switch (p->interp_kind) {
	case PERL_INTERP_TLS:
		at = fs_thread_pointer(st) + p->interp_at;
		break;
	case PERL_INTERP_TSD: {
		__u32 key = 0;
		if (bpf_probe_read_user(&key, sizeof(key), (void *)p->interp_at) || key >= PERL_TSD_KEYS)
			return 0;
		at = fs_thread_pointer(st) + p->tsd_data + (__u64)key * PERL_TSD_STRIDE;
		break;
	}
	case PERL_INTERP_POINTER:
		at = p->interp_at;
		break;
	default:
		return 0;
	}
	return fs_read_u64(at);
}

/* Whether the innermost context of the runlevel being entered is a string eval or require
 * that Perl code started (a return op): with PL_op NULL, its code is being compiled
 * (doeval_compile clears PL_op) inside the runops call that ran the entereval or require. */
static __always_inline int compiling(struct perl_walk *w, struct perl_buf *buf)
{
	struct perl_proc *p = &w->proc;
	__u32 len = p->cx_read_len;
	if (w->cxix < 0 || len == 0 || len >= PERL_READ)
		return 0;
	__u64 at = w->cxstack + (__u64)(__u32)w->cxix * p->cx_size;
	if (bpf_probe_read_user(buf->b, len & (PERL_READ - 1), (void *)at))
		return 0;
	__u8 type = buf->b[0] & PERL_CXTYPEMASK;
	__u8 flags = buf->b[0] & ~PERL_CXTYPEMASK;
	return type == PERL_CXt_EVAL && !(flags & (PERL_CXp_EVALBLOCK | PERL_CXp_TRY)) &&
	       buf_u64(buf, p->cx_retop) != 0;
}

/* Starts the walk at the thread's current statement and runlevel. 0 when there is nothing to
 * walk. */
static __always_inline int start_walk(struct fs_unwind_state *st, struct perl_walk *w)
{
	struct perl_proc *p = &w->proc;
	__u64 base = 0;
	if (p->interp_kind != PERL_INTERP_GLOBALS) {
		base = interpreter(st, p);
		if (base == 0) {
			fs_rt_count(PERL_CNT_ERR_NO_INTERPRETER);
			return 0;
		}
	}
	__u64 op = 0, si = 0, cop = 0;
	if (bpf_probe_read_user(&op, sizeof(op), (void *)(base + p->op)) ||
	    bpf_probe_read_user(&si, sizeof(si), (void *)(base + p->curstackinfo)) ||
	    bpf_probe_read_user(&cop, sizeof(cop), (void *)(base + p->curcop)) || si == 0) {
		fs_rt_count(PERL_CNT_ERR_READ);
		return 0;
	}
	__u32 zero = 0;
	struct perl_buf *buf = bpf_map_lookup_elem(&perl_scratch, &zero);
	if (!buf)
		return 0;
	w->cop = cop;
	w->steps = 0;
	w->rounds = 0;
	w->skip = 0;
	w->pending = 0;
	w->compiling = 0;
	if (!enter_stackinfo(w, buf, si))
		return 0;
	if (op == 0) {
		/* PL_op is NULL while a string eval or require is compiled, and between two
		 * calls of a sort or MULTICALL block, when no runops call runs the innermost
		 * level: its frames belong to no native frame. */
		w->compiling = compiling(w, buf);
		w->skip = !w->compiling;
		w->line = 0;
		if (w->compiling)
			bpf_probe_read_user(&w->line, sizeof(w->line), (void *)(cop + p->cop_line));
		if (w->skip)
			fs_rt_count(PERL_CNT_IDLE_LEVELS);
	}
	return 1;
}

FS_RUNTIME_PROGRAM(fs_rt_perl)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	if (!st || !e)
		return 0;
	struct perl_walk *w = walk_of(st);
	if (fs_fresh_start(st)) {
		fs_queue_begin(st);
		__u32 pid = st->pid;
		struct perl_proc *proc = bpf_map_lookup_elem(&perl_procs, &pid);
		if (!proc) {
			fs_rt_count(PERL_CNT_ERR_NO_PROCESS);
			goto done;
		}
		w->proc = *proc;
		w->si = 0;
		if (!start_walk(st, w))
			goto done;
	}
	if (w->si) {
		FS_LOOP(PERL_CHUNK, walk_step, NULL);
		w->rounds++;
		if (w->si && w->steps >= PERL_MAX_STEPS) {
			fs_rt_count(PERL_CNT_ERR_TOO_DEEP);
		} else if (w->si) {
			fs_continue(ctx, st); /* returns only when out of tail calls */
		}
	}
done:
	fs_queue_commit(st);
	return fs_handback(ctx, st, e);
}
