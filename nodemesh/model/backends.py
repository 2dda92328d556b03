"""Service backends from EndpointSlices, with Kubernetes' port resolution.

A Service port finds its number on the endpoints through the EndpointSlice
port of the same name and protocol (the Service's targetPort is for the
EndpointSlice controller, not for consumers). As Kubernetes documents,
addresses within one endpoint are fungible, so only the first is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from nodemesh.model.objects import EndpointSlice, Service
from nodemesh.model.snapshot import BackendAddress


def service_backends(
    service: Service, slices: Iterable[EndpointSlice]
) -> Mapping[int, tuple[BackendAddress, ...]]:
    """Per Service port number, its backends (ready, serving and terminating
    ones alike; consumers choose). FQDN slices are left out: nothing
    downstream can program a host name as a backend."""
    ordered = sorted((s for s in slices if s.address_type != "FQDN"), key=lambda s: s.ref.name)
    out: dict[int, tuple[BackendAddress, ...]] = {}
    for sp in service.ports:
        found: dict[tuple[str, int], BackendAddress] = {}
        for eps in ordered:
            number = next(
                (p.port for p in eps.ports if p.name == sp.name and p.protocol == sp.protocol),
                None,
            )
            if number is None:
                continue
            for ep in eps.endpoints:
                key = (ep.addresses[0], number)
                # During a move an endpoint can sit in two slices: count it once.
                if key not in found:
                    found[key] = BackendAddress(
                        address=ep.addresses[0],
                        port=number,
                        node_name=ep.node_name,
                        pod_name=ep.pod_name,
                        ready=ep.ready,
                        serving=ep.serving,
                        terminating=ep.terminating,
                    )
        out[sp.port] = tuple(found.values())
    return MappingProxyType(out)
