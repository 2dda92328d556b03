"""L7 redirects: which service ports the node-local Envoy must serve, and how.

Derived from the accepted CiliumEnvoyConfigs and CiliumNetworkPolicies, one
`L7Redirect` per (service, port, protocol). The names here are a contract with
the xDS translator, which builds its listeners and routes under exactly these
names:

- a resource of a CEC is "<namespace>/<cec>/<resource>" ("<ccec>/<resource>"
  for a clusterwide one), see `qualified_name`;
- a CEC without a Listener gets a synthesized "<namespace>/<cec>/listener"
  serving its (first) RouteConfiguration;
- a redirect from network policies alone is "nodemesh/l7/<ns>/<svc>/<port>",
  both as listener and as route configuration (the translator synthesizes a
  route to the Service's own cluster);
- a Service port with Gateway API routes (and no CEC) is
  "nodemesh/gamma/<ns>/<svc>/<port>", listener and producer routes; consumer
  namespaces' routes are "<that>/consumer/<namespace>" (see `gamma_listener`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nodemesh.model.clients import ClientIndex
from nodemesh.model.errors import PortAllocationError
from nodemesh.model.gamma import ServiceRoutes
from nodemesh.model.objects import (
    EgressRule,
    EnvoyConfig,
    HTTPPolicy,
    HTTPRule,
    L7Redirect,
    LabelSelector,
    NetworkPolicy,
    ObjectError,
    ObjectRef,
    ObjectWarning,
    RedirectOrigin,
    Service,
    ServiceName,
    ServicePort,
)
from nodemesh.model.parse_cilium import LISTENER_TYPE, ROUTE_TYPE
from nodemesh.model.ports import allocate_proxy_ports


def qualified_name(config: ObjectRef, name: str) -> str:
    """The xDS name of resource `name` from the CEC `config`."""
    if config.namespace:
        return f"{config.namespace}/{config.name}/{name}"
    return f"{config.name}/{name}"


def synthesized_listener(config: ObjectRef) -> str:
    """The listener nodemesh adds for a CEC that brings only routes."""
    return qualified_name(config, "listener")


def policy_listener(service: ServiceName, port: int) -> str:
    """Listener and route name of a redirect that only network policies ask for."""
    return f"nodemesh/l7/{service.namespace}/{service.name}/{port}"


# The label Cilium gives every pod's identity for its namespace; the datapath
# matches client selectors against pod labels plus this one.
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"


def gamma_listener(service: ServiceName, port: int) -> str:
    """Listener and producer route name of a Service port with GAMMA routes."""
    return f"nodemesh/gamma/{service.namespace}/{service.name}/{port}"


def consumer_route_name(listener: str, namespace: str) -> str:
    return f"{listener}/consumer/{namespace}"


def config_listener(config: EnvoyConfig, listener: str = "") -> tuple[str, str]:
    """(qualified listener, qualified route config) a `services` entry redirects to.

    `listener` is the entry's listener name ("" for the CEC's only one). The
    route config is what that listener's HTTP connection manager names over
    RDS, or "" when it routes inline or cannot be told.
    """
    own = [r for r in config.resources if r.type_url == LISTENER_TYPE]
    chosen = next((r for r in own if r.name == listener), None) if listener else None
    if chosen is None and own and not listener:
        chosen = own[0]
    if chosen is None:
        routes = [r for r in config.resources if r.type_url == ROUTE_TYPE]
        route = qualified_name(config.ref, routes[0].name) if routes else ""
        return synthesized_listener(config.ref), route
    rds = _rds_name(json.loads(chosen.body))
    if rds and "/" not in rds:
        rds = qualified_name(config.ref, rds)
    return qualified_name(config.ref, chosen.name), rds or ""


def _rds_name(listener: object) -> str | None:
    """The first RDS route_config_name anywhere in a listener's JSON."""
    if isinstance(listener, dict):
        rds = listener.get("rds")
        if isinstance(rds, dict):
            name = rds.get("route_config_name", rds.get("routeConfigName"))
            if isinstance(name, str):
                return name
        values: Iterable[object] = listener.values()
    elif isinstance(listener, list):
        values = listener
    else:
        return None
    for value in values:
        found = _rds_name(value)
        if found:
            return found
    return None


