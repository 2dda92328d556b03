/* SPDX-License-Identifier: Apache-2.0 */
/* Socket-level load balancing: VIP -> backend at connect()/sendmsg() time,
 * and the reverse mapping that makes the application see the VIP. */
#ifndef NM_LB_H
#define NM_LB_H

#include "maps.h"
#include "l7.h"
#include "policy.h"

static __always_inline int nm_refuse(void)
{
	/* ECONNREFUSED rather than the default EPERM: the caller learns the
	 * service exists but has nowhere to go, as with a closed port. */
	bpf_set_retval(-NM_ECONNREFUSED);
	return NM_SYS_REJECT;
}

/* A service event for user space (events.h): `fe` is the VIP asked for,
 * dst:dport where the socket goes instead (the VIP itself for a refusal). */
static __always_inline void nm_svc_event4(__u64 cookie, const struct nm_service_key *fe,
					  const __be32 *dst, __be16 dport,
					  const struct nm_identity_value *ep, __u8 type, __u32 reason)
{
	struct nm_svc_flow f = {};

	f.cookie = cookie;
	f.orig = &fe->vip;
	f.dst = dst;
	f.orig_port = fe->port;
	f.dport = dport;
	f.family = NM_AF_INET;
	f.proto = fe->proto;
	f.src_identity = ep ? ep->identity : 0;
	nm_service_event(&f, type, reason);
}

static __always_inline void nm_remember_vip(__u64 cookie, __be32 peer, __be16 peer_port,
					    const struct nm_service_key *fe)
{
	struct nm_revnat_key key = { .cookie = cookie, .addr = peer, .port = peer_port };
	struct nm_origdst vip = { .addr = fe->vip, .port = fe->port };

	bpf_map_update_elem(&nm_revnat_v1, &key, &vip, BPF_ANY);
}

/* Picks a backend slot. `sticky` (unconnected UDP) hashes the socket so one
 * socket keeps talking to one backend; connect() picks at random. */
static __always_inline __u32 nm_pick_slot(__u16 count, __u64 cookie, bool sticky)
{
	/* Fibonacci hashing; the high half, since an odd multiplier keeps the
	 * low bits as regular as the cookie's (which only counts up). */
	__u32 seed = sticky ? ((__u32)(cookie ^ (cookie >> 32)) * 2654435761u) >> 16
			    : bpf_get_prandom_u32();

	return (seed % count) + 1;
}

/* A VIP steered to the node Envoy, after L4 policy allowed it (see
 * nm_steer4_allowed); the backend is picked only to judge the policy. */
static __always_inline int nm_sock4_steer(struct bpf_sock_addr *ctx, __u64 cookie,
					  const struct nm_service_key *fe,
					  const struct nm_service_value *frontend,
					  const struct nm_l7redir_value *redir,
					  const struct nm_identity_value *ep)
{
	struct nm_service_key key = *fe;
	const struct nm_service_value *backend;

	if (ep && frontend->count) {
		key.slot = nm_pick_slot(frontend->count, cookie, false);
		backend = bpf_map_lookup_elem(&nm_services_v1, &key);
		if (backend &&
		    !nm_steer4_allowed(ctx, ep, backend->addr, backend->port, fe->vip, fe->port))
			return nm_deny();
	}
	nm_l7_steer(cookie, fe, redir);
	nm_remember_vip(cookie, redir->proxy_addr, redir->proxy_port, fe);
	nm_svc_event4(cookie, fe, &redir->proxy_addr, redir->proxy_port, ep, NM_EVENT_L7_STEER, 0);
	ctx->user_ip4 = redir->proxy_addr;
	ctx->user_port = redir->proxy_port;
	return NM_SYS_PROCEED;
}

