"""A test node with pods in three namespaces and policy driven through the model.

Pods (namespace/name: labels), each serving TCP 80 and 8080 and UDP 53:

    prod/web-1, prod/web-2   app=web
    prod/api                 app=api
    prod/db                  app=db
    dev/web, dev/api         app=web / app=api
    dev/tool                 app=tool
    ops/mon, ops/dns         app=mon / app=dns

Namespaces carry `env` labels (prod/dev/ops). Policies go in as raw
Kubernetes objects through the real MeshStore, policy_plan and
policy_apply, exactly as the agent does; `matrix()` then tries every
(client, server, port) pair at once from inside the pods.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nodemesh.ebpf import policy_apply, policy_plan
from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore

from .node import NODE_IP, MeshNode, Pod

HERE = Path(__file__).parent
PROBE = HERE / "policy_probe.py"
TCP_PORTS = (80, 8080)
UDP_PORTS = (53,)
PODS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("prod", "web-1", {"app": "web", "pod-template-hash": "aaa"}),
    ("prod", "web-2", {"app": "web", "pod-template-hash": "bbb"}),
    ("prod", "api", {"app": "api"}),
    ("prod", "db", {"app": "db"}),
    ("dev", "web", {"app": "web"}),
    ("dev", "api", {"app": "api"}),
    ("dev", "tool", {"app": "tool"}),
    ("ops", "mon", {"app": "mon"}),
    ("ops", "dns", {"app": "dns"}),
)
NAMESPACE_LABELS = {"prod": {"env": "prod"}, "dev": {"env": "dev"}, "ops": {"env": "ops"}}
# What a TCP connect or a UDP exchange may take before it counts as dropped.
TIMEOUT = 2.0

Outcome = dict[tuple[str, str, int, str], str]


def pod_object(pod: Pod, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
        "spec": {
            "nodeName": "node-1",
            "containers": [
                {
                    "name": "c",
                    "ports": [
                        {"name": "http", "containerPort": 80},
                        {"name": "alt", "containerPort": 8080},
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    ],
                }
            ],
        },
        "status": {"podIP": pod.ip, "phase": "Running"},
    }


def namespace_object(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": NAMESPACE_LABELS[name]},
    }


class PolicyWorld:
    def __init__(self, node: MeshNode) -> None:
        self.node = node
        self.labels: dict[str, dict[str, str]] = {}
        self.pods: list[Pod] = []
        self.store = MeshStore()
        self.cgroups = DirectoryPodCgroups(node.mesh)
        self.last_plan: policy_plan.PolicyPlan | None = None

    def build(self, pods: Iterable[tuple[str, str, dict[str, str]]] = PODS) -> None:
        for ns in NAMESPACE_LABELS:
            self.store.apply("test", namespace_object(ns))
        for ns, name, labels in pods:
            pod = self.node.add_pod(ns, name)
            self.pods.append(pod)
            self.labels[pod.key] = labels
            self.store.apply("test", pod_object(pod, labels))
            ports = ",".join(map(str, TCP_PORTS)), ",".join(map(str, UDP_PORTS))
            proc = self.node.spawn(
                [sys.executable, str(PROBE), "serve", pod.key, *ports], pod.cgroup, pod.netns
            )
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def host_ips(self) -> list[str]:
        # The node's own addresses: its loopback and each pod-facing gateway.
        return [NODE_IP, *(p.ip.rsplit(".", 1)[0] + ".1" for p in self.pods)]

    def set_policies(self, *objects: dict[str, Any]) -> MeshModel:
        """Make `objects` the complete set of policies and apply them."""
        held = [namespace_object(ns) for ns in NAMESPACE_LABELS]
        held += [pod_object(p, self.labels[p.key]) for p in self.pods]
        self.store.replace_all("test", [*held, *objects])
        model = self.store.build()
        self.apply(model)
        return model

    def apply(self, model: MeshModel) -> policy_apply.PolicyApplyResult:
        self.last_plan = policy_plan.plan(model, "node-1", self.host_ips())
        return policy_apply.apply(self.last_plan, self.node.config().maps_dir, self.cgroups)

    def write_model(self, directory: Path, *objects: dict[str, Any]) -> None:
        """The namespaces, pods and `objects` as the YAML files an agent reads
        (`--model-dir`); JSON is YAML."""
        held = [namespace_object(ns) for ns in NAMESPACE_LABELS]
        held += [pod_object(p, self.labels[p.key]) for p in self.pods]
        directory.mkdir(parents=True, exist_ok=True)
        wanted = {f"{i:03d}.yaml": json.dumps(obj) for i, obj in enumerate([*held, *objects])}
        # Changed files are replaced by rename and extra ones removed last,
        # so a watching agent never reads a set with a policy missing.
        for name, text in wanted.items():
            path = directory / name
            if not path.exists() or path.read_text() != text:
                staged = directory / f".{name}.tmp"
                staged.write_text(text)
                staged.rename(path)
        for old in directory.glob("*.yaml"):
            if old.name not in wanted:
                old.unlink()

    def loop(self, client: Pod, server: Pod, port: int, stop: Path) -> subprocess.Popen[str]:
        argv = [sys.executable, str(PROBE), "loop", server.ip, str(port), str(stop)]
        proc = self.node.spawn(argv, client.cgroup, client.netns)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def targets(self, client: Pod) -> list[tuple[str, str, int, str]]:
        out = []
        for server in self.pods:
            if server is client:
                continue
            out += [(client.key, server.key, port, "tcp") for port in TCP_PORTS]
            out += [(client.key, server.key, port, "udp") for port in UDP_PORTS]
        return out

    def matrix(
        self, clients: Iterable[Pod] | None = None, ip_of: dict[str, str] | None = None
    ) -> Outcome:
        """Every client tries every other pod on every port, all at once."""
        by_key = {p.key: p for p in self.pods}
        ip_of = ip_of or {}
        running = []
        for client in clients or self.pods:
            targets = self.targets(client)
            wire = [
                [ip_of.get(s, by_key[s].ip if s in by_key else s), port, kind]
                for _, s, port, kind in targets
            ]
            proc = self.node.spawn(
                [sys.executable, str(PROBE), "try", str(TIMEOUT), json.dumps(wire)],
                client.cgroup,
                client.netns,
            )
            running.append((targets, proc))
        out: Outcome = {}
        for targets, proc in running:
            stdout, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"probe failed for {targets[0][0]}"
            out.update(zip(targets, json.loads(stdout), strict=True))
        return out

    def try_from(self, client: Pod, targets: list[tuple[str, int, str]]) -> list[str]:
        proc = self.node.spawn(
            [
                sys.executable,
                str(PROBE),
                "try",
                str(TIMEOUT),
                json.dumps([list(t) for t in targets]),
            ],
            client.cgroup,
            client.netns,
        )
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        result: list[str] = json.loads(stdout)
        return result

    def pod(self, key: str) -> Pod:
        return next(p for p in self.pods if p.key == key)


def run_bpftool(*args: str) -> str:
    return subprocess.run(["bpftool", *args], capture_output=True, text=True, check=True).stdout
