"""The GAMMA conformance cases of the pinned Gateway API release, runnable here.

`mesh_cases()` reads every `suite.ConformanceTest` in conformance/tests/mesh
(short name, manifests, and the `http.ExpectedResponse` literals, via
`golit`). `world.world()` stands in for the conformance cluster with real parts:
the suite's own mesh manifests (Services, Deployments), one echo pod per
Deployment (an aiohttp server on its own loopback address answering like the
suite's echo server: its pod name, namespace, the request's path and
headers), EndpointSlices and Pods naming them, the real control plane
serving the case's manifests over ADS and the real Envoy. Each pod also
serves the Istio echo gRPC method the suite's gRPC client calls.

A client pod's request goes where the datapath would send it: the node
Envoy's listener for the Service port when the model's redirect steers that
pod (the planner's own client decision), else straight to a backend (what
the kernel's L4 translation does). Kernel steering itself is tested in
integration/datapath; here the routing behind it is.

`check(case, answer)` is the suite's `compareRequest` (utils/echo/pod.go):
status code, request headers seen by the backend, absent request and
response headers, response headers, and the backend pod's name prefix.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import mesh_tests_dir, module_dir
from .golit import GoSyntaxError, literal_at, parse_value

MESH_NS = "gateway-conformance-mesh"
CONSUMER_NS = "gateway-conformance-mesh-consumer"
# One echo pod per Deployment of the suite's mesh manifests, on loopback
# addresses of this test session's own (another session may run the suite).
_BASE = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
POD_IPS = {
    (MESH_NS, "echo-v1"): f"{_BASE}.1",
    (MESH_NS, "echo-v2"): f"{_BASE}.2",
    (CONSUMER_NS, "echo-v1"): f"{_BASE}.3",
}
POD_LABELS = {
    "echo-v1": {"app": "echo", "version": "v1"},
    "echo-v2": {"app": "echo", "version": "v2"},
}
# The suite's echo pods serve HTTP on 8080 and gRPC on 7070 (and TLS on 8443,
# TCP on 9090, which no mesh case uses).
ECHO_PORTS = (8080,)
GRPC_PORT = 7070
# The Istio echo protocol the suite's gRPC client speaks: EchoTestService/Echo,
# answering an EchoResponse whose `message` (field 1) has "Hostname=<pod>".
ECHO_METHOD = "/proto.EchoTestService/Echo"


def echo_response(pod: str) -> bytes:
    text = f"Hostname={pod}\n".encode()
    return b"\x0a" + bytes([len(text)]) + text  # field 1, length-delimited (< 128 bytes)


def hostname_of(response: bytes) -> str:
    text = response[2:].decode()
    return text.removeprefix("Hostname=").strip()


@dataclass
class MeshCase:
    short_name: str
    manifests: tuple[str, ...]
    # (client namespace, ExpectedResponse as parsed); empty when not readable.
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    custom: str = ""  # a Test func that is not a list of ExpectedResponses
    weights: dict[str, float] = field(default_factory=dict)  # expectedWeights, if any
    objects: tuple[dict[str, Any], ...] = ()  # more objects (nodemesh's own cases)


def manifests_path(name: str) -> Path:
    return module_dir("sigs.k8s.io/gateway-api/conformance") / name


def _env() -> dict[str, Any]:
    return {
        "ns": MESH_NS,
        "suite.MeshNamespace": MESH_NS,
        "suite.MeshConsumerNamespace": CONSUMER_NS,
        "v2.Address": POD_IPS[(MESH_NS, "echo-v2")],
        "host": "echo",
    }


_CALLS = {"http.Ipv6SafeHost": lambda address: address}
_LIST = re.compile(r"(\w+)\s*:?=\s*(?:append\(\w+,\s*)?\[\]http\.ExpectedResponse\{")
_ONE = re.compile(
    r"(?:(\w+)\s*:=\s*|MakeRequestAndExpectEventuallyConsistentResponse\(t,\s*)http\.ExpectedResponse\{"
)


def _expected(block: str) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for pattern, many in ((_LIST, True), (_ONE, False)):
        for match in pattern.finditer(block):
            text, _ = literal_at(block, match.end() - 1)
            value = parse_value("x" + text if not many else "[]x" + text, _env(), _CALLS)
            client = CONSUMER_NS if (match.group(1) or "").startswith("consumer") else MESH_NS
            found.extend((client, v) for v in (value if many else [value]))
    return found


def mesh_cases() -> list[MeshCase]:
    cases: dict[str, MeshCase] = {}
    reused: dict[str, str] = {}
    for path in sorted(mesh_tests_dir().glob("*.go")):
        text = path.read_text()
        for match in re.finditer(r"suite\.ConformanceTest\{", text):
            block, _ = literal_at(text, match.end() - 1)
            found = re.search(r'ShortName:\s*"(\w+)"', block)
            if found is None:
                continue
            name = found[1]
            manifests = tuple(re.findall(r'"(tests/mesh/[^"]+\.yaml)"', block))
            case = cases[name] = MeshCase(name, manifests)
            other = re.search(r"Test:\s*(\w+)\.Test", block)
            if other:
                reused[name] = other[1]
                continue
            try:
                case.requests = _expected(block)
            except GoSyntaxError as exc:
                case.custom = f"unreadable: {exc}"
            weights = re.search(r"expectedWeights\s*:=\s*map\[string\]float64\{", block)
            if weights is not None:
                text, _ = literal_at(block, weights.end() - 1)
                case.weights = parse_value("map[string]float64" + text, _env(), _CALLS)
    for name, source in reused.items():
        var = next(c for c in cases.values() if source.endswith(c.short_name))
        cases[name].requests = var.requests
    return sorted(cases.values(), key=lambda c: c.short_name)


def base_objects() -> list[dict[str, Any]]:
    """The suite's mesh manifests (Services, Deployments; Namespaces skipped),
    plus the Pods and EndpointSlices the cluster would add."""
    docs = [d for d in yaml.safe_load_all(manifests_path("mesh/manifests.yaml").read_text()) if d]
    objects = [d for d in docs if d["kind"] in ("Service", "Deployment")]
    for (namespace, name), ip in POD_IPS.items():
        deployment = next(
            d
            for d in docs
            if d["kind"] == "Deployment"
            and (d["metadata"]["namespace"], d["metadata"]["name"]) == (namespace, name)
        )
        assert deployment["spec"]["template"]["metadata"]["labels"] == POD_LABELS[name]
        objects.append(_pod(namespace, f"{name}-0", POD_LABELS[name], ip))
    for service in [d for d in docs if d["kind"] == "Service"]:
        objects.append(_slice(service))
    return objects


def _pod(namespace: str, name: str, labels: dict[str, str], ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": "mesh-node"},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def _slice(service: dict[str, Any]) -> dict[str, Any]:
    meta = service["metadata"]
    selector = service["spec"]["selector"]
    pods = [
        (name, ip)
        for (namespace, name), ip in POD_IPS.items()
        if namespace == meta["namespace"] and POD_LABELS[name] | selector == POD_LABELS[name]
    ]
    ports = [
        {"name": p["name"], "port": p.get("targetPort", p["port"]), "protocol": "TCP"}
        for p in service["spec"]["ports"]
    ]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{meta['name']}-local",
            "namespace": meta["namespace"],
            "labels": {"kubernetes.io/service-name": meta["name"]},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": f"{name}-0", "namespace": meta["namespace"]},
                "nodeName": "mesh-node",
            }
            for name, ip in pods
        ],
    }


def write_world(directory: Path, case: MeshCase) -> None:
    """The source directory the control plane reads for one case."""
    objects = base_objects()
    for manifest in case.manifests:
        objects.extend(d for d in yaml.safe_load_all(manifests_path(manifest).read_text()) if d)
    objects.extend(case.objects)
    # The cluster assigns Service VIPs; the suite's Services have none written.
    vips = iter(f"10.96.10.{i}" for i in range(1, 250))
    for obj in objects:
        if obj["kind"] == "Service":
            obj["spec"].setdefault("clusterIP", next(vips))
    text = yaml.safe_dump_all(objects, sort_keys=False)
    (directory / "world.yaml").write_text(text)


def echo_answer(
    pod: str, namespace: str, method: str, path: str, headers: list[tuple[str, str]]
) -> str:
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        grouped.setdefault(name, []).append(value)
    return json.dumps(
        {"path": path, "method": method, "headers": grouped, "namespace": namespace, "pod": pod}
    )
