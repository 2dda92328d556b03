"""The node Envoy's identity in the kernel: its pod's cgroup, followed.

Nothing below the proxy's cgroup is ever steered (its upstream connects
would loop back into it), and only it is answered SO_ORIGINAL_DST. A
DaemonSet's Envoy gets a new pod, UID and cgroup with every restart, so the
agent finds its node's Envoy pod in each model, links the getsockopt program
to that pod's cgroup (the new link before the old one goes:
`loader.attach_proxy`) and writes the cgroup's id to `nm_config_v2`. A model
can name the new pod before the kubelet has made its cgroup; until it
appears, `watch()` looks again every half second, so the window where the
new Envoy is not yet known stays that short.
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

log = structlog.get_logger("nodemesh.ebpf.proxy_follow")

PROXY_RESOLVED = Gauge(
    "nodemesh_datapath_proxy_resolved",
    "1 while the node Envoy pod's cgroup is known to the kernel (its connects are never steered)",
)
POLL_SECONDS = 0.5


@runtime_checkable
class PodPaths(PodCgroups, Protocol):
    """A resolver that also names a pod's cgroup directory (to link to it)."""

    def path_of(self, pod: str) -> Path: ...


@dataclass(frozen=True, slots=True)
class ProxyPod:
    """How the agent finds its node's Envoy pod in the model (the Envoy
    DaemonSet's namespace and pod labels)."""

    namespace: str
    labels: tuple[tuple[str, str], ...]

    def matches(self, pod: Pod) -> bool:
        have = dict(pod.labels)
        return pod.ref.namespace == self.namespace and all(have.get(k) == v for k, v in self.labels)

    def __str__(self) -> str:
        return f"{self.namespace}/{','.join(f'{k}={v}' for k, v in self.labels)}"


class ProxyFollower:
    """Keeps the getsockopt link and `nm_config_v2.proxy_cgroup_id` on this
    node's Envoy pod.

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
            p for p in self._seen if self.selector.matches(p) and (not node or p.node_name == node)
        ]
        # A running pod over a pending or terminating one; then by name, so
        # the choice is stable while two exist during a rollout.
        mine.sort(key=lambda p: (p.phase != "Running", p.ref.name))
        for pod in mine:
            if self._adopt(pod):
                self.pending = False
                self._tell("resolved", 1)
                return
        self.pending = bool(mine)
        state = "waiting for " + ", ".join(str(p.ref) for p in mine) if mine else "absent"
        self._tell(state, 0)

    def _adopt(self, pod: Pod) -> bool:
        """Make `pod` the proxy if its cgroup is here; False if it is not."""
        name = f"{pod.ref.namespace}/{pod.ref.name}"
        cgroup = self.pods.cgroup_id(name)
        if cgroup is None:
            return False
        try:
            path = self.pods.path_of(name)
            # The link first: SO_ORIGINAL_DST is answered before anything
            # could be steered to this Envoy for being the proxy.
            moved = loader.attach_proxy(self.config, path)
        except DatapathError as exc:
            # Gone between the lookups (a pod cgroup removed), or refused:
            # not the proxy yet; the watch tries again.
            if str(exc) != self._link_error:
                log.warning("node Envoy pod cgroup not linked", pod=str(pod.ref), error=str(exc))
            self._link_error = str(exc)
            return False
        self._link_error = ""
        changed = loader.set_proxy_cgroup(self.config.maps_dir, cgroup)
        if moved or changed:
            log.info("node Envoy pod followed", pod=str(pod.ref), cgroup_id=cgroup)
        return True

    def _tell(self, state: str, resolved: int) -> None:
        PROXY_RESOLVED.set(resolved)
        if state != self._state and resolved == 0:
            log.warning(
                "node Envoy pod not on this node's cgroups (the last one known stays)",
                selector=str(self.selector),
                state=state,
            )
        self._state = state

    async def watch(self, interval: float = POLL_SECONDS) -> None:
        """Look again while a named Envoy pod's cgroup is missing. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if not self.pending:
                continue
            try:
                await asyncio.to_thread(self.follow, self._seen)
            except DatapathError as exc:
                # A map write that failed now may work on the next look.
                log.error("node Envoy pod not followed", error=str(exc))
