// SPDX-License-Identifier: GPL-2.0-only
/* Compiled by tests/layout.rs: every header in both builds, and BTF for every ABI type. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ferroscope/runtime.h"

char LICENSE[] SEC("license") = "GPL";

struct fs_trace_header *const volatile fs_abi_trace_header = 0;
struct fs_frame *const volatile fs_abi_frame = 0;
struct fs_pid_event *const volatile fs_abi_pid_event = 0;
struct fs_pid_mapping_key *const volatile fs_abi_pid_mapping_key = 0;
struct fs_pid_mapping *const volatile fs_abi_pid_mapping = 0;
struct fs_delta_page_key *const volatile fs_abi_delta_page_key = 0;
struct fs_delta_page *const volatile fs_abi_delta_page = 0;
struct fs_delta_entry *const volatile fs_abi_delta_entry = 0;
struct fs_unwind_info *const volatile fs_abi_unwind_info = 0;
struct fs_unwind_state *const volatile fs_abi_unwind_state = 0;
struct fs_trace_buf *const volatile fs_abi_trace_buf = 0;
const volatile enum fs_counter fs_abi_counter = FS_CNT_MAX;
const volatile enum fs_unwind_error fs_abi_unwind_error = FS_UNWIND_ERR_MAX;
const volatile enum fs_pid_event_kind fs_abi_pid_event_kind = FS_PID_EXEC;
const volatile enum fs_unwind_kind fs_abi_unwind_kind = FS_UNWIND_FRAME_POINTER;
const volatile enum fs_rt_common_counter fs_abi_rt_counter = FS_RT_COMMON_COUNTERS;

FS_RUNTIME_COUNTERS(1)

FS_RUNTIME_PROGRAM(fs_rt_anchor)
{
	struct fs_unwind_state *st = fs_state();
	struct fs_trace_buf *e = fs_trace();
	if (!st || !e)
		return 0;
	fs_rt_count(0);
	fs_thread_pointer(st);
	return fs_handback(ctx, st, e);
}
