// SPDX-License-Identifier: GPL-2.0
// A program the verifier must refuse: it writes through a map lookup's result without checking
// it for NULL.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} values SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpgid")
int unchecked_lookup(void *ctx)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&values, &key);

	*value += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
