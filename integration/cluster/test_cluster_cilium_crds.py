"""nodemesh on a cluster that already runs Cilium: Cilium's own cilium.io/v2
CRDs (from the github.com/cilium/cilium release cilium/go.mod pins) instead of
deploy/crds. The article's CiliumEnvoyConfig is accepted by Cilium's schemas
and nodemesh serves it; the article's CiliumNetworkPolicy is not (the server's
message is in the test output). Cilium's CiliumEnvoyConfig CRD has no status subresource, so the
conditions cannot be written there (the server answers 404, never 403) and
the Events still carry every reason, as deploy/README.md says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from integration.cluster import cluster_build as build
from integration.cluster.cluster_support import (
    AGENT_SA,
    AGENT_USER,
    CANARY,
    forbidden,
    kget,
    nodemesh,
    version_services,
    wait_for,
)
from integration.cluster.kube_cluster import REPO, KubeCluster, free_port, wait_established
from integration.k8s_support import admin_get

pytestmark = pytest.mark.k8s

KINDS = (
    "ciliumenvoyconfigs",
    "ciliumclusterwideenvoyconfigs",
    "ciliumnetworkpolicies",
    "ciliumclusterwidenetworkpolicies",
)

BAD = """
apiVersion: cilium.io/v2
kind: CiliumEnvoyConfig
metadata: {name: bad-backend, namespace: default}
spec:
  services: [{name: no-such-service, namespace: default}]
  resources:
    - "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
      name: bad-route
      virtual_hosts:
        - name: vh
          domains: ["*"]
          routes: [{match: {prefix: "/"}, route: {cluster: default/httpbin-v1}}]
"""


@pytest.fixture(scope="module")
def cilium_cluster() -> Iterator[KubeCluster]:
    """A cluster of its own (CRDs are cluster-wide): etcd and kube-apiserver,
    Cilium's CRDs, then deploy/'s namespace and RBAC but not its CRDs."""
    try:
        bin_dir, crds = build.ensure_built(), build.cilium_crds()
    except build.BuildError as exc:
        pytest.fail(str(exc), pytrace=False)
    kube = KubeCluster(bin_dir)
    kube.start(controllers=False)
    try:
        for kind in KINDS:
            # Server-side: Cilium's CRDs exceed the 256 KiB annotation that
            # client-side apply would add.
            kube.kubectl("apply", "--server-side", "-f", str(crds / f"{kind}.yaml"))
        wait_established(kube)
        # The Gateway API CRDs nodemesh also watches: a Cilium cluster has
        # them from Gateway API's own release, which deploy/crds copies.
        for gateway in sorted((REPO / "deploy" / "crds").glob("gateway.networking.k8s.io_*.yaml")):
            kube.kubectl("apply", "--server-side", "-f", str(gateway))
        wait_established(kube)
        for part in ("namespace.yaml", "rbac.yaml"):
            kube.kubectl("apply", "-f", str(REPO / "deploy" / part))
        yield kube
    finally:
        kube.stop()


def test_nodemesh_serves_the_article_from_ciliums_crds(
    cilium_cluster: KubeCluster, tmp_path: Path
) -> None:
    kube = cilium_cluster
    crd = kget(kube, "crd", "ciliumenvoyconfigs.cilium.io")
    (v2,) = [v for v in crd["spec"]["versions"] if v["name"] == "v2"]
    assert "status" not in v2.get("subresources", {}), "Cilium's CEC has no status subresource"
    # The article's CiliumNetworkPolicy puts its L7 rules straight under
    # egress[]; Cilium's schema has them only under egress[].toPorts[], and
    # the server says so. deploy/crds keeps unknown fields there, so ours
    # take it. Everything else in the article is accepted verbatim.
    docs = [d for d in yaml.safe_load_all((CANARY / "traffic-split.yaml").read_text()) if d]
    (cnp,) = [d for d in docs if d["kind"] == "CiliumNetworkPolicy"]
    refused = kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(cnp), check=False)
    print(f"kube-apiserver with Cilium's CRDs said: {refused.stderr.strip()}")
    assert refused.returncode != 0
    assert 'unknown field "spec.egress[0].rules"' in refused.stderr
    kube.kubectl("apply", "-f", str(CANARY / "httpbin-deployment.yaml"))
    kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([d for d in docs if d is not cnp]))
    kube.kubectl("apply", "-f", "-", stdin=version_services())
    kube.kubectl("apply", "-f", "-", stdin=BAD)
    mark = kube.audit_mark()
    kubeconfig = kube.service_account_kubeconfig(*AGENT_SA)
    admin = f"127.0.0.1:{free_port()}"
    args = ("serve", "--kubernetes", "--kubeconfig", str(kubeconfig), "--admin", admin)
    with nodemesh(tmp_path / "serve.log", *args, "--xds-address", f"127.0.0.1:{free_port()}"):

        def listeners() -> str:
            code, body = admin_get(admin, "/debug/config_dump?node=n1&type=listeners")
            return str(body) if code == 200 else ""

        wait_for(lambda: "default/httpbin-traffic-split/listener" in listeners(), "the listener")

        def warning() -> bool:
            events = kget(kube, "events.v1.events.k8s.io", "-n", "default")["items"]
            return any(
                e["regarding"]["name"] == "bad-backend" and e["reason"] == "ServiceNotFound"
                for e in events
            )

        wait_for(warning, "the ServiceNotFound Event for the bad CEC")

        def status_refused() -> list[int]:
            return [
                e["responseStatus"]["code"]
                for e in kube.audit_events(AGENT_USER, since=mark)
                if e["verb"] == "patch" and "/ciliumenvoyconfigs/" in e["requestURI"]
            ]

        codes = wait_for(status_refused, "nodemesh's attempt to write CEC status")
    assert set(codes) == {404}, "no status subresource on Cilium's CEC: 404, not 403"
    assert kget(kube, "cec", "bad-backend", "-n", "default").get("status") is None
    assert forbidden(kube, since=mark) == []
