// SPDX-License-Identifier: Apache-2.0
/* cgroup sock_addr hooks: Service VIPs translated at the socket, before a
 * packet exists, for every process in the mesh cgroup; and the release hook
 * that drops what translation filed for a socket when it goes away (for
 * both families: see nm_sock_release). */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/l7.h"
#include "lib/lb.h"
#include "lib/lb6.h"

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

/* One program for AF_INET and AF_INET6 sockets: the kernel runs every
 * release program attached for every socket that closes, translated or
 * not, so a second one (as nm_sock6.c had) was a second run per socket. */
SEC("cgroup/sock_release")
int nm_sock_release(struct bpf_sock *sk)
{
	if (sk->family == NM_AF_INET6)
		nm_sock6_release(sk);
	else
		nm_sock4_release(sk);
	return NM_SYS_PROCEED;
}

char _license[] SEC("license") = "GPL";
