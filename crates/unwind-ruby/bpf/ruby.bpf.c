// SPDX-License-Identifier: GPL-2.0-only
/*
 * The CRuby walker: a splice runtime (see ferroscope/runtime.h). The native unwinder calls it
 * the first time a sample's walk meets rb_vm_exec (the plug-in registers its range with
 * FS_MAPPING_SPLICE), or YJIT's code (takeover ranges, FS_MAPPING_FRAME_POINTER). It finds the
 * thread's execution context (thread-local ruby_current_ec, through the thread's DTV or at a
 * fixed offset from the thread pointer; a global before 3.0), queues the thread's control
 * frames from the current one, one segment per C-level call of the VM (rb_vm_exec), ending each
 * segment at the frame that call started with (VM_FRAME_FLAG_FINISH), and hands back; the
 * native unwinder splices each segment in place of the rb_vm_exec frame it belongs to.
 *
 * A YJIT frame on the native stack runs control frames that are already queued (YJIT keeps
 * them); which ones cannot be told from the frames (after a side exit, frames entered by JIT
 * code go on in the interpreter), so JIT ranges are not splice ranges: the program, tail-called
 * for them as a takeover runtime, prepares the queue if it is not yet, and declines the frame,
 * which the native unwinder then unwinds with the frame pointer YJIT keeps.
 *
 * Queued frames (enum rb_frame_kind in the payload's low 2 bits):
 * - an iseq frame: addr = the rb_iseq_t; payload bits 2..23 = (pc >> 3) & 0x3fffff (the
 *   instruction, modulo 32 MiB of code: userspace subtracts the iseq's iseq_encoded), bits
 *   24..55 = (me_cref >> 3) & 0xffffffff (the frame's method entry or cref, from its local env;
 *   userspace rebuilds the pointer and checks it against the iseq).
 * - a C function frame: addr = the method entry; payload bits 2..55 = its definition pointer
 *   >> 3 (the identity check of a cached entry).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ferroscope/runtime.h"

char LICENSE[] SEC("license") = "GPL";

/* How a thread's execution context is found (rb_proc.ec_kind). */
enum rb_ec_kind {
	/* 2.7: the global ruby_current_execution_context_ptr (the thread holding the GVL; the
	 * walker checks that it is the sampled thread). */
	RB_EC_GLOBAL = 0,
	/* The thread-local ruby_current_ec at thread pointer + tls_offset (a static build). */
	RB_EC_TLS_STATIC = 1,
	/* The thread-local ruby_current_ec of a shared libruby: module tls_module of the thread's
	 * DTV (glibc), + tls_offset. */
	RB_EC_TLS_DTV = 2,
};

/* Kinds of queued frames (the payload's low 2 bits). */
enum rb_frame_kind {
	RB_FRAME_ISEQ = 0,
	RB_FRAME_CFUNC = 1,
};

/* One Ruby version's offsets and where a process keeps its execution contexts: the value of
 * rb_procs. */
struct rb_proc {
	/* RB_EC_GLOBAL: address of the global. */
	__u64 ec_global;
	/* RB_EC_TLS_*: offset of ruby_current_ec from the thread pointer or in its module's block. */
	__s64 tls_offset;
	/* RB_EC_TLS_DTV: the module ID of libruby's TLS block. */
	__u32 tls_module;
	__u8 ec_kind;      /* enum rb_ec_kind */
	__u8 reserved;
	__u16 cfp_size;    /* sizeof(rb_control_frame_t) */
	__u16 ec_vm_stack; /* rb_execution_context_t: vm_stack, vm_stack_size (the next word), cfp */
	__u16 ec_cfp;
	__u16 ec_thread;   /* thread_ptr (RB_EC_GLOBAL's check) */
	__u16 thread_id;   /* rb_thread_t.thread_id, a pthread_t (RB_EC_GLOBAL's check) */
	__u16 cfp_pc;
	__u16 cfp_iseq;
	__u16 cfp_ep;
	__u16 cme_def;     /* rb_callable_method_entry_t.def */
	/* How a YJIT frame is unwound: 0 with the frame pointer (3.2+); else its return address
	 * is at sp + jit_cfa - 8 and its caller's sp is sp + jit_cfa (3.1 pushes three registers
	 * and keeps no frame pointer). */
	__u16 jit_cfa;
	__u16 reserved2[3];
};

_Static_assert(sizeof(struct rb_proc) == 48, "rb_proc layout changed: update src/ebpf.rs");

