// SPDX-License-Identifier: GPL-2.0-only
/*
 * The V8 walker: a takeover runtime (see ferroscope/runtime.h). The native unwinder hands the
 * walk over whenever the PC enters a range the plug-in owns: V8's JIT code (anonymous
 * executable memory) and the embedded builtins (in the node binary's text, and the copy V8
 * remaps into its code range for short builtin calls). Every frame V8 generates keeps a
 * frame pointer, so the walker follows RBP: per frame it reads the fixed slots below FP
 * (bytecode offset, bytecode array, argument count, function, context or frame-type marker)
 * and the saved FP and return address above it, records what identifies the frame, and moves
 * to the caller, until the PC leaves V8's ranges (an entry frame returns to C++, a builtin
 * returns to a C++ caller). Then it hands the registers back to the native unwinder.
 *
 * What it records (struct fs_frame {addr, payload}; the payload's low 3 bits are the kind):
 *  - V8_FRAME_BYTECODE: an interpreted frame (the PC is in the builtins, the bytecode-offset
 *    slot holds a Smi, the bytecode-array slot a BytecodeArray). addr = the SharedFunctionInfo
 *    (tagged), payload = offset (28 bits at bit 4) | cookie (24 bits at bit 32).
 *  - V8_FRAME_JIT: a JavaScript frame whose PC is in JIT code (Sparkplug, Maglev, TurboFan).
 *    addr = the PC, payload = exact bit | SFI >> 3 (44 bits at bit 4) | cookie (7 bits at
 *    bit 48) | V8_PAYLOAD_STACK_RA (bit 55). Userspace finds the code object around the PC.
 *  - V8_FRAME_BUILTIN: a JavaScript frame whose PC is in the builtins but that is not
 *    interpreted: a builtin with JavaScript linkage (Array.prototype.map), or a builtin that
 *    runs without a frame of its own on top of a compiled function's frame. Same payload.
 *  - V8_FRAME_STUB: a typed frame (its context slot holds a frame-type marker) of a type
 *    userspace asked for (v8_proc.emit_types): builtin stubs, regexp code, WebAssembly.
 *    addr = the PC, payload = exact bit | type (8 bits at bit 4).
 *    When the sample's leaf is a builtin without a frame of its own (Sparkplug's arithmetic
 *    builtins, `_Baseline`) on top of a compiled function's frame, and the word at the stack
 *    pointer is a return address into this runtime's JIT code, the walker records the builtin
 *    as a V8_FRAME_STUB frame (type 0) and the function's frame as a V8_FRAME_JIT frame at
 *    that return address, with V8_PAYLOAD_STACK_RA: so the function's position is known.
 * The cookie is a hash of the SFI's name-or-scope-info and script pointers when it was
 * sampled: userspace names a frame only when the SFI at that address still hashes the same.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ferroscope/runtime.h"

char LICENSE[] SEC("license") = "GPL";

/* The kind of a recorded frame: the low 3 bits of its payload. */
enum v8_frame_kind {
	V8_FRAME_BYTECODE = 0,
	V8_FRAME_JIT = 1,
	V8_FRAME_BUILTIN = 2,
	V8_FRAME_STUB = 3,
};

/* Payload bit: addr is the exact PC (the leaf), not a return address. */
#define V8_PAYLOAD_EXACT 0x8
/* Payload bit of a JIT frame: addr is the word at the stack pointer, read as the return
 * address of a frameless builtin running on top of the frame (unchecked: userspace keeps the
 * position only if the code there is the frame's function's). */
#define V8_PAYLOAD_STACK_RA (1ULL << 55)

/* What the walker needs to know about one process (facts from the binary's v8dbg_*
 * constants, and what userspace learned from the process's heap): the value of v8_procs. */
