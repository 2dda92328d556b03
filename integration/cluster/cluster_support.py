"""Helpers shared by the tests against the real control plane (not a test module)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from integration.cluster.kube_cluster import REPO, KubeCluster
from integration.k8s_support import FAST, CountingStore, Nacks
from nodemesh.k8s_watch.client import KubeApi, make_api_client
from nodemesh.k8s_watch.source import KubernetesSource

T = TypeVar("T")
CANARY = REPO / "examples" / "canary"
AGENT_SA = ("nodemesh-system", "nodemesh-agent")
AGENT_USER = "system:serviceaccount:nodemesh-system:nodemesh-agent"


def wait_for(check: Callable[[], T | Literal[False] | None], what: str, timeout: float = 60.0) -> T:
    """Poll `check` until it returns something truthy; generous timeouts for a
    shared 2-core machine, and the last value in the failure message."""
    deadline = time.monotonic() + timeout
    last: T | Literal[False] | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")


def kget(kube: KubeCluster, *args: str, kubeconfig: Path | None = None) -> Any:
    return json.loads(kube.kubectl("get", "-o", "json", *args, kubeconfig=kubeconfig).stdout)


def version_services() -> str:
    """The Services behind the article's clusters default/httpbin-v1 and -v2
    (examples/canary/local-backends.yaml, which the article leaves to the
    user), without that file's hand-written EndpointSlices: in a cluster the
    EndpointSlice controller writes those."""
    docs = [d for d in yaml.safe_load_all((CANARY / "local-backends.yaml").read_text()) if d]
    return yaml.safe_dump_all([d for d in docs if d["kind"] == "Service"])


def apply_article(kube: KubeCluster) -> None:
    """The article's YAML, verbatim, plus the two version Services."""
    kube.kubectl(
        "apply",
        "-f",
        str(CANARY / "httpbin-deployment.yaml"),
        "-f",
        str(CANARY / "traffic-split.yaml"),
    )
    kube.kubectl("apply", "-f", "-", stdin=version_services())


def ready_endpoints(kube: KubeCluster, service: str, namespace: str = "default") -> list[str]:
    """Ready addresses of the Service's EndpointSlices that the real
    EndpointSlice controller wrote."""
    slices = kget(
        kube, "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}"
    )
    out = []
    for es in slices["items"]:
        assert (
            es["metadata"]["labels"].get("endpointslice.kubernetes.io/managed-by")
            == "endpointslice-controller.k8s.io"
        )
        for ep in es.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready"):
                out += ep["addresses"]
    return sorted(out)


@contextlib.contextmanager
def nodemesh(log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`nodemesh ARGS` as a user runs it, in its own session; SIGINT at the end."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodemesh.cmd.main", *args],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def conditions(
    kube: KubeCluster, plural: str, name: str, namespace: str = "default"
) -> dict[str, Any]:
    obj = kget(kube, plural, name, "-n", namespace)
    found = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
    found["_generation"] = obj["metadata"]["generation"]
    return found


def forbidden(kube: KubeCluster, user: str = AGENT_USER, since: int = 0) -> list[str]:
    """Every request of `user` the API server answered 403, from its audit log
    (from line `since` on: KubeCluster.audit_mark()), except those answered
    while a kube-apiserver was starting: until its RBAC caches are synced
    (/readyz not yet ok) it refuses what RBAC allows, and a watcher that
    reconnects at once meets that. Those are what a restart does, not RBAC."""
    out = []
    for e in kube.audit_events(user, since):
        if e.get("responseStatus", {}).get("code") != 403:
            continue
        at = datetime.datetime.fromisoformat(e["stageTimestamp"].replace("Z", "+00:00"))
        if any(begin <= at <= ready for begin, ready in kube.starting):
            continue
        reason = e.get("annotations", {}).get("authorization.k8s.io/reason", "")
        out.append(f"{e['verb']} {e['requestURI']} at {e['stageTimestamp']} ({reason})")
    return out


def event_v1(kube: KubeCluster, name: str, reason: str, namespace: str = "default") -> Any:
    """The Event about `name` with `reason`, as `kubectl get
    events.v1.events.k8s.io -o yaml` shows it to an operator (None if none yet)."""
    out = kube.kubectl("get", "events.v1.events.k8s.io", "-n", namespace, "-o", "yaml").stdout
    items = yaml.safe_load(out)["items"]
    return next(
        (e for e in items if e["regarding"]["name"] == name and e["reason"] == reason), None
    )


def assert_created_as_events_v1(kube: KubeCluster, event: dict[str, Any], since: int) -> None:
    """`event` was written through events.k8s.io/v1, not the legacy core API:
    the fields only that version sets, and every Event the agent's account
    created since audit line `since` went to /apis/events.k8s.io/v1."""
    assert event["eventTime"] and event["action"], event
    assert (event["reportingController"], event["regarding"]["uid"] != "") == ("nodemesh", True)
    legacy = ("deprecatedCount", "deprecatedSource", "deprecatedFirstTimestamp")
    assert not any(event.get(k) for k in legacy), {k: event.get(k) for k in legacy}
    creates = [
        e
        for e in kube.audit_events(AGENT_USER, since)
        if e["verb"] == "create" and e.get("objectRef", {}).get("resource") == "events"
    ]
    assert creates, "the agent's account created the Events"
    refused = [e["requestURI"] for e in creates if e["responseStatus"]["code"] != 201]
    assert refused == [], refused
    paths = {e["requestURI"].split("/namespaces/")[0] for e in creates}
    assert paths == {"/apis/events.k8s.io/v1"}, paths


@contextlib.asynccontextmanager
async def agent_status_source(
    kube: KubeCluster,
) -> AsyncIterator[tuple[KubernetesSource, Nacks]]:
    """A synced KubernetesSource as deploy/'s agent account, reporting status
    for node-a; ended and checked for errors on exit."""
    kubeconfig = await asyncio.to_thread(kube.service_account_kubeconfig, *AGENT_SA)
    client = await make_api_client(kubeconfig=str(kubeconfig))
    nacks = Nacks()
    source = KubernetesSource(
        KubeApi(client, FAST),
        CountingStore(),
        node="node-a",
        settings=FAST,
        nacks=nacks,
        retry_interval=0.2,
    )
    task = asyncio.create_task(source.run(), name="k8s-source")
    try:
        await source.watch.wait_synced(60)
        yield source, nacks
    finally:
        task.cancel()
        await asyncio.wait([task])
        await client.close()
    assert task.cancelled(), task.exception()
