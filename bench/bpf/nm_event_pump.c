// SPDX-License-Identifier: Apache-2.0
/* Benchmark only (bench/kernel_events.py): writes `count` translation events
 * into the datapath's own ring (nm_events_v1, reused through its pin), the
 * same struct nm_event the socket hooks write, through the same
 * nm_event_reserve(). Run with BPF_PROG_TEST_RUN, so a benchmark can feed
 * the agent's reader at a chosen rate without making connections. */
#include "lib/common.h"
#include "lib/events.h"

struct nm_pump_args {
	__u32 count;
	__u32 seq; /* varies the cookie, as distinct sockets would */
};

static __always_inline void nm_pump_one(__u32 i, const struct nm_pump_args *args)
{
	struct nm_event *ev = nm_event_reserve(NM_EVENT_TRANSLATION);

	if (!ev)
		return; /* counted as lost; keep going, as the hooks do */
	ev->cgroup_id = 1;
	ev->cookie = args->seq + i;
	ev->orig_daddr[0] = bpf_htonl(0x0a60000a); /* 10.96.0.10 */
	ev->daddr[0] = bpf_htonl(0x0a000202);      /* 10.0.2.2 */
	ev->orig_dport = bpf_htons(80);
	ev->dport = bpf_htons(8080);
	ev->family = NM_AF_INET;
	ev->proto = IPPROTO_TCP;
	ev->direction = NM_DIR_EGRESS;
	nm_event_submit(ev);
}

/* Up to NM_PUMP_MAX events per run (the caller runs it again for more): a
 * bounded loop, since an inlined bpf_loop() refused every run after the
 * first here (-E2BIG, kernel 6.18). */
#define NM_PUMP_MAX 4096

SEC("syscall")
int nm_event_pump(struct nm_pump_args *args)
{
	struct nm_pump_args copy = *args;
	__u32 i;

	for (i = 0; i < NM_PUMP_MAX && i < copy.count; i++)
		nm_pump_one(i, &copy);
	return i;
}

char _license[] SEC("license") = "GPL";