struct v8_proc {
	/* The embedded builtins in the file's text, and their copy in the code range (0 when
	 * V8 runs them from the file). */
	__u64 blob_start;
	__u64 blob_end;
	__u64 remap_start;
	__u64 remap_end;
	/* The bytecode handlers, in the file's text (their copy is at the same offset from
	 * remap_start). */
	__u64 handlers_start;
	__u64 handlers_end;
	/* Native code without unwind tables that keeps a frame pointer (V8's
	 * PushAllRegistersAndIterateStack, which every garbage collection runs): its frames are
	 * left to the native unwinder, which unwinds the range by its frame pointer. */
	__u64 native_start;
	__u64 native_end;
	/* Frame types (bit n: marker n) recorded as V8_FRAME_STUB frames. */
	__u64 emit_types;
	/* The maps of SharedFunctionInfo and BytecodeArray objects, once userspace saw them
	 * (0: check the instance type instead). */
	__u64 sfi_map;
	__u64 bytecode_array_map;
	/* Frame slots, as byte offsets into the bytes read from FP - V8_FRAME_BELOW. */
	__u8 slot_context;
	__u8 slot_function;
	__u8 slot_bytecode_array;
	__u8 slot_bytecode_offset;
	/* Field offsets, bytes from an object's (untagged) start. */
	__u16 jsfunction_shared;
	__u16 sfi_name_or_scope_info;
	__u16 sfi_script;
	__u16 map_instance_type;
	/* Instance types. */
	__u16 type_sfi;
	__u16 type_bytecode_array;
	__u8 reserved[8];
};

_Static_assert(sizeof(struct v8_proc) == 112, "v8_proc layout changed: update src/ebpf.rs");

/* The walker's counters (fs_rt_counters); names in src/ebpf.rs, in this order. */
enum v8_counter {
	/* A sampled process with a V8 range but no v8_procs entry. */
	V8_CNT_ERR_NO_PROCESS = 0,
	/* A frame pointer below the stack pointer, misaligned, or too far from it. */
	V8_CNT_ERR_BAD_FP = 1,
	/* Reading a frame's slots failed. */
	V8_CNT_ERR_READ_FRAME = 2,
	/* A JavaScript frame whose function or SharedFunctionInfo could not be read or is not
	 * one. */
	V8_CNT_ERR_BAD_FUNCTION = 3,
	/* A frame-type marker out of range. */
	V8_CNT_ERR_BAD_MARKER = 4,
	/* Frames left to the native unwinder (after one of the errors above). */
	V8_CNT_DECLINED = 5,
	V8_CNT_BYTECODE_FRAMES = 6,
	V8_CNT_JIT_FRAMES = 7,
	V8_CNT_BUILTIN_FRAMES = 8,
	V8_CNT_STUB_FRAMES = 9,
	/* Typed frames walked through without being recorded (entry, exit, internal...). */
	V8_CNT_SKIPPED_FRAMES = 10,
	V8_CNT_MAX = 11,
};

FS_RUNTIME_COUNTERS(V8_CNT_MAX)

/* Never read: they make clang emit BTF for the types the layout test checks. */
struct v8_proc *const volatile v8_abi_proc = 0;
const volatile enum v8_counter v8_abi_counter = V8_CNT_MAX;
const volatile enum v8_frame_kind v8_abi_frame_kind = V8_FRAME_STUB;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* sized by the loader */
	__type(key, __u32);
	__type(value, struct v8_proc);
} v8_procs SEC(".maps");

/* Bytes read per frame: from FP - V8_FRAME_BELOW up to FP + 16 (saved FP, return address). */
#define V8_FRAME_BELOW 48
#define V8_FRAME_READ (V8_FRAME_BELOW + 16)
/* Bytes read from a SharedFunctionInfo: its map up to its script field. */
#define V8_SFI_READ 56
/* A frame (its slots, and the arguments its caller pushed) is never larger than V8's stack
 * limit (about 1 MB); a frame pointer farther than this from the stack pointer is not one. */
#define V8_MAX_FRAME_BYTES (1 << 20)
/* Frame-type markers are small: V8 has about 35 types. */
#define V8_MAX_FRAME_TYPE 64

/* Each read goes into 128 bytes, so that an offset masked to 6 bits plus a word is always
 * inside the buffer, whatever the verifier can prove about the checks before it. */
struct v8_buf {
	__u8 frame[128];
	__u8 sfi[128];
};

_Static_assert(V8_FRAME_READ <= 64 && V8_SFI_READ <= 64, "reads must fit a 6-bit offset");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct v8_buf);
} v8_scratch SEC(".maps");

/* The walk's state across loop steps and tail calls (the unwinder state's scratch area). */
struct v8_walk {
	struct v8_proc proc;
	/* Frames recorded since the hand-over. */
	__u32 frames;
	/* Runs of the program for this hand-over (legacy build). */
	__u32 rounds;
	/* 1: the PC left V8's ranges (or the walk failed): hand back. */
	__u32 done;
	/* 1: the sample interrupted a bytecode handler: the interpreter's registers hold the
	 * live bytecode offset and array of the first interpreted frame (the frame's slot is
	 * only written before calls). */
	__u32 leaf_registers;
	__u64 leaf_offset;         /* kInterpreterBytecodeOffsetRegister (r9) */
	__u64 leaf_bytecode_array; /* kInterpreterBytecodeArrayRegister (r12) */
};

