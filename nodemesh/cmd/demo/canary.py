"""What the demo reads from the model and the manifests: which backends to
run, which listener serves a host, and the configured weights."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from envoy.config.route.v3 import route_pb2

from nodemesh.cmd.demo.backends import BackendSpec
from nodemesh.model.objects import Deployment, L7Redirect, Service, as_dict
from nodemesh.model.snapshot import MeshModel

ENVOY_CONFIG_KINDS = ("CiliumEnvoyConfig", "CiliumClusterwideEnvoyConfig")


class DemoError(Exception):
    """The demo cannot run with this input; the message says what to fix."""


def _selects(service: Service, labels: dict[str, str]) -> bool:
    selector = as_dict(service.selector or ())
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def backend_specs(model: MeshModel) -> list[BackendSpec]:
    """One backend per Deployment replica, at the endpoints of the Services that
    select that Deployment's pods and no other Deployment's (e.g. httpbin-v1,
    not httpbin, which selects both versions)."""
    specs: list[BackendSpec] = []
    for deployment in sorted(model.deployments, key=lambda d: d.ref):
        addresses = _addresses_of(model, deployment)
        if len(addresses) < deployment.replicas:
            raise DemoError(
                f"{deployment.ref}: {deployment.replicas} replica(s) but only "
                f"{len(addresses)} endpoint(s) in the EndpointSlices of the Services "
                "selecting only its pods; add EndpointSlices for them"
            )
        version = as_dict(deployment.template_labels).get("version", deployment.ref.name)
        for index, (workload, host, port) in enumerate(addresses[: deployment.replicas]):
            replica = f"{deployment.ref.name}-{index}"
            specs.append(BackendSpec(workload, replica, version, host, port))
    return specs


def _addresses_of(model: MeshModel, deployment: Deployment) -> list[tuple[str, str, int]]:
    labels = as_dict(deployment.template_labels)
    others = [as_dict(d.template_labels) for d in model.deployments if d.ref != deployment.ref]
    found: list[tuple[str, str, int]] = []
    for name, service in sorted(model.services.items()):
        if not _selects(service, labels) or any(_selects(service, o) for o in others):
            continue
        for port in service.ports:
            for backend in model.backends_of(name, port.port):
                entry = (str(name), backend.address, backend.port)
                if entry not in found:
                    found.append(entry)
    return found


def find_redirect(model: MeshModel, namespace: str, host: str) -> L7Redirect:
    for redirect in model.redirects:
        if redirect.service.namespace == namespace and redirect.service.name == host:
            return redirect
    problems = "; ".join(str(e) for e in model.errors) or "no CiliumEnvoyConfig names it"
    raise DemoError(f"Service {namespace}/{host} is not redirected to Envoy ({problems})")


def configured_weights(route: route_pb2.RouteConfiguration, host: str) -> dict[str, int]:
    """Cluster -> weight of the first route of the virtual host serving `host`."""
    for vhost in route.virtual_hosts:
        if host in vhost.domains or "*" in vhost.domains:
            action = vhost.routes[0].route
            if action.HasField("weighted_clusters"):
                return {c.name: c.weight.value for c in action.weighted_clusters.clusters}
            return {action.cluster: 1}
    raise DemoError(f"RouteConfiguration {route.name!r} has no virtual host for {host!r}")


def load_weighted_envoy_config(directory: Path) -> dict[str, Any]:
    """The first CiliumEnvoyConfig with a weighted route, or HTTPRoute with a
    weighted rule, in `directory`: what `--weights` changes."""
    for path in sorted(directory.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            is_cec = isinstance(doc, dict) and doc.get("kind") in ENVOY_CONFIG_KINDS
            if (is_cec and _weighted_clusters(doc)) or _weighted_rule(doc) is not None:
                found: dict[str, Any] = doc
                return found
    raise DemoError(f"no CiliumEnvoyConfig or HTTPRoute with a weighted split in {directory}")


def _weighted_rule(doc: Any) -> list[dict[str, Any]] | None:
    """The backendRefs of an HTTPRoute's first rule with several of them."""
    if not isinstance(doc, dict) or doc.get("kind") != "HTTPRoute":
        return None
    for rule in doc.get("spec", {}).get("rules") or []:
        refs = rule.get("backendRefs") or []
        if len(refs) > 1:
            found: list[dict[str, Any]] = refs
            return found
    return None


def _weighted_clusters(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for resource in doc.get("spec", {}).get("resources", []):
        for vhost in resource.get("virtual_hosts", []):
            for route in vhost.get("routes", []):
                weighted = route.get("route", {}).get("weighted_clusters")
                if weighted:
                    found.append(weighted)
    return found


def with_weights(doc: dict[str, Any], weights: tuple[int, ...]) -> dict[str, Any]:
    """A copy of the CEC (or HTTPRoute) with its first weighted route set to `weights`."""
    changed = copy.deepcopy(doc)
    refs = _weighted_rule(changed)
    if refs is not None:
        _check_count(weights, [str(r.get("name")) for r in refs])
        for ref, weight in zip(refs, weights, strict=True):
            ref["weight"] = weight
        return changed
    weighted = _weighted_clusters(changed)[0]
    clusters = weighted["clusters"]
    _check_count(weights, [c["name"] for c in clusters])
    for cluster, weight in zip(clusters, weights, strict=True):
        cluster["weight"] = weight
    if "total_weight" in weighted:
        weighted["total_weight"] = sum(weights)
    return changed


def _check_count(weights: tuple[int, ...], names: list[str]) -> None:
    if len(names) != len(weights):
        raise DemoError(
            f"--weights: {len(weights)} weights given, but the route splits across "
            f"{len(names)} backends ({', '.join(names)})"
        )
