/* SPDX-License-Identifier: Apache-2.0 */
/* Socket-level load balancing for AF_INET6 sockets: IPv6 VIPs against
 * nm_services6_v1, and IPv4-mapped VIPs (::ffff:a.b.c.d, a dual-stack socket
 * talking IPv4) against the IPv4 nm_services_v1, written back mapped. IPv4-
 * mapped TCP is steered to Envoy like connect4 (the connection is IPv4 on
 * the wire, so Envoy's IPv4 SO_ORIGINAL_DST answers it); IPv6 connections
 * are not (no IPv6 SO_ORIGINAL_DST yet). */
#ifndef NM_LB6_H
#define NM_LB6_H

#include "maps.h"
#include "lb.h"

static __always_inline bool nm_v4mapped(const __be32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff);
}

static __always_inline void nm_remember_vip6(__u64 cookie, const __be32 peer[4], __be16 peer_port,
					     const __be32 vip[4], __be16 vip_port)
{
	struct nm_revnat6_key key = { .cookie = cookie, .port = peer_port };
	struct nm_origdst6 orig = { .port = vip_port };

	__builtin_memcpy(key.addr, peer, 16);
	__builtin_memcpy(orig.addr, vip, 16);
	bpf_map_update_elem(&nm_revnat6_v1, &key, &orig, BPF_ANY);
}

/* An IPv6 service event (see nm_svc_event4). */
static __always_inline void nm_svc_event6(__u64 cookie, const struct nm_service6_key *fe,
					  const __be32 *dst, __be16 dport,
					  const struct nm_identity_value *ep, __u8 type, __u32 reason)
{
	struct nm_svc_flow f = {};

	f.cookie = cookie;
	f.orig = fe->vip;
	f.dst = dst;
	f.orig_port = fe->port;
	f.dport = dport;
	f.family = NM_AF_INET6;
	f.proto = fe->proto;
	f.src_identity = ep ? ep->identity : 0;
	nm_service_event(&f, type, reason);
}

/* ::ffff:VIP -> ::ffff:Envoy if an L7 redirect covers this client (nm_sockops
 * files the original destination at the SYN, as for connect4). */
static __always_inline int nm_sock6_steer_mapped(struct bpf_sock_addr *ctx, __u64 cookie,
						 const struct nm_service_key *key,
						 const struct nm_service_value *frontend,
						 const __be32 dst[4], const struct nm_identity_value *ep)
{
	const struct nm_l7redir_value *redir = nm_l7_lookup(key);
	/* Filled field by field: as an initializer clang makes it a .rodata
	 * constant, a map the kernel refuses to agents without CAP_PERFMON. */
	__be32 peer[4] = {};
	struct nm_service_key bkey = *key;
	const struct nm_service_value *backend;

	if (!redir)
		return -1;
	if (ep && frontend->count) {
		bkey.slot = nm_pick_slot(frontend->count, cookie, false);
		backend = bpf_map_lookup_elem(&nm_services_v1, &bkey);
		if (backend &&
		    !nm_steer4_allowed(ctx, ep, backend->addr, backend->port, key->vip, key->port))
			return nm_deny();
	}
	nm_l7_steer(cookie, key, redir);
	peer[2] = bpf_htonl(0xffff);
	peer[3] = redir->proxy_addr;
	nm_remember_vip6(cookie, peer, redir->proxy_port, dst, key->port);
	/* Reported as IPv4: it is IPv4 on the wire. */
	nm_svc_event4(cookie, key, &redir->proxy_addr, redir->proxy_port, ep, NM_EVENT_L7_STEER,
		      0);
	ctx->user_ip6[3] = redir->proxy_addr;
	ctx->user_port = redir->proxy_port;
	return NM_SYS_PROCEED;
}

/* ::ffff:VIP -> ::ffff:backend, from the IPv4 service map. */
static __always_inline int nm_sock6_xlate_mapped(struct bpf_sock_addr *ctx, __be32 dst[4],
						 __u8 proto, bool is_connect,
						 const struct nm_identity_value *ep)
{
	struct nm_service_key key = { .vip = dst[3], .port = (__be16)ctx->user_port,
				      .proto = proto };
	const struct nm_service_value *frontend, *backend;
	/* Filled field by field: as an initializer clang makes it a .rodata
	 * constant, a map the kernel refuses to agents without CAP_PERFMON. */
	__be32 peer[4] = {};
	__u64 cookie;

	int steered;

	frontend = bpf_map_lookup_elem(&nm_services_v1, &key);
	if (!frontend) {
		if (ep && !nm_egress4_allowed(ctx, ep, dst[3], key.port, dst[3], key.port, proto))
			return nm_deny();
		return NM_SYS_PROCEED;
	}
	cookie = bpf_get_socket_cookie(ctx);
	if (is_connect && proto == IPPROTO_TCP && (frontend->addr & NM_FE_L7)) {
		steered = nm_sock6_steer_mapped(ctx, cookie, &key, frontend, dst, ep);
		if (steered >= 0)
			return steered;
	}
	if (frontend->count == 0) {
		nm_svc_event4(cookie, &key, &key.vip, key.port, ep, NM_EVENT_NO_BACKEND,
			      NM_REASON_NO_BACKENDS);
		return nm_refuse();
	}
	key.slot = nm_pick_slot(frontend->count, cookie, !is_connect);
	backend = bpf_map_lookup_elem(&nm_services_v1, &key);
	if (!backend) {
		nm_svc_event4(cookie, &key, &key.vip, key.port, ep, NM_EVENT_NO_BACKEND,
			      NM_REASON_BACKEND_GONE);
		return nm_refuse();
	}
	if (ep && !nm_egress4_allowed(ctx, ep, backend->addr, backend->port, dst[3], key.port, proto))
		return nm_deny();
	peer[2] = bpf_htonl(0xffff);
	peer[3] = backend->addr;
	nm_remember_vip6(cookie, peer, backend->port, dst, key.port);
	nm_svc_event4(cookie, &key, &backend->addr, backend->port, ep, NM_EVENT_TRANSLATION, 0);
	ctx->user_ip6[3] = backend->addr;
	ctx->user_port = backend->port;
	return NM_SYS_PROCEED;
}

