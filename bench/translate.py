"""Translation benchmark (issue 3's target): a 5,000-service mesh, 10 endpoints
each, every service with listener, route, cluster and endpoints.

Prints, measured in one run, side by side:
- full translate + deterministic SerializeToString of every resource
  (a fresh Translator: nothing memoized);
- a one-endpoint change on a warm Translator, encoding only the resources
  whose message changed (identity), when the model builder shares unchanged
  objects between versions (as frozen dataclasses allow);
- the same change when every model object is rebuilt equal but new (the
  memos then fall back to equality).

Usage: .venv/bin/python -m bench.translate [--services N] [--endpoints K] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nodemesh.model.objects import (
    HTTPPolicy,
    HTTPRule,
    Kind,
    L7Redirect,
    LabelSelector,
    ObjectRef,
    RedirectOrigin,
    Service,
    ServiceName,
    pairs,
)
from nodemesh.model.snapshot import BackendAddress, MeshModel
from nodemesh.xds.translate import Translation, Translator, encode
from tests.support import factory

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "canary"
NAMESPACE = "bench"
POLICY = ObjectRef(Kind.NETWORK_POLICY, NAMESPACE, "readonly")
CLIENTS = LabelSelector(match_labels=pairs({"app": "frontend"}))
RULES = (HTTPRule(method="GET", path="/api/.*"),)


def _service(index: int) -> Service:
    return factory.service(
        f"svc-{index}",
        factory.service_port(80, target=8080, name="http"),
        ip=f"10.96.{index // 250}.{index % 250 + 1}",
        namespace=NAMESPACE,
    )


def _backends(index: int, count: int, port: int = 8080) -> tuple[BackendAddress, ...]:
    return tuple(
        factory.backend(f"10.{index // 250}.{index % 250}.{j + 1}", port, node="n1")
        for j in range(count)
    )


def _redirect(service: Service, index: int) -> L7Redirect:
    listener = f"nodemesh/l7/{NAMESPACE}/{service.ref.name}/80"
    policy = HTTPPolicy(POLICY, CLIENTS, ("10.1.0.5", "10.1.0.6"), RULES)
    return L7Redirect(
        service=service.service_name,
        port=80,
        protocol="TCP",
        proxy_port=10000 + index,
        listener=listener,
        route_config=listener,
        origin=RedirectOrigin.NETWORK_POLICY,
        owners=(POLICY,),
        clients=(CLIENTS,),
        policies=(policy,),
    )


def build_model(services: int, endpoints: int) -> MeshModel:
    svcs = [_service(i) for i in range(services)]
    return factory.mesh_model(
        svcs,
        {s.service_name: {80: _backends(i, endpoints)} for i, s in enumerate(svcs)},
        redirects=[_redirect(s, i) for i, s in enumerate(svcs)],
    )


def one_endpoint_changed(model: MeshModel, endpoints: int) -> MeshModel:
    """v2: the first service's last endpoint moved to another port."""
    target = ServiceName(NAMESPACE, "svc-0")
    changed = _backends(0, endpoints)[:-1] + _backends(0, 1, port=9999)
    backends = dict(model.backends)
    backends[target] = MappingProxyType({80: changed})
    return replace(model, version="v2", backends=MappingProxyType(backends))


def canary_model() -> MeshModel:
    """examples/canary through the project's own file source and model store."""
    from nodemesh.model.store import MeshStore
    from nodemesh.sources.files import FileSource
    from nodemesh.xds.translate import validate_envoy_config

    store = MeshStore(validators=[validate_envoy_config])
    FileSource(EXAMPLES, store, source_name="bench").load()
    return store.build()


def encode_all(translation: Translation) -> int:
    return sum(len(encode(m)) for named in translation.resources.values() for m in named.values())


def encode_changed(translation: Translation, before: Translation) -> int:
    size = 0
    for url, named in translation.resources.items():
        old = before.resources[url]
        for name, message in named.items():
            if old.get(name) is not message:
                size += len(encode(message))
    return size


def _best(runs: int, step: Callable[[], None]) -> tuple[float, float, float]:
    """(best wall, median wall, median CPU) seconds. CPU time is reported too
    because other processes on a shared 2-core machine inflate wall time."""
    walls, cpus = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return min(walls), statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    model = build_model(args.services, args.endpoints)
    v2_shared = one_endpoint_changed(model, args.endpoints)
    v2_rebuilt = one_endpoint_changed(build_model(args.services, args.endpoints), args.endpoints)

    sizes: dict[str, int] = {}

    def full() -> None:
        sizes["full"] = encode_all(Translator().translate(model))

    canary = canary_model()

    def canary_full() -> None:
        for _ in range(100):
            sizes["canary"] = encode_all(Translator().translate(canary))

    canary_times = [t / 100 for t in _best(args.repeat, canary_full)]
    full_times = _best(args.repeat, full)
    counts = {
        u.rpartition(".")[2]: len(n) for u, n in Translator().translate(model).resources.items()
    }

    def incremental(v2: MeshModel, label: str) -> Callable[[], None]:
        translator = Translator()
        base = translator.translate(model)

        def step() -> None:
            sizes[label] = encode_changed(translator.translate(v2), base)
            translator.translate(model)  # back to v1, so every step is a change

        return step

    # Each timed step is two rounds (v1 -> v2, then v2 -> v1): halve it.
    shared = [t / 2 for t in _best(args.repeat, incremental(v2_shared, "shared"))]
    rebuilt = [t / 2 for t in _best(args.repeat, incremental(v2_rebuilt, "rebuilt"))]

    print(f"model: {args.services} services x {args.endpoints} endpoints; resources {counts}")
    print(f"{'case':<56}{'best wall':>11}{'median wall':>13}{'median CPU':>12}{'bytes':>10}")
    rows: list[tuple[Any, ...]] = [
        ("examples/canary: translate + encode (fresh Translator)", *canary_times, sizes["canary"]),
        ("full translate + encode (fresh Translator)", *full_times, sizes["full"]),
        ("one-endpoint change, unchanged objects shared", *shared, sizes["shared"]),
        ("one-endpoint change, every object rebuilt (equal)", *rebuilt, sizes["rebuilt"]),
    ]
    for label, best, median, cpu, size in rows:
        print(
            f"{label:<56}{best * 1000:>9.2f}ms{median * 1000:>11.2f}ms"
            f"{cpu * 1000:>10.2f}ms{size:>10}"
        )


if __name__ == "__main__":
    main()
