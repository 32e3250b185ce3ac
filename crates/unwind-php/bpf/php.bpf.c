// SPDX-License-Identifier: GPL-2.0-only
/*
 * The PHP walker (Zend Engine 7.3-8.5, NTS builds): a splice runtime (see ferroscope/runtime.h)
 * whose plug-in also owns the opcache JIT buffer as a takeover range.
 *
 * Splice: the native unwinder calls it the first time a sample's walk meets the VM loop
 * (execute_ex). It reads executor_globals.current_execute_data and queues the frames from the
 * one executing outwards, one segment per call of execute_ex: a user frame whose call is
 * ZEND_CALL_TOP was pushed by C code (zend_execute, zend_call_function, a generator's
 * resumption) that started a new execute_ex for it, so it is the last frame of its segment.
 * Frames of internal functions (C) are queued in the segment of the loop that called them;
 * their own work shows as the native frames above it.
 *
 * Takeover: a PC in the JIT buffer. In the hybrid VM (every GCC build) JIT code runs on
 * execute_ex's stack frame, entered and left by jumps, so the walk goes on as if the PC were
 * in execute_ex's body (php_proc.jit_resume): the native unwinder then meets the VM loop,
 * splices the PHP frames in its place and unwinds it to its caller.
 *
 * A queued frame is the zend_function's address, with the current line (opline->lineno), a
 * fingerprint of the function (bits 3-26 of op_array.opcodes, so that userspace never names
 * a reused address with an old function) and the call's TOP and CODE flags as payload.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ferroscope/runtime.h"

char LICENSE[] SEC("license") = "GPL";

/* Offsets into one PHP version's structures and where a process keeps its executing frame:
 * the value of php_procs (offsets in bytes). */
struct php_proc {
	/* Address of executor_globals.current_execute_data. */
	__u64 current_execute_data;
	/* An address in execute_ex's body the walk resumes from when the PC is in JIT code
	 * (0: unknown; JIT frames are then left to the native unwinder). */
	__u64 jit_resume;
	__u16 ex_opline;        /* zend_execute_data.opline */
	__u16 ex_func;          /* zend_execute_data.func */
	__u16 ex_call_info;     /* zend_execute_data.This.u1.type_info */
	__u16 ex_prev;          /* zend_execute_data.prev_execute_data */
	__u16 ex_read_len;      /* bytes read per zend_execute_data */
	__u16 func_fingerprint; /* zend_op_array.opcodes */
	__u16 func_read_len;    /* bytes read per zend_function (type and fingerprint) */
	__u16 op_lineno;        /* zend_op.lineno */
	__u16 func_last;        /* zend_op_array.last (a u32: how many instructions) */
	__u16 op_size;          /* sizeof(zend_op) */
	__u16 reserved[2];
};

_Static_assert(sizeof(struct php_proc) == 40, "php_proc layout changed: update src/ebpf.rs");

/* The plug-in's counters (fs_rt_counters); names in src/ebpf.rs, in this order. */
enum php_counter {
	/* A sampled process with a PHP range but no php_procs entry. */
	PHP_CNT_ERR_NO_PROCESS = 0,
	/* The VM loop runs but no frame is executing (current_execute_data is NULL). */
	PHP_CNT_ERR_NO_FRAME = 1,
	/* Reading a frame or a function failed. */
	PHP_CNT_ERR_READ_FAILED = 2,
	/* The queue was full before the outermost frame. */
	PHP_CNT_ERR_QUEUE_FULL = 3,
	/* PCs in JIT code resumed from execute_ex's body. */
	PHP_CNT_JIT_FRAMES = 4,
	/* A PC in the JIT buffer of a process whose resume address is unknown. */
	PHP_CNT_ERR_JIT_UNKNOWN = 5,
	PHP_CNT_MAX = 6,
};

FS_RUNTIME_COUNTERS(PHP_CNT_MAX)

/* How a queued frame's payload is laid out (mirrored in src/ebpf.rs). */
enum php_payload {
	PHP_LINE_BITS = 24,
	PHP_FINGERPRINT_SHIFT = 24,
	PHP_FLAGS_SHIFT = 48,
	PHP_FLAG_TOP = 1,
	PHP_FLAG_CODE = 2,
};