_Static_assert(sizeof(struct v8_walk) <= FS_RT_SCRATCH_BYTES, "v8_walk does not fit the scratch area");

/* Frames per run of the program: a whole stack with bpf_loop; in the legacy build, loops the
 * verifier walks step by step, so a few frames per run and more runs (fs_continue). */
#if FS_LEGACY
#define V8_CHUNK 6
#define V8_MAX_ROUNDS 20
#else
#define V8_CHUNK FS_MAX_USER_FRAMES
#define V8_MAX_ROUNDS 1
#endif

static __always_inline struct v8_walk *walk_of(struct fs_unwind_state *st)
{
	return (struct v8_walk *)st->scratch;
}

/* The word at byte `off` of a buffer of `len` bytes (0 outside it). */
static __always_inline __u64 word_at(const __u8 *b, __u32 off, __u32 len)
{
	__u64 v = 0;
	off &= 63;
	/* Keep clang from dropping the mask: the verifier must see the bound. */
	asm volatile("" : "+r"(off));
	if (off <= 56 && off + 8 <= len)
		__builtin_memcpy(&v, &b[off], 8);
	return v;
}

static __always_inline int is_smi(__u64 v)
{
	return (v & 1) == 0;
}

static __always_inline int is_heap_object(__u64 v)
{
	return (v & 3) == 1;
}

/* Whether the frame's PC (the return address's call when not exact) lies in the builtins. */
static __always_inline int in_builtins(const struct v8_proc *vp, __u64 at)
{
	return (at >= vp->blob_start && at < vp->blob_end) ||
	       (at >= vp->remap_start && at < vp->remap_end);
}

/* Whether it lies in the bytecode handlers (the interpreter proper). */
static __always_inline int in_handlers(const struct v8_proc *vp, __u64 at)
{
	__u64 copy = vp->remap_start - vp->blob_start;
	return (at >= vp->handlers_start && at < vp->handlers_end) ||
	       (vp->remap_start && at >= vp->handlers_start + copy && at < vp->handlers_end + copy);
}

/* Whether `pc` (a return address) is in a range this runtime owns: the range cached in the
 * unwinder state (as the native unwinder caches it), else the mapping trie. */
static __always_inline int owned(struct fs_unwind_state *st, __u64 pc)
{
	__u64 at = pc - 1;
	if (at < st->map_start || at >= st->map_end) {
		struct fs_pid_mapping *m = fs_mapping_at(st->pid, at);
		if (!m)
			return 0;
		st->map_start = m->start;
		st->map_end = m->end;
		st->map_file_id = m->file_id;
		st->map_bias = m->bias;
		st->map_owner = m->owner;
		st->map_flags = m->flags;
	}
	return st->map_owner == fs_rt_slot;
}

/* The instance type of the object whose map word is `map` (0 when unreadable). */
static __always_inline __u16 instance_type(const struct v8_proc *vp, __u64 map)
{
	__u16 t = 0;
	if (!is_heap_object(map) ||
	    bpf_probe_read_user(&t, sizeof(t), (void *)(map - 1 + vp->map_instance_type)))
		return 0;
	return t;
}

/* Mixes the two pointers that identify an SFI's function (its name or scope info, and its
 * script) into 32 bits; src/ebpf.rs computes the same. */
static __always_inline __u32 sfi_cookie(__u64 name_or_scope_info, __u64 script)
{
	__u64 x = (name_or_scope_info >> 3) * 0x9E3779B97F4A7C15ULL;
	x ^= (script >> 3) * 0xC2B2AE3D27D4EB4FULL;
	return (__u32)(x >> 32);
}

/* The walker gave up on the frame at st->pc: leave it to the native unwinder (which unwinds
 * V8's ranges with the frame pointer) and hand back. */
static __always_inline long give_up(struct fs_unwind_state *st, struct v8_walk *w, __u32 why)
{
	fs_rt_count(why);
	fs_rt_count(V8_CNT_DECLINED);
	fs_decline(st);
	w->done = 1;
	return 1;
}

