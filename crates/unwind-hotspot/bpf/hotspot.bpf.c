// SPDX-License-Identifier: GPL-2.0-only
/*
 * The HotSpot walker: a takeover runtime (see ferroscope/runtime.h). The plug-in registers the
 * JVM's code heaps (interpreter, C1/C2 nmethods, stubs, adapters) as ranges it owns; the native
 * unwinder hands the walk over whenever the PC enters one, and this program walks the Java
 * frames from there until the PC leaves the code cache (back into libjvm, JNI code or the
 * launcher), then hands the registers back.
 *
 * Per frame (x86-64):
 * - A PC inside the interpreter's codelets is an interpreted frame, laid out around RBP: the
 *   Method* and the bytecode pointer sit in fixed slots below RBP, the caller's RBP and
 *   return address above it, the caller's stack pointer (the sender SP) in the slot below RBP.
 *   The leaf's bytecode pointer is live in R13, read from the sample's registers.
 * - Any other PC is looked up in its code heap's segment map, which leads back to the start of
 *   the CodeBlob holding it. An nmethod (compiled Java, or a JNI wrapper) and a runtime stub
 *   keep a fixed frame (CodeBlob::_frame_size words, return address on top, the caller's RBP
 *   below it); a leaf still in its prologue or epilogue has less on the stack, which the
 *   stack's words tell apart. A frame whose return address was replaced by the deoptimization
 *   handler has its original PC saved in the frame. Stubs without a frame size keep an RBP
 *   frame (the call stub), vtable stubs only the return address.
 *
 * A recorded frame is {address, payload}, payload bits 53-55 the frame type:
 * - interpreted: address Method*, bits 32-47 the bytecode index (0xffff: unknown), bits 0-31
 *   the low bits of ConstMethod* >> 3 (so a reused Method* is never named after another);
 * - compiled: address the nmethod, bits 30-51 the PC's offset from it, bits 0-29 its compile
 *   ID (unique per compilation: a reused address is never misnamed), bit 52 set for the
 *   sampled PC itself rather than a return address;
 * - stub: address the CodeBlob, bits 0-31 the PC's offset from it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ferroscope/runtime.h"

char LICENSE[] SEC("license") = "GPL";

/* Code heaps followed per process (JDK 9+ has three with the segmented code cache). */
#define HS_MAX_HEAPS 4
/* Size of the buffer a CodeBlob header is read into (hs_proc.blob_read stays below it). */
#define HS_BLOB_BUF 512
/* Segment-map steps back to a CodeBlob's first segment: one step covers up to 254 segments
 * (32 KiB with 128-byte segments), so 16 reach back 500 KiB, more than any nmethod. */
#define HS_SEGMAP_HOPS 16
/* Interpreter frame words read: RBP - 9 words (initial SP) up to RBP + 1 (return address). */
#define HS_INTERP_WORDS 11
#define HS_INTERP_FP_INDEX 9
/* An interpreter frame's RBP lies this close above its SP (expression stack and monitors). */
#define HS_INTERP_MAX_FRAME (1 << 20)
#define HS_NO_FIELD 0xffff

/* hs_proc.flags */
/* CodeBlob code begin/end are int offsets from the blob (JDK 23+), not pointers. */
#define HS_FLAG_CODE_OFFSETS 0x1
/* The deoptimization handler is an int offset from the blob (JDK 23+), not a pointer. */
#define HS_FLAG_DEOPT_OFFSET 0x2
/* CodeBlob::_frame_complete_offset is 16 bits wide (JDK 23+), not 32. */
#define HS_FLAG_FRAME_COMPLETE_16 0x4
/* CodeBlob::_kind tells the blob's kind (JDK 23+); otherwise its name does. */
#define HS_FLAG_BLOB_KIND 0x8

/* The frame types of the payload (bits 53-55). */
enum hs_frame_type {
	HS_FRAME_INTERPRETED = 1,
	HS_FRAME_COMPILED = 2,
	HS_FRAME_STUB = 3,
};

