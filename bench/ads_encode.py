"""Snapshot encode benchmark: a 5,000-service mesh (listener, route, cluster
and 10 endpoints per service) encoded into an xDS snapshot, then a
one-endpoint change re-encoded against the previous snapshot.

The translator's own time is measured by bench/translate.py; this measures
the cache's part (serialize once, hash, build Any/Resource bytes, consistency
report) on hand-built Envoy messages.

Usage: .venv/bin/python -m bench.ads_encode [--services 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import time
from typing import Any

import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import duration_pb2

from nodemesh.xds.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, SnapshotCache


def _service(i: int, port_bump: int = 0) -> tuple[Any, Any, Any, Any]:
    name = f"default/svc-{i:05d}"
    c = cluster_pb2.Cluster(name=name, connect_timeout=duration_pb2.Duration(seconds=1))
    c.type = cluster_pb2.Cluster.EDS
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = cla.endpoints.add()
    for e in range(10):
        ep = group.lb_endpoints.add()
        ep.endpoint.address.socket_address.address = f"10.{i // 250}.{i % 250}.{e + 1}"
        ep.endpoint.address.socket_address.port_value = 8080 + (port_bump if e == 0 else 0)
    rc = route_pb2.RouteConfiguration(name=name)
    vh = rc.virtual_hosts.add(name=name, domains=[f"svc-{i:05d}", f"svc-{i:05d}.default"])
    r = vh.routes.add()
    r.match.prefix = "/"
    r.route.cluster = name
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = name
    hcm.rds.config_source.ads.SetInParent()
    hcm.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(router_pb2.Router())
    lst = listener_pb2.Listener(name=name)
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = 20000 + i
    lst.filter_chains.add().filters.add(
        name="envoy.filters.network.http_connection_manager"
    ).typed_config.Pack(hcm)
    return c, cla, lst, rc


def mesh(services: int, changed: int | None = None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {CLUSTER: {}, ENDPOINT: {}, LISTENER: {}, ROUTE: {}}
    for i in range(services):
        c, cla, lst, rc = _service(i, 1 if i == changed else 0)
        out[CLUSTER][c.name] = c
        out[ENDPOINT][cla.cluster_name] = cla
        out[LISTENER][lst.name] = lst
        out[ROUTE][rc.name] = rc
    return out


def _timed(fn: Any) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # the translator logs at debug level; printing is not what is measured
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n = args.services
    full, same_objects, fresh_objects, consistency = [], [], [], []
    for _ in range(args.repeat):
        cache = SnapshotCache()
        resources = mesh(n)
        t, first = _timed(lambda r=resources, c=cache: c.build_snapshot(r, "v1", "node"))
        full.append(t)
        t, _ = _timed(lambda c=cache, s=first: c.set_snapshot("node", s))
        consistency.append(t)
        # (a) the translator hands back the unchanged message objects
        changed = dict(resources)
        changed[ENDPOINT] = dict(resources[ENDPOINT])
        cla = mesh(1, changed=0)[ENDPOINT]["default/svc-00000"]
        changed[ENDPOINT]["default/svc-00000"] = cla
        t, second = _timed(lambda r=changed, c=cache: c.build_snapshot(r, "v2", "node"))
        same_objects.append(t)
        assert second.get(CLUSTER) is not None
        # (b) the translator rebuilds every message (equal content, new objects)
        rebuilt = mesh(n, changed=0)
        t, third = _timed(lambda r=rebuilt, c=cache: c.build_snapshot(r, "v3", "node"))
        fresh_objects.append(t)
        reused = sum(
            third.get(ty)[k] is first.get(ty)[k] for ty in first.resources for k in first.get(ty)
        )
        total = sum(len(first.get(ty)) for ty in first.resources)
    print(f"\nSnapshot encode: {n} services x (listener, route, cluster, 10-endpoint CLA)")
    print(f"  resources: {total}; reused encodings on rebuild: {reused} (all but 1 expected)")
    rows = [
        ("full encode (s)", full),
        ("consistency report on publish (s)", consistency),
        ("one-endpoint change, unchanged objects reused (ms)", [x * 1000 for x in same_objects]),
        ("one-endpoint change, all objects rebuilt (s)", fresh_objects),
    ]
    for label, values in rows:
        print(f"  {label:52} median {statistics.median(values):8.3f}   max {max(values):8.3f}")
    end_to_end(n, args.repeat)


def end_to_end(services: int, repeat: int) -> None:
    """The production path: the project's translator, then the cache's encode
    (the model comes from bench/translate.py's builder)."""
    try:
        from bench.translate import build_model, one_endpoint_changed
        from nodemesh.xds.translate import Translator
    except ImportError as exc:
        print(f"\nend-to-end skipped: {exc}")
        return
    full, change = [], []
    for _ in range(repeat):
        cache = SnapshotCache()
        model = build_model(services, 10)
        translator = Translator()

        def publish(m: Any, label: str, tr: Any = translator, c: SnapshotCache = cache) -> None:
            c.set_default_snapshot(c.build_snapshot(tr.translate(m).resources, label))

        t, _ = _timed(lambda m=model: publish(m, "v1"))
        full.append(t)
        changed = one_endpoint_changed(model, 10)
        t, _ = _timed(lambda m=changed: publish(m, "v2"))
        change.append(t)
    print(f"\nEnd to end (Translator + build_snapshot + publish), {services} services:")
    for label, values in (
        ("full (s)", full),
        ("one-endpoint change (ms)", [x * 1e3 for x in change]),
    ):
        print(f"  {label:52} median {statistics.median(values):8.3f}   max {max(values):8.3f}")


if __name__ == "__main__":
    main()
