"""The implementation of `nodemesh agent` (arguments: `nodemesh.cmd.agent`).

Errors propagate to `nodemesh.cmd.main.dispatch`, which turns each into one
line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path

import structlog
from google.protobuf import json_format

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.cmd.common import UsageError, split_host_port, until_signalled
from nodemesh.cmd.serve import kubernetes_config
from nodemesh.ebpf import (
    applier,
    dump,
    dump_policy,
    events,
    loader,
    planner,
    policy_apply,
    policy_plan,
    preflight,
)
from nodemesh.ebpf.endpoints import DirectoryPodCgroups, PodCgroups
from nodemesh.ebpf.errors import DatapathError, PlanError
from nodemesh.flows.collector import CollectorOptions, FlowCollector
from nodemesh.flows.service import FlowServer, FlowServerSettings
from nodemesh.flows.servicemap import ServiceMap
from nodemesh.flows.ui import build_app, feed, ring_flows
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore
from nodemesh.node.datapath import AgentSettings, DatapathAgent, DatapathFollower, proxy_pods
from nodemesh.node.kubelet_cgroups import KubeletPodCgroups, find_kubepods
from nodemesh.node.proxy_follow import ProxyPod
from nodemesh.sources.files import FileSource
from nodemesh.wiring.agent import NodeAgent
from nodemesh.wiring.controlplane import ControlPlaneConfig
from nodemesh.wiring.flows import CgroupPods, follow_kernel_events
from nodemesh.xds.translate import TranslateOptions

log = structlog.get_logger("nodemesh.cmd.agent")


def pod_cgroups(args: argparse.Namespace) -> PodCgroups:
    """The pod -> cgroup resolver: the kubelet's layout (`--kubepods-cgroup`,
    found below the mesh cgroup with `auto`), else `<dir>/<namespace>_<name>`."""
    if args.kubepods_cgroup is None:
        return DirectoryPodCgroups(args.pod_cgroups or args.cgroup)
    if args.plan is not None:
        raise PlanError("--kubepods-cgroup resolves pods by UID from a model: use --model-dir")
    if str(args.kubepods_cgroup) == "auto":
        return KubeletPodCgroups(find_kubepods(args.cgroup), args.node_name)
    return KubeletPodCgroups(args.kubepods_cgroup, args.node_name)


def proxy_pod(args: argparse.Namespace) -> ProxyPod | None:
    """Which model pod is the node Envoy (only when --proxy-cgroup does not fix it)."""
    if args.proxy_cgroup is not None or not args.proxy_pod_selector:
        return None
    labels: list[tuple[str, str]] = []
    selector = args.proxy_pod_selector
    for term in selector.split(","):
        key, eq, value = term.partition("=")
        if not eq or not key.strip():
            raise PlanError(f"--proxy-pod-selector: expected key=value[,...], got {selector!r}")
        labels.append((key.strip(), value.strip()))
    return ProxyPod(args.proxy_pod_namespace, tuple(labels))


def _config(args: argparse.Namespace, pods: PodCgroups | None = None) -> loader.DatapathConfig:
    return loader.DatapathConfig(
        pin_dir=args.pin_dir,
        cgroup=args.cgroup,
        proxy_cgroup=args.proxy_cgroup,
        pod_cgroups=pods.root if pods is not None else None,
    )


def _settings(args: argparse.Namespace, pods: PodCgroups) -> AgentSettings:
    config = _config(args, pods)
    return AgentSettings(
        config,
        args.proxy_address,
        args.node_name,
        proxy_pod(args),
        host_ips=tuple(args.host_ip or ()),
        policy_events_allowed=args.policy_events_allowed,
        service_events=args.service_events,
        service_events_sample_every=args.service_events_sample_every,
    )


def read_plan(args: argparse.Namespace, pods: PodCgroups) -> pb.DatapathPlan | None:
    if args.plan is not None:
        try:
            return json_format.Parse(args.plan.read_text(), pb.DatapathPlan())
        except (OSError, json_format.ParseError) as exc:
            raise PlanError(f"{args.plan}: {exc}") from exc
    if args.model_dir is not None:
        store, _ = _store_from_dir(args.model_dir)
        model = store.build()
        pods.observe(model.pods)
        return planner.plan(model, args.node_name)
    return None


def _policy_plan(args: argparse.Namespace, pods: PodCgroups) -> policy_plan.PolicyPlan | None:
    """The policy plan of `--model-dir`'s model (None without one)."""
    if args.model_dir is None:
        return None
    settings = _settings(args, pods)
    model = _store_from_dir(args.model_dir)[0].build()
    hosts = (*settings.host_ips, *([args.proxy_address] if args.proxy_address else []))
    exempt = proxy_pods(model, settings.proxy_pod)
    return policy_plan.plan(model, args.node_name, hosts, exempt)


