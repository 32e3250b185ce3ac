// SPDX-License-Identifier: GPL-2.0-only
/*
 * The .NET (CoreCLR) walker: a takeover runtime (see ferroscope/runtime.h). The native
 * unwinder hands the walk over whenever the PC enters a range the plug-in owns: a JIT code
 * heap, the code of a ReadyToRun image, or a block of stubs (precodes). The walker records
 * one frame per managed frame and unwinds it with the method's own unwind information (the
 * x64 UNWIND_INFO the runtime keeps for every method), until the PC leaves those ranges; then
 * it hands the registers back.
 *
 * Why not the frame pointer: CoreCLR keeps RBP a valid frame chain on Linux, but methods that
 * need no frame (small tier-1 methods) do not push one, and on-stack-replacement methods
 * inherit the frame of their tier-0 version: an RBP walk skips the caller of the first and
 * reads garbage above the second. Their unwind codes say exactly how much each frame holds.
 *
 * Per frame, at the PC (a return address is looked up at PC - 1):
 * - the rule cache (dn_rule_cache: per CPU, direct-mapped by PC, {pid, generation, PC} ->
 *   what to record and how to unwind) answers repeated return addresses at the cost of one
 *   array lookup;
 * - otherwise the range of the PC comes from the process's range table (dn_procs, sorted,
 *   binary-searched), then
 *   - JIT code: the method's start from the heap's nibble map (a 32-bit word per 256 code
 *     bytes, a nibble per 32 bytes: where a method starts in them), its CodeHeader (the
 *     pointer before the code) to the RealCodeHeader, whose RUNTIME_FUNCTIONs give the
 *     UNWIND_INFO of the method (or of the funclet holding the PC);
 *   - ReadyToRun code: the image's RUNTIME_FUNCTION table, binary-searched by RVA;
 *   - stubs: no frame of their own (the return address is on top of the stack);
 *   and the unwind codes that have run at the PC's offset (all of them past the prologue)
 *   give the frame's size and where RBP was saved. A leaf PC on a `[pop...] ret` epilogue is
 *   unwound from those instructions.
 *
 * A frame is recorded as (payload bits 53-55 the frame kind, bit 52 set for the leaf):
 * - JIT: the RealCodeHeader; the code start's bits 2-29 (bits 24-51) and the PC's offset
 *   from the code start (bits 0-23);
 * - ReadyToRun: the image base; the PC's RVA (bits 0-31);
 * - a stub: the stub range's start, its kind (bits 0-7);
 * - a stub block inside a JIT heap: its start, its kind (bits 0-7).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ferroscope/runtime.h"

char LICENSE[] SEC("license") = "GPL";

/* Ranges of one process's table (a power of two). */
#define DN_MAX_RANGES 512
/* Unwind code slots read per UNWIND_INFO (CoreCLR methods use a few). */
#define DN_MAX_CODES 32
/* Nibble-map words read per step (each covers 256 bytes of code) and steps per method:
 * methods up to 16 * 256 * 16 = 64 KiB are found. */
#define DN_NIBBLE_WORDS 16
#define DN_NIBBLE_BLOCKS 16
/* RUNTIME_FUNCTIONs of a RealCodeHeader looked at (the method and its first funclets). */
#define DN_MAX_FUNCLETS 4
/* Largest frame believed (bytes between a frame's SP and its caller's). */
#define DN_MAX_FRAME (1ULL << 24)

/* What a range of dn_proc is (dn_range.kind). */
enum dn_range_kind {
	/* A JIT code heap: base = the heap's mapBase, table = its nibble map, unwind_base =
	 * what its RUNTIME_FUNCTION offsets are relative to, count = the nibble map's version
	 * (1, or 2 for .NET 10's pointers). */
	DN_RANGE_JIT = 1,
	/* A ReadyToRun image's code: base = the image (RVA 0), table = its RUNTIME_FUNCTIONs,
	 * count = how many. */
	DN_RANGE_R2R = 2,
	/* A block of stubs: count = their kind (the runtime's StubCodeBlockKind). */
	DN_RANGE_STUB = 3,
};

/* What kind of frame a recorded frame is (payload bits 53-55). */
enum dn_frame_kind {
	DN_FRAME_JIT = 1,
	DN_FRAME_R2R = 2,
	DN_FRAME_STUB = 3,
	DN_FRAME_JIT_STUB = 4,
};

#define DN_KIND_SHIFT 53
#define DN_LEAF_BIT (1ULL << 52)

/* How a frame's caller is found (dn_rule.mode). */
enum dn_rule_mode {
	/* CFA = RSP + cfa_off. */
	DN_RULE_SP = 0,
	/* CFA = RBP + cfa_off (a frame register). */
	DN_RULE_FP = 1,
	/* Not managed code: where the walk hands back (the managed code's native caller). */
	DN_RULE_NATIVE = 2,
};

