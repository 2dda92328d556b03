"""Mesh model build time at 5,000 Services and 50,000 endpoints.

Prints, measured in one run: applying the raw objects, the first full build,
a rebuild after one EndpointSlice changed, and a rebuild after one Service
changed. Run: .venv/bin/python -m bench.model_build [--services N] [--per-service M]
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import time
from typing import Any

import structlog

from nodemesh.model.digest import object_digest
from nodemesh.model.parse import parse_object
from nodemesh.model.store import MeshStore
from tests.support import factory

ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def service(index: int) -> dict[str, Any]:
    return factory.k8s_service(
        f"svc-{index}",
        f"ns-{index % 50}",
        cluster_ip=f"10.96.{index // 256}.{index % 256}",
        ports=[factory.port(80, name="http", target=8080)],
        selector={"app": f"svc-{index}"},
    )


def endpoint_slice(index: int, per_service: int, generation: int = 0) -> dict[str, Any]:
    endpoints = [
        factory.endpoint(
            f"10.{1 + index // 6000}.{(index // 24) % 250}.{(index % 24) * 10 + e}",
            ready=True,
            node=f"node-{e % 3}",
            pod={"kind": "Pod", "name": f"svc-{index}-{e}-{generation}"},
        )
        for e in range(per_service)
    ]
    return factory.endpoint_slice(
        f"svc-{index}",
        endpoints,
        f"ns-{index % 50}",
        name=f"svc-{index}-abc",
        ports=[factory.port(8080, name="http")],
    )


def envoy_config(index: int) -> dict[str, Any]:
    return factory.cec(f"split-{index}", f"ns-{index % 50}", services=[f"svc-{index}"])


def pod(index: int, app: str) -> dict[str, Any]:
    ip = f"10.{100 + index // 60000}.{(index // 250) % 240}.{index % 250}"
    return factory.k8s_pod(f"pod-{index}", f"ns-{index % 50}", ip=ip, labels={"app": app})


def network_policy(index: int) -> dict[str, Any]:
    """Pods labelled client-<index> may GET from svc-<index> (same namespace)."""
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": f"policy-{index}", "namespace": f"ns-{index % 50}"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": f"client-{index}"}},
            "egress": [
                {
                    "toServices": [{"k8sService": {"serviceName": f"svc-{index}"}}],
                    "rules": {"http": [{"method": "GET"}]},
                }
            ],
        },
    }


def timed(fn: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result). On a shared machine
    CPU seconds are the steadier number: they leave out time spent waiting
    for a core that another process holds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--per-service", type=int, default=10)
    parser.add_argument("--configs", type=int, default=100, help="CECs, one per service")
    parser.add_argument("--repeat", type=int, default=20, help="incremental rebuilds to time")
    parser.add_argument("--full-runs", type=int, default=3, help="full builds to time")
    parser.add_argument("--pods", type=int, default=0, help="pods, spread over the policies")
    parser.add_argument("--policies", type=int, default=0, help="CNPs with an HTTP rule each")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    raws = [service(i) for i in range(args.services)]
    raws += [endpoint_slice(i, args.per_service) for i in range(args.services)]
    raws += [envoy_config(i) for i in range(min(args.configs, args.services))]
    policies = min(args.policies, args.services)
    raws += [network_policy(i) for i in range(policies)]
    raws += [pod(i, f"client-{i % max(policies, 1)}") for i in range(args.pods)]
    # The full build runs on fresh stores a few times: on a shared machine the
    # best run is the one least disturbed by other processes.
    rows: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.full_runs):
        store = MeshStore()
        wall, cpu, _ = timed(lambda store=store: [store.apply("bench", raw) for raw in raws])
        rows.setdefault("apply (store the raw objects)", []).append((wall, cpu))
        wall, cpu, model = timed(store.build)
        rows.setdefault("full build (parse, admit, derive)", []).append((wall, cpu))
    endpoints = sum(len(s.endpoints) for s in model.endpoint_slices)
    assert not model.errors, model.errors[:3]
    # Where a full build's time goes: the two biggest parts, alone, GC paused
    # as in build().
    gc.disable()
    for _ in range(args.full_runs):
        wall, cpu, parsed = timed(lambda: [parse_object(raw) for raw in raws])
        rows.setdefault("  of which: parsing every object", []).append((wall, cpu))
        wall, cpu, _ = timed(lambda parsed=parsed: [object_digest(p.obj) for p in parsed])
        rows.setdefault("  of which: content digests (version)", []).append((wall, cpu))
    gc.enable()

    for round_ in range(1, args.repeat + 1):
        index = (round_ * 7919) % args.services
        store.apply("bench", endpoint_slice(index, args.per_service, generation=round_))
        wall, cpu, rebuilt = timed(store.build)
        assert rebuilt.generation > model.generation
        model = rebuilt
        rows.setdefault("rebuild after one EndpointSlice change", []).append((wall, cpu))
        changed = service(index)
        changed["spec"]["ports"][0]["targetPort"] = 8000 + round_
        store.apply("bench", changed)
        wall, cpu, model = timed(store.build)
        rows.setdefault("rebuild after one Service change", []).append((wall, cpu))
        if args.pods:
            # Relabel a pod out of its policy's selection and back: the
            # policy's client IPs move, so the redirects are re-derived.
            victim = ((round_ + 1) // 2 * 104729) % args.pods  # odd round out, even back
            app = "nobody" if round_ % 2 else f"client-{victim % max(policies, 1)}"
            store.apply("bench", pod(victim, app))
            wall, cpu, model = timed(store.build)
            rows.setdefault("rebuild after one Pod relabel", []).append((wall, cpu))

    print(
        f"mesh: {len(model.services)} services, {endpoints} endpoints, "
        f"{len(model.envoy_configs)} CECs, {len(model.network_policies)} CNPs, "
        f"{len(model.pods)} pods, {len(model.redirects)} redirects"
    )
    head = ("step", "runs", "wall best", "wall median", "CPU best", "CPU median")
    print(f"{head[0]:<40}{head[1]:>5}" + "".join(f"{h:>13}" for h in head[2:]))
    for step, samples in rows.items():
        walls = [w for w, _ in samples]
        cpus = [c for _, c in samples]
        cells = (min(walls), statistics.median(walls), min(cpus), statistics.median(cpus))
        print(f"{step:<40}{len(samples):>5}" + "".join(f"{c:>12.4f}s" for c in cells))


if __name__ == "__main__":
    main()