def _store_from_dir(directory: Path) -> tuple[MeshStore, FileSource]:
    """A model store fed by the shared file source (the same YAML `nodemesh serve` reads)."""
    if not directory.is_dir():
        raise PlanError(f"--model-dir {directory}: not a directory")
    store = MeshStore()
    source = FileSource(directory, store)
    source.load()
    for problem in source.errors:
        log.warning("source_problem", problem=str(problem))
    return store, source


def _apply(args: argparse.Namespace, plan: pb.DatapathPlan, pods: PodCgroups) -> None:
    applier.apply(plan, _config(args, pods).maps_dir, args.proxy_address, pods)


async def _watch(args: argparse.Namespace, pods: PodCgroups) -> None:
    """Poll the plan file; apply each new version. Errors keep the last good state."""
    stamp = args.plan.stat().st_mtime_ns if args.plan else 0
    while True:
        await asyncio.sleep(0.2)
        now = args.plan.stat().st_mtime_ns if args.plan and args.plan.exists() else stamp
        if now == stamp:
            continue
        stamp = now
        try:
            plan = read_plan(args, pods)
            if plan is not None:
                _apply(args, plan, pods)
        except DatapathError as exc:
            log.error("plan_not_applied", kept="the previous plan stays", error=str(exc))


async def _serve_with_xds(args: argparse.Namespace, pods: PodCgroups) -> None:
    """The node agent proper: xDS for the node Envoy and the datapath, from
    one model store (the wiring lives in nodemesh.wiring.agent). Runs until
    cancelled; the control plane drains its streams on the way out."""
    host, port = split_host_port(args.admin, "--admin-address")
    if args.model_dir is None and not args.kubernetes:
        raise UsageError("the node agent serves a model: give --kubernetes or --model-dir")
    if args.kubernetes and not args.node_name:
        raise UsageError("--kubernetes needs --node-name (this node's pods and NACK reports)")
    if args.xds_socket is None and args.xds_address is None:
        raise UsageError("the node agent serves its Envoy: give --xds-socket or --xds-address")
    als_socket = args.als_socket
    if als_socket is None and args.xds_socket is not None:
        als_socket = args.xds_socket.parent / "als.sock"
    control_plane = ControlPlaneConfig(
        source_dirs=(args.model_dir,) if args.model_dir is not None else (),
        kubernetes=kubernetes_config(args, args.node_name, reporter=args.node_name),
        xds_tcp=args.xds_address,
        xds_socket=args.xds_socket,
        admin_host=host,
        admin_port=port,
        translate=TranslateOptions(
            listener_address=args.listener_address or args.proxy_address or "127.0.0.1",
            node_name=args.node_name or None,
            use_original_dst=True,
            access_log_socket=str(als_socket) if als_socket is not None else None,
        ),
    )
    datapath = DatapathAgent(_settings(args, pods), pods)
    await asyncio.to_thread(datapath.start)  # refusals surface here, as one line
    agent = NodeAgent(
        control_plane, datapath, args.envoy_node_id or args.node_name, args.envoy_sync_timeout
    )

    async def announce_ready() -> None:
        await agent.plane.ready.wait()
        print("agent ready", flush=True)

    flows = flow_server(args, als_socket, lambda: agent.plane.model)
    flows.collector.cgroup_pods = CgroupPods(pods, lambda: agent.plane.model)
    # The live service map on the admin port too (as `observe --ui` serves it).
    service_map = ServiceMap()
    agent.plane.admin.pages[MAP_PREFIX] = build_app(service_map)
    await flows.start()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(agent.run(), name="node-agent")
            tg.create_task(announce_ready(), name="node-agent-ready")
            if datapath.proxy is not None:
                tg.create_task(datapath.proxy.watch(), name="envoy-pod-watch")
            maps_dir = _config(args, pods).maps_dir
            tg.create_task(follow_kernel_events(maps_dir, flows.collector), name="kernel-flows")
            map_feed = feed(service_map, ring_flows(flows.collector.ring))
            tg.create_task(map_feed, name="service-map")
    finally:
        await flows.stop()