/* One range of a process. */
struct dn_range {
	__u64 start;
	__u64 end;
	__u64 base;
	__u64 table;
	__u64 unwind_base;
	__u32 kind;  /* enum dn_range_kind */
	__u32 count; /* JIT: nibble map version; R2R: RUNTIME_FUNCTIONs; stubs: their kind */
};

_Static_assert(sizeof(struct dn_range) == 48, "dn_range layout changed: update src/ebpf.rs");

/* A process's ranges, sorted by start, not overlapping (the value of dn_procs). */
struct dn_proc {
	__u32 count;
	/* Changes whenever the ranges change: cached rules of older generations are not used. */
	__u32 generation;
	__u64 reserved;
	struct dn_range ranges[DN_MAX_RANGES];
};

_Static_assert(sizeof(struct dn_proc) == 16 + 48 * DN_MAX_RANGES, "dn_proc layout changed");

/* What to record for a frame and how to find its caller: return address at CFA - 8, the
 * caller's SP is the CFA, its RBP at CFA + rbp_off (0: RBP is not saved by this frame). */
struct dn_rule {
	__u64 addr;
	__u64 payload;
	__s32 cfa_off;
	__s32 rbp_off;
	__u32 mode; /* enum dn_rule_mode */
	__u32 reserved;
};

/* A slot of the rule cache: the frame it is for, and its rule. */
struct dn_rule_slot {
	__u32 pid;
	__u32 generation;
	__u64 pc; /* the PC, with bit 63 set for the frame the sample interrupted */
	struct dn_rule rule;
};

/* The plug-in's counters (fs_rt_counters); names in src/ebpf.rs, in this order. */
enum dn_counter {
	/* A process with a .NET range but no dn_procs entry. */
	DN_CNT_ERR_NO_PROCESS = 0,
	/* A PC the native unwinder handed over that is in no range of the table. */
	DN_CNT_ERR_NO_RANGE = 1,
	/* No method start before a JIT PC in the nibble map. */
	DN_CNT_ERR_NO_CODE = 2,
	/* The method start is further back than the nibble-map search goes. */
	DN_CNT_ERR_CODE_TOO_LARGE = 3,
	/* Reading a code header, unwind information or the stack failed. */
	DN_CNT_ERR_READ = 4,
	/* Unwind information that is not understood (chained, too many codes, no function). */
	DN_CNT_ERR_UNWIND_INFO = 5,
	/* A frame whose caller would not be above it on the stack. */
	DN_CNT_ERR_BAD_FRAME = 6,
	/* Frames whose rule came from the cache. */
	DN_CNT_RULE_CACHE_HITS = 7,
	/* Frames whose rule was worked out. */
	DN_CNT_RULE_CACHE_MISSES = 8,
	DN_CNT_MAX = 9,
};

FS_RUNTIME_COUNTERS(DN_CNT_MAX)

/* Never read: they make clang emit BTF for the types the layout test checks. */
struct dn_proc *const volatile dn_abi_proc = 0;
struct dn_rule *const volatile dn_abi_rule = 0;
struct dn_rule_slot *const volatile dn_abi_rule_slot = 0;
const volatile enum dn_counter dn_abi_counter = DN_CNT_MAX;
const volatile enum dn_range_kind dn_abi_range_kind = DN_RANGE_STUB;
const volatile enum dn_frame_kind dn_abi_frame_kind = DN_FRAME_JIT_STUB;
const volatile enum dn_rule_mode dn_abi_rule_mode = DN_RULE_NATIVE;

/* Preallocated: perf_event programs may use no other hash map before Linux 6.1 (5.10 refuses
 * the program otherwise). A value is about 24 KiB, so the map is not sized by the loader's
 * process limit: DN_MAX_PROCS processes' ranges (about 3 MiB) at once. */
#define DN_MAX_PROCS 128

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DN_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct dn_proc);
} dn_procs SEC(".maps");

/* Rules of recent frames: per CPU, direct-mapped by PC (a return address repeats; a slot
 * holds the last frame whose PC hashed to it). Rules of an older generation of the
 * process's ranges, or of another process, do not match. */
#define DN_RULE_SLOTS 4096

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DN_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct dn_rule_slot);
} dn_rule_cache SEC(".maps");

/* Bytes read from the process for the frame being worked out. */
struct dn_buf {
	__u32 nibbles[DN_NIBBLE_WORDS];
	__u8 header[0x24 + 12 * DN_MAX_FUNCLETS];
	__u8 unwind[128]; /* 4 + 2 * DN_MAX_CODES read; indexes masked to 127 */
	__u8 code[8];
	__u32 function[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dn_buf);
} dn_bufs SEC(".maps");

/* What the program does next for the frame at st->pc. Each step does one small piece of work
 * with its state in the scratch area (map memory), so that the verifier's paths meet again
 * at every step: binary searches halve once per step, unwind codes are decoded one per step. */