/* Records the JavaScript frame at FP (function slot `function`); 0 when it is not one. */
static __always_inline int record_js_frame(struct fs_unwind_state *st, struct fs_trace_buf *e,
					   struct v8_walk *w, struct v8_buf *buf, __u64 function,
					   __u64 at)
{
	struct v8_proc *vp = &w->proc;
	__u64 shared = 0;
	if (!is_heap_object(function) ||
	    bpf_probe_read_user(&shared, sizeof(shared), (void *)(function - 1 + vp->jsfunction_shared)) ||
	    !is_heap_object(shared) ||
	    bpf_probe_read_user(buf->sfi, V8_SFI_READ, (void *)(shared - 1)))
		return 0;
	__u64 map = word_at(buf->sfi, 0, V8_SFI_READ);
	if (vp->sfi_map ? map != vp->sfi_map : instance_type(vp, map) != vp->type_sfi)
		return 0;
	__u32 cookie = sfi_cookie(word_at(buf->sfi, vp->sfi_name_or_scope_info, V8_SFI_READ),
				  word_at(buf->sfi, vp->sfi_script, V8_SFI_READ));
	__u64 offset = word_at(buf->frame, vp->slot_bytecode_offset, V8_FRAME_READ);
	__u64 bytecode = word_at(buf->frame, vp->slot_bytecode_array, V8_FRAME_READ);
	int builtin = in_builtins(vp, at);
	int interpreted = builtin && is_smi(offset) && is_heap_object(bytecode);
	if (interpreted) {
		__u64 bmap = 0;
		if (bpf_probe_read_user(&bmap, sizeof(bmap), (void *)(bytecode - 1)))
			interpreted = 0;
		else if (vp->bytecode_array_map)
			interpreted = bmap == vp->bytecode_array_map;
		else
			interpreted = instance_type(vp, bmap) == vp->type_bytecode_array;
	}
	__u64 exact = st->exact ? V8_PAYLOAD_EXACT : 0;
	int ok;
	if (interpreted) {
		__u64 raw = offset >> 32;
		/* The leaf's live offset, when its bytecode array register says it is this frame's. */
		if (w->leaf_registers && w->leaf_bytecode_array == bytecode && w->leaf_offset < (1 << 28))
			raw = w->leaf_offset;
		__u64 payload = V8_FRAME_BYTECODE | ((raw & 0xfffffff) << 4) |
				((__u64)(cookie & 0xffffff) << 32);
		ok = fs_emit(st, e, shared, payload);
		fs_rt_count(V8_CNT_BYTECODE_FRAMES);
	} else {
		__u64 kind = builtin ? V8_FRAME_BUILTIN : V8_FRAME_JIT;
		__u64 pc = st->pc;
		__u64 ra = 0;
		/* The leaf in a frameless builtin called from JIT code: its return address. */
		if (builtin && st->exact && st->sp &&
		    !bpf_probe_read_user(&ra, sizeof(ra), (void *)st->sp) && ra > 0x1000 &&
		    !in_builtins(vp, ra - 1) && owned(st, ra)) {
			if (!fs_emit(st, e, st->pc, V8_FRAME_STUB | V8_PAYLOAD_EXACT)) {
				w->done = 1;
				return 1;
			}
			w->frames++;
			fs_rt_count(V8_CNT_BUILTIN_FRAMES);
			kind = V8_FRAME_JIT | V8_PAYLOAD_STACK_RA;
			pc = ra;
			exact = 0;
		}
		__u64 payload = kind | exact | ((((shared - 1) >> 3) & 0xfffffffffffULL) << 4) |
				((__u64)(cookie & 0x7f) << 48);
		ok = fs_emit(st, e, pc, payload);
		fs_rt_count(builtin ? V8_CNT_BUILTIN_FRAMES : V8_CNT_JIT_FRAMES);
	}
	/* Only the first JavaScript frame can be the one the registers describe. */
	w->leaf_registers = 0;
	if (ok)
		w->frames++;
	else
		w->done = 1; /* the stack is full (fs_push_frame failed the walk) */
	return 1;
}