/* The plug-in's counters (fs_rt_counters); names in src/ebpf.rs, in this order. */
enum rb_counter {
	/* A sampled process with a Ruby range but no rb_procs entry. */
	RB_CNT_ERR_NO_PROCESS = 0,
	/* The sampled thread has no execution context (not a Ruby thread). */
	RB_CNT_ERR_NO_CONTEXT = 1,
	/* Reading the context or a control frame failed. */
	RB_CNT_ERR_READ = 2,
	/* The queue was full before the outermost control frame. */
	RB_CNT_ERR_QUEUE_FULL = 3,
	/* 2.7: the context is another thread's (the sampled one does not hold the GVL). */
	RB_CNT_ERR_OTHER_THREAD = 4,
	/* YJIT frames handed back to the native unwinder (frame pointer). */
	RB_CNT_JIT_FRAMES = 5,
	RB_CNT_MAX = 6,
};

FS_RUNTIME_COUNTERS(RB_CNT_MAX)

/* Never read: they make clang emit BTF for the types the layout test checks. */
struct rb_proc *const volatile rb_abi_proc = 0;
const volatile enum rb_counter rb_abi_counter = RB_CNT_MAX;
const volatile enum rb_ec_kind rb_abi_ec_kind = RB_EC_TLS_DTV;
const volatile enum rb_frame_kind rb_abi_frame_kind = RB_FRAME_CFUNC;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* sized by the loader */
	__type(key, __u32);
	__type(value, struct rb_proc);
} rb_procs SEC(".maps");

/* Control frames are at most this long (3.1 and 3.2: 64 bytes). */
#define RB_CFP_READ 64

struct rb_buf {
	__u8 b[RB_CFP_READ];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rb_buf);
} rb_scratch SEC(".maps");

/* Frame flags (the env's flags word, ep[0]); the same from 2.7 to 3.4. */
#define RB_FRAME_MAGIC_MASK 0x7fff0001
#define RB_FRAME_MAGIC_CFUNC 0x55550001
#define RB_FRAME_MAGIC_IFUNC 0x66660001
#define RB_FRAME_MAGIC_DUMMY 0x79990001
#define RB_FRAME_FLAG_FINISH 0x0020
#define RB_FRAME_FLAG_BMETHOD 0x0040
#define RB_FRAME_FLAG_CFRAME 0x0080
#define RB_ENV_FLAG_LOCAL 0x0002
/* Most envs followed from a block's to its method's. */
#define RB_MAX_HOPS 16
/* glibc's marker of a DTV slot without a block. */
#define RB_TLS_UNALLOCATED ((__u64)-1)

/* What a step does next. */
enum rb_phase {
	RB_PHASE_FRAME = 0, /* read the next control frame and its env */
	RB_PHASE_HOP = 1,   /* follow a block's env to its method's */
	RB_PHASE_DEF = 2,   /* read a C function's method definition */
	RB_PHASE_DONE = 3,
};

/* The walk's state, in the unwinder state's scratch area (a map value, never the BPF stack:
 * see FS_LOOP). */
struct rb_walk {
	struct rb_proc proc;
	__u64 cfp;   /* the control frame being queued */
	__u64 end;   /* one past the outermost control frame */
	__u64 ep_at; /* the env being read (its me_cref word, ep - 2) */
	__u64 iseq;
	__u64 pc;
	__u64 me;
	__u32 flags; /* the frame's own env flags */
	__u32 hops;
	__u32 phase; /* enum rb_phase */
	__u32 rounds;
	__u32 jit;   /* the program was called for a JIT range: decline it when done */
	__u32 reserved;
};

_Static_assert(sizeof(struct rb_walk) <= FS_RT_SCRATCH_BYTES, "rb_walk does not fit the scratch area");

/* Steps per run of the program: one bpf_loop call covers every frame the queue can take; the
 * legacy build walks fewer per run and runs again through fs_continue(). */
#define RB_STEPS (FS_QUEUE_FRAMES * 3)
#if FS_LEGACY
#define RB_CHUNK 24
#else
#define RB_CHUNK RB_STEPS
#endif

static __always_inline struct rb_walk *walk_of(struct fs_unwind_state *st)
{
	return (struct rb_walk *)st->scratch;
}

static __always_inline __u64 buf_u64(const struct rb_buf *buf, __u32 off)
{
	__u64 v = 0;
	if (off <= RB_CFP_READ - 8)
		__builtin_memcpy(&v, &buf->b[off], 8);
	return v;
}

