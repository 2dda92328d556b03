// SPDX-License-Identifier: Apache-2.0
/* cgroup sock_addr hooks for AF_INET6 sockets: IPv6 Service VIPs, and IPv4
 * VIPs reached as ::ffff:a.b.c.d from dual-stack sockets. Their release
 * side is nm_sock.c's nm_sock_release, which serves both families. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/l7.h"
#include "lib/lb.h"
#include "lib/lb6.h"

SEC("cgroup/connect6")
int nm_connect6(struct bpf_sock_addr *ctx)
{
	return nm_sock6_xlate(ctx, true);
}

SEC("cgroup/sendmsg6")
int nm_sendmsg6(struct bpf_sock_addr *ctx)
{
	return nm_sock6_xlate(ctx, false);
}

SEC("cgroup/recvmsg6")
int nm_recvmsg6(struct bpf_sock_addr *ctx)
{
	nm_sock6_revnat(ctx);
	return NM_SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int nm_getpeername6(struct bpf_sock_addr *ctx)
{
	nm_sock6_revnat(ctx);
	return NM_SYS_PROCEED;
}

char _license[] SEC("license") = "GPL";
