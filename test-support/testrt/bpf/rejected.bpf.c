// SPDX-License-Identifier: GPL-2.0-only
/*
 * A runtime program no verifier accepts (it reads far outside its context), for the test
 * that a rejected runtime program turns off its runtime alone. A test fixture.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ferroscope/runtime.h"

char LICENSE[] SEC("license") = "GPL";

FS_RUNTIME_PROGRAM(fs_rt_rejected)
{
	/* Out of bounds of struct bpf_perf_event_data: "invalid bpf_context access". */
	return *(volatile int *)((char *)ctx + 4096);
}