/* Queues the frame in w (iseq, pc, me, flags) and ends its segment when the frame is the
 * first of a C-level call of the VM. 0 when the queue is full. */
static __always_inline int queue_iseq(struct fs_unwind_state *st, struct rb_walk *w)
{
	__u64 payload = RB_FRAME_ISEQ | (((w->pc >> 3) & 0x3fffff) << 2) |
			(((w->me >> 3) & 0xffffffffULL) << 24);
	int ok = fs_queue_frame(st, w->iseq, payload, 0);
	if (ok && (w->flags & RB_FRAME_FLAG_FINISH) && !(w->flags & RB_FRAME_FLAG_CFRAME))
		ok = fs_queue_end_segment(st);
	return ok;
}

/* One step: at most two reads, one way out (a straight line for 5.10's JIT). Returns 1 when
 * the walk is over. */
FS_CALLBACK walk_step(__u64 index, void *arg)
{
	struct fs_unwind_state *st = fs_state();
	__u32 zero = 0;
	struct rb_buf *buf = bpf_map_lookup_elem(&rb_scratch, &zero);
	if (!st || !buf)
		return 1;
	struct rb_walk *w = walk_of(st);
	struct rb_proc *p = &w->proc;
	__u64 env[3] = {}; /* me_cref, specval, flags */
	int queued = 1;
	__u32 phase = w->phase;

	if (phase == RB_PHASE_FRAME) {
		__u32 len = p->cfp_size;
		if (len > RB_CFP_READ)
			len = RB_CFP_READ;
		if (w->cfp >= w->end || len < 8) {
			phase = RB_PHASE_DONE;
		} else if (bpf_probe_read_user(buf->b, len, (void *)w->cfp) ||
			   bpf_probe_read_user(env, sizeof(env),
					       (void *)(buf_u64(buf, p->cfp_ep) - 16))) {
			fs_rt_count(RB_CNT_ERR_READ);
			phase = RB_PHASE_DONE;
		} else {
			__u32 flags = (__u32)env[2];
			__u32 magic = flags & RB_FRAME_MAGIC_MASK;
			w->iseq = buf_u64(buf, p->cfp_iseq);
			w->pc = buf_u64(buf, p->cfp_pc);
			w->flags = flags;
			w->me = env[0];
			w->hops = 0;
			if (magic == RB_FRAME_MAGIC_CFUNC) {
				phase = RB_PHASE_DEF;
			} else if (magic == RB_FRAME_MAGIC_DUMMY || magic == RB_FRAME_MAGIC_IFUNC ||
				   w->iseq == 0) {
				/* Not a Ruby frame (the thread's base, a C block): skipped. */
				w->cfp += len;
			} else if ((flags & (RB_ENV_FLAG_LOCAL | RB_FRAME_FLAG_BMETHOD)) == 0) {
				/* A block: its method entry is in its method's env. */
				w->ep_at = (env[1] & ~3ULL) - 16;
				phase = RB_PHASE_HOP;
			} else {
				queued = queue_iseq(st, w);
				w->cfp += len;
			}
		}
	} else if (phase == RB_PHASE_HOP) {
		if (bpf_probe_read_user(env, sizeof(env), (void *)w->ep_at)) {
			/* The env is gone: queue the frame without its method. */
			w->me = 0;
			env[2] = RB_ENV_FLAG_LOCAL;
		} else {
			w->me = env[0];
		}
		w->hops++;
		if ((env[2] & RB_ENV_FLAG_LOCAL) || w->hops >= RB_MAX_HOPS) {
			queued = queue_iseq(st, w);
			w->cfp += p->cfp_size;
			phase = RB_PHASE_FRAME;
		} else {
			w->ep_at = (env[1] & ~3ULL) - 16;
		}
	} else if (phase == RB_PHASE_DEF) {
		__u64 def = 0;
		bpf_probe_read_user(&def, sizeof(def), (void *)(w->me + p->cme_def));
		queued = fs_queue_frame(st, w->me, RB_FRAME_CFUNC | ((def >> 3) << 2), 0);
		w->cfp += p->cfp_size;
		phase = RB_PHASE_FRAME;
	}
	if (!queued) {
		fs_rt_count(RB_CNT_ERR_QUEUE_FULL);
		phase = RB_PHASE_DONE;
	}
	w->phase = phase;
	return phase == RB_PHASE_DONE;
}