@dataclass(slots=True)
class _PolicyPart:
    clients: LabelSelector
    rules: list[HTTPRule] = field(default_factory=list)
    plain_allow: bool = False  # an L3/L4 rule of the same policy also allows this port


@dataclass(slots=True)
class _Pending:
    service: Service
    port: ServicePort
    config: EnvoyConfig | None = None
    listener: str = ""
    route_config: str = ""
    policies: dict[ObjectRef, _PolicyPart] = field(default_factory=dict)
    routes: ServiceRoutes | None = None


def derive_redirects(
    services: Mapping[ServiceName, Service],
    configs: Sequence[EnvoyConfig],
    policies: Iterable[NetworkPolicy],
    clients: ClientIndex,
    reserved_ports: Collection[int] = (),
    gamma: Mapping[tuple[ServiceName, int], ServiceRoutes] | None = None,
) -> tuple[tuple[L7Redirect, ...], tuple[ObjectError, ...]]:
    """All redirects of the model, sorted by (service, port, protocol).

    `configs` are the admitted CECs, oldest first: should two still claim one
    service port, the first keeps it (admission normally prevents that).
    """
    pending: dict[tuple[ServiceName, int, str], _Pending] = {}
    for config in configs:
        _add_config(pending, services, config)
    for policy in policies:
        for rule in policy.egress:
            _add_rule(pending, services, policy, rule)
    for (name, port), table in sorted((gamma or {}).items()):
        service = services.get(name)
        found = [p for p in service.ports if p.port == port] if service is not None else []
        if service is None or not found:
            continue
        item = pending.setdefault((name, port, "TCP"), _Pending(service, found[0]))
        if item.config is None:  # a CEC on the port keeps it (the routes' status says so)
            item.routes = table
    return _finish(pending, clients, reserved_ports)


def policy_warnings(
    services: Mapping[ServiceName, Service], policies: Iterable[NetworkPolicy]
) -> tuple[ObjectWarning, ...]:
    """HTTP rules that redirect nothing because their Service does not exist.

    Not an error, as in Cilium: the policy takes effect once the Service
    appears. Said anyway, because a typo looks exactly the same."""
    found = []
    for policy in policies:
        named = {n for rule in policy.egress if rule.http is not None for n in rule.to_services}
        missing = sorted(n for n in named if n not in services)
        for name in missing:
            reason = f"Service {name} does not exist: its HTTP rules redirect nothing yet"
            found.append(ObjectWarning(policy.ref, "spec.egress.toServices", reason))
    return tuple(found)


def _add_config(
    pending: dict[tuple[ServiceName, int, str], _Pending],
    services: Mapping[ServiceName, Service],
    config: EnvoyConfig,
) -> None:
    for entry in config.services:
        service = services.get(entry.service)
        if service is None:
            continue
        listener, route = config_listener(config, entry.listener)
        for port in service.ports:
            if port.protocol != "TCP" or (entry.ports and port.port not in entry.ports):
                continue
            key = (entry.service, port.port, port.protocol)
            item = pending.setdefault(key, _Pending(service, port))
            if item.config is None:
                item.config, item.listener, item.route_config = config, listener, route


def _add_rule(
    pending: dict[tuple[ServiceName, int, str], _Pending],
    services: Mapping[ServiceName, Service],
    policy: NetworkPolicy,
    rule: EgressRule,
) -> None:
    for name in rule.to_services:
        service = services.get(name)
        if service is None:
            continue
        for port in service.ports:
            if port.protocol != "TCP" or not _port_selected(rule, port):
                continue
            key = (name, port.port, port.protocol)
            if rule.http is None and key not in pending:
                continue  # plain L4 allow on a port nothing else redirects
            item = pending.setdefault(key, _Pending(service, port))
            part = item.policies.setdefault(policy.ref, _PolicyPart(policy.endpoint_selector))
            if rule.http is None:
                part.plain_allow = True
            else:
                part.rules.extend(r for r in rule.http if r not in part.rules)


def _port_selected(rule: EgressRule, port: ServicePort) -> bool:
    """toPorts name the service port or, as in Cilium, the backend (target) port."""
    if not rule.to_ports:
        return True
    return any(
        pp.protocol in ("ANY", port.protocol)
        and (pp.port in (0, port.port) or pp.port == port.target_port)
        for pp in rule.to_ports
    )


