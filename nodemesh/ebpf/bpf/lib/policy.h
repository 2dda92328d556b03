/* SPDX-License-Identifier: Apache-2.0 */
/* L3/L4 policy enforcement workers (issue 12): the identity of a peer from
 * the ipcache, a verdict from the policy map, per-policy counters and a
 * verdict event. Egress is decided at connect()/sendmsg() (EPERM, no packet
 * leaves); ingress at the receiving pod's socket (cgroup_skb/ingress, a
 * dropped SYN or datagram never reaches it). */
#ifndef NM_POLICY_H
#define NM_POLICY_H

#include "maps.h"
#include "events.h"

#define NM_EPERM 1

/* What a verdict is about (the event's 5-tuple and identities). */
struct nm_flow {
	__u64 cgroup_id;
	__u64 cookie;
	__be32 saddr;
	__be32 daddr;
	__be32 orig_daddr;
	__be16 sport;
	__be16 dport;
	__be16 orig_dport;
	__u8 proto;
	__u8 family;
	__u32 src_identity;
	__u32 dst_identity;
};

static __always_inline const struct nm_identity_value *nm_ipcache(__be32 addr)
{
	struct nm_ipcache_key key = { .prefixlen = 32, .addr = addr };

	return bpf_map_lookup_elem(&nm_ipcache_v1, &key);
}

/* The calling process's pod (its own cgroup: see nm_endpoints_v1), or NULL
 * for a process that is no pod of this node (the host's own). */
static __always_inline const struct nm_identity_value *nm_endpoint(void)
{
	__u64 cgroup = bpf_get_current_cgroup_id();

	return bpf_map_lookup_elem(&nm_endpoints_v1, &cgroup);
}

/* Specific remote identity first, then the wildcard. The planner folded the
 * wildcard's entries into every specific identity's, so this is exact. */
static __always_inline const struct nm_policy_value *
nm_policy_lookup(__u32 subject, __u8 dir, __u8 proto, __u32 remote, __be16 port)
{
	struct nm_policy_key key = {
		.prefixlen = NM_POLICY_FULL_BITS,
		.subject = subject,
		.direction = dir,
		.proto = proto,
		.remote = remote,
		.port = port,
	};
	const struct nm_policy_value *v = bpf_map_lookup_elem(&nm_policy_v1, &key);

	if (v)
		return v;
	key.remote = NM_ID_ANY;
	return bpf_map_lookup_elem(&nm_policy_v1, &key);
}

static __always_inline void nm_policy_count(__u32 policy_id, bool allowed)
{
	struct nm_policy_stats *st = bpf_map_lookup_elem(&nm_policy_stats_v1, &policy_id);

	if (!st)
		return;
	/* Per-CPU and the program runs with preemption disabled: no atomics.
	 * Branchless: with a branch, clang picks the field by pointer
	 * arithmetic, which the verifier refuses without CAP_PERFMON. */
	st->allowed += allowed;
	st->denied += !allowed;
}

static __always_inline bool nm_events_allowed(void)
{
	__u32 zero = 0;
	const struct nm_policy_config *cfg = bpf_map_lookup_elem(&nm_policy_config_v1, &zero);

	return cfg && (cfg->flags & NM_POLICY_CFG_EVENTS_ALLOWED);
}

/* Every field of `f` but the cookie and cgroup is the caller's; those two
 * are filled by the caller only when an event is due (nm_policy_judge). */
static __always_inline void nm_policy_event(const struct nm_flow *f, __u8 dir, __u8 verdict,
					    __u32 policy_id)
{
	struct nm_event *ev = nm_event_reserve(NM_EVENT_POLICY);

	if (!ev)
		return;
	ev->cgroup_id = f->cgroup_id;
	ev->cookie = f->cookie;
	ev->saddr[0] = f->saddr;
	ev->daddr[0] = f->daddr;
	ev->orig_daddr[0] = f->orig_daddr;
	ev->sport = f->sport;
	ev->dport = f->dport;
	ev->orig_dport = f->orig_dport;
	ev->family = f->family ? f->family : NM_AF_INET;
	ev->proto = f->proto;
	ev->direction = dir;
	ev->verdict = verdict;
	ev->src_identity = f->src_identity;
	ev->dst_identity = f->dst_identity;
	ev->policy_id = policy_id;
	nm_event_submit(ev);
}

struct nm_verdict {
	__u32 policy_id;
	__u8 verdict;
};

/* The verdict at `subject`'s end of the flow, counted. True if an event is
 * due (every deny; an allow only when the agent asks for them): only then
 * does the caller fetch the socket cookie and cgroup id for it, two helper
 * calls an allowed connect() otherwise never makes. */
static __always_inline bool nm_policy_judge(const struct nm_flow *f, __u32 subject, __u32 remote,
					    __u8 dir, struct nm_verdict *out)
{
	const struct nm_policy_value *v = nm_policy_lookup(subject, dir, f->proto, remote, f->dport);

	out->policy_id = v ? v->policy_id : 0;
	out->verdict = v ? v->verdict : NM_VERDICT_DENY;
	nm_policy_count(out->policy_id, out->verdict == NM_VERDICT_ALLOW);
	return out->verdict != NM_VERDICT_ALLOW || nm_events_allowed();
}

