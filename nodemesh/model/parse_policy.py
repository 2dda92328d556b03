"""Parsing of L3/L4 network policy into `PolicySpec` (see `policy.py`).

Two front ends, one result:

- `cilium_rules`: the L3/L4 part of a CiliumNetworkPolicy or
  CiliumClusterwideNetworkPolicy (its L7 `rules.http` part stays with
  `parse_cilium`, which turns it into redirects);
- `kube_network_policy`: a `networking.k8s.io/v1` NetworkPolicy.

Everything nodemesh cannot enforce is refused with the field and the reason
rather than dropped: a policy that silently lost a rule would allow more
than its author wrote. A refused policy keeps its previous version (the
store's keep-last-good), so it never turns into allow-all.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from nodemesh.model.errors import ParseError
from nodemesh.model.fields import Fields, join, parse_selector
from nodemesh.model.objects import (
    LabelSelector,
    ObjectRef,
    ObjectWarning,
    SelectorRequirement,
    ServiceName,
    pairs,
)
from nodemesh.model.policy import (
    NAMESPACE_LABEL,
    NAMESPACE_LABELS_PREFIX,
    CIDRPeer,
    Entity,
    KubeNetworkPolicy,
    PolicyRule,
    PolicySpec,
    PortRule,
)

# IANA_SVC_NAME, what Kubernetes allows for a container port's name.
_PORT_NAME = re.compile(r"(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?")
_CILIUM_PROTOCOLS = ("TCP", "UDP", "ANY")
_KUBE_PROTOCOLS = ("TCP", "UDP")
_UNSUPPORTED_RULE_KEYS = {
    "fromRequires": "requirements",
    "toRequires": "requirements",
    "fromGroups": "cloud groups",
    "toGroups": "cloud groups",
    "fromNodes": "node selectors",
    "toNodes": "node selectors",
    "toFQDNs": "DNS-based rules",
    "icmps": "ICMP rules",
    "authentication": "mutual authentication",
}
# Label sources Cilium writes before a key; k8s (and any) mean "a pod label".
_LABEL_SOURCES = ("k8s:", "any:")


# -- shared pieces ------------------------------------------------------------


def _cidr(fields: Fields, path: str, value: object) -> str:
    if not isinstance(value, str):
        raise _err(fields, path, "must be a CIDR string")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise _err(fields, path, f"{value!r} is not a CIDR") from None


def _err(fields: Fields, path: str, reason: str) -> ParseError:
    return ParseError(fields.ref, path, reason)


def _cidr_peer(
    fields: Fields, cidr_path: str, raw: object, excepts: list[tuple[str, object]]
) -> CIDRPeer:
    net = _cidr(fields, cidr_path, raw)
    outer = ipaddress.ip_network(net)
    out = []
    for path, value in excepts:
        inner = ipaddress.ip_network(_cidr(fields, path, value))
        if inner.version != outer.version or not inner.subnet_of(outer):  # type: ignore[arg-type]
            raise _err(fields, path, f"{inner} is not inside {outer}")
        out.append(str(inner))
    return CIDRPeer(net, tuple(sorted(set(out))))


def _port_rule(entry: Fields, protocols: tuple[str, ...], default_protocol: str) -> PortRule:
    protocol = entry.opt_str("protocol", default_protocol) or default_protocol
    if protocol not in protocols:
        reason = f"must be one of {', '.join(protocols)}"
        if protocol == "SCTP":
            reason = "SCTP is not enforced by nodemesh; " + reason
        raise entry.error("protocol", reason)
    raw = entry.data.get("port")
    end = entry.opt_int("endPort", 0) or 0
    if raw is None or raw in ("", "0", 0):
        if end:
            raise entry.error("endPort", "needs a numeric port")
        return PortRule(protocol=protocol)
    if isinstance(raw, str) and raw.isdigit():
        raw = int(raw)
    if isinstance(raw, str):
        if not _PORT_NAME.fullmatch(raw):
            raise entry.error("port", f"{raw!r} is neither a port number nor a port name")
        if end:
            raise entry.error("endPort", "cannot go with a named port")
        return PortRule(name=raw, protocol=protocol)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 65535:
        raise entry.error("port", f"{raw!r} is out of range 1-65535")
    if end and not raw <= end <= 65535:
        raise entry.error("endPort", f"{end} must be between port {raw} and 65535")
    return PortRule(port=raw, end_port=end, protocol=protocol)


# -- CiliumNetworkPolicy ----------------------------------------------------


def _cilium_key(fields: Fields, key: str) -> str:
    for source in _LABEL_SOURCES:
        if key.startswith(source):
            return key[len(source) :]
    if ":" in key.split("/")[0] and not key.startswith("io."):
        raise fields.error(None, f"label source of {key!r} is not supported (use k8s: or none)")
    return key


def _cilium_selector(fields: Fields) -> LabelSelector:
    raw = parse_selector(fields)
    labels = tuple(sorted((_cilium_key(fields, k), v) for k, v in raw.match_labels))
    exprs = tuple(
        SelectorRequirement(_cilium_key(fields, r.key), r.operator, r.values)
        for r in raw.match_expressions
    )
    return LabelSelector(labels, exprs)


def _mentions_namespace(sel: LabelSelector) -> bool:
    keys = {k for k, _ in sel.match_labels} | {r.key for r in sel.match_expressions}
    return NAMESPACE_LABEL in keys or any(k.startswith(NAMESPACE_LABELS_PREFIX) for k in keys)


def _in_namespace(sel: LabelSelector, namespace: str) -> LabelSelector:
    """Scope a selector to `namespace` unless it names a namespace itself
    (Cilium: a namespaced policy's selectors match only its own namespace)."""
    if not namespace or _mentions_namespace(sel):
        return sel
    labels = tuple(sorted({**dict(sel.match_labels), NAMESPACE_LABEL: namespace}.items()))
    return LabelSelector(labels, sel.match_expressions)


def _entities(rule: Fields, key: str) -> tuple[Entity, ...]:
    out = []
    for path, value in rule.items(key):
        try:
            out.append(Entity(value))
        except ValueError:
            known = ", ".join(e.value for e in Entity)
            raise _err(
                rule, path, f"{value!r} is not an entity nodemesh enforces ({known})"
            ) from None
    return tuple(out)


def _cilium_cidrs(rule: Fields, direction: str) -> tuple[CIDRPeer, ...]:
    out = [_cidr_peer(rule, p, v, []) for p, v in rule.items(f"{direction}CIDR")]
    for entry in rule.maps(f"{direction}CIDRSet"):
        if entry.has("cidrGroupRef"):
            raise entry.error("cidrGroupRef", "CiliumCIDRGroup references are not supported")
        out.append(
            _cidr_peer(
                entry, join(entry.path, "cidr"), entry.data.get("cidr"), list(entry.items("except"))
            )
        )
    return tuple(out)


def _services(rule: Fields, namespace: str) -> tuple[ServiceName, ...]:
    out = []
    for target in rule.maps("toServices"):
        k8s = target.opt_map("k8sService")
        if k8s is None:
            raise target.error("k8sService", "is required (k8sServiceSelector is not supported)")
        ns = k8s.opt_str("namespace") or namespace
        if not ns:
            raise k8s.error("namespace", "is required in a clusterwide policy")
        out.append(ServiceName(ns, k8s.req_str("serviceName")))
    return tuple(out)


def _cilium_ports(rule: Fields, notes: list[ObjectWarning], ingress: bool) -> tuple[PortRule, ...]:
    out: list[PortRule] = []
    for port_set in rule.maps("toPorts"):
        if port_set.has("rules") and (ingress or not rule.has("toServices")):
            assert rule.ref is not None
            where = join(port_set.path, "rules")
            notes.append(ObjectWarning(rule.ref, where, "L7 rules here are not enforced; L4 only"))
        entries = list(port_set.maps("ports"))
        if not entries:
            out.append(PortRule())
        out.extend(_port_rule(e, _CILIUM_PROTOCOLS, "ANY") for e in entries)
    return tuple(out)


def _cilium_rule(
    rule: Fields, ingress: bool, namespace: str, notes: list[ObjectWarning]
) -> PolicyRule:
    direction = "from" if ingress else "to"
    for key, what in _UNSUPPORTED_RULE_KEYS.items():
        if rule.has(key):
            raise rule.error(key, f"{what} are not supported by nodemesh")
    selectors = tuple(
        _in_namespace(_cilium_selector(s), namespace) for s in rule.maps(f"{direction}Endpoints")
    )
    entities = _entities(rule, f"{direction}Entities")
    cidrs = _cilium_cidrs(rule, direction)
    services = () if ingress else _services(rule, namespace)
    ports = _cilium_ports(rule, notes, ingress)
    has_l3 = (
        any(
            rule.data.get(k) is not None
            for k in (f"{direction}Endpoints", f"{direction}Entities", f"{direction}CIDR")
        )
        or rule.has(f"{direction}CIDRSet")
        or bool(services)
    )
    # Only toPorts: every peer on those ports. `{}`: nothing (Cilium's
    # "deny all" idiom), which still enables default deny below.
    return PolicyRule(selectors, entities, cidrs, services, not has_l3 and bool(ports), ports)


def _default_deny(spec: Fields, key: str) -> bool | None:
    found = spec.opt_map("enableDefaultDeny")
    return None if found is None else found.opt_bool(key)


def cilium_rules(
    ref: ObjectRef, spec: Fields, subject: LabelSelector
) -> tuple[PolicySpec, tuple[ObjectWarning, ...]]:
    """The L3/L4 rules of a CNP/CCNP `spec` whose endpointSelector is `subject`."""
    notes: list[ObjectWarning] = []
    namespace = ref.namespace
    subject = _in_namespace(_cilium_subject(spec, subject), namespace)

    def rules(key: str, ingress: bool) -> tuple[PolicyRule, ...]:
        return tuple(_cilium_rule(r, ingress, namespace, notes) for r in spec.maps(key))

    ingress, ingress_deny = rules("ingress", True), rules("ingressDeny", True)
    egress, egress_deny = rules("egress", False), rules("egressDeny", False)
    on_in, on_out = _default_deny(spec, "ingress"), _default_deny(spec, "egress")
    return (
        PolicySpec(
            ref,
            subject,
            ingress,
            egress,
            ingress_deny,
            egress_deny,
            enforce_ingress=bool(ingress or ingress_deny) and on_in is not False,
            enforce_egress=bool(egress or egress_deny) and on_out is not False,
        ),
        tuple(notes),
    )


def _cilium_subject(spec: Fields, subject: LabelSelector) -> LabelSelector:
    found = spec.opt_map("endpointSelector")
    return subject if found is None else _cilium_selector(found)


# -- Kubernetes NetworkPolicy -------------------------------------------------


def _namespace_selector(fields: Fields) -> LabelSelector:
    """A namespaceSelector over namespace labels, as identity labels."""
    raw = parse_selector(fields)
    labels = tuple(sorted((NAMESPACE_LABELS_PREFIX + k, v) for k, v in raw.match_labels))
    exprs = tuple(
        SelectorRequirement(NAMESPACE_LABELS_PREFIX + r.key, r.operator, r.values)
        for r in raw.match_expressions
    )
    return LabelSelector(labels, exprs)


def _merge(a: LabelSelector, b: LabelSelector) -> LabelSelector:
    return LabelSelector(
        tuple(sorted({**dict(a.match_labels), **dict(b.match_labels)}.items())),
        a.match_expressions + b.match_expressions,
    )


def _kube_peer(peer: Fields, namespace: str) -> LabelSelector | CIDRPeer:
    block = peer.opt_map("ipBlock")
    pods = peer.opt_map("podSelector")
    spaces = peer.opt_map("namespaceSelector")
    if block is not None:
        if pods is not None or spaces is not None:
            raise peer.error("ipBlock", "cannot go with podSelector or namespaceSelector")
        return _cidr_peer(
            block, join(block.path, "cidr"), block.data.get("cidr"), list(block.items("except"))
        )
    if pods is None and spaces is None:
        raise peer.error(None, "needs podSelector, namespaceSelector or ipBlock")
    pod_sel = parse_selector(pods) if pods is not None else LabelSelector()
    if spaces is None:
        return _in_namespace(pod_sel, namespace)
    return _merge(pod_sel, _namespace_selector(spaces))


def _kube_rule(rule: Fields, peers_key: str, namespace: str) -> PolicyRule:
    selectors: list[LabelSelector] = []
    cidrs: list[CIDRPeer] = []
    peers = list(rule.maps(peers_key))
    for peer in peers:
        found = _kube_peer(peer, namespace)
        (cidrs if isinstance(found, CIDRPeer) else selectors).append(found)  # type: ignore[arg-type]
    ports = tuple(_port_rule(p, _KUBE_PROTOCOLS, "TCP") for p in rule.maps("ports"))
    # An absent or empty from/to list matches every peer (Kubernetes).
    return PolicyRule(tuple(selectors), (), tuple(cidrs), (), not peers, ports)


def _policy_types(spec: Fields) -> set[str]:
    types = set(spec.strings("policyTypes"))
    for path, value in spec.items("policyTypes"):
        if value not in ("Ingress", "Egress"):
            raise _err(spec, path, f"{value!r} must be Ingress or Egress")
    if not spec.has("policyTypes"):
        types = {"Ingress"} | ({"Egress"} if spec.has("egress") else set())
    return types


def kube_network_policy(ref: ObjectRef, top: Fields) -> KubeNetworkPolicy:
    spec = top.req_map("spec")
    pod_sel = spec.opt_map("podSelector")
    subject = _in_namespace(
        parse_selector(pod_sel) if pod_sel is not None else LabelSelector(), ref.namespace
    )
    types = _policy_types(spec)
    ingress = tuple(_kube_rule(r, "from", ref.namespace) for r in spec.maps("ingress"))
    egress = tuple(_kube_rule(r, "to", ref.namespace) for r in spec.maps("egress"))
    rules = PolicySpec(
        ref,
        subject,
        ingress=ingress if "Ingress" in types else (),
        egress=egress if "Egress" in types else (),
        enforce_ingress="Ingress" in types,
        enforce_egress="Egress" in types,
    )
    return KubeNetworkPolicy(ref, rules)


def namespace_labels(top: Fields) -> tuple[tuple[str, str], ...]:
    meta = top.opt_map("metadata")
    return pairs({} if meta is None else meta.str_map("labels"))


def iter_rules(spec: PolicySpec) -> Iterator[tuple[str, bool, PolicyRule]]:
    """(direction, deny, rule) for every rule of `spec`."""
    for rule in spec.ingress:
        yield "ingress", False, rule
    for rule in spec.ingress_deny:
        yield "ingress", True, rule
    for rule in spec.egress:
        yield "egress", False, rule
    for rule in spec.egress_deny:
        yield "egress", True, rule