enum dn_phase {
	/* Look the PC up: the cache, else start the range search. */
	DN_PHASE_FRAME = 0,
	/* One halving of the binary search over the process's ranges. */
	DN_PHASE_RANGE = 1,
	/* One block of the JIT heap's nibble map, searched down from the PC. */
	DN_PHASE_NIBBLE = 2,
	/* Read the JIT method's code header. */
	DN_PHASE_HEADER = 3,
	/* One halving of the binary search over a ReadyToRun image's functions. */
	DN_PHASE_R2R = 4,
	/* Read the function's UNWIND_INFO (and a leaf's code). */
	DN_PHASE_UNWIND = 5,
	/* One instruction of a leaf's possible epilogue. */
	DN_PHASE_EPILOGUE = 6,
	/* One unwind code. */
	DN_PHASE_CODES = 7,
	/* Stop: hand back. */
	DN_PHASE_STOP = 8,
};

/* The walk's state, in the unwinder state's scratch area (a map value: see FS_LOOP). */
struct dn_walk {
	struct dn_range range; /* the range of the frame being worked out */
	struct dn_rule rule;   /* what the frame records (addr, payload) and its rule */
	__u64 at;              /* the address looked up (PC, or PC - 1 for a return address) */
	__u64 code_start;      /* JIT: the method's start */
	__u64 function;        /* the start of the function (or funclet) holding the PC */
	__u64 word;            /* nibble search: the index of the top word of the next block */
	__u32 phase;           /* enum dn_phase */
	__u32 generation;
	__u32 lo, hi;          /* binary searches */
	__u32 blocks;          /* nibble blocks read for this frame */
	__u32 first;           /* the nibble block holds the PC's own word */
	__u32 frames;          /* frames recorded since the native unwinder handed over */
	__u32 rounds;          /* runs of the program (legacy build) */
	/* Unwind code decoding: the next slot, slots to skip, and what ran so far. */
	__u32 code;
	__u32 skip;
	__u32 total;           /* bytes pushed or allocated by the codes that ran */
	__u32 fp_total;        /* total when the frame register was set */
	__u32 rbp_total;       /* total when RBP was pushed */
	__u32 flags;           /* DN_DECODE_* */
	/* Epilogue decoding: where in the code, pops so far, at which pop RBP. */
	__u32 ep_at;
	__u32 ep_pops;
	__s32 ep_rbp;
	__u32 hits; /* rule cache hits of this run */
};

_Static_assert(sizeof(struct dn_walk) <= FS_RT_SCRATCH_BYTES, "dn_walk does not fit the scratch area");

/* dn_walk.flags while decoding unwind codes. */
#define DN_DECODE_FP 0x1  /* UWOP_SET_FPREG ran */
#define DN_DECODE_RBP 0x2 /* RBP was pushed */
#define DN_DECODE_BAD 0x4 /* a code this does not understand */

/* Steps per run: with bpf_loop one run walks the whole managed part of the stack; the legacy
 * build's inlined loops are short, and runs are chained with fs_continue(). */
#if FS_LEGACY
#define DN_STEPS 16
#define DN_ROUNDS 24
#else
#define DN_STEPS 8192
#define DN_ROUNDS 1
#endif

/* Halving steps believed: ranges (2^10 > DN_MAX_RANGES) and ReadyToRun functions. */
#define DN_NIBBLE_SCAN 16

static __always_inline struct dn_walk *walk_of(struct fs_unwind_state *st)
{
	return (struct dn_walk *)st->scratch;
}

static __always_inline __u32 u32_at(const __u8 *b, __u32 off)
{
	__u32 v;
	__builtin_memcpy(&v, b + off, 4);
	return v;
}

/* Stops the frame's walk without unwinding it: the native unwinder unwinds it by its frame
 * pointer (the ranges are frame-pointer ranges) when it was handed over for this PC. */
static __always_inline void give_up(struct fs_unwind_state *st, struct dn_walk *w, __u32 counter)
{
	fs_rt_count(counter);
	fs_decline(st);
	w->phase = DN_PHASE_STOP;
}

/* The frame at st->pc's cache slot and its key PC. */
static __always_inline struct dn_rule_slot *rule_slot(struct fs_unwind_state *st, __u64 *key_pc)
{
	__u64 pc = st->pc | ((__u64)(st->exact != 0) << 63);
	__u32 index = (__u32)(pc ^ (pc >> 12) ^ (pc >> 24) ^ st->pid) & (DN_RULE_SLOTS - 1);
	*key_pc = pc;
	return bpf_map_lookup_elem(&dn_rule_cache, &index);
}

