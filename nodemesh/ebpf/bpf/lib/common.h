/* SPDX-License-Identifier: Apache-2.0 */
/* Shared definitions for nodemesh's BPF programs.
 *
 * Every struct here that crosses into user space as a map key or value has
 * exactly one ctypes mirror in nodemesh/ebpf/mirrors.py, checked against this
 * object's BTF by tests/ebpf/test_mirrors_btf.py. Change both together and bump
 * the map's version suffix when a layout changes.
 */
#ifndef NM_COMMON_H
#define NM_COMMON_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define NM_SYS_REJECT 0
#define NM_SYS_PROCEED 1

/* errno values handed to bpf_set_retval(); the kernel negates nothing for us. */
#define NM_ECONNREFUSED 111

/* Not in the uapi headers BPF programs can include without netfilter. */
#define NM_SOL_IP 0
#define NM_SO_ORIGINAL_DST 80
#define NM_AF_INET 2

/* Slot 0 of a service is its frontend; slots 1..count hold its backends. */
#define NM_FRONTEND_SLOT 0

/* nm_services_v1 key: one entry per (VIP, port, protocol, slot). */
struct nm_service_key {
	__be32 vip;
	__be16 port;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
	__u32 slot;
};

/* nm_services_v1 value. Slot 0 uses `count`, and `addr` as the frontend's
 * flags (NM_FE_L7, raw, never byte-swapped); backend slots use only `addr`
 * and `port`. One value type keeps the map a single lookup per hop. */
#define NM_FE_L7 1 /* some L7 redirect covers it: connect() looks one up */
struct nm_service_value {
	__be32 addr;
	__be16 port;
	__u16 count;
};

/* nm_l7redir_v1 key: the service port plus the client's cgroup id; cgroup_id 0
 * means "every client" (a CiliumEnvoyConfig services entry). */
struct nm_l7redir_key {
	__u64 cgroup_id;
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* nm_l7redir_v1 value: where the node-local Envoy listens for this port. */
struct nm_l7redir_value {
	__be32 proxy_addr;
	__be16 proxy_port;
	__u16 pad;
};

/* nm_revnat_v1 key: a socket and the peer the kernel actually talks to. */
struct nm_revnat_key {
	__u64 cookie;
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* The address the application asked for (a VIP and port). Value of
 * nm_revnat_v1, nm_redir_v1 and nm_origdst_v1. */
struct nm_origdst {
	__be32 addr;
	__be16 port;
	__be16 proxy_port; /* nm_redir_v1 only: which Envoy listener got it */
};

/* nm_origdst_v1 key: a steered connection as Envoy sees it from its side. */
struct nm_origdst_key {
	__be32 client_addr;
	__be16 client_port;
	__be16 proxy_port;
};

/* nm_config_v2 (one-element array): node-wide settings from the agent.
 * Both ids name cgroups that are *ancestors* (or the cgroup itself) of the
 * processes they cover, because a kubelet puts processes in per-container
 * children of the pod cgroup. 0 means unset. */
struct nm_config {
	/* A fixed proxy cgroup (--proxy-cgroup): translated, never steered.
	 * Followed Envoy pods are in nm_proxies_v1 instead (0 here then). */
	__u64 proxy_cgroup_id;
	__u64 pods_cgroup_id;  /* pod cgroups sit one or two levels below it */
	__u32 flags;
	__u32 pad;
};

#endif /* NM_COMMON_H */
