"""Status writes against the real API server (the ports of
integration/test_k8s_status.py's cases a real server can serve), as deploy/'s
account. A real server echoes every status patch back on the watch with a new
resourceVersion and new managedFields; the watcher must see those as ours
and build no model from them, and the reporter must not rewrite what is
already there. The audit log counts the patches.

The NACK of the second test is injected through the NackSource seam (a real
Envoy's NACK on the real server is test_cluster_nack.py); what is checked is
that the condition is set, and cleared again when the node stops NACKing."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import pytest
import yaml

from integration.cluster.cluster_support import (
    AGENT_USER,
    agent_status_source,
    conditions,
    event_v1,
    wait_for,
)
from integration.cluster.kube_cluster import KubeCluster
from integration.k8s_support import CountingStore, Nacks
from nodemesh.k8s_watch.conditions import NackReport
from nodemesh.k8s_watch.source import KubernetesSource
from tests.support import factory
from tests.support.polling import wait_until_async

pytestmark = pytest.mark.k8s


class Mesh(NamedTuple):
    kube: KubeCluster
    source: KubernetesSource
    nacks: Nacks
    ns: str  # a namespace per test: a deleted one takes a while to go


def _apply(kube: KubeCluster, *docs: dict[str, Any]) -> None:
    kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def _service(ns: str, name: str) -> dict[str, Any]:
    return factory.k8s_service(name, ns, selector={"app": name})


def _cec(ns: str, name: str, service: str) -> dict[str, Any]:
    route = factory.route_config(f"{name}-route", f"{ns}/backend")
    return factory.cec(name, ns, services=[{"name": service, "namespace": ns}], resources=[route])


@pytest.fixture
async def mesh(deployed: KubeCluster) -> AsyncIterator[Mesh]:
    ns = f"status-{secrets.token_hex(3)}"
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    await asyncio.to_thread(
        _apply, deployed, namespace, _service(ns, "frontend"), _service(ns, "backend")
    )
    try:
        async with agent_status_source(deployed) as (source, nacks):
            yield Mesh(deployed, source, nacks, ns)
    finally:
        # Wait until it is gone: a later test's `nodemesh serve` would
        # otherwise see its objects and be refused Events (403) while the
        # namespace terminates, which the audit checks count.
        await asyncio.to_thread(
            deployed.kubectl, "delete", "namespace", ns, "--wait=true", "--timeout=120s"
        )


async def _until(mesh: Mesh, name: str, check: Any, what: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        c = conditions(mesh.kube, "cec", name, mesh.ns)
        return c if check(c) else None

    return await asyncio.to_thread(wait_for, found, what, 90)


def _status_patches(kube: KubeCluster, name: str, since: int) -> int:
    return sum(
        1
        for e in kube.audit_events(AGENT_USER, since)
        if e["verb"] == "patch"
        and e["stage"] == "ResponseComplete"
        and e["objectRef"].get("subresource") == "status"
        and e["objectRef"].get("name") == name
    )


async def test_status_writes_do_not_loop_and_fixes_show(mesh: Mesh) -> None:
    kube, source, _, ns = mesh
    assert isinstance(source.store, CountingStore)
    mark = kube.audit_mark()
    await asyncio.to_thread(_apply, kube, _cec(ns, "bad", "later"))
    await _until(mesh, "bad", lambda c: "Programmed" in c, "conditions on the bad CEC")
    writes, model_gen = _status_patches(kube, "bad", mark), source.store.current.generation
    assert writes >= 1
    # An unrelated change builds a new model; the CEC's conditions do not
    # change, so nothing is rewritten, and the server's echo of our own
    # status write (new resourceVersion, new managedFields) built no model.
    await asyncio.to_thread(_apply, kube, _service(ns, "unrelated"))
    await wait_until_async(lambda: source.store.current.generation > model_gen, timeout=60)
    gen_after_unrelated = source.store.current.generation
    # Fix the CEC by creating the Service it names: conditions flip to True.
    await asyncio.to_thread(_apply, kube, _service(ns, "later"))
    fixed = await _until(
        mesh, "bad", lambda c: c["Accepted"]["status"] == "True", "the fix in the conditions"
    )
    assert fixed["Accepted"]["observedGeneration"] == fixed["_generation"] == 1
    assert _status_patches(kube, "bad", mark) == writes + 1
    assert source.store.current.generation > gen_after_unrelated
    # Our status writes came back on the watch (the informer saw them), yet
    # only the CEC's one real change (its creation) was applied to the store.
    await wait_until_async(
        lambda: (
            {str(c.get("type")) for c in _seen(source, ns, "bad")} == {"Accepted", "Programmed"}
        ),
        timeout=60,
    )
    assert source.store.applied.count(("CiliumEnvoyConfig", "bad")) == 1


def _seen(source: KubernetesSource, ns: str, name: str) -> tuple[Any, ...]:
    meta = source.watch.lookup("CiliumEnvoyConfig", ns, name)
    return tuple(meta.conditions) if meta else ()


async def test_nack_from_a_node_sets_programmed_false_then_clears(mesh: Mesh) -> None:
    kube, source, nacks, ns = mesh
    await asyncio.to_thread(_apply, kube, _cec(ns, "split", "frontend"))
    await _until(
        mesh, "split", lambda c: c.get("Programmed", {}).get("status") == "True", "Programmed"
    )
    nacks.reports.append(
        NackReport(
            "node-a",
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            (f"{ns}/split/split-route",),
            f"Unknown cluster '{ns}/backend'",
        )
    )
    source.nacks_changed()
    nacked = await _until(
        mesh, "split", lambda c: c["Programmed"]["status"] == "False", "the NACK as Programmed"
    )
    programmed = nacked["Programmed"]
    assert programmed["reason"] == "EnvoyNACK" and "node node-a" in programmed["message"]
    assert f"Unknown cluster '{ns}/backend'" in programmed["message"]
    assert programmed["observedGeneration"] == nacked["_generation"]
    event = await asyncio.to_thread(
        wait_for, lambda: event_v1(kube, "split", "EnvoyNACK", ns), "the NACK's Event"
    )
    assert event["type"] == "Warning" and event["regarding"]["namespace"] == ns
    nacks.reports.clear()
    source.nacks_changed()
    await _until(mesh, "split", lambda c: c["Programmed"]["status"] == "True", "the NACK cleared")
