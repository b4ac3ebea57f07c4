// SPDX-License-Identifier: GPL-2.0
// XDP: drops IPv4 UDP datagrams to port 9999 and passes everything else, counting the UDP
// datagrams it passed (key 0) and dropped (key 1).
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define DROP_PORT 9999

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} udp_datagrams SEC(".maps");

SEC("xdp")
int drop_udp_9999(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	__u32 dropped;
	__u64 *count;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP || ip->ihl != 5)
		return XDP_PASS;
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return XDP_PASS;
	dropped = udp->dest == bpf_htons(DROP_PORT);
	count = bpf_map_lookup_elem(&udp_datagrams, &dropped);
	if (count)
		__sync_fetch_and_add(count, 1);
	return dropped ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
