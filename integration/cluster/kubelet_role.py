"""The kubelet's status role, and only that, for a cluster with no kubelets.

It registers Node objects, then for every pod the real scheduler bound to one
of them it reports what a kubelet reports once the containers run: phase
Running, the Ready conditions, a pod IP (the node's IP for hostNetwork pods)
and running container statuses. It also finishes graceful deletions, which a
kubelet does once the containers stopped. From that the real EndpointSlice
controller writes EndpointSlices. Pod IPs come from 10.244.<node>.0/24 and
are never contacted: nothing runs in the pods.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from integration.cluster.rest import ApiError, Rest

Raw = dict[str, Any]


def node_object(name: str, index: int) -> Raw:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "spec": {"podCIDR": f"10.244.{index}.0/24", "podCIDRs": [f"10.244.{index}.0/24"]},
    }


def _node_status(index: int) -> Raw:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": f"10.0.0.{10 + index}"},
                {"type": "Hostname", "address": f"node-{index}"},
            ],
            "capacity": {"cpu": "32", "memory": "64Gi", "pods": "250"},
            "allocatable": {"cpu": "32", "memory": "64Gi", "pods": "250"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "test kubelet role",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        }
    }


class KubeletRole:
    """Registers `nodes` Node objects and keeps their pods' status current
    from a thread, until `stop()`."""

    def __init__(self, api: Rest, nodes: int = 2, interval: float = 0.2) -> None:
        self.api = api
        self.nodes = {f"node-{i}": i for i in range(nodes)}
        self._next_ip: dict[str, int] = dict.fromkeys(self.nodes, 2)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubelet-role", daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        for name, index in self.nodes.items():
            try:
                self.api.post("/api/v1/nodes", node_object(name, index))
            except ApiError as exc:
                if exc.code != 409:
                    raise
            self.api.patch(f"/api/v1/nodes/{name}/status", _node_status(index))
            # The API server taints every new Node not-ready; the node
            # lifecycle controller lifts that once Ready. That controller is
            # off (no kubelet heartbeats to judge by), so the role lifts it.
            self.api.patch(f"/api/v1/nodes/{name}", {"spec": {"taints": None}})
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sync_once()
            except (ApiError, OSError) as exc:
                # The API server may be down on purpose (restart tests).
                self.errors.append(str(exc))
                del self.errors[:-20]

    def sync_once(self) -> None:
        pods = self.api.get("/api/v1/pods?fieldSelector=spec.nodeName!%3D")["items"]
        for pod in pods:
            meta, spec = pod["metadata"], pod["spec"]
            if spec.get("nodeName") not in self.nodes:
                continue
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
            if meta.get("deletionTimestamp"):
                self._finish_delete(path, meta["uid"])
            elif pod.get("status", {}).get("phase") != "Running":
                self.api.patch(path + "/status", self._running(pod), kind="strategic-merge")

    def _finish_delete(self, path: str, uid: str) -> None:
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        try:
            self.api.delete(path, body)
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise

    def _running(self, pod: Raw) -> Raw:
        node = pod["spec"]["nodeName"]
        index = self.nodes[node]
        host_ip = f"10.0.0.{10 + index}"
        if pod["spec"].get("hostNetwork"):
            pod_ip = host_ip
        else:
            pod_ip = f"10.244.{index}.{self._next_ip[node]}"
            self._next_ip[node] += 1
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in (
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled",
            )
        ]
        containers = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
            for c in pod["spec"]["containers"]
        ]
        return {
            "status": {
                "phase": "Running",
                "hostIP": host_ip,
                "hostIPs": [{"ip": host_ip}],
                "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "startTime": now,
                "conditions": conditions,
                "containerStatuses": containers,
            }
        }