static __always_inline int nm_sock4_xlate(struct bpf_sock_addr *ctx, bool is_connect)
{
	struct nm_service_key key = {};
	const struct nm_service_value *frontend, *backend;
	const struct nm_l7redir_value *redir;
	const struct nm_identity_value *ep;
	__u8 proto = ctx->protocol;
	__u64 cookie;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return NM_SYS_PROCEED;
	key.vip = ctx->user_ip4;
	key.port = (__be16)ctx->user_port;
	key.proto = proto;
	/* One hash lookup of the process's own cgroup: policy applies only to
	 * this node's pods, and only to the real peer (after translation). */
	ep = nm_endpoint();
	frontend = bpf_map_lookup_elem(&nm_services_v1, &key);
	if (!frontend) {
		if (ep && !nm_egress4_allowed(ctx, ep, key.vip, key.port, key.vip, key.port, proto))
			return nm_deny();
		return NM_SYS_PROCEED;
	}

	cookie = bpf_get_socket_cookie(ctx);
	/* Only a frontend some redirect covers pays the ancestry walk and the
	 * redirect lookups. */
	if (is_connect && proto == IPPROTO_TCP && (frontend->addr & NM_FE_L7)) {
		redir = nm_l7_lookup(&key);
		if (redir)
			return nm_sock4_steer(ctx, cookie, &key, frontend, redir, ep);
	}

	if (frontend->count == 0) {
		nm_svc_event4(cookie, &key, &key.vip, key.port, ep, NM_EVENT_NO_BACKEND,
			      NM_REASON_NO_BACKENDS);
		return nm_refuse();
	}
	key.slot = nm_pick_slot(frontend->count, cookie, !is_connect);
	backend = bpf_map_lookup_elem(&nm_services_v1, &key);
	if (!backend) {
		/* Only while the agent shrinks a service; the next connect
		 * sees the new count. */
		nm_svc_event4(cookie, &key, &key.vip, key.port, ep, NM_EVENT_NO_BACKEND,
			      NM_REASON_BACKEND_GONE);
		return nm_refuse();
	}
	if (ep && !nm_egress4_allowed(ctx, ep, backend->addr, backend->port, key.vip, key.port,
				      proto))
		return nm_deny();

	nm_remember_vip(cookie, backend->addr, backend->port, &key);
	nm_svc_event4(cookie, &key, &backend->addr, backend->port, ep, NM_EVENT_TRANSLATION, 0);
	ctx->user_ip4 = backend->addr;
	ctx->user_port = backend->port;
	return NM_SYS_PROCEED;
}

/* getpeername()/recvmsg(): show the VIP, not the backend or Envoy. */
static __always_inline void nm_sock4_revnat(struct bpf_sock_addr *ctx)
{
	struct nm_revnat_key key = {};
	const struct nm_origdst *vip;

	/* A peer port no backend or proxy has: never translated, no lookup. */
	if (!nm_maybe_translated((__be16)ctx->user_port))
		return;
	key.cookie = bpf_get_socket_cookie(ctx);
	key.addr = ctx->user_ip4;
	key.port = (__be16)ctx->user_port;
	vip = bpf_map_lookup_elem(&nm_revnat_v1, &key);
	if (!vip)
		return;
	ctx->user_ip4 = vip->addr;
	ctx->user_port = vip->port;
}

/* The socket's last fd is closing (cgroup/sock_release): its per-socket state
 * goes with it instead of waiting for LRU eviction. One lookup per socket, and
 * a delete only on a hit: most sockets released here were never translated,
 * and a lookup takes no lock where a delete takes the bucket's. */
static __always_inline void nm_sock4_release(struct bpf_sock *sk)
{
	struct nm_revnat_key key = {};
	__u32 proto = sk->protocol;
	__u64 cookie;

	if (sk->family != NM_AF_INET || (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return;
	if (sk->dst_port == 0) {
		/* No peer port: a listener, unconnected UDP (its entries, one per
		 * backend it sent to, stay with the LRU), or a TCP connect() that
		 * failed, whose port the kernel cleared (sockops deleted the
		 * reverse NAT of one that failed after its SYN). One that failed
		 * before its SYN never met sockops, so its redirect is still here. */
		if (proto != IPPROTO_TCP)
			return;
		cookie = bpf_get_socket_cookie(sk);
		if (bpf_map_lookup_elem(&nm_redir_v1, &cookie))
			bpf_map_delete_elem(&nm_redir_v1, &cookie);
		return;
	}
	/* A TCP socket keeps its peer port only past the SYN, where sockops
	 * has already moved any redirect to nm_origdst_v1. */
	if (!nm_maybe_translated((__be16)sk->dst_port))
		return; /* nothing was ever filed for it */
	key.cookie = bpf_get_socket_cookie(sk);
	key.addr = sk->dst_ip4;
	key.port = (__be16)sk->dst_port;
	if (bpf_map_lookup_elem(&nm_revnat_v1, &key))
		bpf_map_delete_elem(&nm_revnat_v1, &key);
}

#endif /* NM_LB_H */