#define HS_TYPE_SHIFT 53
#define HS_EXACT_BIT (1ULL << 52)
#define HS_PC_OFFSET_SHIFT 30
#define HS_PC_OFFSET_MASK ((1ULL << 22) - 1)
#define HS_COMPILE_ID_MASK ((1ULL << 30) - 1)
#define HS_BCI_SHIFT 32
#define HS_BCI_UNKNOWN 0xffff

/* One code heap: its reserved range and its segment map. */
struct hs_heap {
	__u64 low;
	__u64 high;
	__u64 segmap;
};

/* What the walker needs to know about one JVM (the value of hs_procs, keyed by PID): where its
 * code is, and the offsets the JVM's own VMStructs tables gave for its structures. Offsets are
 * bytes; HS_NO_FIELD when the JVM has no such field. */
struct hs_proc {
	struct hs_heap heaps[HS_MAX_HEAPS];
	/* The interpreter's codelets [interp_low, interp_high). */
	__u64 interp_low;
	__u64 interp_high;
	__u32 heap_count;
	__u16 heapblock_size; /* sizeof(HeapBlock): the CodeBlob follows it */
	__u16 blob_read;      /* bytes of a CodeBlob header to read */
	__u16 blob_name;      /* CodeBlob::_name */
	__u16 blob_kind;      /* CodeBlob::_kind */
	__u16 blob_code_begin;
	__u16 blob_code_end;
	__u16 blob_frame_complete;
	__u16 blob_frame_size;
	__u16 nm_compile_id;
	__u16 nm_orig_pc_offset;
	__u16 nm_deopt_handler;
	__u16 method_const_method; /* Method::_constMethod */
	__u16 const_method_size;   /* sizeof(ConstMethod): the bytecodes follow it */
	__u16 const_method_code_size;
	__u8 segment_shift; /* log2 of the code heaps' segment size */
	__u8 flags;         /* HS_FLAG_* */
	/* CodeBlobKind values (JDK 23+) of an nmethod, a vtable stub and an adapter. */
	__u8 kind_nmethod;
	__u8 kind_vtable;
	__u8 kind_adapter;
	/* Interpreter frame slots, in words from RBP. */
	__s8 interp_method_slot;
	__s8 interp_bcp_slot;
	__s8 interp_sender_sp_slot;
	__u8 reserved[8];
};

_Static_assert(sizeof(struct hs_proc) == 160, "hs_proc layout changed: update src/ebpf.rs");

/* The walker's counters (fs_rt_counters); names in src/ebpf.rs, in this order. */
enum hs_counter {
	/* A sampled process with a code-cache range but no hs_procs entry. */
	HS_CNT_ERR_NO_PROCESS = 0,
	/* A PC in a code heap whose segment map leads to no CodeBlob (free or not found). */
	HS_CNT_ERR_NO_CODEBLOB = 1,
	/* Reading a CodeBlob or a frame's words failed. */
	HS_CNT_ERR_READ = 2,
	/* An interpreter frame whose RBP, Method* or bytecode pointer makes no sense. */
	HS_CNT_ERR_INTERPRETER_FRAME = 3,
	/* A caller's return address or stack pointer that cannot be right. */
	HS_CNT_ERR_INVALID_RETURN = 4,
	/* Leaves unwound from their prologue or epilogue (the frame not fully there). */
	HS_CNT_PROLOGUE_EPILOGUE = 5,
	/* Frames whose return address was the deoptimization handler (original PC restored). */
	HS_CNT_DEOPTIMIZED = 6,
	/* Interpreted leaves whose bytecode pointer was taken from R13. */
	HS_CNT_LEAF_BCP_REGISTER = 7,
	HS_CNT_MAX = 8,
};

FS_RUNTIME_COUNTERS(HS_CNT_MAX)

/* Never read: they make clang emit BTF for the types the layout test checks. */
struct hs_proc *const volatile hs_abi_proc = 0;
const volatile enum hs_counter hs_abi_counter = HS_CNT_MAX;
const volatile enum hs_frame_type hs_abi_frame_type = HS_FRAME_STUB;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024); /* sized by the loader */
	__type(key, __u32);
	__type(value, struct hs_proc);
} hs_procs SEC(".maps");

