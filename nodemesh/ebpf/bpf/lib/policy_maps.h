/* SPDX-License-Identifier: Apache-2.0 */
/* The L3/L4 policy maps (issue 12), included from maps.h so every object
 * pins the same set. Written by nodemesh/ebpf/policy_apply.py from the plan
 * of nodemesh/ebpf/policy_plan.py; mirrors in nodemesh/ebpf/mirrors_policy.py. */
#ifndef NM_POLICY_MAPS_H
#define NM_POLICY_MAPS_H

#include "common.h"

#define NM_IPCACHE_MAX 65536
#define NM_ENDPOINTS_MAX 16384
#define NM_POLICY_MAX 131072
#define NM_POLICY_IDS_MAX 16384
#define NM_UDP_PEERS_MAX 65536

/* Identity flags: the identity's pods enforce policy in that direction. */
#define NM_FLAG_INGRESS 1
#define NM_FLAG_EGRESS 2

#define NM_VERDICT_ALLOW 1
#define NM_VERDICT_DENY 2

/* Reserved identities (Cilium's numbers). 0 in a policy key: any identity. */
#define NM_ID_ANY 0
#define NM_ID_HOST 1
#define NM_ID_WORLD 2

/* nm_ipcache_v1 key (LPM trie): an IPv4 prefix. */
struct nm_ipcache_key {
	__u32 prefixlen;
	__be32 addr;
};

/* nm_ipcache_v1 value; also nm_endpoints_v1's value. */
struct nm_identity_value {
	__u32 identity;
	__u32 flags; /* NM_FLAG_* of that identity */
};

/* nm_policy_v1 key (LPM trie). Everything up to and including `remote` is
 * always matched whole (96 bits); the port's leading bits follow, so a port
 * range is a few prefixes and "every port" is a prefix of 96. */
struct nm_policy_key {
	__u32 prefixlen;
	__u32 subject; /* the local pod's identity */
	__u8 direction;
	__u8 proto;
	__u16 pad;
	__u32 remote; /* the peer's identity, NM_ID_ANY for any */
	__be16 port;  /* destination port */
	__u16 pad2;
};

#define NM_POLICY_FIXED_BITS 96
#define NM_POLICY_FULL_BITS (NM_POLICY_FIXED_BITS + 16)

struct nm_policy_value {
	__u32 policy_id; /* index into the agent's policy names; 0: default deny */
	__u8 verdict;
	__u8 pad[3];
};

/* Per-policy counters (per-CPU, summed by the agent). */
struct nm_policy_stats {
	__u64 allowed;
	__u64 denied;
};

/* nm_policy_config_v1: flags from the agent. */
#define NM_POLICY_CFG_EVENTS_ALLOWED 1
struct nm_policy_config {
	__u32 flags;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct nm_ipcache_key);
	__type(value, struct nm_identity_value);
	__uint(max_entries, NM_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_ipcache_v1 SEC(".maps");

/* Local pods by cgroup id: the pod cgroup and every cgroup below it (a
 * kubelet runs containers in children), so connect() needs one lookup of
 * the process's own cgroup, never an ancestor walk. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct nm_identity_value);
	__uint(max_entries, NM_ENDPOINTS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_endpoints_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct nm_policy_key);
	__type(value, struct nm_policy_value);
	__uint(max_entries, NM_POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_policy_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct nm_policy_stats);
	__uint(max_entries, NM_POLICY_IDS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_policy_stats_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nm_policy_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_policy_config_v1 SEC(".maps");

/* UDP peers of policy-enforcing pods: those an ingress-enforcing socket sent
 * to (their replies get in) and those an egress-enforcing socket heard from
 * (its answers get out): what conntrack does for Cilium. Key: socket cookie
 * and the peer, as nm_revnat_key. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nm_revnat_key);
	__type(value, __u32);
	__uint(max_entries, NM_UDP_PEERS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_udp_peers_v1 SEC(".maps");

#endif /* NM_POLICY_MAPS_H */