/* Records the frame and moves the registers to its caller with w->rule. */
static __always_inline void apply_rule(struct fs_unwind_state *st, struct fs_trace_buf *e,
				       struct dn_walk *w)
{
	__u64 cfa = (w->rule.mode == DN_RULE_FP ? st->bp : st->sp) + (__s64)w->rule.cfa_off;
	__u64 pair[2] = {};
	__u64 ra = 0, bp = st->bp;
	__s32 rbp_off = w->rule.rbp_off;
	long failed = cfa <= st->sp || cfa - st->sp > DN_MAX_FRAME;
	if (failed) {
		give_up(st, w, DN_CNT_ERR_BAD_FRAME);
	} else {
		if (rbp_off == -16) {
			/* The usual frame: the saved RBP right below the return address. */
			failed = bpf_probe_read_user(pair, sizeof(pair), (void *)(cfa - 16));
			bp = pair[0];
			ra = pair[1];
		} else {
			failed = bpf_probe_read_user(&ra, sizeof(ra), (void *)(cfa - 8));
			if (!failed && rbp_off != 0)
				failed = bpf_probe_read_user(&bp, sizeof(bp), (void *)(cfa + (__s64)rbp_off));
		}
		if (failed) {
			give_up(st, w, DN_CNT_ERR_READ);
		} else if (!fs_emit(st, e, w->rule.addr, w->rule.payload)) {
			w->phase = DN_PHASE_STOP;
		} else {
			w->frames++;
			st->pc = ra;
			st->sp = cfa;
			st->bp = bp;
			st->exact = 0;
			w->phase = DN_PHASE_FRAME;
		}
	}
}

/* Caches w->rule for the frame at st->pc and applies it. */
static __always_inline void learn_rule(struct fs_unwind_state *st, struct fs_trace_buf *e,
				       struct dn_walk *w)
{
	__u64 pc = 0;
	struct dn_rule_slot *slot = rule_slot(st, &pc);
	fs_rt_count(DN_CNT_RULE_CACHE_MISSES);
	if (slot) {
		slot->pid = st->pid;
		slot->generation = w->generation;
		slot->pc = pc;
		slot->rule = w->rule;
	}
	apply_rule(st, e, w);
}

/* DN_PHASE_FRAME: the rule from the cache, or the start of the range search. */
static __always_inline void phase_frame(struct fs_unwind_state *st, struct fs_trace_buf *e,
					struct dn_walk *w)
{
	__u64 pc = 0;
	struct dn_rule_slot *slot = rule_slot(st, &pc);
	w->at = st->exact ? st->pc : st->pc - 1;
	/* A PC remembered as native code but handed over as ours is looked up again. */
	if (slot && slot->pc == pc && slot->pid == st->pid && slot->generation == w->generation &&
	    (slot->rule.mode != DN_RULE_NATIVE || w->frames > 0)) {
		w->hits++; /* counted once per run */
		w->rule = slot->rule;
		if (w->rule.mode == DN_RULE_NATIVE)
			w->phase = DN_PHASE_STOP;
		else
			apply_rule(st, e, w);
	} else {
		__u32 pid = st->pid;
		struct dn_proc *proc = bpf_map_lookup_elem(&dn_procs, &pid);
		if (!proc) {
			give_up(st, w, DN_CNT_ERR_NO_PROCESS);
		} else {
			w->lo = 0;
			w->hi = proc->count > DN_MAX_RANGES ? DN_MAX_RANGES : proc->count;
			w->phase = DN_PHASE_RANGE;
		}
	}
}

/* DN_PHASE_RANGE: one halving (the last range starting at or below w->at: lo stays a
 * candidate), then what the range holds. */
static __always_inline void phase_range(struct fs_unwind_state *st, struct fs_trace_buf *e,
					struct dn_walk *w)
{
	__u32 pid = st->pid;
	struct dn_proc *proc = bpf_map_lookup_elem(&dn_procs, &pid);
	__u32 lo = w->lo, hi = w->hi;
	if (!proc) {
		give_up(st, w, DN_CNT_ERR_NO_PROCESS);
	} else if (lo + 1 < hi) {
		__u32 mid = (lo + hi) / 2;
		if (proc->ranges[mid & (DN_MAX_RANGES - 1)].start <= w->at)
			w->lo = mid;
		else
			w->hi = mid;
	} else {
		struct dn_range *r = &proc->ranges[lo & (DN_MAX_RANGES - 1)];
		if (hi == 0 || r->start > w->at || w->at >= r->end) {
			/* Native code: hand back. The first PC was handed over as ours: not in
			 * the table (yet), so it is the native unwinder's. */
			if (w->frames == 0) {
				give_up(st, w, DN_CNT_ERR_NO_RANGE);
			} else {
				/* Remembered: the next sample through here hands back at once. */
				__u64 pc = 0;
				struct dn_rule_slot *slot = rule_slot(st, &pc);
				if (slot) {
					slot->pid = st->pid;
					slot->generation = w->generation;
					slot->pc = pc;
					slot->rule.mode = DN_RULE_NATIVE;
				}
				w->phase = DN_PHASE_STOP;
			}
		} else {
			w->range = *r;
			__u32 kind = w->range.kind;
			if (kind == DN_RANGE_JIT) {
				w->word = (w->at - w->range.base) >> 8;
				w->blocks = 0;
				w->first = 1;
				w->phase = DN_PHASE_NIBBLE;
			} else if (kind == DN_RANGE_R2R) {
				w->lo = 0;
				w->hi = w->range.count;
				w->phase = DN_PHASE_R2R;
			} else if (st->exact) {
				/* A stub (a jump): the return address is on top of the stack. */
				w->rule.addr = w->range.start;
				w->rule.payload = ((__u64)DN_FRAME_STUB << DN_KIND_SHIFT) | DN_LEAF_BIT |
						  (w->range.count & 0xff);
				w->rule.mode = DN_RULE_SP;
				w->rule.cfa_off = 8;
				w->rule.rbp_off = 0;
				learn_rule(st, e, w);
			} else {
				/* A stub that called something: not expected of CoreCLR's stubs. */
				give_up(st, w, DN_CNT_ERR_UNWIND_INFO);
			}
		}
	}
}

