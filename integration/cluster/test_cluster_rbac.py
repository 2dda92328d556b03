"""deploy/rbac.yaml against the real RBAC authorizer: the agent's account may
do exactly what deploy/README.md documents, and a verb it does not need is
refused (and shows up as a 403 in the audit log, so the zero-403 check of the
serve scenario can fail)."""

from __future__ import annotations

import re

import pytest

from integration.cluster.cluster_support import AGENT_SA, AGENT_USER, forbidden
from integration.cluster.kube_cluster import REPO, KubeCluster

pytestmark = pytest.mark.k8s

Rows = set[tuple[str, str]]


def documented() -> Rows:
    text = (REPO / "deploy" / "README.md").read_text()
    block = re.search(r"<!-- can-i-list: begin -->(.*?)<!-- can-i-list: end -->", text, re.S)
    assert block, "deploy/README.md lost its can-i-list block"
    return _rows(block.group(1))


def _rows(text: str) -> Rows:
    """(resource, verbs) of each resource row of `kubectl auth can-i --list`;
    the URL and resource-name columns are empty for the rows compared here."""
    rows = set()
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0] not in ("Resources", "```") and not cells[0].startswith("["):
            rows.add((cells[0], line[line.rindex("[") :].strip()))
    return rows


def can_i_list(kube: KubeCluster, user: str) -> Rows:
    return _rows(kube.kubectl("auth", "can-i", "--list", f"--as={user}").stdout)


def test_agent_may_do_exactly_the_documented_least_privilege_set(deployed: KubeCluster) -> None:
    # The baseline is the server's own: what an account with no bindings may do.
    baseline = can_i_list(deployed, "system:serviceaccount:nodemesh-system:nobody")
    assert baseline, "the server lists what every authenticated user may do"
    granted = can_i_list(deployed, AGENT_USER) - baseline
    assert granted == documented(), (
        f"granted - documented: {granted - documented()}; missing: {documented() - granted}"
    )


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("get", "secrets", "-n", "nodemesh-system"), "secrets"),
        (("delete", "ciliumenvoyconfigs", "any-name", "-n", "default"), "ciliumenvoyconfigs"),
        (("get", "services", "kubernetes", "-n", "default"), "services"),
    ],
)
def test_a_verb_the_agent_does_not_need_is_refused(
    deployed: KubeCluster, args: tuple[str, ...], what: str
) -> None:
    kubeconfig = deployed.service_account_kubeconfig(*AGENT_SA)
    mark = deployed.audit_mark()
    done = deployed.kubectl(*args, kubeconfig=kubeconfig, check=False)
    assert done.returncode != 0
    assert "Forbidden" in done.stderr and AGENT_USER in done.stderr, done.stderr
    assert any(what in refused for refused in forbidden(deployed, since=mark)), (
        "the 403 is in the audit log"
    )