/* Never read: they make clang emit BTF for the types the layout test checks. */
struct php_proc *const volatile php_abi_proc = 0;
const volatile enum php_counter php_abi_counter = PHP_CNT_MAX;
const volatile enum php_payload php_abi_payload = PHP_FLAGS_SHIFT;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* sized by the loader */
	__type(key, __u32);
	__type(value, struct php_proc);
} php_procs SEC(".maps");

#define PHP_FUNCTION_INTERNAL 1
#define PHP_CALL_CODE (1U << 16)
#define PHP_CALL_TOP (1U << 17)
#define PHP_FINGERPRINT_MASK 0xffffffULL

/* Longest prefixes read of a zend_execute_data and of a zend_function. Their buffers are
 * twice as large, so that a length masked to its bits is always inside them, whatever the
 * verifier can prove about the checks before. */
#define PHP_EX_READ 64
#define PHP_FUNC_READ 128

struct php_buf {
	__u8 ex[2 * PHP_EX_READ];
	__u8 func[2 * PHP_FUNC_READ];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct php_buf);
} php_scratch SEC(".maps");

/* The walk's state, in the unwinder state's scratch area: a map value, never the BPF stack
 * (verifiers before Linux 6.7 check a bpf_loop callback as if it ran once, with the caller's
 * stack as it was before the loop). */
struct php_walk {
	struct php_proc proc;
	__u64 ex;     /* the next zend_execute_data to queue (0: done) */
	/* The VM's registers when the sample interrupted user mode in its code: execute_data
	 * (r14) and opline (r15), the global register variables of the hybrid VM and of its
	 * JIT code. The opline in memory (EX(opline)) is only saved before calls that may need
	 * it; r15 is the instruction executing now. 0: not known. */
	__u64 leaf_ex;
	__u64 leaf_opline;
	__u32 rounds; /* runs of the program spent queuing */
	__u32 reserved;
};

_Static_assert(sizeof(struct php_walk) <= FS_RT_SCRATCH_BYTES, "php_walk does not fit the scratch area");

/* Frames per run of the program: all at once with bpf_loop; in the legacy build, loops the
 * verifier walks step by step, so fewer per run and more runs (through fs_continue()). */
#if FS_LEGACY
#define PHP_QUEUE_CHUNK 48
#else
#define PHP_QUEUE_CHUNK FS_QUEUE_FRAMES
#endif

static __always_inline struct php_walk *walk_of(struct fs_unwind_state *st)
{
	return (struct php_walk *)st->scratch;
}

static __always_inline __u64 ex_u64(const struct php_buf *b, __u32 off)
{
	__u64 v = 0;
	if (off <= PHP_EX_READ - 8)
		__builtin_memcpy(&v, &b->ex[off], 8);
	return v;
}

static __always_inline __u32 ex_u32(const struct php_buf *b, __u32 off)
{
	__u32 v = 0;
	if (off <= PHP_EX_READ - 4)
		__builtin_memcpy(&v, &b->ex[off], 4);
	return v;
}

static __always_inline __u64 func_u64(const struct php_buf *b, __u32 off)
{
	__u64 v = 0;
	if (off <= PHP_FUNC_READ - 8)
		__builtin_memcpy(&v, &b->func[off], 8);
	return v;
}

/* Queues the frame at w->ex (a frame without a function is skipped) and moves to its
 * caller. Straight-line with one way out (5.10's x86 JIT gives up on programs whose jumps
 * keep changing size between its passes): every outcome is computed, then returned once.
 * Returns 1 when the walk is over. */