/* The lowest non-zero nibble of `word` at or above position... : the method start closest
 * below position `max` (0-7, 0 in the top nibble): (value | position << 8), 0 when none. */
static __always_inline __u32 nibble_in(__u32 word, __u32 max)
{
	__u32 tmp = word >> (28 - ((max & 7) << 2));
	__u32 found = 0;
#pragma unroll
	for (int i = 0; i < 8; i++) {
		if (found == 0 && (__u32)i <= max && (tmp & 0xf) != 0)
			found = (tmp & 0xf) | ((max - i) << 8);
		tmp >>= 4;
	}
	return found;
}

/* A word of a version 2 nibble map (.NET 10) that a method covers whole: the method's
 * start relative to the map's base (its low nibble, 9-12, holds bits 2-3). */
static __always_inline int nibble_pointer(__u32 word)
{
	return (word & 0xf) > 8;
}

static __always_inline __u64 nibble_decode(__u32 word)
{
	return (word & ~0xfu) + (((word & 0xf) - 9) << 2);
}

/* DN_PHASE_NIBBLE: one block of the nibble map (DN_NIBBLE_SCAN words up to w->word). A word
 * covers 256 bytes of code, a nibble 32 bytes (the first in the word's top bits): 1 + the
 * method start's offset / 4 in those 32 bytes, 0 when none starts there. Version 2 maps
 * also point at the start from every word a method covers whole: the PC's word or the one
 * before it tells. */
static __always_inline void phase_nibble(struct fs_unwind_state *st, struct dn_walk *w,
					 struct dn_buf *buf)
{
	__u64 word = w->word;
	__u64 first_word = word >= DN_NIBBLE_SCAN - 1 ? word - (DN_NIBBLE_SCAN - 1) : 0;
	__u32 top = (__u32)(word - first_word) & (DN_NIBBLE_SCAN - 1);
	__u32 v2 = w->range.count == 2;
	long failed = bpf_probe_read_user(buf->nibbles, DN_NIBBLE_SCAN * 4,
					  (void *)(w->range.table + first_word * 4));
	/* The word to search and the highest position in it (8: nothing to search). */
	__u32 search = buf->nibbles[top], max = 8;
	__u64 relative = 0; /* a start decoded from a version 2 pointer, + 1 (0: none) */
	if (!failed && w->first) {
		/* The PC's own word: only starts at or below its position and offset. */
		__u64 delta = w->at - w->range.base;
		__u32 pos = (__u32)(delta >> 5) & 7;
		__u32 offset = (((__u32)delta & 31) >> 2) + 1;
		__u32 nib = (search >> (28 - (pos << 2))) & 0xf;
		if (v2 && nibble_pointer(search))
			relative = nibble_decode(search) + 1;
		/* A start later in the PC's own bucket is another method's. */
		else if (nib > offset)
			max = pos > 0 ? pos - 1 : 8;
		else
			max = pos;
	}
	w->lo = max < 8 ? nibble_in(search, max) : 0;
	w->code_start = relative;
	asm volatile("" ::: "memory");
	__u32 found = w->lo;
	relative = w->code_start;
	if (!failed && found == 0 && relative == 0) {
		/* The closest lower word with a start (version 2: only the one before). */
		int last = -1;
		__u32 limit = w->first ? top : top + 1;
		__u32 lowest = v2 && limit > 0 ? limit - 1 : 0;
		/* The words to look at as a mask: comparisons with `limit` in the loop would
		 * split the verifier's states on every word. */
		__u32 valid = ((1u << (limit & 31)) - 1) & ~((1u << (lowest & 31)) - 1);
		w->hi = valid;
		asm volatile("" ::: "memory");
		valid = w->hi;
#pragma unroll
		for (int i = 0; i < DN_NIBBLE_SCAN; i++) {
			if (((valid >> i) & 1) && buf->nibbles[i] != 0)
				last = i;
		}
		w->hi = (__u32)last;
	} else {
		w->hi = top;
	}
	/* Let the scan's paths meet: what follows reads its result back from the map. */
	asm volatile("" ::: "memory");
	__u32 found_word = w->hi;
	__u32 prev = buf->nibbles[found_word & (DN_NIBBLE_SCAN - 1)];
	if (!failed && found == 0 && relative == 0 && (int)found_word >= 0) {
		if (v2 && nibble_pointer(prev))
			relative = nibble_decode(prev) + 1;
		else
			found = nibble_in(prev, 7);
	}
	w->first = 0;
	if (failed) {
		give_up(st, w, DN_CNT_ERR_READ);
	} else if (relative != 0) {
		w->code_start = w->range.base + relative - 1;
		w->phase = DN_PHASE_HEADER;
	} else if (found != 0) {
		__u64 bucket = (first_word + (found_word & (DN_NIBBLE_SCAN - 1))) * 8 + (found >> 8);
		w->code_start = w->range.base + bucket * 32 + (((found & 0xf) - 1) << 2);
		w->phase = DN_PHASE_HEADER;
	} else if (first_word == 0 || v2) {
		give_up(st, w, DN_CNT_ERR_NO_CODE);
	} else if (w->blocks + 1 >= DN_NIBBLE_BLOCKS) {
		give_up(st, w, DN_CNT_ERR_CODE_TOO_LARGE);
	} else {
		w->blocks++;
		w->word = first_word - 1;
	}
}

