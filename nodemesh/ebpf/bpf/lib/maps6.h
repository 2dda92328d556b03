/* SPDX-License-Identifier: Apache-2.0 */
/* The IPv6 pinned maps (connect6/sendmsg6 translation). The IPv4 maps in
 * maps.h keep their layouts; IPv6 gets maps of its own, pinned by name like
 * those, so an IPv4-only agent and this one share the IPv4 state unchanged.
 * Included from maps.h so every object declares the same set of pins. */
#ifndef NM_MAPS6_H
#define NM_MAPS6_H

#include "common.h"

#define NM_AF_INET6 10

#define NM_SERVICES6_MAX 65536
#define NM_REVNAT6_MAX 262144

/* nm_services6_v1 key: one entry per (VIP, port, protocol, slot), as
 * nm_service_key with a 16-byte VIP (network order, like in6_addr). */
struct nm_service6_key {
	__be32 vip[4];
	__be16 port;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
	__u32 slot;
};

/* nm_services6_v1 value: slot 0 uses only `count`, backend slots only
 * `addr` and `port`. */
struct nm_service6_value {
	__be32 addr[4];
	__be16 port;
	__u16 count;
};

/* nm_revnat6_v1 key: an AF_INET6 socket and the peer the kernel talks to
 * (an IPv6 backend, or an IPv4-mapped one for a dual-stack socket). */
struct nm_revnat6_key {
	__u64 cookie;
	__be32 addr[4];
	__be16 port;
	__u16 pad;
	__u32 pad2;
};

/* nm_revnat6_v1 value: the VIP and port the application asked for. */
struct nm_origdst6 {
	__be32 addr[4];
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct nm_service6_key);
	__type(value, struct nm_service6_value);
	__uint(max_entries, NM_SERVICES6_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_services6_v1 SEC(".maps");

/* Entries go when their socket does (nm_sock6_release); LRU for what no
 * hook can find, as nm_revnat_v1. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nm_revnat6_key);
	__type(value, struct nm_origdst6);
	__uint(max_entries, NM_REVNAT6_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nm_revnat6_v1 SEC(".maps");

#endif /* NM_MAPS6_H */