/* One frame: record it (or not), move to its caller. Returns 1 to stop. */
static __always_inline long v8_step(struct fs_unwind_state *st, struct fs_trace_buf *e,
				    struct v8_walk *w, struct v8_buf *buf)
{
	struct v8_proc *vp = &w->proc;
	__u64 pc = st->pc;
	__u64 fp = st->bp;
	__u64 sp = st->sp;
	if (w->done || st->done)
		return 1;
	if (pc >= vp->native_start && pc < vp->native_end) {
		fs_decline(st);
		w->done = 1;
		return 1;
	}
	if (fp <= sp || (fp & 7) || fp - sp > V8_MAX_FRAME_BYTES)
		return give_up(st, w, V8_CNT_ERR_BAD_FP);
	if (bpf_probe_read_user(buf->frame, V8_FRAME_READ, (void *)(fp - V8_FRAME_BELOW)))
		return give_up(st, w, V8_CNT_ERR_READ_FRAME);

	__u64 at = st->exact ? pc : pc - 1;
	__u64 marker = word_at(buf->frame, vp->slot_context, V8_FRAME_READ);
	if (is_smi(marker)) {
		/* A typed frame: the marker is the type shifted by the Smi tag (not a Smi). */
		__u64 type = marker >> 1;
		if (type >= V8_MAX_FRAME_TYPE)
			return give_up(st, w, V8_CNT_ERR_BAD_MARKER);
		/* A bytecode handler's own frame is part of interpreting its caller. */
		if (((vp->emit_types >> type) & 1) && !in_handlers(vp, at)) {
			__u64 payload = V8_FRAME_STUB | (st->exact ? V8_PAYLOAD_EXACT : 0) | (type << 4);
			if (!fs_emit(st, e, pc, payload)) {
				w->done = 1;
				return 1;
			}
			w->frames++;
			fs_rt_count(V8_CNT_STUB_FRAMES);
		} else {
			fs_rt_count(V8_CNT_SKIPPED_FRAMES);
		}
	} else {
		__u64 function = word_at(buf->frame, vp->slot_function, V8_FRAME_READ);
		if (!record_js_frame(st, e, w, buf, function, at))
			return give_up(st, w, V8_CNT_ERR_BAD_FUNCTION);
		if (w->done)
			return 1;
	}

	/* The caller: every V8 frame starts with `push rbp; mov rbp, rsp`. */
	__u64 saved_fp = word_at(buf->frame, V8_FRAME_BELOW, V8_FRAME_READ);
	__u64 ra = word_at(buf->frame, V8_FRAME_BELOW + 8, V8_FRAME_READ);
	st->sp = fp + 16;
	st->bp = saved_fp;
	st->pc = ra;
	st->exact = 0;
	/* A return address outside V8's ranges (C++, or the end of the stack) goes back to the
	 * native unwinder. */
	if (ra < 0x1000 || !owned(st, ra)) {
		w->done = 1;
		return 1;
	}
	return 0;
}

FS_CALLBACK walk_step(__u64 index, void *arg)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	__u32 zero = 0;
	struct v8_buf *buf = bpf_map_lookup_elem(&v8_scratch, &zero);
	if (!st || !e || !buf)
		return 1;
	return v8_step(st, e, walk_of(st), buf);
}

FS_RUNTIME_PROGRAM(fs_rt_v8)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	if (!st || !e)
		return 0;
	struct v8_walk *w = walk_of(st);
	if (fs_fresh_start(st)) {
		__u32 pid = st->pid;
		struct v8_proc *proc = bpf_map_lookup_elem(&v8_procs, &pid);
		if (!proc) {
			fs_rt_count(V8_CNT_ERR_NO_PROCESS);
			fs_rt_count(V8_CNT_DECLINED);
			fs_decline(st);
			return fs_handback(ctx, st, e);
		}
		w->proc = *proc;
		w->frames = 0;
		w->rounds = 0;
		w->done = 0;
		w->leaf_registers = 0;
		/* The sample's first user frame, interrupted in user mode in a bytecode handler. */
		if (st->n == 0 && st->exact && !(e->h.flags & FS_TRACE_IN_KERNEL) &&
		    in_handlers(&w->proc, st->pc)) {
			w->leaf_registers = 1;
			w->leaf_offset = FS_LEAF_REG(ctx, r9);
			w->leaf_bytecode_array = FS_LEAF_REG(ctx, r12);
		}
	}
	FS_LOOP(V8_CHUNK, walk_step, NULL);
	w->rounds++;
	if (!w->done && !st->done && w->rounds < V8_MAX_ROUNDS)
		fs_continue(ctx, st); /* returns only when out of tail calls */
	return fs_handback(ctx, st, e);
}
