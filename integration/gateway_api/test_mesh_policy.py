"""An HTTPRoute does not bypass the client's L7 egress policy (cilium#34774).

A CiliumNetworkPolicy with HTTP rules on the same Service port as a route:
the route decides where requests go, the policy (Envoy's RBAC filter on the
route's listener, keyed by the client pod's address) which of the selected
client's requests may go at all. Real control plane, real Envoy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .mesh import MESH_NS, MeshCase
from .world import world

pytestmark = pytest.mark.envoy

ROUTE: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "to-v2", "namespace": MESH_NS},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
        "rules": [{"backendRefs": [{"name": "echo-v2", "port": 8080}]}],
    },
}
POLICY: dict[str, Any] = {
    "apiVersion": "cilium.io/v2",
    "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "v1-reads-only", "namespace": MESH_NS},
    "spec": {
        "endpointSelector": {"matchLabels": {"app": "echo", "version": "v1"}},
        "egress": [
            {
                "toServices": [{"k8sService": {"serviceName": "echo", "namespace": MESH_NS}}],
                "toPorts": [
                    {
                        "ports": [{"port": "80", "protocol": "TCP"}],
                        "rules": {"http": [{"method": "GET", "path": "/public/.*"}]},
                    }
                ],
            }
        ],
    },
}


async def test_route_and_http_policy_on_one_port(tmp_path: Path) -> None:
    case = MeshCase("nodemesh-policy", (), objects=(ROUTE, POLICY))
    async with world(case, tmp_path) as mesh:
        model = mesh.plane.model
        assert model is not None and model.errors == ()
        allowed = await mesh.request(MESH_NS, {"Path": "/public/x"})
        assert allowed.status == 200 and allowed.echo["pod"].startswith("echo-v2")
        denied = await mesh.request(MESH_NS, {"Path": "/admin"})
        assert denied.status == 403
        posted = await mesh.request(MESH_NS, {"Path": "/public/x", "Method": "POST"})
        assert posted.status == 403
