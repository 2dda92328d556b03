"""`nodemesh serve --kubernetes` against the real control plane, authenticated
as deploy/rbac.yaml's ServiceAccount with a TokenRequest token: the article's
canary end to end, status and Events read back with kubectl, and not one 403
for that account in the API server's audit log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from integration.cluster.cluster_support import (
    AGENT_SA,
    AGENT_USER,
    apply_article,
    assert_created_as_events_v1,
    conditions,
    event_v1,
    forbidden,
    kget,
    nodemesh,
    wait_for,
)
from integration.cluster.kube_cluster import KubeCluster, free_port
from integration.k8s_support import admin_get

pytestmark = pytest.mark.k8s

LISTENER = "default/httpbin-traffic-split/listener"


class Served(NamedTuple):
    admin: str  # nodemesh's admin host:port
    audit_from: int  # audit log line where this module's scenario starts


CEC = """
apiVersion: cilium.io/v2
kind: CiliumEnvoyConfig
metadata:
  name: {name}
  namespace: default
spec:
  services:
    - name: {service}
      namespace: default
  resources:
    - "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
      name: {name}-route
      virtual_hosts:
        - name: vh
          domains: ["*"]
          routes:
            - match: {{prefix: "/"}}
              route: {{cluster: default/httpbin-v1}}
