/* SPDX-License-Identifier: Apache-2.0 */
/* L7 steering: which connections go to the node-local Envoy, and how Envoy
 * learns where each one was headed. */
#ifndef NM_L7_H
#define NM_L7_H

#include "maps.h"

static __always_inline __u64 nm_proxy_cgroup(void)
{
	__u32 zero = 0;
	const struct nm_config *cfg = bpf_map_lookup_elem(&nm_config_v1, &zero);

	return cfg ? cfg->proxy_cgroup_id : 0;
}

/* A redirect for this client's cgroup wins over one for every client.
 * Envoy's own connections are never steered, or they would loop. */
static __always_inline const struct nm_l7redir_value *
nm_l7_lookup(const struct nm_service_key *fe)
{
	struct nm_l7redir_key key = { .vip = fe->vip, .port = fe->port, .proto = fe->proto };
	const struct nm_l7redir_value *redir;
	__u64 cgroup = bpf_get_current_cgroup_id();
	__u64 proxy = nm_proxy_cgroup();

	if (proxy != 0 && cgroup == proxy)
		return NULL;
	key.cgroup_id = cgroup;
	redir = bpf_map_lookup_elem(&nm_l7redir_v1, &key);
	if (redir)
		return redir;
	key.cgroup_id = 0;
	return bpf_map_lookup_elem(&nm_l7redir_v1, &key);
}

static __always_inline void nm_l7_steer(__u64 cookie, const struct nm_service_key *fe,
					const struct nm_l7redir_value *redir)
{
	struct nm_origdst orig = {
		.addr = fe->vip,
		.port = fe->port,
		.proxy_port = redir->proxy_port,
	};

	bpf_map_update_elem(&nm_redir_v1, &cookie, &orig, BPF_ANY);
}

#endif /* NM_L7_H */