/* The walk of one sample (per CPU: a map value, never the BPF stack, see FS_LOOP). */
struct hs_walk {
	struct hs_proc proc;
	/* R13 at the sample (the interpreted leaf's bytecode pointer), valid when regs_pc is the
	 * sampled PC. */
	__u64 r13;
	__u64 regs_pc;
	/* Set when the walk stops: 1 to hand back (the PC left the code cache), 2 on an error. */
	__u32 stop;
	__u32 steps;
	__u8 blob[HS_BLOB_BUF];
	__u64 words[HS_INTERP_WORDS];
};

#define HS_STOP_HANDBACK 1
#define HS_STOP_ERROR 2

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hs_walk);
} hs_walks SEC(".maps");

/* Frames walked per run of the program: the whole stack with bpf_loop; a few inlined steps
 * in the legacy build, which then runs itself again (fs_continue). */
#if FS_LEGACY
#define HS_STEPS_PER_RUN 5
#else
#define HS_STEPS_PER_RUN FS_MAX_USER_FRAMES
#endif

static __always_inline struct hs_walk *hs_walk_state(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&hs_walks, &zero);
}

static __always_inline __u64 blob_u64(const struct hs_walk *w, __u32 off)
{
	__u64 v = 0;
	if (off <= HS_BLOB_BUF - 8)
		__builtin_memcpy(&v, &w->blob[off], 8);
	return v;
}

static __always_inline __u32 blob_u32(const struct hs_walk *w, __u32 off)
{
	__u32 v = 0;
	if (off <= HS_BLOB_BUF - 4)
		__builtin_memcpy(&v, &w->blob[off], 4);
	return v;
}

static __always_inline __u16 blob_u16(const struct hs_walk *w, __u32 off)
{
	__u16 v = 0;
	if (off <= HS_BLOB_BUF - 2)
		__builtin_memcpy(&v, &w->blob[off], 2);
	return v;
}

static __always_inline __u8 blob_u8(const struct hs_walk *w, __u32 off)
{
	if (off > HS_BLOB_BUF - 1)
		return 0;
	return w->blob[off];
}

/* Whether addr lies in one of the process's code heaps. */
static __always_inline int in_code_cache(const struct hs_proc *p, __u64 addr)
{
	int found = 0;
#pragma unroll
	for (int i = 0; i < HS_MAX_HEAPS; i++) {
		if (i < p->heap_count && addr >= p->heaps[i].low && addr < p->heaps[i].high)
			found = 1;
	}
	return found;
}

/* The CodeBlob holding pc (0 when none): its heap's segment map leads back from pc's segment
 * to the block's first one (entry 0; 0xff marks a free segment), the block's header is a
 * HeapBlock, and the CodeBlob follows it. */
static __always_inline __u64 find_blob(const struct hs_proc *p, __u64 pc)
{
	__u64 low = 0, segmap = 0;
#pragma unroll
	for (int i = 0; i < HS_MAX_HEAPS; i++) {
		if (i < p->heap_count && pc >= p->heaps[i].low && pc < p->heaps[i].high) {
			low = p->heaps[i].low;
			segmap = p->heaps[i].segmap;
		}
	}
	if (low == 0)
		return 0;
	__u32 shift = p->segment_shift & 31;
	__u64 segment = (pc - low) >> shift;
	__u8 tag = 0xff;
	int done = 0;
#pragma unroll
	for (int i = 0; i < HS_SEGMAP_HOPS; i++) {
		if (!done) {
			if (bpf_probe_read_user(&tag, 1, (void *)(segmap + segment)))
				tag = 0xff;
			if (tag == 0 || tag == 0xff || tag > segment)
				done = 1;
			else
				segment -= tag;
		}
	}
	if (!done || tag != 0)
		return 0;
	return low + (segment << shift) + p->heapblock_size;
}

