// SPDX-License-Identifier: Apache-2.0
/* cgroup sock_addr hooks: Service VIPs translated at the socket, before a
 * packet exists, for every process in the mesh cgroup. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/l7.h"
#include "lib/lb.h"

SEC("cgroup/connect4")
int nm_connect4(struct bpf_sock_addr *ctx)
{
	return nm_sock4_xlate(ctx, true);
}

SEC("cgroup/sendmsg4")
int nm_sendmsg4(struct bpf_sock_addr *ctx)
{
	return nm_sock4_xlate(ctx, false);
}

SEC("cgroup/recvmsg4")
int nm_recvmsg4(struct bpf_sock_addr *ctx)
{
	nm_sock4_revnat(ctx);
	return NM_SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int nm_getpeername4(struct bpf_sock_addr *ctx)
{
	nm_sock4_revnat(ctx);
	return NM_SYS_PROCEED;
}

char _license[] SEC("license") = "GPL";