/* DN_PHASE_HEADER: the JIT method's code header, its RealCodeHeader and the function of the
 * PC (the method or one of its funclets). */
static __always_inline void phase_header(struct fs_unwind_state *st, struct fs_trace_buf *e,
					 struct dn_walk *w, struct dn_buf *buf)
{
	__u64 header = 0;
	long failed = w->code_start > w->at ||
		      bpf_probe_read_user(&header, sizeof(header), (void *)(w->code_start - 8));
	if (failed) {
		give_up(st, w, DN_CNT_ERR_NO_CODE);
	} else if (header <= 0xf) {
		/* A block of stubs in the heap (its header holds their kind): no frame. */
		w->rule.addr = w->code_start;
		w->rule.payload = ((__u64)DN_FRAME_JIT_STUB << DN_KIND_SHIFT) | DN_LEAF_BIT | header;
		w->rule.mode = DN_RULE_SP;
		w->rule.cfa_off = 8;
		w->rule.rbp_off = 0;
		if (st->exact)
			learn_rule(st, e, w);
		else
			give_up(st, w, DN_CNT_ERR_UNWIND_INFO);
	} else if (bpf_probe_read_user(buf->header, sizeof(buf->header), (void *)header)) {
		give_up(st, w, DN_CNT_ERR_READ);
	} else {
		__u32 n = u32_at(buf->header, 0x20);
		__u64 rel = w->at - w->range.unwind_base;
		int which = -1;
#pragma unroll
		for (int i = 0; i < DN_MAX_FUNCLETS; i++) {
			__u32 begin = u32_at(buf->header, 0x24 + 12 * i);
			__u32 end = u32_at(buf->header, 0x24 + 12 * i + 4);
			if (which < 0 && (__u32)i < n && begin <= rel && rel < end)
				which = i;
		}
		w->lo = (__u32)which;
		asm volatile("" ::: "memory");
		which = (int)w->lo;
		if (which < 0) {
			give_up(st, w, DN_CNT_ERR_UNWIND_INFO);
		} else {
			__u32 at = 0x24 + 12 * (which & (DN_MAX_FUNCLETS - 1));
			w->function = w->range.unwind_base + u32_at(buf->header, at);
			/* The UNWIND_INFO's address waits in code_start's place: the payload keeps
			 * what it needs of the code start. */
			__u64 offset = st->pc - w->code_start;
			if (offset > 0xffffff)
				offset = 0xffffff;
			w->rule.addr = header;
			w->rule.payload = ((__u64)DN_FRAME_JIT << DN_KIND_SHIFT) |
					  (st->exact ? DN_LEAF_BIT : 0) |
					  (((w->code_start >> 2) & 0xfffffff) << 24) | offset;
			w->code_start = w->range.unwind_base + u32_at(buf->header, at + 8);
			w->phase = DN_PHASE_UNWIND;
		}
	}
}

/* DN_PHASE_R2R: one halving over the image's RUNTIME_FUNCTIONs (sorted by start), then the
 * function holding the PC. */