"""


@pytest.fixture(scope="module")
def agent_kubeconfig(deployed: KubeCluster) -> Path:
    return deployed.service_account_kubeconfig(*AGENT_SA)


@pytest.fixture(scope="module")
def served(
    deployed: KubeCluster, agent_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    apply_article(deployed)
    audit_from = deployed.audit_mark()
    admin = f"127.0.0.1:{free_port()}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    args = ("serve", "--kubernetes", "--kubeconfig", str(agent_kubeconfig), "--admin", admin)
    with nodemesh(log, *args, "--xds-address", f"127.0.0.1:{free_port()}") as proc:
        yield Served(admin, audit_from)
        assert proc.poll() is None, log.read_text()[-3000:]


def dump(admin: str, kind: str) -> str:
    code, body = admin_get(admin, f"/debug/config_dump?node=n1&type={kind}")
    return json.dumps(body) if code == 200 else ""


def pod_ips(kube: KubeCluster, selector: str) -> list[str]:
    pods = kget(kube, "pods", "-l", selector)["items"]
    return sorted(p["status"]["podIP"] for p in pods if p["status"].get("podIP"))


def test_article_canary_flows_from_the_cluster_into_xds(
    deployed: KubeCluster, served: Served
) -> None:
    wait_for(
        lambda: LISTENER in dump(served.admin, "listeners"),
        "the article's listener from the cluster",
    )
    v1 = wait_for(lambda: pod_ips(deployed, "app=httpbin,version=v1"), "httpbin-v1 pods running")
    wait_for(
        lambda: all(ip in dump(served.admin, "endpoints") for ip in v1),
        "the v1 pod IPs (EndpointSlice controller -> watcher -> EDS)",
    )
    accepted = wait_for(
        lambda: (c := conditions(deployed, "cec", "httpbin-traffic-split")).get("Accepted") and c,
        "Accepted on the article's CEC",
    )
    assert accepted["Accepted"]["status"] == "True", accepted
    assert accepted["Accepted"]["observedGeneration"] == accepted["_generation"]

    # A user scales the canary: the controllers make a pod, the kubelet role
    # runs it, the EndpointSlice controller lists it, nodemesh serves it.
    deployed.kubectl("scale", "deployment/httpbin-v2", "--replicas=2")
    v2 = wait_for(
        lambda: (ips := pod_ips(deployed, "app=httpbin,version=v2")) and len(ips) == 2 and ips,
        "two v2 pods",
    )
    wait_for(
        lambda: all(ip in dump(served.admin, "endpoints") for ip in v2), "the new v2 pod in EDS"
    )


def test_bad_cec_gets_conditions_with_observed_generation_and_events(
    deployed: KubeCluster, served: Served
) -> None:
    deployed.kubectl(
        "apply", "-f", "-", stdin=CEC.format(name="bad-backend", service="no-such-service")
    )
    bad = wait_for(
        lambda: (c := conditions(deployed, "cec", "bad-backend")).get("Accepted") and c,
        "conditions on the bad CEC",
    )
    assert (bad["Accepted"]["status"], bad["Accepted"]["reason"]) == ("False", "ServiceNotFound"), (
        bad
    )
    assert "default/no-such-service" in bad["Accepted"]["message"]
    assert bad["Accepted"]["observedGeneration"] == bad["_generation"] == 1

    # What an operator reads: the status through kubectl, and the Event
    # through the events.k8s.io/v1 API and `kubectl events`.
    yaml_out = deployed.kubectl("get", "cec", "bad-backend", "-o", "yaml").stdout
    assert "reason: ServiceNotFound" in yaml_out and "observedGeneration: 1" in yaml_out

    event = wait_for(
        lambda: event_v1(deployed, "bad-backend", "ServiceNotFound"),
        "a ServiceNotFound Event for the bad CEC",
    )
    assert event["type"] == "Warning" and event["regarding"]["kind"] == "CiliumEnvoyConfig"
    assert event["action"] == "Accepted" and "default/no-such-service" in event["note"]
    assert_created_as_events_v1(deployed, event, served.audit_from)
    listed = deployed.kubectl(
        "events", "-n", "default", "--for", "ciliumenvoyconfig/bad-backend"
    ).stdout
    assert "ServiceNotFound" in listed and "no-such-service" in listed, listed

    # The user fixes it: generation 2, and the conditions say they saw it.
    deployed.kubectl("apply", "-f", "-", stdin=CEC.format(name="bad-backend", service="httpbin-v1"))
    fixed = wait_for(
        lambda: (
            (c := conditions(deployed, "cec", "bad-backend"))["Accepted"]["observedGeneration"] == 2
            and c
        ),
        "the fix observed",
    )
    assert fixed["Accepted"]["status"] == "True", fixed
    deployed.kubectl("delete", "cec", "bad-backend")


def test_apiserver_restart_with_changes_while_down(deployed: KubeCluster, served: Served) -> None:
    """kube-apiserver stops mid-watch; while it is down, changes go in through
    a second API server on the same etcd (as in an HA control plane) and etcd
    is compacted. nodemesh keeps serving its last model meanwhile, says why it
    is not ready, and afterwards has every change."""
    wait_for(lambda: LISTENER in dump(served.admin, "listeners"), "the article's listener")
    deployed.stop_apiserver()
    _, body = wait_for(
        lambda: (r := admin_get(served.admin, "/readyz"))[0] == 503 and r,
        "readiness to report the outage",
    )
    assert any(reason.startswith("kubernetes: ") for reason in body["reasons"]), body
    assert LISTENER in dump(served.admin, "listeners"), "the last model keeps serving"

    other = free_port()
    deployed.start_apiserver(other)
    try:
        via = f"--server=https://127.0.0.1:{other}"
        deployed.kubectl(
            via, "apply", "-f", "-", stdin=CEC.format(name="while-down", service="httpbin-v2")
        )
        route = "/spec/resources/0/virtual_hosts/0/routes/0/route/weighted_clusters/clusters"
        weights = json.dumps(
            [{"op": "replace", "path": f"{route}/{i}/weight", "value": 50} for i in (0, 1)]
        )
        deployed.kubectl(via, "patch", "cec", "httpbin-traffic-split", "--type=json", "-p", weights)
        deployed.compact_etcd()
        assert LISTENER in dump(served.admin, "listeners"), "still serving the last model"
    finally:
        deployed.stop_apiserver(other)
        deployed.start_apiserver()

    wait_for(
        lambda: "default/while-down/listener" in dump(served.admin, "listeners"),
        "the CEC made while down",
    )
    wait_for(
        lambda: '"weight": 50' in dump(served.admin, "routes"), "the weights changed while down"
    )
    wait_for(lambda: admin_get(served.admin, "/readyz")[0] == 200, "ready again")
    deployed.kubectl("delete", "cec", "while-down")


def test_the_agent_account_was_never_refused(deployed: KubeCluster, served: Served) -> None:
    """Runs after the scenarios above (file order): every request the agent's
    account made is in the audit log, and none was answered 403."""
    wait_for(lambda: LISTENER in dump(served.admin, "listeners"), "the scenario to have run")
    events = deployed.audit_events(AGENT_USER, since=served.audit_from)
    verbs = {e["verb"] for e in events}
    assert {"list", "watch", "patch", "create"} <= verbs, verbs
    assert forbidden(deployed, since=served.audit_from) == []