def _finish(
    pending: dict[tuple[ServiceName, int, str], _Pending],
    clients: ClientIndex,
    reserved_ports: Collection[int],
) -> tuple[tuple[L7Redirect, ...], tuple[ObjectError, ...]]:
    items = []
    for key in sorted(pending):
        item = pending[key]
        if item.config is None and item.routes is not None:
            item.listener = item.route_config = gamma_listener(key[0], key[1])
        elif item.config is None and not any(p.rules for p in item.policies.values()):
            continue  # only plain L4 allows: nothing for Envoy to do
        elif item.config is None:
            item.listener = item.route_config = policy_listener(key[0], key[1])
        items.append(item)
    try:
        ports = allocate_proxy_ports((i.listener for i in items), reserved_ports)
    except PortAllocationError as exc:
        errors = tuple(_owner_error(i, str(exc)) for i in items)
        return (), errors
    used: set[tuple[str, LabelSelector]] = set()
    redirects = tuple(_redirect(item, ports[item.listener], clients, used) for item in items)
    clients.forget_except(used)
    return redirects, ()


def _redirect(
    item: _Pending,
    proxy_port: int,
    index: ClientIndex,
    used: set[tuple[str, LabelSelector]],
) -> L7Redirect:
    policies = []
    for owner in sorted(item.policies):
        part = item.policies[owner]
        rules = list(part.rules)
        if part.plain_allow and rules and not any(r.allows_everything for r in rules):
            rules.append(HTTPRule())  # an L4 allow of the same port lets everything through
        if rules:
            ips = index.ips(owner, part.clients)
            used.add((owner.namespace, part.clients))
            policies.append(HTTPPolicy(owner, part.clients, ips, tuple(rules)))
    owners = [p.owner for p in policies]
    if item.config is not None:
        owners.insert(0, item.config.ref)
    elif item.routes is not None:
        owners[:0] = item.routes.owners
    # A CEC alone steers every client. With HTTP policies on the same port,
    # the policies select whose traffic goes to Envoy and the CEC routes it:
    # the article's reading ("a CiliumNetworkPolicy to select which traffic is
    # subject to this L7 rule"), so its unselected pods stay in the kernel.
    clients: tuple[LabelSelector, ...] | None = None
    if policies:
        clients = tuple(dict.fromkeys(_scoped(p.owner, p.clients) for p in policies))
    origin = RedirectOrigin.NETWORK_POLICY
    if item.config is not None:
        origin = RedirectOrigin.ENVOY_CONFIG
    elif item.routes is not None:
        origin = RedirectOrigin.GATEWAY_ROUTE
        clients = _route_clients(item.routes, clients)
    return L7Redirect(
        service=item.service.service_name,
        port=item.port.port,
        protocol=item.port.protocol,
        proxy_port=proxy_port,
        listener=item.listener,
        route_config=item.route_config,
        origin=origin,
        owners=tuple(owners),
        clients=clients,
        policies=tuple(policies),
    )


def _scoped(owner: ObjectRef, selector: LabelSelector) -> LabelSelector:
    """A namespaced policy's endpointSelector picks pods of its own namespace
    only (as in Cilium, and as its HTTPPolicy's client addresses are); the
    kernel matches pod labels plus the namespace label, so say it there."""
    if not owner.namespace:
        return selector
    labels = tuple(sorted((*selector.match_labels, (NAMESPACE_LABEL, owner.namespace))))
    return LabelSelector(labels, selector.match_expressions)


def _route_clients(
    routes: ServiceRoutes, policy_clients: tuple[LabelSelector, ...] | None
) -> tuple[LabelSelector, ...] | None:
    """Producer routes steer every client; consumer routes only their namespace's
    pods (and HTTP policies on the port still steer the pods they select)."""
    if routes.producer:
        return None
    namespaces = tuple(
        LabelSelector(match_labels=((NAMESPACE_LABEL, scope),)) for scope, _ in routes.consumers
    )
    return tuple(dict.fromkeys((*namespaces, *(policy_clients or ()))))


def _owner_error(item: _Pending, reason: str) -> ObjectError:
    owner = item.config.ref if item.config else min(item.policies)
    return ObjectError(owner, "spec", reason)
