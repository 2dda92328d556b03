// SPDX-License-Identifier: Apache-2.0
/* cgroup/getsockopt on the proxy's cgroup only: answer SO_ORIGINAL_DST for
 * steered connections, which carry no conntrack entry for netfilter to
 * answer from. The agent links it to the Envoy pod's cgroup and moves the
 * link when that pod is replaced (loader.attach_proxy), so the attachment is
 * the proxy check: no other pod's getsockopt() runs it, or pays the kernel's
 * cgroup getsockopt path around it. */
#include "lib/common.h"
#include "lib/maps.h"

struct nm_sockaddr_in {
	__u16 family;
	__be16 port;
	__be32 addr;
	__u8 zero[8];
};

SEC("cgroup/getsockopt")
int nm_getsockopt(struct bpf_sockopt *ctx)
{
	struct nm_origdst_key key = {};
	const struct nm_origdst *orig;
	struct nm_sockaddr_in *sa;
	struct bpf_sock *sk = ctx->sk;

	if (ctx->level != NM_SOL_IP || ctx->optname != NM_SO_ORIGINAL_DST || !sk)
		return 1;
	if (sk->family != NM_AF_INET)
		return 1;
	/* On Envoy's accepted socket, the peer is the client. */
	key.client_addr = sk->dst_ip4;
	key.client_port = (__be16)sk->dst_port;
	key.proxy_port = bpf_htons((__u16)sk->src_port);
	orig = bpf_map_lookup_elem(&nm_origdst_v1, &key);
	if (!orig)
		return 1;
	sa = ctx->optval;
	if ((void *)(sa + 1) > ctx->optval_end)
		return 1;
	sa->family = NM_AF_INET;
	sa->port = orig->port;
	sa->addr = orig->addr;
	__builtin_memset(sa->zero, 0, sizeof(sa->zero));
	/* volatile: clang would merge these into one 8-byte store, which the
	 * verifier refuses on this context. */
	*(volatile __s32 *)&ctx->optlen = sizeof(*sa);
	*(volatile __s32 *)&ctx->retval = 0;
	return 1;
}

char _license[] SEC("license") = "GPL";