FS_CALLBACK queue_step(__u64 index, void *arg)
{
	struct fs_unwind_state *st = fs_state();
	__u32 zero = 0;
	struct php_buf *b = bpf_map_lookup_elem(&php_scratch, &zero);
	long stop = 1;
	if (st && b) {
		struct php_walk *w = walk_of(st);
		struct php_proc *p = &w->proc;
		__u64 ex = w->ex;
		__u32 ex_len = p->ex_read_len;
		__u32 func_len = p->func_read_len;
		long failed = ex == 0 || ex_len == 0 || ex_len > PHP_EX_READ || func_len == 0 ||
			      func_len > PHP_FUNC_READ;
		if (!failed)
			failed = bpf_probe_read_user(b->ex, ex_len & (2 * PHP_EX_READ - 1),
						     (void *)ex) != 0;
		__u64 func = failed ? 0 : ex_u64(b, p->ex_func);
		__u32 info = ex_u32(b, p->ex_call_info);
		__u64 opline = ex_u64(b, p->ex_opline);
		__u64 next = failed ? 0 : ex_u64(b, p->ex_prev);
		if (func && bpf_probe_read_user(b->func, func_len & (2 * PHP_FUNC_READ - 1),
						(void *)func) != 0) {
			failed = 1;
			next = 0;
		}
		if (failed && ex)
			fs_rt_count(PHP_CNT_ERR_READ_FAILED);
		if (func && !failed) {
			int user = b->func[0] != PHP_FUNCTION_INTERNAL;
			__u64 opcodes = func_u64(b, p->func_fingerprint);
			__u64 size = func_u64(b, p->func_last) & 0xffffffff;
			/* The innermost user frame runs the instruction in r15 when r14 is its frame
			 * and r15 is one of its instructions. */
			__u64 at = w->leaf_opline - opcodes;
			__u64 op_size = p->op_size;
			if (user && ex == w->leaf_ex && w->leaf_opline >= opcodes && op_size &&
			    at < size * op_size && at % op_size == 0)
				opline = w->leaf_opline;
			if (user)
				w->leaf_ex = 0;
			__u32 line = 0;
			if (user && opline)
				bpf_probe_read_user(&line, sizeof(line), (void *)(opline + p->op_lineno));
			__u64 fp = user ? (opcodes >> 3) & PHP_FINGERPRINT_MASK : 0;
			__u64 flags = ((info & PHP_CALL_TOP) ? PHP_FLAG_TOP : 0) |
				      ((info & PHP_CALL_CODE) ? PHP_FLAG_CODE : 0);
			__u64 payload = ((__u64)line & ((1U << PHP_LINE_BITS) - 1)) |
					(fp << PHP_FINGERPRINT_SHIFT) | (flags << PHP_FLAGS_SHIFT);
			if (!fs_queue_frame(st, func, payload, user && (info & PHP_CALL_TOP))) {
				fs_rt_count(PHP_CNT_ERR_QUEUE_FULL);
				next = 0;
			}
		}
		w->ex = next;
		stop = next == 0;
	}
	return stop;
}

FS_RUNTIME_PROGRAM(fs_rt_php)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	if (!st || !e)
		return 0;
	struct php_walk *w = walk_of(st);
	if (fs_fresh_start(st)) {
		__u32 pid = st->pid;
		struct php_proc *proc = bpf_map_lookup_elem(&php_procs, &pid);
		if (!(st->map_flags & FS_MAPPING_SPLICE)) {
			/* JIT code: go on from execute_ex's body, whose frame it runs on. */
			if (proc && proc->jit_resume) {
				st->pc = proc->jit_resume;
				fs_rt_count(PHP_CNT_JIT_FRAMES);
			} else {
				fs_rt_count(PHP_CNT_ERR_JIT_UNKNOWN);
				fs_decline(st);
			}
			return fs_handback(ctx, st, e);
		}
		fs_queue_begin(st);
		if (!proc) {
			fs_rt_count(PHP_CNT_ERR_NO_PROCESS);
			goto done;
		}
		w->proc = *proc;
		w->rounds = 0;
		w->ex = fs_read_u64(proc->current_execute_data);
		w->leaf_ex = 0;
		w->leaf_opline = 0;
		if (!(e->h.flags & FS_TRACE_IN_KERNEL)) {
			w->leaf_ex = FS_LEAF_REG(ctx, r14);
			w->leaf_opline = FS_LEAF_REG(ctx, r15);
		}
		if (!w->ex)
			fs_rt_count(PHP_CNT_ERR_NO_FRAME);
	}
	if (w->ex) {
		FS_LOOP(PHP_QUEUE_CHUNK, queue_step, NULL);
		w->rounds++;
		if (w->ex && w->rounds < FS_QUEUE_FRAMES / PHP_QUEUE_CHUNK)
			fs_continue(ctx, st); /* returns only when out of tail calls */
	}
done:
	fs_queue_commit(st);
	return fs_handback(ctx, st, e);
}
