"""The routes attached to Services (GAMMA) as the admin port's /debug/syncz
shows them: each route's status.parents entries, exactly as the Kubernetes
source would write them (route_status.desired_conditions), so `nodemesh
status` tells a file-source user what a cluster user reads with kubectl."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nodemesh.k8s_watch.conditions import NackReport
from nodemesh.k8s_watch.route_status import desired_conditions, route_nacks
from nodemesh.model.gamma import CONTROLLER_NAME
from nodemesh.model.snapshot import MeshModel


def routes_json(model: MeshModel, nacks: Iterable[NackReport]) -> list[dict[str, Any]]:
    reports = list(nacks)
    out = []
    for status in model.gamma.statuses:
        lines = route_nacks(model, status.ref, reports)
        out.append(
            {
                "object": str(status.ref),
                "generation": status.generation,
                "parents": [
                    {
                        "parent": str(parent.parent),
                        "controllerName": CONTROLLER_NAME,
                        "conditions": desired_conditions(parent, lines),
                    }
                    for parent in status.parents
                ],
            }
        )
    return out