static __always_inline void phase_r2r(struct fs_unwind_state *st, struct dn_walk *w,
				      struct dn_buf *buf)
{
	__u64 rva = w->at - w->range.base;
	__u32 lo = w->lo, hi = w->hi;
	if (lo + 1 < hi) {
		__u32 mid = (lo + hi) / 2;
		__u32 begin = 0;
		if (bpf_probe_read_user(&begin, 4, (void *)(w->range.table + 12 * (__u64)mid)))
			give_up(st, w, DN_CNT_ERR_READ);
		else if (begin <= rva)
			w->lo = mid;
		else
			w->hi = mid;
	} else if (hi == 0 || bpf_probe_read_user(buf->function, sizeof(buf->function),
						  (void *)(w->range.table + 12 * (__u64)lo))) {
		give_up(st, w, DN_CNT_ERR_READ);
	} else if (rva < buf->function[0] || rva >= buf->function[1]) {
		give_up(st, w, DN_CNT_ERR_UNWIND_INFO);
	} else {
		w->function = w->range.base + buf->function[0];
		w->code_start = w->range.base + buf->function[2]; /* the UNWIND_INFO */
		w->rule.addr = w->range.base;
		w->rule.payload = ((__u64)DN_FRAME_R2R << DN_KIND_SHIFT) |
				  (st->exact ? DN_LEAF_BIT : 0) | (__u32)(st->pc - w->range.base);
		w->phase = DN_PHASE_UNWIND;
	}
}

/* DN_PHASE_UNWIND: reads the UNWIND_INFO (at w->code_start now) and, for the frame the
 * sample interrupted, its next instructions. */
static __always_inline void phase_unwind(struct fs_unwind_state *st, struct dn_walk *w,
					 struct dn_buf *buf)
{
	long failed = bpf_probe_read_user(buf->unwind, 4 + 2 * DN_MAX_CODES, (void *)w->code_start);
	__u32 version = buf->unwind[0] & 7, flags = buf->unwind[0] >> 3, count = buf->unwind[2];
	if (failed) {
		give_up(st, w, DN_CNT_ERR_READ);
	} else if ((version != 1 && version != 2) || (flags & 4) || count > DN_MAX_CODES) {
		/* Chained information (the parent's codes follow) is not used by CoreCLR's JIT. */
		give_up(st, w, DN_CNT_ERR_UNWIND_INFO);
	} else {
		w->code = 0;
		w->skip = 0;
		w->total = 0;
		w->fp_total = 0;
		w->rbp_total = 0;
		w->flags = 0;
		w->ep_at = 0;
		w->ep_pops = 0;
		w->ep_rbp = -1;
		if (st->exact && !bpf_probe_read_user(buf->code, sizeof(buf->code), (void *)st->pc))
			w->phase = DN_PHASE_EPILOGUE;
		else
			w->phase = DN_PHASE_CODES;
	}
}

/* DN_PHASE_EPILOGUE: one instruction of `pop...; ret` at a leaf PC; at the `ret`, the rule
 * is theirs; anything else: decode the unwind codes. */
static __always_inline void phase_epilogue(struct fs_unwind_state *st, struct fs_trace_buf *e,
					   struct dn_walk *w, struct dn_buf *buf)
{
	__u32 at = w->ep_at;
	__u8 b = buf->code[at & 7];
	__u8 next = buf->code[(at + 1) & 7];
	if (at >= 7 || w->ep_pops >= 6) {
		w->phase = DN_PHASE_CODES;
	} else if (b == 0xc3) {
		w->rule.mode = DN_RULE_SP;
		w->rule.cfa_off = 8 * w->ep_pops + 8;
		w->rule.rbp_off = w->ep_rbp >= 0 ? 8 * w->ep_rbp - w->rule.cfa_off : 0;
		learn_rule(st, e, w);
	} else if (b == 0x41 && next >= 0x58 && next <= 0x5f) {
		w->ep_pops++;
		w->ep_at = at + 2;
	} else if (b >= 0x58 && b <= 0x5f) {
		if (b == 0x5d)
			w->ep_rbp = (__s32)w->ep_pops;
		w->ep_pops++;
		w->ep_at = at + 1;
	} else {
		w->phase = DN_PHASE_CODES;
	}
}

/* DN_PHASE_CODES: one unwind code (listed last-executed first; those whose CodeOffset is at
 * or below the PC's offset have run), then the rule. */
