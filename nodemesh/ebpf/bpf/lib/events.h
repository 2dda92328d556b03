/* SPDX-License-Identifier: Apache-2.0 */
/* One ring buffer of datapath events for user space, shared by every kind
 * of event: policy verdicts, service translation, L7 steering and
 * zero-backend refusals (issue 13). Every event is one fixed-size
 * struct nm_event; `type` says which fields mean what. Mirrored by
 * nodemesh/ebpf/events.py (Event), checked against BTF. A reservation that
 * fails (ring full, reader behind) is counted in nm_events_lost_v1, never
 * dropped silently. */
#ifndef NM_EVENTS_H
#define NM_EVENTS_H

#include "common.h"

#define NM_EVENTS_BYTES (256 * 1024)
#define NM_AF_INET6 10 /* as maps6.h (an identical redefinition is no error) */
#define NM_EVENT_VERSION 1

enum nm_event_type {
	NM_EVENT_POLICY = 1,      /* an L3/L4 policy verdict */
	NM_EVENT_TRANSLATION = 2, /* VIP -> backend */
	NM_EVENT_L7_STEER = 3,    /* steered to the node Envoy */
	NM_EVENT_NO_BACKEND = 4,  /* VIP without backends refused */
};

/* nm_event.reason of an NM_EVENT_NO_BACKEND. */
enum nm_event_reason {
	NM_REASON_NO_BACKENDS = 1,  /* the Service has zero backends */
	NM_REASON_BACKEND_GONE = 2, /* the picked slot went while the agent shrank it */
};

enum nm_event_direction {
	NM_DIR_INGRESS = 1,
	NM_DIR_EGRESS = 2,
};

/* Addresses are 16 bytes: IPv4 in the first word (family says which). At
 * connect() the source address and port are not known yet (0). */
struct nm_event {
	__u64 timestamp_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cgroup_id;    /* the process's (egress) or socket's (ingress) cgroup */
	__u64 cookie;       /* socket cookie; 0 if none */
	__be32 saddr[4];
	__be32 daddr[4];
	__be32 orig_daddr[4]; /* what the application asked for (a VIP), or daddr */
	__be16 sport;
	__be16 dport;
	__be16 orig_dport;
	__u8 type;
	__u8 version;
	__u8 family; /* 2 AF_INET, 10 AF_INET6 */
	__u8 proto;
	__u8 direction;
	__u8 verdict; /* NM_VERDICT_* for policy events */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 policy_id; /* 0: no policy allowed it (default deny) */
	__u32 reason;    /* type-specific */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, NM_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_events_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_events_lost_v1 SEC(".maps");

/* nm_events_config_v1: which service events the agent wants (policy
 * verdicts have their own switch, nm_policy_config_v1). Read only after a
 * Service VIP matched, so connects to anything else never look at it. */
#define NM_EVENTS_CFG_SERVICE 1 /* translation, steering and refusal events */
struct nm_events_config {
	__u32 flags;
	/* Translation and steering events: one connect in N, at random (0 or
	 * 1: every one). Refusals are never sampled: each is a failed connect
	 * someone will ask about. */
	__u32 sample_every;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nm_events_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_events_config_v1 SEC(".maps");

/* A zeroed event of `type` in the ring, or NULL (counted as lost). */
static __always_inline struct nm_event *nm_event_reserve(__u8 type)
{
	struct nm_event *ev = bpf_ringbuf_reserve(&nm_events_v1, sizeof(*ev), 0);
	__u32 zero = 0;
	__u64 *lost;

	if (!ev) {
		lost = bpf_map_lookup_elem(&nm_events_lost_v1, &zero);
		if (lost)
			*lost += 1;
		return NULL;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->timestamp_ns = bpf_ktime_get_ns();
	ev->type = type;
	ev->version = NM_EVENT_VERSION;
	return ev;
}

/* The reader is woken only as the ring fills past each eighth (about 290
 * events), not per event: a wakeup is an irq_work (a self-IPI; a VM exit on
 * a virtual machine), measured at about 5 us on every connect when the
 * reader keeps up (bench/flows.py). The agent also reads on a timer, which
 * delivers what stays below the mark. */
#define NM_EVENTS_WAKEUP_BYTES (NM_EVENTS_BYTES / 8)
#define NM_EVENT_RECORD_BYTES (sizeof(struct nm_event) + 8) /* + BPF_RINGBUF_HDR_SZ */

static __always_inline void nm_event_submit(struct nm_event *ev)
{
	__u64 avail = bpf_ringbuf_query(&nm_events_v1, BPF_RB_AVAIL_DATA);
	__u64 crossed = avail / NM_EVENTS_WAKEUP_BYTES !=
			(avail - NM_EVENT_RECORD_BYTES) / NM_EVENTS_WAKEUP_BYTES;

	bpf_ringbuf_submit(ev, crossed ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Whether to report a service event; `sampled` ones keep one in N. */
static __always_inline bool nm_service_event_wanted(bool sampled)
{
	__u32 zero = 0;
	const struct nm_events_config *cfg = bpf_map_lookup_elem(&nm_events_config_v1, &zero);
	__u32 every;

	if (!cfg || !(cfg->flags & NM_EVENTS_CFG_SERVICE))
		return false;
	every = cfg->sample_every;
	return !sampled || every <= 1 || bpf_get_prandom_u32() % every == 0;
}

/* What a service event is about, IPv4 or IPv6 (`family`): the socket, the
 * VIP the application asked for and where the kernel sent it instead. */
struct nm_svc_flow {
	__u64 cookie;
	const __be32 *orig; /* 1 word for AF_INET, 4 for AF_INET6 */
	const __be32 *dst;
	__be16 orig_port;
	__be16 dport;
	__u8 family;
	__u8 proto;
	__u32 src_identity; /* the client pod's, 0 if not a pod of this node */
};

static __always_inline void nm_service_event(const struct nm_svc_flow *f, __u8 type,
					     __u32 reason)
{
	struct nm_event *ev;

	if (!nm_service_event_wanted(type != NM_EVENT_NO_BACKEND))
		return;
	ev = nm_event_reserve(type);
	if (!ev)
		return;
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->cookie = f->cookie;
	if (f->family == NM_AF_INET6) {
		__builtin_memcpy(ev->orig_daddr, f->orig, 16);
		__builtin_memcpy(ev->daddr, f->dst, 16);
	} else {
		ev->orig_daddr[0] = f->orig[0];
		ev->daddr[0] = f->dst[0];
	}
	ev->orig_dport = f->orig_port;
	ev->dport = f->dport;
	ev->family = f->family;
	ev->proto = f->proto;
	ev->direction = NM_DIR_EGRESS;
	ev->src_identity = f->src_identity;
	ev->reason = reason;
	nm_event_submit(ev);
}

#endif /* NM_EVENTS_H */