/* How a CodeBlob's frame is unwound. */
enum hs_blob_kind {
	HS_BLOB_NMETHOD = 0, /* compiled Java method or JNI wrapper: a fixed frame */
	HS_BLOB_FRAME = 1,   /* a stub with a frame size: a fixed frame */
	HS_BLOB_RBP = 2,     /* a stub without one: an RBP frame (the call stub) */
	HS_BLOB_PC_ONLY = 3, /* a vtable stub or an adapter: only the return address */
};

/* The first 8 bytes of CodeBlob names, as little-endian words: "nmethod\0", "native n"
 * (native nmethod: a JNI wrapper), "vtable c" (vtable chunks) and "I2C/C2I " (adapters). */
#define HS_NAME_NMETHOD 0x00646f6874656d6eULL
#define HS_NAME_NATIVE_NMETHOD 0x6e2065766974616eULL
#define HS_NAME_VTABLE 0x6320656c62617476ULL
#define HS_NAME_ADAPTERS 0x204932432f433249ULL

/* Bytes of code read at a leaf's PC to recognise its epilogue. */
#define HS_CODE_PEEK 16

/* Where a frame's caller is: the result of unwinding one frame. */
struct hs_caller {
	__u64 pc;
	__u64 sp;
	__u64 bp;
};

/* A fixed frame of `size` bytes: the return address on top, the caller's RBP below it (a
 * frame of one word is the return address alone). */
static __always_inline int unwind_fixed(__u64 sp, __u64 bp, __u64 size, struct hs_caller *c)
{
	__u64 pair[2] = {};
	c->sp = sp + size;
	int failed = size < 8 || bpf_probe_read_user(pair, sizeof(pair), (void *)(c->sp - 16));
	c->bp = size >= 16 ? pair[0] : bp;
	c->pc = pair[1];
	return !failed;
}

/* Whether `ra` is a return address into the code cache: inside it, and right after a call
 * instruction (`call rel32`, or `call` through a register or memory operand: opcode 0xff
 * with ModRM reg 2, in its 2-, 3-, 4- and 6-byte forms; a REX prefix comes before them). A
 * word on the stack that merely points into the code cache (a stub's constant table, a
 * spilled code pointer) is rarely that. */
static __always_inline int is_return_address(const struct hs_proc *p, __u64 ra)
{
	__u8 b[8] = {};
	int in = in_code_cache(p, ra) && !bpf_probe_read_user(b, sizeof(b), (void *)(ra - 8));
	__u8 m2 = b[7], m3 = b[6], m6 = b[3];
	int call = b[3] == 0xe8 ||
		   /* ff /2 mod=11 (call reg) or mod=00 (call [reg]), no SIB or disp32 */
		   (b[6] == 0xff && ((m2 & 0xf8) == 0xd0 ||
				     ((m2 & 0xf8) == 0x10 && (m2 & 7) != 4 && (m2 & 7) != 5))) ||
		   /* mod=01: call [reg + disp8]; call [sib] */
		   (b[5] == 0xff && (((m3 & 0xf8) == 0x50 && (m3 & 7) != 4) || m3 == 0x14)) ||
		   /* call [sib + disp8] */
		   (b[4] == 0xff && b[5] == 0x54) ||
		   /* mod=10: call [reg + disp32]; call [rip + disp32] */
		   (b[2] == 0xff && (((m6 & 0xf8) == 0x90 && (m6 & 7) != 4) || m6 == 0x15));
	return in && call;
}

/* Stack words looked at for a leaf stub's return address when neither SP nor RBP has it. */
#define HS_RA_SEARCH 8

/* A stub without a frame size: an RBP frame once it has made one (`push rbp; mov rbp, rsp`),
 * only the return address at SP before (or in a leaf routine that makes none). For a leaf,
 * the instruction at the PC and the stack tell: on the `push rbp` the return address is at
 * SP, on the `mov rbp, rsp` above the saved RBP; further in, an RBP frame just above SP whose
 * return address is one; else a return address at SP or among the next few words (registers
 * pushed, no frame). The call stub, returning into the JVM, is never a leaf for long: it is
 * unwound by RBP. */