static __always_inline int nm_sock6_xlate(struct bpf_sock_addr *ctx, bool is_connect)
{
	struct nm_service6_key key = {};
	const struct nm_service6_value *frontend, *backend;
	const struct nm_identity_value *ep;
	__u8 proto = ctx->protocol;
	__be32 dst[4];
	__u64 cookie;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return NM_SYS_PROCEED;
	ep = nm_endpoint();
	/* One 4-byte read per word: the only access the verifier allows. */
	dst[0] = ctx->user_ip6[0];
	dst[1] = ctx->user_ip6[1];
	dst[2] = ctx->user_ip6[2];
	dst[3] = ctx->user_ip6[3];
	if (nm_v4mapped(dst))
		return nm_sock6_xlate_mapped(ctx, dst, proto, is_connect, ep);
	__builtin_memcpy(key.vip, dst, 16);
	key.port = (__be16)ctx->user_port;
	key.proto = proto;
	frontend = bpf_map_lookup_elem(&nm_services6_v1, &key);
	if (!frontend) {
		if (!nm_egress6_allowed(ctx, ep, key.port, proto))
			return nm_deny();
		return NM_SYS_PROCEED;
	}
	cookie = bpf_get_socket_cookie(ctx);
	if (frontend->count == 0) {
		nm_svc_event6(cookie, &key, key.vip, key.port, ep, NM_EVENT_NO_BACKEND,
			      NM_REASON_NO_BACKENDS);
		return nm_refuse();
	}
	key.slot = nm_pick_slot(frontend->count, cookie, !is_connect);
	backend = bpf_map_lookup_elem(&nm_services6_v1, &key);
	if (!backend) {
		/* Only while the agent shrinks a service. */
		nm_svc_event6(cookie, &key, key.vip, key.port, ep, NM_EVENT_NO_BACKEND,
			      NM_REASON_BACKEND_GONE);
		return nm_refuse();
	}
	if (!nm_egress6_allowed(ctx, ep, backend->port, proto))
		return nm_deny();
	nm_remember_vip6(cookie, backend->addr, backend->port, dst, key.port);
	nm_svc_event6(cookie, &key, backend->addr, backend->port, ep, NM_EVENT_TRANSLATION, 0);
	ctx->user_ip6[0] = backend->addr[0];
	ctx->user_ip6[1] = backend->addr[1];
	ctx->user_ip6[2] = backend->addr[2];
	ctx->user_ip6[3] = backend->addr[3];
	ctx->user_port = backend->port;
	return NM_SYS_PROCEED;
}

/* getpeername()/recvmsg() on an AF_INET6 socket: show the VIP. An IPv4-mapped
 * peer with no entry here was translated by sendmsg4 (unconnected UDP on a
 * dual-stack socket goes through the IPv4 path), so nm_revnat_v1 has it. */
static __always_inline void nm_sock6_revnat(struct bpf_sock_addr *ctx)
{
	struct nm_revnat6_key key = {};
	struct nm_revnat_key key4 = {};
	const struct nm_origdst6 *vip;
	const struct nm_origdst *vip4;

	if (!nm_maybe_translated((__be16)ctx->user_port))
		return;
	key.cookie = bpf_get_socket_cookie(ctx);
	key.port = (__be16)ctx->user_port;
	key.addr[0] = ctx->user_ip6[0];
	key.addr[1] = ctx->user_ip6[1];
	key.addr[2] = ctx->user_ip6[2];
	key.addr[3] = ctx->user_ip6[3];
	vip = bpf_map_lookup_elem(&nm_revnat6_v1, &key);
	if (vip) {
		ctx->user_ip6[0] = vip->addr[0];
		ctx->user_ip6[1] = vip->addr[1];
		ctx->user_ip6[2] = vip->addr[2];
		ctx->user_ip6[3] = vip->addr[3];
		ctx->user_port = vip->port;
		return;
	}
	if (!nm_v4mapped(key.addr))
		return;
	key4.cookie = key.cookie;
	key4.addr = key.addr[3];
	key4.port = key.port;
	vip4 = bpf_map_lookup_elem(&nm_revnat_v1, &key4);
	if (!vip4)
		return;
	ctx->user_ip6[3] = vip4->addr;
	ctx->user_port = vip4->port;
}

/* An AF_INET6 socket's last fd is closing: drop its reverse NAT entry (see
 * nm_sock4_release: one lookup, a delete only on a hit). */
static __always_inline void nm_sock6_release(struct bpf_sock *sk)
{
	struct nm_revnat6_key key = {};
	__u32 proto = sk->protocol;

	if (sk->family != NM_AF_INET6 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return;
	if (sk->dst_port == 0 || !nm_maybe_translated((__be16)sk->dst_port))
		return; /* nothing here is ever filed under this socket */
	key.cookie = bpf_get_socket_cookie(sk);
	key.addr[0] = sk->dst_ip6[0];
	key.addr[1] = sk->dst_ip6[1];
	key.addr[2] = sk->dst_ip6[2];
	key.addr[3] = sk->dst_ip6[3];
	key.port = (__be16)sk->dst_port;
	if (bpf_map_lookup_elem(&nm_revnat6_v1, &key))
		bpf_map_delete_elem(&nm_revnat6_v1, &key);
}

#endif /* NM_LB6_H */
