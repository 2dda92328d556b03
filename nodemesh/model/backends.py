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
    usable = [s for s in slices if s.address_type != "FQDN"]
    if len(usable) > 1:
        usable.sort(key=_slice_name)
    out: dict[int, tuple[BackendAddress, ...]] = {}
    for sp in service.ports:
        found: dict[tuple[str, int], BackendAddress] = {}
        for eps in usable:
            number = _slice_port(eps, sp.name, sp.protocol)
            if number is None:
                continue
            for ep in eps.endpoints:
                address = ep.addresses[0]
                key = (address, number)
                # During a move an endpoint can sit in two slices: count it once.
                if key not in found:
                    found[key] = BackendAddress(
                        address,
                        number,
                        ep.node_name,
                        ep.pod_name,
                        ep.ready,
                        ep.serving,
                        ep.terminating,
                        ep.zone,
                    )
        out[sp.port] = tuple(found.values())
    return MappingProxyType(out)


def _slice_name(eps: EndpointSlice) -> str:
    return eps.ref.name


def _slice_port(eps: EndpointSlice, name: str, protocol: str) -> int | None:
    for port in eps.ports:
        if port.name == name and port.protocol == protocol:
            return port.port
    return None
