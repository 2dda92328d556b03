"""Kubernetes watch benchmark against the real control plane (integration/cluster).

    .venv/bin/python bench/k8s_sync_cluster.py [--services 5000] [--endpoints 10] [--changes 30]

Starts etcd and kube-apiserver built from source (integration/cluster/cluster_build.py;
no controllers, so nothing but this bench writes EndpointSlices), loads N
Services without selectors and one EndpointSlice of M endpoints each, then in
one run, side by side on the same objects:

- nodemesh: the agent's Kubernetes side (InformerSet over kubernetes-asyncio
  feeding the real MeshStore), in a fresh process of its own: time from
  start to the first model holding every Service and backend (target <= 5 s),
  one EndpointSlice change (PUT through the API server) until the built model
  has it (target <= 50 ms, over --changes changes), RSS after sync (target
  <= 150 MiB);
- client-go: a SharedInformerFactory over Services and EndpointSlices
  (integration/cluster/informer-sync, same go.mod pins, same cache dir):
  time until both caches synced, and its RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repo root, for integration.cluster

from integration.cluster import cluster_build as build  # noqa: E402
from integration.cluster.kube_cluster import KubeCluster  # noqa: E402
from integration.cluster.rest import Rest  # noqa: E402

NAMESPACES = 50


def service(i: int) -> tuple[str, dict[str, Any]]:
    ns = f"ns{i % NAMESPACES}"
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc{i}", "namespace": ns},
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}]},
    }
    return f"/api/v1/namespaces/{ns}/services", body


def endpoint_slice(i: int, endpoints: int) -> tuple[str, dict[str, Any]]:
    ns = f"ns{i % NAMESPACES}"
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc{i}-bench",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": f"svc{i}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [f"10.{100 + i // 65000}.{(i // 250) % 256}.{j * 20 + i % 20 + 1}"],
                "conditions": {"ready": True},
            }
            for j in range(endpoints)
        ],
    }
    return f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", body


def load(kube: KubeCluster, services: int, endpoints: int) -> float:
    """deploy/crds (nodemesh waits for every kind it watches), then the objects."""
    t0 = time.perf_counter()
    kube.kubectl("apply", "-f", str(ROOT / "deploy" / "crds"))
    kube.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    api = kube.admin
    for n in range(NAMESPACES):
        api.post("/api/v1/namespaces", {"metadata": {"name": f"ns{n}"}})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: api.post(*service(i)), range(services)))
        list(pool.map(lambda i: api.post(*endpoint_slice(i, endpoints)), range(services)))
    return time.perf_counter() - t0


async def child(kubeconfig: str, services: int, changes: int) -> dict[str, Any]:
    """nodemesh's side, in a process of its own so its RSS is only the watcher's."""
    from bench.k8s_sync import rss_mib
    from nodemesh.k8s_watch.client import KubeApi, make_api_client
    from nodemesh.k8s_watch.informer_set import InformerSet
    from nodemesh.k8s_watch.resources import default_resources
    from nodemesh.k8s_watch.settings import WatchSettings
    from nodemesh.model.objects import ServiceName
    from nodemesh.model.store import MeshStore

    started = time.perf_counter()
    client = await make_api_client(kubeconfig=kubeconfig)
    store, changed, settings = MeshStore(), asyncio.Event(), WatchSettings()
    source = InformerSet(
        KubeApi(client, settings),
        store,
        settings=settings,
        resources=default_resources("node-a"),
        on_change=changed.set,
    )
    task = asyncio.create_task(source.run())
    await source.wait_synced(300)
    model = store.build()
    first_model = time.perf_counter() - started
    assert len(model.services) == services + 1, len(model.services)  # + default/kubernetes
    rss = rss_mib()
    # The admin's own files, beside the kubeconfig in the cluster's temp dir.
    server = yaml.safe_load(Path(kubeconfig).read_text())["clusters"][0]["cluster"]["server"]
    pki = Path(kubeconfig).parent / "pki"
    api = Rest(server, pki / "ca.crt", pki / "admin.crt", pki / "admin.key")
    target, path = (
        ServiceName("ns7", "svc7"),
        "/apis/discovery.k8s.io/v1/namespaces/ns7/endpointslices/svc7-bench",
    )
    times = []
    for i in range(changes):
        body = await asyncio.to_thread(api.get, path)
        addr = f"10.200.{i // 250}.{i % 250 + 1}"
        body["endpoints"][0]["addresses"] = [addr]
        changed.clear()
        t0 = time.perf_counter()
        await asyncio.to_thread(api.request, "PUT", path, body)
        while not any(b.address == addr for b in store.build().backends_of(target, 80)):
            await changed.wait()
            changed.clear()
        times.append(time.perf_counter() - t0)
    task.cancel()
    await client.close()
    return {"first_model_s": first_model, "rss_mib": rss, "change_ms": [t * 1000 for t in times]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=5000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--changes", type=int, default=30)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.services, args.changes))))
        return
    # SIGTERM (a timeout, a CI stop) must still stop etcd and kube-apiserver.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bin_dir = build.ensure_built()
    kube = KubeCluster(bin_dir)
    kube.start(controllers=False)
    try:
        loaded = load(kube, args.services, args.endpoints)
        total = args.services * args.endpoints
        print(f"loaded {args.services} Services, {total} endpoints in {loaded:.0f} s")
        cmd = [sys.executable, __file__, "--child", str(kube.admin_kubeconfig)]
        cmd += ["--services", str(args.services), "--changes", str(args.changes)]
        child_out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        ours = json.loads(child_out.strip().splitlines()[-1])  # after the watcher's log lines
        go = subprocess.run(
            [str(bin_dir / "informer-sync"), f"--kubeconfig={kube.admin_kubeconfig}"],
            capture_output=True,
            text=True,
            check=True,
        )
        theirs = json.loads(go.stdout)
    finally:
        kube.stop()
    report(args, ours, theirs)


def report(args: argparse.Namespace, ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    changes = ours["change_ms"]
    print(
        f"cluster: {args.services} Services, {args.services * args.endpoints} endpoints "
        f"({args.services} EndpointSlices); real kube-apiserver + etcd on loopback"
    )
    rows = [
        (
            "initial sync to first model / synced (s)",
            ours["first_model_s"],
            theirs["sync_s"],
            "<= 5",
        ),
        ("RSS after sync (MiB)", ours["rss_mib"], theirs["rss_mib"], "<= 150"),
    ]
    if changes:
        rows.append(
            (
                "EndpointSlice change -> model, median (ms)",
                statistics.median(changes),
                None,
                "<= 50",
            )
        )
        rows.append(("EndpointSlice change -> model, max (ms)", max(changes), None, ""))
    print(f"{'measure':<44}{'nodemesh':>10}{'client-go':>11}{'target':>9}")
    for name, mine, go, target in rows:
        go_text = f"{go:.2f}" if go is not None else "-"
        print(f"{name:<44}{mine:>10.2f}{go_text:>11}{target:>9}")


if __name__ == "__main__":
    main()