static __always_inline void phase_codes(struct fs_unwind_state *st, struct fs_trace_buf *e,
					struct dn_walk *w, struct dn_buf *buf)
{
	__u32 i = w->code;
	__u32 count = buf->unwind[2];
	if (i < count && i < DN_MAX_CODES) {
		__u32 code_offset = buf->unwind[(4 + 2 * i) & 127];
		__u32 op = buf->unwind[(5 + 2 * i) & 127] & 0xf;
		__u32 op_info = buf->unwind[(5 + 2 * i) & 127] >> 4;
		__u32 slot1 = buf->unwind[(6 + 2 * i) & 127] | ((__u32)buf->unwind[(7 + 2 * i) & 127] << 8);
		__u32 slot2 = buf->unwind[(8 + 2 * i) & 127] | ((__u32)buf->unwind[(9 + 2 * i) & 127] << 8);
		__u32 ran = code_offset <= w->at - w->function;
		__u32 size = 0, skip = 0;
		if (w->skip > 0) {
			skip = w->skip - 1;
		} else if (op == 0) { /* UWOP_PUSH_NONVOL */
			size = 8;
			if (op_info == 5 && ran) {
				w->flags |= DN_DECODE_RBP;
				w->rbp_total = w->total;
			}
		} else if (op == 1) { /* UWOP_ALLOC_LARGE */
			size = op_info == 0 ? slot1 * 8 : slot1 | (slot2 << 16);
			skip = op_info == 0 ? 1 : 2;
		} else if (op == 2) { /* UWOP_ALLOC_SMALL */
			size = op_info * 8 + 8;
		} else if (op == 3) { /* UWOP_SET_FPREG */
			if (ran) {
				w->flags |= DN_DECODE_FP;
				w->fp_total = w->total;
			}
		} else if (op == 4 || op == 8) { /* UWOP_SAVE_NONVOL, UWOP_SAVE_XMM128 */
			skip = 1;
		} else if (op == 5 || op == 9) { /* their _FAR forms */
			skip = 2;
		} else if (op == 6 && (buf->unwind[0] & 7) == 2) { /* UWOP_EPILOG (version 2) */
			skip = 1;
		} else {
			w->flags |= DN_DECODE_BAD; /* UWOP_PUSH_MACHFRAME and unknown codes */
		}
		if (ran && w->skip == 0)
			w->total += size;
		w->skip = skip;
		w->code = i + 1;
	} else {
		__u32 frame_reg = buf->unwind[3] & 0xf, frame_off = buf->unwind[3] >> 4;
		__u32 fp = (w->flags & DN_DECODE_FP) != 0;
		if ((w->flags & DN_DECODE_BAD) || (fp && frame_reg != 5)) {
			give_up(st, w, DN_CNT_ERR_UNWIND_INFO);
		} else {
			/* An operation's delta from the entry is the final total minus what ran
			 * after it (the codes before it in the list). */
			if (fp) {
				w->rule.mode = DN_RULE_FP;
				w->rule.cfa_off = 8 + (__s32)(w->total - w->fp_total) - 16 * (__s32)frame_off;
			} else {
				w->rule.mode = DN_RULE_SP;
				w->rule.cfa_off = 8 + (__s32)w->total;
			}
			/* The saved RBP is 8 bytes below where the stack stood after its push. */
			w->rule.rbp_off = (w->flags & DN_DECODE_RBP) ?
				-(8 + (__s32)(w->total - w->rbp_total)) : 0;
			learn_rule(st, e, w);
		}
	}
}

/* One step of the walk. Returns 1 to stop. */
FS_CALLBACK dn_step(__u64 index, void *arg)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	__u32 zero = 0;
	struct dn_buf *buf = bpf_map_lookup_elem(&dn_bufs, &zero);
	long stop = 1;
	if (st && e && buf && !st->done) {
		struct dn_walk *w = walk_of(st);
		__u32 phase = w->phase;
		if (phase == DN_PHASE_FRAME)
			phase_frame(st, e, w);
		else if (phase == DN_PHASE_RANGE)
			phase_range(st, e, w);
		else if (phase == DN_PHASE_NIBBLE)
			phase_nibble(st, w, buf);
		else if (phase == DN_PHASE_HEADER)
			phase_header(st, e, w, buf);
		else if (phase == DN_PHASE_R2R)
			phase_r2r(st, w, buf);
		else if (phase == DN_PHASE_UNWIND)
			phase_unwind(st, w, buf);
		else if (phase == DN_PHASE_EPILOGUE)
			phase_epilogue(st, e, w, buf);
		else if (phase == DN_PHASE_CODES)
			phase_codes(st, e, w, buf);
		else
			w->phase = DN_PHASE_STOP;
		stop = w->phase == DN_PHASE_STOP || st->done;
	}
	return stop;
}

FS_RUNTIME_PROGRAM(fs_rt_dotnet)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	if (!st || !e)
		return 0;
	struct dn_walk *w = walk_of(st);
	if (fs_fresh_start(st)) {
		__u32 pid = st->pid;
		struct dn_proc *proc = bpf_map_lookup_elem(&dn_procs, &pid);
		w->phase = DN_PHASE_FRAME;
		w->frames = 0;
		w->rounds = 0;
		w->generation = proc ? proc->generation : 0;
	}
	w->hits = 0;
	FS_LOOP(DN_STEPS, dn_step, NULL);
	fs_rt_count_n(DN_CNT_RULE_CACHE_HITS, w->hits);
	if (w->phase != DN_PHASE_STOP && !st->done && w->rounds + 1 < DN_ROUNDS) {
		w->rounds++;
		fs_continue(ctx, st); /* returns only when out of tail calls */
	}
	return fs_handback(ctx, st, e);
}
