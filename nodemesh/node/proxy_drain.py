"""Draining a terminating node Envoy pod through its own admin socket.

Envoy exits at once on SIGTERM, cutting what it is serving. During a surge
rollout the old pod is marked deleting (metadata.deletionTimestamp) and the
kubelet runs its preStop wait; the agent then asks that Envoy, and only that
one, to drain: `POST /drain_listeners?graceful` starts the graceful drain
period (`--drain-time-s`, `--drain-strategy`) on every listener, after which
Envoy closes them. New connections go to the other Envoy's sockets in the
SO_REUSEPORT group; the ones it still holds finish (HTTP/1 responses carry
`Connection: close`, HTTP/2 gets GOAWAY). `inboundonly` is not used: the
node Envoy's listeners have no direction.

Each Envoy pod's admin listens on a Unix socket of its own,
`<admin_dir>/<pod uid>/admin.sock` (deploy/envoy-daemonset.yaml), because the
two Envoys of a rollout share the node's TCP ports. The pod stays in the
proxy set, with its getsockopt link, until it leaves the model.
"""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import structlog
from prometheus_client import Counter

from nodemesh.model.objects import Pod

log = structlog.get_logger("nodemesh.node.proxy_drain")

DRAINS = Counter(
    "nodemesh_datapath_proxy_drains", "Drains asked of terminating node Envoy pods", ["result"]
)
ADMIN_DIR = Path("/var/run/nodemesh/envoy")
DRAIN_PATH = "/drain_listeners?graceful"
TIMEOUT_SECONDS = 5.0


def admin_socket(admin_dir: Path, pod: Pod) -> Path | None:
    """The pod's admin socket; None for a pod without a UID (it has none)."""
    return admin_dir / pod.uid / "admin.sock" if pod.uid else None


async def drain(socket: Path, timeout: float = TIMEOUT_SECONDS) -> str:
    """POST the graceful drain to the Envoy admin at `socket`; its answer.

    Raises `OSError`, `aiohttp.ClientError` or `TimeoutError`."""
    connector = aiohttp.UnixConnector(path=str(socket))
    limit = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=limit) as session,
        session.post(f"http://envoy-admin{DRAIN_PATH}") as resp,
    ):
        body = await resp.text()
        if resp.status != 200:
            raise aiohttp.ClientResponseError(
                resp.request_info, (), status=resp.status, message=body.strip()[:200]
            )
        return body.strip()


def _listening(sock: Path) -> bool:
    """True if something accepts on the Unix socket `sock` (a local connect:
    refused at once when no one listens)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(sock))
        except OSError:
            return False
    return True


class ProxyDrainer:
    """Drains each terminating Envoy pod once (by UID), forgetting pods that
    left the set; a failure is logged, counted and not retried (the pod is
    going away; the preStop wait and SIGTERM still end it)."""

    def __init__(self, admin_dir: Path = ADMIN_DIR, timeout: float = TIMEOUT_SECONDS) -> None:
        self.admin_dir = admin_dir
        self.timeout = timeout
        self.done: set[str] = set()  # pod UIDs asked (or failed) already
        self.known: set[str] = set()  # pod UIDs in the last look

    def wanted(self, pods: list[Pod]) -> list[Pod]:
        """The terminating pods of `pods` not drained yet; forgets the rest
        and removes the admin directories of pods that left."""
        live = {p.uid for p in pods if p.uid}
        for uid in sorted(self.known - live):
            self._remove(uid)
        self.known = live
        self.done &= live
        return [p for p in pods if p.deleting and p.uid and p.uid not in self.done]

    def _remove(self, uid: str) -> None:
        """A gone pod's admin directory (a hostPath the kubelet leaves
        behind), unless an Envoy still answers on its socket."""
        path = self.admin_dir / uid
        sock = path / "admin.sock"
        if _listening(sock):
            return
        try:
            sock.unlink(missing_ok=True)
            path.rmdir()
        except OSError as exc:
            # Not there (another agent removed it) or not empty: left alone.
            log.debug("admin_directory_of_a_gone_envoy_pod_kept", path=str(path), error=str(exc))
            return
        log.info("admin_directory_of_a_gone_envoy_pod_removed", path=str(path))

    async def drain_all(self, pods: list[Pod]) -> None:
        for pod in self.wanted(pods):
            await self.drain_one(pod)

    async def drain_one(self, pod: Pod) -> bool:
        socket = admin_socket(self.admin_dir, pod)
        if socket is None or pod.uid is None:
            return False
        self.done.add(pod.uid)
        try:
            answer = await drain(socket, self.timeout)
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            DRAINS.labels(result="error").inc()
            log.error(
                "terminating_node_envoy_pod_not_drained",
                consequence="it stops at SIGTERM instead",
                pod=str(pod.ref),
                admin=str(socket),
                error=str(exc) or type(exc).__name__,
            )
            return False
        DRAINS.labels(result="ok").inc()
        log.info(
            "terminating_node_envoy_pod_draining_its_listeners",
            pod=str(pod.ref),
            admin=str(socket),
            answer=answer,
        )
        return True
