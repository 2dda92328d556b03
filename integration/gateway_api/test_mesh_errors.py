"""What the spec says a route's broken parts answer, on the real Envoy: 500s.

Not conformance cases (the suite tests these on Gateways only); the same
world: the suite's echo Services and pods, the real control plane and Envoy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .mesh import MESH_NS, MeshCase
from .world import world

pytestmark = pytest.mark.envoy


def _route(rules: list[Any]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "errors", "namespace": MESH_NS},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
            "rules": rules,
        },
    }


def _prefix(path: str) -> list[dict[str, Any]]:
    return [{"path": {"type": "PathPrefix", "value": path}}]


RULES = [
    # Only backend missing: every request to it is a 500.
    {"matches": _prefix("/missing"), "backendRefs": [{"name": "nope", "port": 80}]},
    # Half to a missing backend: its share is 500, the rest served.
    {
        "matches": _prefix("/half"),
        "backendRefs": [{"name": "nope", "port": 80}, {"name": "echo-v1", "port": 8080}],
    },
    # Every weight 0: 500.
    {"matches": _prefix("/zero"), "backendRefs": [{"name": "echo-v1", "port": 8080, "weight": 0}]},
    # An ExtensionRef filter nodemesh cannot run must not be skipped: 500.
    {
        "matches": _prefix("/ext"),
        "filters": [
            {"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "K", "name": "n"}}
        ],
        "backendRefs": [{"name": "echo-v1", "port": 8080}],
    },
    {"matches": _prefix("/ok"), "backendRefs": [{"name": "echo-v1", "port": 8080}]},
]


async def test_broken_parts_answer_500_and_the_rest_is_served(tmp_path: Path) -> None:
    case = MeshCase("nodemesh-errors", (), objects=(_route(RULES),))
    async with world(case, tmp_path) as mesh:

        async def statuses(path: str, n: int = 1) -> list[int]:
            return [(await mesh.request(MESH_NS, {"Path": path})).status for _ in range(n)]

        assert await statuses("/ok") == [200]
        assert await statuses("/missing", 3) == [500] * 3
        assert await statuses("/zero", 3) == [500] * 3
        assert await statuses("/ext", 3) == [500] * 3
        half = await statuses("/half", 60)
        assert set(half) == {200, 500}
