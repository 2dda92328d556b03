"""The implementation of `nodemesh agent` (arguments: `nodemesh.ebpf.cli`).

Every `DatapathError` becomes one line on stderr (exit 1; 3 for a missing
prerequisite); this is the one place that mapping happens.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import structlog
from google.protobuf import json_format

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, dump, loader, planner, preflight
from nodemesh.ebpf.agent import AgentSettings, DatapathAgent
from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.ebpf.errors import DatapathError, PlanError, PrerequisiteMissing
from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource

log = structlog.get_logger("nodemesh.ebpf.cli")


def _config(args: argparse.Namespace) -> loader.DatapathConfig:
    return loader.DatapathConfig(
        pin_dir=args.pin_dir, cgroup=args.cgroup, proxy_cgroup=args.proxy_cgroup
    )


def read_plan(args: argparse.Namespace) -> pb.DatapathPlan | None:
    if args.plan is not None:
        try:
            return json_format.Parse(args.plan.read_text(), pb.DatapathPlan())
        except (OSError, json_format.ParseError) as exc:
            raise PlanError(f"{args.plan}: {exc}") from exc
    if args.model_dir is not None:
        store, _ = _store_from_dir(args.model_dir)
        return planner.plan(store.build(), args.node_name)
    return None


def _store_from_dir(directory: Path) -> tuple[MeshStore, FileSource]:
    """A model store fed by the shared file source (the same YAML `nodemesh serve` reads)."""
    if not directory.is_dir():
        raise PlanError(f"--model-dir {directory}: not a directory")
    store = MeshStore()
    source = FileSource(directory, store)
    source.load()
    for problem in source.errors:
        log.warning("source problem", problem=str(problem))
    return store, source


def _apply(args: argparse.Namespace, plan: pb.DatapathPlan) -> None:
    pods = DirectoryPodCgroups(args.pod_cgroups or args.cgroup)
    applier.apply(plan, _config(args).maps_dir, args.proxy_address, pods)


async def _watch(args: argparse.Namespace) -> None:
    """Poll the plan file; apply each new version. Errors keep the last good state."""
    stamp = args.plan.stat().st_mtime_ns if args.plan else 0
    while True:
        await asyncio.sleep(0.2)
        now = args.plan.stat().st_mtime_ns if args.plan and args.plan.exists() else stamp
        if now == stamp:
            continue
        stamp = now
        try:
            plan = read_plan(args)
            if plan is not None:
                _apply(args, plan)
        except DatapathError as exc:
            log.error("plan not applied; the previous one stays", error=str(exc))


async def _serve_with_xds(args: argparse.Namespace, stop: asyncio.Event) -> None:
    """The node agent proper: xDS for the node Envoy and the datapath, from
    one model store (the wiring lives in nodemesh.agent)."""
    from nodemesh.agent import NodeAgent
    from nodemesh.cli_controlplane import kubernetes_config
    from nodemesh.controlplane import ControlPlaneConfig
    from nodemesh.xds.translate import TranslateOptions

    host, _, port = args.admin.rpartition(":")
    if not host or not port.isdigit():
        raise PlanError(f"--admin: expected host:port, got {args.admin!r}")
    if args.model_dir is None and not args.kubernetes:
        raise PlanError("the node agent serves a model: give --kubernetes or --model-dir")
    if args.kubernetes and not args.node_name:
        raise PlanError("--kubernetes needs --node-name (this node's pods and NACK reports)")
    control_plane = ControlPlaneConfig(
        source_dirs=(args.model_dir,) if args.model_dir is not None else (),
        kubernetes=kubernetes_config(args, args.node_name, reporter=args.node_name),
        xds_tcp=args.xds_address,
        xds_socket=args.xds_socket,
        admin_host=host,
        admin_port=int(port),
        translate=TranslateOptions(
            listener_address=args.listener_address or args.proxy_address or "127.0.0.1",
            node_name=args.node_name or None,
            use_original_dst=True,
        ),
    )
    settings = AgentSettings(_config(args), args.proxy_address, args.node_name)
    datapath = DatapathAgent(settings, DirectoryPodCgroups(args.pod_cgroups or args.cgroup))
    await asyncio.to_thread(datapath.start)  # refusals surface here, as one line
    agent = NodeAgent(
        control_plane, datapath, args.envoy_node_id or args.node_name, args.envoy_sync_timeout
    )
    running = asyncio.create_task(agent.run(), name="node-agent")
    ready = asyncio.create_task(agent.plane.ready.wait(), name="node-agent-ready")
    stopping = asyncio.create_task(stop.wait(), name="node-agent-stop")
    try:
        await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            print("agent ready", flush=True)
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()  # what ended it, as a plain exception
    finally:
        for task in (running, ready, stopping):
            task.cancel()
        await asyncio.gather(running, ready, stopping, return_exceptions=True)


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.xds_socket is not None or args.xds_address is not None:
        await _serve_with_xds(args, stop)
        return
    async with asyncio.TaskGroup() as tg:
        tasks = []
        if args.model_dir is not None:
            store, source = _store_from_dir(args.model_dir)
            settings = AgentSettings(_config(args), args.proxy_address, args.node_name)
            agent = DatapathAgent(settings, DirectoryPodCgroups(args.pod_cgroups or args.cgroup))
            tasks.append(tg.create_task(source.run(), name="file-source"))
            tasks.append(tg.create_task(agent.run(store.updates()), name="datapath"))
        else:
            tasks.append(tg.create_task(_watch(args), name="plan-watch"))
        print("agent ready", flush=True)
        await stop.wait()
        # The datapath stays pinned and live; only the agent goes away.
        for task in tasks:
            task.cancel()


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.cleanup:
        removed = loader.cleanup(config)
        print(f"removed {len(removed)} pins under {config.pin_dir}")
        return 0
    xds_mode = args.xds_socket is not None or args.xds_address is not None
    plan = None if xds_mode and args.action != "dump" else read_plan(args)
    if args.action == "dump":
        preflight.check_bpffs(config.pin_dir)
        if not config.maps_dir.is_dir():
            raise DatapathError(f"nothing is pinned under {config.pin_dir}; has the agent run?")
        pods = DirectoryPodCgroups(args.pod_cgroups or args.cgroup)
        print(dump.render(plan, config.maps_dir, args.proxy_address, pods))
        return 0
    if xds_mode:
        # The node agent loads the datapath itself and orders the first plan
        # against the node Envoy (nothing is steered before Envoy listens).
        asyncio.run(_serve(args))
        return 0
    loader.load(config)
    if plan is not None:
        _apply(args, plan)
    if args.watch:
        asyncio.run(_serve(args))
    return 0


def run(args: argparse.Namespace) -> int:
    from nodemesh.k8s_watch.errors import K8sWatchError

    try:
        return _run(args)
    except K8sWatchError as exc:
        print(f"nodemesh agent: kubernetes: {exc}", file=sys.stderr)
        return 1
    except PrerequisiteMissing as exc:
        print(f"nodemesh agent: missing: {exc.missing}\n  fix: {exc.fix}", file=sys.stderr)
        return 3
    except DatapathError as exc:
        print(f"nodemesh agent: error: {exc}", file=sys.stderr)
        return 1
