// SPDX-License-Identifier: GPL-2.0-only
/*
 * The test runtime's walker: a takeover runtime for the "JIT" code of fixtures/seam/jit_embed.c
 * (anonymous executable memory its plug-in owns). Each frame in it is recorded as the code's
 * start with the PC's offset as payload, and unwound with the frame pointer, minding the
 * prologue (`push rbp; mov rbp, rsp` at offsets 0 and 1) when it is the frame the sample
 * interrupted. A test fixture, not a product runtime.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ferroscope/runtime.h"

char LICENSE[] SEC("license") = "GPL";

enum testjit_counter {
	TESTJIT_CNT_READ_FAILED = 0,
	TESTJIT_CNT_MAX = 1,
};

FS_RUNTIME_COUNTERS(TESTJIT_CNT_MAX)

/* Frames of the JIT code walked per run (it never nests deeper than this here). */
#define TESTJIT_FRAMES 8

FS_RUNTIME_PROGRAM(fs_rt_testjit)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	if (!st || !e)
		return 0;
	for (int i = 0; i < TESTJIT_FRAMES; i++) {
		__u64 at = st->pc - (st->exact ? 0 : 1);
		struct fs_pid_mapping *m = fs_mapping_at(st->pid, at);
		if (!m || m->owner != fs_rt_slot)
			break;
		__u64 offset = st->pc - m->start;
		if (!fs_emit(st, e, m->start, offset))
			break;
		__u64 ra = 0, bp = st->bp, sp = st->sp;
		long failed;
		if (st->exact && offset == 0) {
			/* Before `push rbp`: the return address is on top. */
			failed = bpf_probe_read_user(&ra, 8, (void *)sp);
			sp += 8;
		} else if (st->exact && offset < 4) {
			/* After `push rbp`, before `mov rbp, rsp`. */
			failed = bpf_probe_read_user(&bp, 8, (void *)sp) ||
				 bpf_probe_read_user(&ra, 8, (void *)(sp + 8));
			sp += 16;
		} else {
			__u64 pair[2] = {};
			failed = bpf_probe_read_user(pair, sizeof(pair), (void *)st->bp);
			bp = pair[0];
			ra = pair[1];
			sp = st->bp + 16;
		}
		if (failed) {
			fs_rt_count(TESTJIT_CNT_READ_FAILED);
			fs_fail(st, FS_UNWIND_ERR_READ_FAILED);
			break;
		}
		st->pc = ra;
		st->sp = sp;
		st->bp = bp;
		st->exact = 0;
	}
	return fs_handback(ctx, st, e);
}
