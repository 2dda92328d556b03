/* SPDX-License-Identifier: Apache-2.0 */
/* The pinned maps. Each object that includes this header declares the same
 * maps; LIBBPF_PIN_BY_NAME makes libbpf reuse one pinned instance of each, so
 * the three objects (one per hook family) share state through the pins. */
#ifndef NM_MAPS_H
#define NM_MAPS_H

#include "common.h"

#define NM_SERVICES_MAX 65536
#define NM_L7REDIR_MAX 16384
#define NM_REVNAT_MAX 262144
#define NM_REDIR_MAX 65536
#define NM_ORIGDST_MAX 65536
#define NM_PROXIES_MAX 64

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct nm_service_key);
	__type(value, struct nm_service_value);
	__uint(max_entries, NM_SERVICES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_services_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct nm_l7redir_key);
	__type(value, struct nm_l7redir_value);
	__uint(max_entries, NM_L7REDIR_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_l7redir_v1 SEC(".maps");

/* Entries go when their socket does (cgroup/sock_release, sockops); LRU for
 * what no hook can find (unconnected UDP). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nm_revnat_key);
	__type(value, struct nm_origdst);
	__uint(max_entries, NM_REVNAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_revnat_v1 SEC(".maps");

/* Steered sockets between connect() and the SYN, keyed by socket cookie.
 * Deleted at the SYN by sockops, or at release if the SYN never went out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct nm_origdst);
	__uint(max_entries, NM_REDIR_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_redir_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nm_origdst_key);
	__type(value, struct nm_origdst);
	__uint(max_entries, NM_ORIGDST_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_origdst_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nm_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_config_v2 SEC(".maps");

/* The node Envoy pods' cgroup ids (every one of a rollout): never steered.
 * Value: flags from the agent (unused by the programs). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u32);
	__uint(max_entries, NM_PROXIES_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_proxies_v1 SEC(".maps");

/* Every port a translated or steered socket can have as its peer: backend
 * ports and proxy ports (index: the port in host order; value: NM_PORT_*
 * bits, nonzero: maybe).
 * getpeername, recvmsg and release look nothing up for a socket whose peer
 * port is not here, which is most sockets (a server's accepted ones, say).
 * An array lookup, inlined by the verifier: no per-socket state to create at
 * connect(). The agent only ever adds ports, so it stays a superset for
 * sockets translated under an older plan. */
#define NM_PEER_PORTS 65536
#define NM_PORT_BACKEND 1 /* some Service backend listens on it */
#define NM_PORT_PROXY 2	  /* some node Envoy listener (an L7 redirect) does */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, NM_PEER_PORTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_peer_ports_v1 SEC(".maps");

/* NM_PORT_* bits of a port (host order); 0: no backend or proxy uses it. */
static __always_inline __u8 nm_peer_port_bits(__u32 port)
{
	const __u8 *hit = bpf_map_lookup_elem(&nm_peer_ports_v1, &port);

	return hit ? *hit : 0;
}

static __always_inline bool nm_maybe_translated(__be16 peer_port)
{
	return nm_peer_port_bits(bpf_ntohs(peer_port)) != 0;
}

/* A port some L7 redirect sends to: only then can a socket with it as its
 * peer be steered, or one accepted on it be the node Envoy's side. */
static __always_inline bool nm_is_proxy_port(__u32 port)
{
	return nm_peer_port_bits(port) & NM_PORT_PROXY;
}

/* IPv6: declared by every object too, so each one pins the same set. */
#include "maps6.h"
/* L3/L4 policy and the event ring, likewise. */
#include "policy_maps.h"
#include "events.h"

#endif /* NM_MAPS_H */
