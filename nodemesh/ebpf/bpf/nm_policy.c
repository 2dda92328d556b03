// SPDX-License-Identifier: Apache-2.0
/* cgroup_skb/ingress on the mesh cgroup: the receiving pod's ingress
 * policy, before a SYN or datagram reaches its socket. Only what opens a
 * flow is judged (a TCP SYN without ACK; a UDP datagram that is not a reply
 * to one the socket sent), so established traffic pays a header read. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/policy.h"

#define NM_ETH_P_IP 0x0800
#define NM_TCP_SYN 0x02
#define NM_TCP_ACK 0x10
#define NM_IP_OFFMASK 0x1fff

struct nm_iphdr {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
};

struct nm_l4 {
	__be16 sport;
	__be16 dport;
	__u8 rest[9];
	__u8 tcp_flags; /* TCP only: byte 13 of the header */
};

/* A reply to a datagram this socket sent (nm_egress4_allowed filed it). */
static __always_inline bool nm_udp_reply(struct __sk_buff *skb, __be32 saddr, __be16 sport)
{
	struct nm_revnat_key key = {
		.cookie = bpf_get_socket_cookie(skb),
		.addr = saddr,
		.port = sport,
	};

	return bpf_map_lookup_elem(&nm_udp_peers_v1, &key) != NULL;
}

/* An egress-enforcing pod's socket heard from this UDP peer: its answers
 * to it are replies, not new flows (nm_egress4_allowed). */
static __always_inline void nm_udp_heard(struct __sk_buff *skb, __be32 saddr, __be16 sport)
{
	struct nm_revnat_key key = {
		.cookie = bpf_get_socket_cookie(skb),
		.addr = saddr,
		.port = sport,
	};
	__u32 one = 1;

	bpf_map_update_elem(&nm_udp_peers_v1, &key, &one, BPF_ANY);
}

SEC("cgroup_skb/ingress")
int nm_policy_ingress(struct __sk_buff *skb)
{
	const struct nm_identity_value *dst, *src;
	struct nm_iphdr ip;
	struct nm_l4 l4 = {};
	struct nm_flow f = {};
	struct nm_verdict v;
	__u32 off;

	if (skb->protocol != bpf_htons(NM_ETH_P_IP))
		return 1;
	if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
		return 1;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return 1;
	if ((ip.ver_ihl >> 4) != 4 || (ip.frag_off & bpf_htons(NM_IP_OFFMASK)))
		return 1; /* a later fragment carries no ports */
	off = (ip.ver_ihl & 0xf) * 4;
	if (ip.protocol == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, off, &l4, sizeof(l4)))
			return 1;
		if (!(l4.tcp_flags & NM_TCP_SYN) || (l4.tcp_flags & NM_TCP_ACK))
			return 1;
	} else if (bpf_skb_load_bytes(skb, off, &l4, 4)) {
		return 1;
	}
	dst = nm_ipcache(ip.daddr);
	if (!dst || !dst->flags)
		return 1;
	if (ip.protocol == IPPROTO_UDP && nm_udp_reply(skb, ip.saddr, l4.sport))
		return 1;
	src = nm_ipcache(ip.saddr);
	f.src_identity = src ? src->identity : NM_ID_WORLD;
	/* The node itself always reaches its pods (Cilium's allow-localhost):
	 * kubelet probes, and the node Envoy's upstream connections, whose
	 * clients were judged at connect() (nm_steer4_allowed). */
	if ((dst->flags & NM_FLAG_INGRESS) && f.src_identity != NM_ID_HOST) {
		f.saddr = ip.saddr;
		f.daddr = ip.daddr;
		f.orig_daddr = ip.daddr;
		f.sport = l4.sport;
		f.dport = l4.dport;
		f.orig_dport = l4.dport;
		f.proto = ip.protocol;
		f.dst_identity = dst->identity;
		if (nm_policy_judge(&f, dst->identity, f.src_identity, NM_DIR_INGRESS, &v)) {
			f.cgroup_id = bpf_skb_cgroup_id(skb);
			f.cookie = bpf_get_socket_cookie(skb);
			nm_policy_event(&f, NM_DIR_INGRESS, v.verdict, v.policy_id);
		}
		if (v.verdict != NM_VERDICT_ALLOW)
			return 0;
	}
	/* Let an egress-enforcing socket answer the peer it let in. */
	if (ip.protocol == IPPROTO_UDP && (dst->flags & NM_FLAG_EGRESS))
		nm_udp_heard(skb, ip.saddr, l4.sport);
	return 1;
}

char _license[] SEC("license") = "GPL";
