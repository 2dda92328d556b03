// SPDX-License-Identifier: Apache-2.0
/* sockops: once a steered connection has its source port (at the SYN), file
 * its original destination under the 4-tuple half Envoy will see; and delete
 * per-connection state at TCP_CLOSE where cgroup/sock_release cannot find it. */
#include "lib/common.h"
#include "lib/maps.h"

/* sockops gives the peer port in network order in the upper 16 bits. */
static __always_inline __be16 nm_remote_port(const struct bpf_sock_ops *skops)
{
	return (__be16)(skops->remote_port >> 16);
}

static __always_inline void nm_watch_state(struct bpf_sock_ops *skops, bool on)
{
	__u32 flags = skops->bpf_sock_ops_cb_flags;

	flags = on ? flags | BPF_SOCK_OPS_STATE_CB_FLAG : flags & ~BPF_SOCK_OPS_STATE_CB_FLAG;
	bpf_sock_ops_cb_flags_set(skops, flags);
}

static __always_inline void nm_revnat_key_of(const struct bpf_sock_ops *skops, __u64 cookie,
					     struct nm_revnat_key *key)
{
	key->cookie = cookie;
	key->addr = skops->remote_ip4;
	key->port = nm_remote_port(skops);
}

/* On Envoy's accepted socket: the same key nm_getsockopt reads. */
static __always_inline void nm_origdst_key_of(const struct bpf_sock_ops *skops,
					      struct nm_origdst_key *key)
{
	key->client_addr = skops->remote_ip4;
	key->client_port = nm_remote_port(skops);
	key->proxy_port = bpf_htons((__u16)skops->local_port);
}

/* A steered socket has its source port now: file its original destination
 * under what Envoy will see, (client IP, client port, proxy port). */
static __always_inline void nm_file_origdst(struct bpf_sock_ops *skops, __u64 cookie)
{
	struct nm_origdst_key okey = {};
	const struct nm_origdst *orig = bpf_map_lookup_elem(&nm_redir_v1, &cookie);

	if (!orig)
		return;
	okey.client_addr = skops->local_ip4;
	okey.client_port = bpf_htons((__u16)skops->local_port);
	okey.proxy_port = orig->proxy_port;
	bpf_map_update_elem(&nm_origdst_v1, &okey, orig, BPF_ANY);
	bpf_map_delete_elem(&nm_redir_v1, &cookie);
}

static __always_inline void nm_on_connect(struct bpf_sock_ops *skops)
{
	__u8 ports = nm_peer_port_bits(bpf_ntohs(nm_remote_port(skops)));

	/* Translated and steered sockets have a backend's or a proxy's port
	 * as their peer: every other connect stops at one array read. */
	if (!ports)
		return;
	/* A blocking connect() the peer refuses has its peer port cleared
	 * before the socket is released, so a socket that may have been
	 * translated is watched until it is established, and its reverse-NAT
	 * entry (if it has one) deleted if the SYN fails. Watching costs one
	 * more run of this program; looking the entry up here instead cost a
	 * cold nm_revnat_v1 bucket (~0.3-0.4 µs on the bench VM) on every
	 * direct connect to a pod on a backend's port, which has none. */
	nm_watch_state(skops, true);
	/* Only a connect to a proxy port can have been steered. */
	if (ports & NM_PORT_PROXY)
		nm_file_origdst(skops, bpf_get_socket_cookie(skops));
}

/* Envoy's side of a steered connection: its nm_origdst_v1 entry must live
 * until Envoy has asked SO_ORIGINAL_DST, which it does after accept(), and a
 * client may connect, send and close before that. The accepted socket reaches
 * TCP_CLOSE only after Envoy is done with it (or on a reset, when there is
 * nothing left to proxy), so that is when the entry goes. */
static __always_inline void nm_on_passive(struct bpf_sock_ops *skops)
{
	struct nm_origdst_key key = {};

	/* Only Envoy accepts on a proxy port: a pod's server sockets (every
	 * other accepted connection in the mesh) stop at one array read. */
	if (!nm_is_proxy_port(skops->local_port)) /* host order here */
		return;
	nm_origdst_key_of(skops, &key);
	if (bpf_map_lookup_elem(&nm_origdst_v1, &key))
		nm_watch_state(skops, true);
}

static __always_inline void nm_on_state(struct bpf_sock_ops *skops)
{
	struct nm_origdst_key okey = {};
	struct nm_revnat_key rkey = {};
	__u32 old = skops->args[0], new = skops->args[1];

	if (old == BPF_TCP_SYN_SENT) {
		if (new == BPF_TCP_CLOSE) {
			nm_revnat_key_of(skops, bpf_get_socket_cookie(skops), &rkey);
			bpf_map_delete_elem(&nm_revnat_v1, &rkey);
		} else {
			/* Established: cgroup/sock_release takes it from here. */
			nm_watch_state(skops, false);
		}
		return;
	}
	if (new != BPF_TCP_CLOSE)
		return;
	nm_origdst_key_of(skops, &okey);
	bpf_map_delete_elem(&nm_origdst_v1, &okey);
}

SEC("sockops")
int nm_sockops(struct bpf_sock_ops *skops)
{
	/* The kernel runs this for every TCP socket in the mesh cgroup, about
	 * five times per connection (timeout, window and ECN choices, connect,
	 * established), and no flag turns those calls off per socket. Only
	 * three ops concern us, so the op is the first thing read, and only
	 * sockets that can be translated go on to any lookup. */
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		if (skops->family == NM_AF_INET)
			nm_on_connect(skops);
		/* A dual-stack socket steered as ::ffff:<proxy>: IPv4 on the wire,
		 * so its IPv4 halves (local_ip4/port) are what Envoy sees. */
		else if (skops->family == NM_AF_INET6 &&
			 nm_is_proxy_port(bpf_ntohs(nm_remote_port(skops))))
			nm_file_origdst(skops, bpf_get_socket_cookie(skops));
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (skops->family == NM_AF_INET)
			nm_on_passive(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* Only sockets that turned the callback on (nm_watch_state). */
		if (skops->family == NM_AF_INET)
			nm_on_state(skops);
		break;
	}
	return 1;
}

char _license[] SEC("license") = "GPL";