static __always_inline int unwind_rbp_stub(struct hs_walk *w, __u64 pc, __u64 sp, __u64 bp,
					   int leaf, struct hs_caller *c)
{
	const struct hs_proc *p = &w->proc;
	__u64 pair[2] = {};
	__u64 words[HS_RA_SEARCH] = {};
	__u8 code[4] = {};
	int frame_read = bp >= sp && !bpf_probe_read_user(pair, sizeof(pair), (void *)bp);
	int stack_read = leaf && !bpf_probe_read_user(words, sizeof(words), (void *)sp);
	if (leaf)
		bpf_probe_read_user(code, sizeof(code), (void *)pc);
	int on_push = code[0] == 0x55;
	int on_mov = code[0] == 0x48 && code[1] == 0x89 && code[2] == 0xe5;
	int ok = 0;
	if (!leaf) {
		c->bp = pair[0];
		c->pc = pair[1];
		c->sp = bp + 16;
		ok = frame_read;
	} else if (stack_read && on_push && is_return_address(p, words[0])) {
		c->pc = words[0];
		c->sp = sp + 8;
		c->bp = bp;
		ok = 1;
	} else if (stack_read && on_mov && is_return_address(p, words[1])) {
		c->pc = words[1];
		c->sp = sp + 16;
		c->bp = words[0];
		ok = 1;
	} else if (frame_read && bp - sp < 4096 && is_return_address(p, pair[1])) {
		c->bp = pair[0];
		c->pc = pair[1];
		c->sp = bp + 16;
		ok = 1;
	} else {
		int found = 0;
#pragma unroll
		for (int i = 0; i < HS_RA_SEARCH; i++) {
			if (!found && stack_read && is_return_address(p, words[i])) {
				found = 1;
				c->pc = words[i];
				c->sp = sp + 8 * (i + 1);
				c->bp = bp;
			}
		}
		ok = found;
	}
	if (ok && leaf)
		fs_rt_count(HS_CNT_PROLOGUE_EPILOGUE);
	return ok;
}

/* A leaf frame of an nmethod or stub with a fixed frame, which the sample may have caught
 * before its frame was complete (prologue) or after it was taken down (epilogue). The stack's
 * words tell: a return address into the code cache right at SP (nothing pushed yet, or all
 * popped), or at SP + 8 below the saved RBP (RBP pushed; in a prologue RBP still holds it). */
static __always_inline int unwind_leaf(struct hs_walk *w, __u64 pc, __u64 sp, __u64 bp,
				       __u64 code_begin, __s32 frame_complete, __u64 size,
				       struct hs_caller *c)
{
	const struct hs_proc *p = &w->proc;
	__u64 top[2] = {};
	__u8 code[HS_CODE_PEEK] = {};
	int ok = !bpf_probe_read_user(top, sizeof(top), (void *)sp);
	bpf_probe_read_user(code, sizeof(code), (void *)pc);
	int prologue = frame_complete > 0 && pc < code_begin + frame_complete;
	int ret_ahead = 0;
#pragma unroll
	for (int i = 0; i < HS_CODE_PEEK; i++)
		ret_ahead |= code[i] == 0xc3;
	/* After `pop rbp`: a safepoint poll (cmp rsp, [r15+x] / mov r10, [r15+x]; test), a
	 * vzeroupper or a conditional jump before the `ret`. */
	int poll = ret_ahead && (code[0] == 0x49 || code[0] == 0x4d || code[0] == 0x41 ||
				 code[0] == 0xc5 || code[0] == 0x0f);
	int ra_at_top = ok && is_return_address(p, top[0]);
	int ra_above_bp = ok && is_return_address(p, top[1]);
	int full = 0;
	if (prologue) {
		if (ra_at_top) {
			c->pc = top[0];
			c->sp = sp + 8;
			c->bp = bp;
		} else if (ok && top[0] == bp && ra_above_bp) {
			c->pc = top[1];
			c->sp = sp + 16;
			c->bp = bp;
		} else {
			full = 1;
		}
	} else if (code[0] == 0xc3 || (poll && ra_at_top)) {
		c->pc = top[0];
		c->sp = sp + 8;
		c->bp = bp;
	} else if (code[0] == 0x5d && ra_above_bp) {
		/* On `pop rbp`. */
		c->pc = top[1];
		c->sp = sp + 16;
		c->bp = top[0];
	} else {
		full = 1;
	}
	if (full) {
		ok = unwind_fixed(sp, bp, size, c);
		if (prologue)
			c->bp = bp;
		if (ok && !is_return_address(p, c->pc) && ra_at_top) {
			/* Not where a complete frame keeps its return address: an epilogue. */
			c->pc = top[0];
			c->sp = sp + 8;
			c->bp = bp;
		} else {
			return ok;
		}
	}
	fs_rt_count(HS_CNT_PROLOGUE_EPILOGUE);
	return ok;
}

