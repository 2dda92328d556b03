"""The node Envoy's identity in the kernel: its pods' cgroups, followed.

Nothing below a proxy's cgroup is ever steered (its upstream connects would
loop back into it), and only proxies are answered SO_ORIGINAL_DST. A
DaemonSet's Envoy gets a new pod, UID and cgroup with every restart, and a
surge rollout (maxSurge 1, maxUnavailable 0) runs the draining pod and its
successor side by side, sharing the listener ports through SO_REUSEPORT. So
the kernel knows a SET of proxies: every Envoy pod of this node in the model
that has not ended (Pending ones too: with SO_REUSEPORT a new Envoy takes
connections as soon as it binds, before the model may call it Running) and
whose cgroup is here. Each gets its own getsockopt link
(`links/nm_getsockopt_pod_<uid>`) before its cgroup id enters
`nm_proxies_v1`; a pod that left the model leaves the set, then loses its
link. A model can name a new pod before the kubelet has made its cgroup;
until it appears, `watch()` looks again every half second. A pod of the set
that is terminating (deleting) stays in it until it leaves the model, and
`watch()` drains its Envoy once through its own admin socket
(`proxy_drain`), so what it still serves completes.

The follower keeps no state of its own: what is pinned (links, set) is
reconciled against each model, so a restarted agent picks up where the last
one stopped.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog
from prometheus_client import Gauge

from nodemesh.ebpf import loader
from nodemesh.ebpf.endpoints import PodCgroups
from nodemesh.ebpf.errors import DatapathError
from nodemesh.model.objects import Pod
from nodemesh.node.proxy_drain import ADMIN_DIR, ProxyDrainer

log = structlog.get_logger("nodemesh.node.proxy_follow")

PROXY_RESOLVED = Gauge(
    "nodemesh_datapath_proxy_resolved",
    "1 while at least one node Envoy pod's cgroup is known to the kernel",
)
PROXIES = Gauge("nodemesh_datapath_proxies", "Node Envoy pod cgroups in nm_proxies_v1")
ENDED = ("Succeeded", "Failed")  # phases whose processes are gone
POLL_SECONDS = 0.5


@runtime_checkable
class PodPaths(PodCgroups, Protocol):
    """A resolver that also names a pod's cgroup directory (to link to it)."""

    def path_of(self, pod: str) -> Path: ...


@dataclass(frozen=True, slots=True)
class ProxyPod:
    """How the agent finds its node's Envoy pod in the model (the Envoy
    DaemonSet's namespace and pod labels), and where each pod's admin socket
    directory is (`<admin_dir>/<pod uid>/admin.sock`)."""

    namespace: str
    labels: tuple[tuple[str, str], ...]
    admin_dir: Path = ADMIN_DIR

    def matches(self, pod: Pod) -> bool:
        have = dict(pod.labels)
        return pod.ref.namespace == self.namespace and all(have.get(k) == v for k, v in self.labels)

    def __str__(self) -> str:
        return f"{self.namespace}/{','.join(f'{k}={v}' for k, v in self.labels)}"


MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def warn_without_migrate_req(sysctl: Path = MIGRATE_REQ) -> bool:
    """True if a closing Envoy's queued connections move to the other Envoy.

    Without net.ipv4.tcp_migrate_req=1 the kernel resets connections still in
    the accept queue of a listener the old Envoy closes during a rollout."""
    try:
        on = sysctl.read_text().strip() == "1"
    except OSError:
        on = False
    if not on:
        log.warning(
            "tcp_migrate_req_off",
            consequence="an Envoy rollout may reset connections queued on the old "
            "Envoy's listeners; set net.ipv4.tcp_migrate_req=1 on the node",
            sysctl=str(sysctl),
        )
    return on


def link_name(pod: Pod) -> str:
    """The pinned getsockopt link of a followed pod (its UID, which the
    kubelet also names its cgroup by; namespace_name without one)."""
    return loader.POD_LINK_PREFIX + (pod.uid or f"{pod.ref.namespace}_{pod.ref.name}")