/* The sampled thread's execution context (0 when none). */
static __always_inline __u64 find_ec(struct fs_unwind_state *st, struct rb_proc *p)
{
	__u64 tp = fs_thread_pointer(st);
	if (p->ec_kind == RB_EC_GLOBAL) {
		__u64 ec = fs_read_u64(p->ec_global);
		__u64 th = ec ? fs_read_u64(ec + p->ec_thread) : 0;
		if (th && fs_read_u64(th + p->thread_id) != tp) {
			fs_rt_count(RB_CNT_ERR_OTHER_THREAD);
			return 0;
		}
		return ec;
	}
	if (tp == 0)
		return 0;
	if (p->ec_kind == RB_EC_TLS_STATIC)
		return fs_read_u64(tp + p->tls_offset);
	/* glibc: the TCB's second word is the DTV; slot m is {block, to_free}. */
	__u64 dtv = fs_read_u64(tp + 8);
	__u64 block = dtv ? fs_read_u64(dtv + (__u64)p->tls_module * 16) : 0;
	if (block == 0 || block == RB_TLS_UNALLOCATED)
		return 0;
	return fs_read_u64(block + p->tls_offset);
}

/* Sets the walk up from the thread's execution context; 0 when there is nothing to walk. */
static __always_inline int start_walk(struct fs_unwind_state *st, struct rb_walk *w)
{
	struct rb_proc *p = &w->proc;
	__u64 ec = find_ec(st, p);
	if (ec == 0) {
		fs_rt_count(RB_CNT_ERR_NO_CONTEXT);
		return 0;
	}
	__u64 words[3] = {}; /* vm_stack, vm_stack_size (in VALUEs), cfp */
	if (bpf_probe_read_user(words, 16, (void *)(ec + p->ec_vm_stack)) ||
	    bpf_probe_read_user(&words[2], 8, (void *)(ec + p->ec_cfp))) {
		fs_rt_count(RB_CNT_ERR_READ);
		return 0;
	}
	w->cfp = words[2];
	w->end = words[0] + words[1] * 8;
	if (w->cfp < words[0] || w->cfp >= w->end)
		return 0;
	w->phase = RB_PHASE_FRAME;
	return 1;
}

/* The YJIT frame at st->pc: hidden, its caller's registers computed here (3.1), or left to the
 * native unwinder's frame-pointer walk (the range has FS_MAPPING_FRAME_POINTER). */
static __always_inline void unwind_jit(struct fs_unwind_state *st, struct rb_walk *w)
{
	__u32 pid = st->pid;
	struct rb_proc *proc = bpf_map_lookup_elem(&rb_procs, &pid);
	__u64 cfa = proc ? proc->jit_cfa : 0;
	fs_rt_count(RB_CNT_JIT_FRAMES);
	if (cfa == 0) {
		fs_decline(st);
		return;
	}
	__u64 ra = fs_read_u64(st->sp + cfa - 8);
	if (ra == 0) {
		fs_fail(st, FS_UNWIND_ERR_READ_FAILED);
		return;
	}
	st->pc = ra;
	st->sp += cfa;
	st->exact = 0;
}

FS_RUNTIME_PROGRAM(fs_rt_ruby)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	if (!st || !e)
		return 0;
	struct rb_walk *w = walk_of(st);
	__u32 slot = fs_rt_slot & (FS_MAX_RUNTIMES - 1);
	if (fs_fresh_start(st)) {
		w->jit = !(st->map_flags & FS_MAPPING_SPLICE);
		w->rounds = 0;
		w->phase = RB_PHASE_DONE;
		if (w->jit && st->rt[slot].state != FS_QUEUE_NONE)
			goto handback; /* queued already (or failed): only the JIT frame is left */
		fs_queue_begin(st);
		__u32 pid = st->pid;
		struct rb_proc *proc = bpf_map_lookup_elem(&rb_procs, &pid);
		if (!proc) {
			fs_rt_count(RB_CNT_ERR_NO_PROCESS);
			goto done;
		}
		w->proc = *proc;
		start_walk(st, w);
	}
	if (w->phase != RB_PHASE_DONE) {
		FS_LOOP(RB_CHUNK, walk_step, NULL);
		w->rounds++;
		if (w->phase != RB_PHASE_DONE && w->rounds < RB_STEPS / RB_CHUNK)
			fs_continue(ctx, st); /* returns only when out of tail calls */
	}
done:
	fs_queue_commit(st);
handback:
	if (w->jit)
		unwind_jit(st, w);
	return fs_handback(ctx, st, e);
}
