// SPDX-License-Identifier: GPL-2.0
// Counts getpgid(2) calls per process (thread group) into a hash map that user space reads.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} getpgid_calls SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpgid")
int count_getpgid(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 one = 1;
	__u64 *count = bpf_map_lookup_elem(&getpgid_calls, &tgid);

	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&getpgid_calls, &tgid, &one, BPF_NOEXIST);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