class ProxyFollower:
    """Keeps the getsockopt links and `nm_proxies_v1` on this node's Envoy pods.

    `follow()` runs from the agent's apply thread and `watch()` on the event
    loop; a lock keeps their writes in order."""

    def __init__(
        self, selector: ProxyPod, node_name: str, pods: PodPaths, config: loader.DatapathConfig
    ) -> None:
        self.selector = selector
        self.node_name = node_name
        self.pods = pods
        self.config = config
        self.pending = False  # the model names an Envoy pod whose cgroup is not here yet
        self._seen: tuple[Pod, ...] = ()
        self._mine: list[Pod] = []  # this node's Envoy pods in the last model
        self.drainer = ProxyDrainer(selector.admin_dir)
        self._state = ""
        self._link_error = ""  # the last one logged: a retry every poll says it once
        self._lock = threading.Lock()

    def follow(self, pods: Iterable[Pod]) -> None:
        with self._lock:
            self._seen = tuple(pods)
            self._follow()

    def _follow(self) -> None:
        node = self.node_name
        mine = [
            p
            for p in self._seen
            if self.selector.matches(p)
            and (not node or p.node_name == node)
            and p.phase not in ENDED
        ]
        self._mine = mine
        linked = {name: cg for pod in mine if (name := link_name(pod)) and (cg := self._adopt(pod))}
        self.pending = len(linked) < len(mine)
        if linked:
            self._retire(linked)
            self._tell("resolved", 1)
            return
        # No Envoy pod of this node here (none in the model, or none started
        # yet): the last ones known stay, or an Envoy still running would be
        # steered back to itself.
        state = "waiting for " + ", ".join(str(p.ref) for p in mine) if mine else "absent"
        self._tell(state, 0)

    def _adopt(self, pod: Pod) -> int:
        """Link `pod`, then put it in the set; its cgroup id, 0 if it is not here."""
        name = f"{pod.ref.namespace}/{pod.ref.name}"
        cgroup = self.pods.cgroup_id(name)
        if cgroup is None:
            return 0
        try:
            path = self.pods.path_of(name)
            # The link first: SO_ORIGINAL_DST is answered before anything
            # could be steered to this Envoy for being a proxy.
            moved = loader.attach_proxy(self.config, path, link_name(pod))
        except DatapathError as exc:
            # Gone between the lookups (a pod cgroup removed), or refused:
            # not a proxy yet; the watch tries again.
            if str(exc) != self._link_error:
                log.warning("node_envoy_pod_cgroup_not_linked", pod=str(pod.ref), error=str(exc))
            self._link_error = str(exc)
            return 0
        self._link_error = ""
        added = loader.add_proxy(self.config.maps_dir, cgroup)
        if moved or added:
            log.info("node_envoy_pod_followed", pod=str(pod.ref), cgroup_id=cgroup)
        return cgroup

    def _retire(self, linked: dict[str, int]) -> None:
        """Everything pinned that is not `linked`: out of the set, then unlinked."""
        maps_dir = self.config.maps_dir
        # What a single-proxy agent left: its id, then its link (the pod it
        # followed is in `linked` by now, under its own link).
        loader.set_proxy_cgroup(maps_dir, 0)
        loader.detach_proxy(self.config, loader.PROXY_LINK)
        keep = set(linked.values())
        for cgroup in loader.proxy_set(maps_dir) - keep:
            loader.remove_proxy(maps_dir, cgroup)
            log.info("node_envoy_pod_left_the_proxy_set", cgroup_id=cgroup)
        for pin in loader.proxy_links(self.config):
            if pin.name not in linked:
                loader.detach_proxy(self.config, pin.name)
        PROXIES.set(len(keep))

    def _tell(self, state: str, resolved: int) -> None:
        PROXY_RESOLVED.set(resolved)
        if state != self._state and resolved == 0:
            log.warning(
                "node_envoy_pod_not_on_this_node",
                kept="the last node Envoy pod known stays",
                selector=str(self.selector),
                state=state,
            )
        self._state = state

    async def watch(self, interval: float = POLL_SECONDS) -> None:
        """Look again while a named Envoy pod's cgroup is missing, and drain
        each terminating one once. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            # A terminating pod stays in the set (and linked): only its
            # listeners are drained, its connections finish.
            await self.drainer.drain_all(list(self._mine))
            if not self.pending:
                continue
            try:
                await asyncio.to_thread(self.follow, self._seen)
            except DatapathError as exc:
                # A map write that failed now may work on the next look.
                log.error("node_envoy_pod_not_followed", error=str(exc))