/* nm_policy_judge, with the event, at connect()/sendmsg(). */
static __always_inline bool nm_policy_decide(struct bpf_sock_addr *ctx, struct nm_flow *f,
					     __u32 subject, __u32 remote, __u8 dir)
{
	struct nm_verdict v;

	if (nm_policy_judge(f, subject, remote, dir, &v)) {
		f->cookie = bpf_get_socket_cookie(ctx);
		f->cgroup_id = bpf_get_current_cgroup_id();
		nm_policy_event(f, dir, v.verdict, v.policy_id);
	}
	return v.verdict == NM_VERDICT_ALLOW;
}

static __always_inline int nm_deny(void)
{
	bpf_set_retval(-NM_EPERM);
	return NM_SYS_REJECT;
}

/* A connect()/sendmsg() from local pod `ep` (NULL: not a pod) to the real
 * peer daddr:dport (after translation); orig is what was asked for. Also
 * files UDP peers of ingress-enforcing pods so their replies get in. */
static __always_inline bool nm_egress4_allowed(struct bpf_sock_addr *ctx,
					       const struct nm_identity_value *ep, __be32 daddr,
					       __be16 dport, __be32 orig, __be16 orig_port, __u8 proto)
{
	struct nm_revnat_key peer_key = {};
	const struct nm_identity_value *peer;
	struct nm_flow f = {};
	__u32 one = 1;

	if (!ep || !ep->flags)
		return true;
	if (proto == IPPROTO_UDP) {
		peer_key.cookie = bpf_get_socket_cookie(ctx);
		peer_key.addr = daddr;
		peer_key.port = dport;
		/* A UDP reply to a peer this socket heard from (nm_policy_ingress
		 * filed it): answers are not new flows, as with Cilium's conntrack. */
		if ((ep->flags & NM_FLAG_EGRESS) && bpf_map_lookup_elem(&nm_udp_peers_v1, &peer_key))
			return true;
	}
	if (ep->flags & NM_FLAG_EGRESS) {
		peer = nm_ipcache(daddr);
		f.daddr = daddr;
		f.dport = dport;
		f.orig_daddr = orig;
		f.orig_dport = orig_port;
		f.proto = proto;
		f.src_identity = ep->identity;
		f.dst_identity = peer ? peer->identity : NM_ID_WORLD;
		if (!nm_policy_decide(ctx, &f, ep->identity, f.dst_identity, NM_DIR_EGRESS))
			return false;
	}
	if (proto == IPPROTO_UDP && (ep->flags & NM_FLAG_INGRESS))
		bpf_map_update_elem(&nm_udp_peers_v1, &peer_key, &one, BPF_ANY);
	return true;
}
/* A connection steered to the node Envoy: Envoy's upstream reaches the
 * backend from the host, which ingress always lets in (Cilium's
 * allow-localhost), so the backend's own ingress policy is checked here,
 * for the client's identity, against the backend the kernel would have
 * picked. The client's egress to that backend is checked too. */
static __always_inline bool nm_steer4_allowed(struct bpf_sock_addr *ctx,
					      const struct nm_identity_value *ep, __be32 daddr,
					      __be16 dport, __be32 vip, __be16 vport)
{
	const struct nm_identity_value *backend;
	struct nm_flow f = {};

	if (!nm_egress4_allowed(ctx, ep, daddr, dport, vip, vport, IPPROTO_TCP))
		return false;
	backend = nm_ipcache(daddr);
	if (!backend || !(backend->flags & NM_FLAG_INGRESS))
		return true;
	f.daddr = daddr;
	f.dport = dport;
	f.orig_daddr = vip;
	f.orig_dport = vport;
	f.proto = IPPROTO_TCP;
	f.src_identity = ep ? ep->identity : NM_ID_HOST;
	f.dst_identity = backend->identity;
	if (f.src_identity == NM_ID_HOST)
		return true;
	return nm_policy_decide(ctx, &f, backend->identity, f.src_identity, NM_DIR_INGRESS);
}

/* An AF_INET6 connect()/sendmsg() to an IPv6 peer: the ipcache holds IPv4
 * only, so every IPv6 peer is `world` (fail closed for egress policy). */
static __always_inline bool nm_egress6_allowed(struct bpf_sock_addr *ctx,
					       const struct nm_identity_value *ep, __be16 dport,
					       __u8 proto)
{
	struct nm_flow f = {};

	if (!ep || !(ep->flags & NM_FLAG_EGRESS))
		return true;
	f.dport = dport;
	f.orig_dport = dport;
	f.proto = proto;
	f.family = NM_AF_INET6;
	f.src_identity = ep->identity;
	f.dst_identity = NM_ID_WORLD;
	return nm_policy_decide(ctx, &f, ep->identity, NM_ID_WORLD, NM_DIR_EGRESS);
}

#endif /* NM_POLICY_H */
