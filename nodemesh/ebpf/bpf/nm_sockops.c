// SPDX-License-Identifier: Apache-2.0
/* sockops: once a steered connection has its source port (at the SYN), file
 * its original destination under the 4-tuple half Envoy will see. */
#include "lib/common.h"
#include "lib/maps.h"

SEC("sockops")
int nm_sockops(struct bpf_sock_ops *skops)
{
	struct nm_origdst_key key = {};
	const struct nm_origdst *orig;
	__u64 cookie;

	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB || skops->family != NM_AF_INET)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	orig = bpf_map_lookup_elem(&nm_redir_v1, &cookie);
	if (!orig)
		return 1;
	key.client_addr = skops->local_ip4;
	key.client_port = bpf_htons((__u16)skops->local_port);
	key.proxy_port = orig->proxy_port;
	bpf_map_update_elem(&nm_origdst_v1, &key, orig, BPF_ANY);
	bpf_map_delete_elem(&nm_redir_v1, &cookie);
	return 1;
}

char _license[] SEC("license") = "GPL";
