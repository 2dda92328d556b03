"""`nodemesh k8s-watch`: watch a cluster into a mesh model and show it.

    nodemesh k8s-watch [--kubeconfig F] [--context C] [--k8s-server URL]
                       [--node-name N] [--once] [--timeout S] [--report-status]

An operator's view of what nodemesh sees in a cluster, from a laptop (a
kubeconfig) or a pod (the service account): with --once it syncs, prints the
model summary and every rejected object, and exits 0 (1 if the sync did not
finish in --timeout, saying why). Without it, one line per new model until
SIGTERM or SIGINT (exit 0). It writes nothing to the cluster unless --report-status.
Heavy imports wait until the command runs, so other subcommands stay fast.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from nodemesh.cmd.common import add_kubernetes_flags, until_signalled
from nodemesh.model.snapshot import MeshModel


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "k8s-watch", parents=[parent], help="watch a Kubernetes cluster into the mesh model"
    )
    add_kubernetes_flags(p, report_status=False, optional=False)
    p.add_argument("--node-name", help="watch only this node's pods")
    p.add_argument("--once", action="store_true", help="sync, print the model summary, exit")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the sync")
    p.set_defaults(func=run)


def summary(model: MeshModel) -> str:
    lines = [
        f"model {model.version} (generation {model.generation})",
        f"  services {len(model.services)}  endpoint slices {len(model.endpoint_slices)}"
        f"  pods {len(model.pods)}  envoy configs {len(model.envoy_configs)}"
        f"  network policies {len(model.network_policies)}  redirects {len(model.redirects)}",
        f"  errors {len(model.errors)}",
    ]
    lines += [f"    {error}" for error in model.errors]
    return "\n".join(lines)


async def _run(args: argparse.Namespace) -> int:
    from nodemesh.k8s_watch.client import KubeApi, make_api_client
    from nodemesh.k8s_watch.resources import default_resources
    from nodemesh.k8s_watch.settings import WatchSettings
    from nodemesh.k8s_watch.source import KubernetesSource
    from nodemesh.model.store import MeshStore

    client = await make_api_client(
        args.k8s_server, kubeconfig=args.kubeconfig, context=args.context
    )
    store = MeshStore()
    settings = WatchSettings()
    source = KubernetesSource(
        KubeApi(client, settings),
        store,
        node=args.node_name or "k8s-watch",
        settings=settings,
        resources=default_resources(args.node_name),
        report_status=args.report_status,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(source.run(), name="k8s-source")
            try:
                await source.watch.wait_synced(args.timeout)
            except TimeoutError:
                reasons = "; ".join(source.health.reasons())
                print(f"not synced after {args.timeout:g} s: {reasons}", file=sys.stderr)
                task.cancel()
                return 1
            if args.once:
                print(summary(store.build()))
                task.cancel()
                return 0
            async for model in store.updates():
                print(summary(model), flush=True)
    finally:
        await client.close()
    return 0


def run(args: argparse.Namespace) -> int:
    if args.once:
        return asyncio.run(_run(args))
    result: list[int] = []

    async def follow() -> None:
        result.append(await _run(args))

    asyncio.run(until_signalled(follow(), "k8s-watch"))
    return result[0] if result else 0
