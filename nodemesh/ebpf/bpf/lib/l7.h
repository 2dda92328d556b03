/* SPDX-License-Identifier: Apache-2.0 */
/* L7 steering: which connections go to the node-local Envoy, and how Envoy
 * learns where each one was headed. */
#ifndef NM_L7_H
#define NM_L7_H

#include "maps.h"

/* Deepest cgroup level walked. A kubelet's container cgroups sit at level 4
 * on a plain host (kubepods.slice/<qos>.slice/<pod>.slice/<ctr>.scope) and
 * at 7 in a kind node; 16 leaves room for nesting. */
#define NM_MAX_CGROUP_LEVEL 16

/* Who the current task is, from its cgroup ancestry: a proxy (anything at
 * or below a cgroup in nm_proxies_v1, or below the fixed proxy_cgroup_id),
 * and which of its ancestors could be a pod cgroup
 * (one or two levels below pods_cgroup_id: Guaranteed pods sit directly in
 * kubepods, the other QoS classes one slice deeper). */
struct nm_client {
	__u64 pod[2];
	bool proxy;
};

static __always_inline const struct nm_config *nm_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&nm_config_v2, &zero);
}

/* One pass from the root down to the task's own cgroup. Each step is a
 * pointer read in the kernel (cgroup->ancestors[level]); an id of 0 means
 * the task's cgroup is shallower than `level`, so the walk ends there. */
static __always_inline void nm_client_of(const struct nm_config *cfg, struct nm_client *out)
{
	__u32 level;

	/* Unrolled: as a loop, clang's `!= end` exit test gives the verifier's
	 * Spectre v1 analysis (agents without CAP_PERFMON) a speculative path
	 * past the bound that never ends. */
#pragma unroll
	for (level = 1; level <= NM_MAX_CGROUP_LEVEL; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);

		if (id == 0)
			return;
		/* A set, not one id: during an Envoy rollout the draining pod
		 * and its successor both run, and neither may be steered. */
		if (id == cfg->proxy_cgroup_id || bpf_map_lookup_elem(&nm_proxies_v1, &id)) {
			out->proxy = true;
			return;
		}
		if (id == cfg->pods_cgroup_id) {
			/* Keep walking: the proxy is a pod too. */
			out->pod[0] = bpf_get_current_ancestor_cgroup_id(level + 1);
			out->pod[1] = bpf_get_current_ancestor_cgroup_id(level + 2);
		}
	}
}

/* The proxy's own processes, wherever below its pod cgroup they run. */
static __always_inline bool nm_is_proxy(void)
{
	const struct nm_config *cfg = nm_config();
	struct nm_client client = {};

	if (!cfg)
		return false;
	nm_client_of(cfg, &client);
	return client.proxy;
}

/* A redirect for this client's pod wins over one for every client. Envoy's
 * own connections are never steered, or they would loop. Runs only after a
 * VIP frontend hit, so other connects never walk the cgroup tree. */
static __always_inline const struct nm_l7redir_value *
nm_l7_lookup(const struct nm_service_key *fe)
{
	struct nm_l7redir_key key = { .vip = fe->vip, .port = fe->port, .proto = fe->proto };
	const struct nm_config *cfg = nm_config();
	const struct nm_l7redir_value *redir;
	struct nm_client client = {};
	int i;

	if (cfg)
		nm_client_of(cfg, &client);
	if (client.proxy)
		return NULL;
	for (i = 0; i < 2; i++) {
		if (client.pod[i] == 0)
			continue;
		key.cgroup_id = client.pod[i];
		redir = bpf_map_lookup_elem(&nm_l7redir_v1, &key);
		if (redir)
			return redir;
	}
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