MAP_PREFIX = "/map/"  # the service map's page on the admin port


def flow_server(
    args: argparse.Namespace, als_socket: Path | None, model: Callable[[], MeshModel | None]
) -> FlowServer:
    """The agent's flows: Envoy's access logs in, the Observer service out."""
    for flag in ("flows_ring_size", "flows_sample_every"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')}: must be at least 1")
    options = CollectorOptions(
        node_name=args.node_name,
        ring_capacity=args.flows_ring_size,
        sample_every=args.flows_sample_every,
    )
    observer = args.observer_address
    if observer is None and als_socket is not None:
        # A socket per agent, as Hubble's: two agents on one host (tests, a
        # rollout) never contend for a port.
        observer = f"unix:{als_socket.parent / 'observer.sock'}"
    settings = FlowServerSettings(als_socket=als_socket, observer_address=observer)
    return FlowServer(FlowCollector(options, model), settings)


async def _follow_model_dir(args: argparse.Namespace, pods: PodCgroups) -> None:
    """The datapath only, following a model directory (no xDS in this process)."""
    store, source = _store_from_dir(args.model_dir)
    follower = DatapathFollower(DatapathAgent(_settings(args, pods), pods))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(source.run(), name="file-source")
        tg.create_task(follower.follow(store.updates()), name="datapath")
        if follower.datapath.proxy is not None:
            tg.create_task(follower.datapath.proxy.watch(), name="envoy-pod-watch")
        print("agent ready", flush=True)


async def _watch_datapath(args: argparse.Namespace, pods: PodCgroups) -> None:
    # The datapath stays pinned and live when the agent goes away.
    if args.model_dir is not None:
        await until_signalled(_follow_model_dir(args, pods), "datapath")
    else:
        print("agent ready", flush=True)
        await until_signalled(_watch(args, pods), "plan-watch")


def run(args: argparse.Namespace) -> int:
    if args.action == "cleanup":
        config = _config(args)
        removed = loader.cleanup(config)
        print(f"removed {len(removed)} pins under {config.pin_dir}")
        return 0
    if args.service_events_sample_every < 1:
        raise UsageError("--service-events-sample-every: must be at least 1")
    pods = pod_cgroups(args)
    config = _config(args, pods)
    if args.action == "run":
        # The node agent loads the datapath itself and orders the first plan
        # against the node Envoy (nothing is steered before Envoy listens).
        asyncio.run(until_signalled(_serve_with_xds(args, pods), "node-agent"))
        return 0
    plan = read_plan(args, pods)
    if args.action == "dump":
        preflight.check_bpffs(config.pin_dir)
        if not config.maps_dir.is_dir():
            raise DatapathError(f"nothing is pinned under {config.pin_dir}; has the agent run?")
        print(dump.render(plan, config.maps_dir, args.proxy_address, pods))
        print(dump_policy.render(_policy_plan(args, pods), config.maps_dir, pods))
        return 0
    loader.load(config)
    policy_apply.set_events_allowed(config.maps_dir, args.policy_events_allowed)
    events.set_service_events(
        config.maps_dir, args.service_events, args.service_events_sample_every
    )
    if args.model_dir is not None:
        # Through the agent: the model's L3/L4 policy goes in with its plan.
        store, _ = _store_from_dir(args.model_dir)
        DatapathAgent(_settings(args, pods), pods).apply_model(store.build())
    elif plan is not None:
        _apply(args, plan, pods)
    if args.watch:
        asyncio.run(_watch_datapath(args, pods))
    return 0