/* An interpreted frame at RBP: its Method*, bytecode index and caller. Returns 1 when the
 * frame is sound (a readable Method* whose ConstMethod is readable). */
static __always_inline int unwind_interpreted(struct hs_walk *w, __u64 pc, __u64 sp, __u64 fp,
					      int leaf, __u64 *method, __u64 *payload,
					      struct hs_caller *c)
{
	const struct hs_proc *p = &w->proc;
	int ok = fp >= sp && fp - sp < HS_INTERP_MAX_FRAME &&
		 !bpf_probe_read_user(w->words, sizeof(w->words),
				      (void *)(fp - HS_INTERP_FP_INDEX * 8));
	__u32 mi = (__u32)(HS_INTERP_FP_INDEX + p->interp_method_slot) & 15;
	__u32 bi = (__u32)(HS_INTERP_FP_INDEX + p->interp_bcp_slot) & 15;
	__u32 si = (__u32)(HS_INTERP_FP_INDEX + p->interp_sender_sp_slot) & 15;
	__u64 m = 0, bcp_slot = 0, sender_sp = 0;
	if (ok && mi < HS_INTERP_WORDS && bi < HS_INTERP_WORDS && si < HS_INTERP_WORDS) {
		m = w->words[mi];
		bcp_slot = w->words[bi];
		sender_sp = w->words[si];
	}
	__u64 cm = 0;
	ok = ok && m >= 0x1000 &&
	     !bpf_probe_read_user(&cm, sizeof(cm), (void *)(m + p->method_const_method)) &&
	     cm >= 0x1000;
	__u16 code_size = 0;
	ok = ok && !bpf_probe_read_user(&code_size, sizeof(code_size),
					(void *)(cm + p->const_method_code_size));
	__u64 base = cm + p->const_method_size;
	__u64 bcp = bcp_slot;
	if (leaf && w->regs_pc == pc && w->r13 >= base && w->r13 < base + code_size) {
		/* The leaf keeps its bytecode pointer in R13; the frame's slot is only written
		 * when it calls out. */
		bcp = w->r13;
		fs_rt_count(HS_CNT_LEAF_BCP_REGISTER);
	}
	__u64 bci = HS_BCI_UNKNOWN;
	if (bcp >= base && bcp < base + code_size)
		bci = bcp - base;
	*method = m;
	*payload = ((__u64)HS_FRAME_INTERPRETED << HS_TYPE_SHIFT) | (bci << HS_BCI_SHIFT) |
		   ((cm >> 3) & 0xffffffffULL);
	c->pc = w->words[(HS_INTERP_FP_INDEX + 1) & 15];
	c->bp = w->words[HS_INTERP_FP_INDEX];
	c->sp = sender_sp;
	/* The caller's SP is the sender SP the frame saved (a compiled caller's own SP), which
	 * lies above this frame's RBP. */
	ok = ok && sender_sp > fp;
	return ok;
}

/* One frame at st->pc: records it and moves st to its caller. Sets w->stop when the walk
 * ends here (the caller is outside the code cache, or the frame could not be unwound). */
static __always_inline void walk_frame(struct fs_unwind_state *st, struct fs_trace_buf *e,
				       struct hs_walk *w)
{
	const struct hs_proc *p = &w->proc;
	__u64 pc = st->pc, sp = st->sp, bp = st->bp;
	int leaf = st->exact != 0;
	struct hs_caller c = {};
	__u64 addr = 0, payload = 0;
	int ok = 0;

	if (pc >= p->interp_low && pc < p->interp_high) {
		ok = unwind_interpreted(w, pc, sp, bp, leaf, &addr, &payload, &c);
		if (!ok && leaf && bp >= sp && bp - sp < HS_INTERP_MAX_FRAME) {
			/* A leaf in the interpreter whose frame is not built yet (a method entry):
			 * name it the interpreter and follow RBP. */
			__u64 pair[2] = {};
			ok = !bpf_probe_read_user(pair, sizeof(pair), (void *)bp);
			c.bp = pair[0];
			c.pc = pair[1];
			c.sp = bp + 16;
			addr = p->interp_low;
			payload = ((__u64)HS_FRAME_STUB << HS_TYPE_SHIFT) | ((pc - addr) & 0xffffffffULL);
		}
		if (!ok)
			fs_rt_count(HS_CNT_ERR_INTERPRETER_FRAME);
	} else {
		__u64 blob = find_blob(p, pc);
		/* Userspace keeps blob_read below HS_BLOB_BUF: the mask is the bound the
		 * verifier sees. */
		__u32 len = p->blob_read & (HS_BLOB_BUF - 1);
		if (blob == 0) {
			fs_rt_count(HS_CNT_ERR_NO_CODEBLOB);
		} else if (len < 8 || bpf_probe_read_user(w->blob, len, (void *)blob)) {
			fs_rt_count(HS_CNT_ERR_READ);
		} else {
			ok = 1;
		}
		if (ok) {
			__u64 code_begin, code_end, deopt;
			__s32 frame_complete;
			if (p->flags & HS_FLAG_CODE_OFFSETS) {
				code_begin = blob + (__s32)blob_u32(w, p->blob_code_begin);
				code_end = blob + (__s32)blob_u32(w, p->blob_code_end);
			} else {
				code_begin = blob_u64(w, p->blob_code_begin);
				code_end = blob_u64(w, p->blob_code_end);
			}
			if (p->flags & HS_FLAG_DEOPT_OFFSET)
				deopt = blob + (__s32)blob_u32(w, p->nm_deopt_handler);
			else
				deopt = blob_u64(w, p->nm_deopt_handler);
			if (p->flags & HS_FLAG_FRAME_COMPLETE_16)
				frame_complete = (__s16)blob_u16(w, p->blob_frame_complete);
			else
				frame_complete = (__s32)blob_u32(w, p->blob_frame_complete);
			__u64 size = (__u64)blob_u32(w, p->blob_frame_size) * 8;

			enum hs_blob_kind kind;
			if (p->flags & HS_FLAG_BLOB_KIND) {
				__u8 k = blob_u8(w, p->blob_kind);
				if (k == p->kind_nmethod)
					kind = HS_BLOB_NMETHOD;
				else if (k == p->kind_vtable || k == p->kind_adapter)
					kind = HS_BLOB_PC_ONLY;
				else
					kind = size ? HS_BLOB_FRAME : HS_BLOB_RBP;
			} else {
				__u64 name = 0;
				bpf_probe_read_user(&name, sizeof(name), (void *)blob_u64(w, p->blob_name));
				if (name == HS_NAME_NMETHOD || name == HS_NAME_NATIVE_NMETHOD)
					kind = HS_BLOB_NMETHOD;
				else if (name == HS_NAME_VTABLE || name == HS_NAME_ADAPTERS)
					kind = HS_BLOB_PC_ONLY;
				else
					kind = size ? HS_BLOB_FRAME : HS_BLOB_RBP;
			}

			__u64 at = pc;
			if (kind == HS_BLOB_NMETHOD && !leaf && pc == deopt) {
				/* Deoptimized: the JVM replaced the return address by its handler and
				 * saved the original in the frame. */
				__u64 orig = 0;
				bpf_probe_read_user(&orig, sizeof(orig),
						    (void *)(sp + (__s32)blob_u32(w, p->nm_orig_pc_offset)));
				if (orig >= code_begin && orig < code_end) {
					at = orig;
					fs_rt_count(HS_CNT_DEOPTIMIZED);
				}
			}

			if (kind == HS_BLOB_RBP) {
				ok = unwind_rbp_stub(w, pc, sp, bp, leaf, &c);
			} else if (kind == HS_BLOB_PC_ONLY) {
				__u64 ra = 0;
				ok = !bpf_probe_read_user(&ra, sizeof(ra), (void *)sp);
				c.pc = ra;
				c.sp = sp + 8;
				c.bp = bp;
			} else if (leaf) {
				ok = unwind_leaf(w, pc, sp, bp, code_begin, frame_complete, size, &c);
			} else {
				ok = unwind_fixed(sp, bp, size, &c);
			}
			if (!ok)
				fs_rt_count(HS_CNT_ERR_READ);

			addr = blob;
			if (kind == HS_BLOB_NMETHOD)
				payload = ((__u64)HS_FRAME_COMPILED << HS_TYPE_SHIFT) |
					  (leaf ? HS_EXACT_BIT : 0) |
					  (((at - blob) & HS_PC_OFFSET_MASK) << HS_PC_OFFSET_SHIFT) |
					  (blob_u32(w, p->nm_compile_id) & HS_COMPILE_ID_MASK);
			else
				payload = ((__u64)HS_FRAME_STUB << HS_TYPE_SHIFT) |
					  ((pc - blob) & 0xffffffffULL);
		}
	}

	if (ok && (c.sp <= sp || c.pc < 0x1000)) {
		fs_rt_count(HS_CNT_ERR_INVALID_RETURN);
		ok = 0;
	}
	if (!ok) {
		fs_fail(st, FS_UNWIND_ERR_RUNTIME);
		w->stop = HS_STOP_ERROR;
	} else if (!fs_emit(st, e, addr, payload)) {
		w->stop = HS_STOP_ERROR;
	} else {
		st->pc = c.pc;
		st->sp = c.sp;
		st->bp = c.bp;
		st->exact = 0;
		if (!in_code_cache(p, c.pc))
			w->stop = HS_STOP_HANDBACK;
	}
}

FS_CALLBACK walk_step(__u64 index, void *arg)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	struct hs_walk *w = hs_walk_state();
	long stop = 1;
	if (st && e && w && !w->stop && !st->done) {
		w->steps++;
		walk_frame(st, e, w);
		stop = w->stop != 0;
	}
	return stop;
}

FS_RUNTIME_PROGRAM(fs_rt_hotspot)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	struct hs_walk *w = hs_walk_state();
	if (!st || !e || !w)
		return 0;
	if (fs_fresh_start(st)) {
		__u32 pid = st->pid;
		struct hs_proc *proc = bpf_map_lookup_elem(&hs_procs, &pid);
		if (!proc) {
			fs_rt_count(HS_CNT_ERR_NO_PROCESS);
			fs_fail(st, FS_UNWIND_ERR_RUNTIME);
			return fs_handback(ctx, st, e);
		}
		w->proc = *proc;
		w->stop = 0;
		w->steps = 0;
		w->regs_pc = FS_LEAF_REG(ctx, ip);
		w->r13 = FS_LEAF_REG(ctx, r13);
	}
	FS_LOOP(HS_STEPS_PER_RUN, walk_step, NULL);
	if (!w->stop && !st->done && w->steps < FS_MAX_USER_FRAMES)
		fs_continue(ctx, st); /* returns only when no tail call is left */
	return fs_handback(ctx, st, e);
}
