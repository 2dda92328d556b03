"""Model -> L3/L4 policy plan. Pure: no kernel, same model in, same plan out.

The plan has three parts, each a map the kernel reads:

- `ipcache`: IPv4 prefix -> (identity, flags). Every pod IP is a /32 with
  its pod's identity; the node's own addresses are `host`; each CIDR a
  policy names (and each exception) is a prefix with a CIDR identity. An
  address that matches nothing is `world`. Since a pod's /32 is always the
  longest match, CIDR rules never select pods (as in Cilium).
- `endpoints`: this node's pods -> identity and enforcement flags (the
  applier keys them by cgroup id).
- `entries`: policy keyed by {subject identity, direction, protocol, remote
  identity, port prefix} -> (verdict, policy id). Policy is a function of
  labels, so pods that share an identity share entries. Remote identity 0
  is the wildcard; a port prefix of 0 bits is every port. Deny and allow
  are resolved here, port by port: a deny anywhere wins over any allow, and
  the wildcard identity's entries are folded into each specific identity's,
  so the kernel's "specific identity, else wildcard" lookup is exact.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from nodemesh.ebpf import identity as ids
from nodemesh.model.objects import LabelSelector, ObjectWarning, Pod
from nodemesh.model.policy import Entity, PolicyRule, PolicySpec, PortRule, identity_labels
from nodemesh.model.snapshot import MeshModel

TCP, UDP = 6, 17
INGRESS, EGRESS = 1, 2
ALLOW, DENY = 1, 2
FLAG_INGRESS = 1  # the identity's pods enforce ingress policy
FLAG_EGRESS = 2
PORT_BITS = 16
ALL_PORTS = (0, 0xFFFF)

# (subject identity, direction, proto, remote identity, port, port prefix bits)
EntryKey = tuple[int, int, int, int, int, int]
# (verdict, policy id); policy id 0 is "no policy allows it" (default deny)
EntryValue = tuple[int, int]
Interval = tuple[int, int, int, int]  # lo, hi, verdict, policy id


@dataclass(frozen=True, slots=True)
class Endpoint:
    pod: str  # "namespace/name"
    identity: int
    flags: int
    policies: tuple[str, ...]  # the policies selecting it


@dataclass(frozen=True, slots=True)
class PolicyPlan:
    model_version: str
    identities: dict[int, str]  # identity -> canonical labels (for status)
    ipcache: dict[str, tuple[int, int]]  # "a.b.c.d/len" -> (identity, flags)
    endpoints: dict[str, Endpoint]
    entries: dict[EntryKey, EntryValue]
    policy_names: tuple[str, ...]  # index = policy id; 0 = default deny
    warnings: tuple[ObjectWarning, ...] = ()
    flags: dict[int, int] = field(default_factory=dict)  # identity -> flags


def port_prefixes(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """[lo, hi] as (port, prefix bits) blocks, like a range as CIDRs."""
    while lo <= hi:
        size = lo & -lo if lo else 1 << PORT_BITS
        while size > hi - lo + 1:
            size >>= 1
        yield lo, PORT_BITS - (size.bit_length() - 1)
        lo += size


def resolve_intervals(items: Iterable[Interval]) -> list[Interval]:
    """Disjoint intervals: deny wins, then allow; the lowest policy id names it."""
    items = list(items)
    cuts = sorted({lo for lo, *_ in items} | {hi + 1 for _, hi, *_ in items})
    out: list[Interval] = []
    for lo, nxt in itertools.pairwise(cuts):
        here = [(v, p) for a, b, v, p in items if a <= lo and nxt - 1 <= b]
        if not here:
            continue
        denies = [p for v, p in here if v == DENY]
        verdict, pid = (DENY, min(denies)) if denies else (ALLOW, min(p for _, p in here))
        if out and out[-1][1] == lo - 1 and out[-1][2:] == (verdict, pid):
            out[-1] = (out[-1][0], nxt - 1, verdict, pid)
        else:
            out.append((lo, nxt - 1, verdict, pid))
    return out


class _Compiler:
    def __init__(self, model: MeshModel, node_name: str, host_ips: Iterable[str], exempt: set[str]):
        self.model = model
        self.node = node_name
        self.exempt = exempt
        self.warnings: list[ObjectWarning] = []
        ns_labels = {n.ref.name: dict(n.labels) for n in model.namespaces}
        live = [p for p in model.pods if p.ips and p.phase not in ("Succeeded", "Failed")]
        # hostNetwork pods and the node Envoy are the host, not endpoints:
        # their addresses are `host` (a hostNetwork pod's IP is the node's),
        # so ingress admits the proxy's upstream connections (allow-localhost).
        hosts = [p for p in live if p.host_network or _key(p) in exempt]
        self.pods = [p for p in live if not (p.host_network or _key(p) in exempt)]
        self.labels = {
            _key(p): identity_labels(
                p.ref.namespace, dict(p.labels), ns_labels.get(p.ref.namespace)
            )
            for p in self.pods
        }
        numbers = ids.label_identities(self.labels.values())
        self.pod_id = {k: numbers[ids.canonical(v)] for k, v in self.labels.items()}
        self.id_labels = {self.pod_id[k]: dict(v) for k, v in self.labels.items()}
        # (key, value) -> identities with that label: a matchLabels selector
        # costs a few set intersections, not a pass over every identity
        # (1,000 policies x 10,000 identities would be 10^8 matches).
        self.index: dict[tuple[str, str], set[int]] = defaultdict(set)
        for ident, labels in self.id_labels.items():
            for pair in labels.items():
                self.index[pair].add(ident)
        self.host_ips = sorted({*host_ips, *(ip for p in hosts for ip in p.ips if _v4(ip))})
        self.pod_ips = {
            ip: self.pod_id[_key(p)]
            for p in self.pods
            for ip in p.ips
            if _v4(ip) and ip not in self.host_ips
        }
        self.specs = sorted(_specs(model), key=lambda s: s.ref)
        self.cidr_id = ids.cidr_identities(self._prefixes())

    def _prefixes(self) -> set[str]:
        found: set[str] = set()
        for spec in self.specs:
            for rule in (*spec.ingress, *spec.egress, *spec.ingress_deny, *spec.egress_deny):
                for peer in rule.cidrs:
                    found.update(c for c in (peer.cidr, *peer.excepts) if _v4(c))
                for addr in self._service_addresses(rule):
                    if addr not in self.pod_ips:
                        found.add(f"{addr}/32")
        return {p for p in found if p != "0.0.0.0/0"}

    def _service_addresses(self, rule: PolicyRule) -> set[str]:
        return {
            b.address
            for svc in rule.services
            for backends in self.model.backends.get(svc, {}).values()
            for b in backends
            if _v4(b.address)
        }

    # -- selection --------------------------------------------------------
    def selected(self, selector: LabelSelector) -> set[int]:
        if not selector.match_labels:
            return {i for i, labels in self.id_labels.items() if selector.matches(labels)}
        found = set.intersection(*(self.index.get(pair, set()) for pair in selector.match_labels))
        return {i for i in found if selector.matches(self.id_labels[i])}

    def remotes(self, rule: PolicyRule) -> set[int]:
        if rule.any_peer or Entity.ALL in rule.entities:
            return {ids.ANY}
        out: set[int] = set()
        for sel in rule.selectors:
            out |= self.selected(sel)
        for entity in rule.entities:
            out |= self._entity(entity)
        for peer in rule.cidrs:
            out |= self._cidr(peer.cidr, peer.excepts)
        pod_ips = self.pod_ips
        for addr in self._service_addresses(rule):
            out.add(pod_ips.get(addr) or self.cidr_id[f"{addr}/32"])
        return out

    def _entity(self, entity: Entity) -> set[int]:
        if entity is Entity.WORLD:
            return {ids.WORLD, *self.cidr_id.values()}
        if entity is Entity.CLUSTER:
            return {*self.id_labels, ids.HOST, ids.REMOTE_NODE, ids.UNMANAGED}
        return {
            Entity.HOST: {ids.HOST},
            Entity.REMOTE_NODE: {ids.REMOTE_NODE},
            Entity.UNMANAGED: {ids.UNMANAGED},
        }[entity]

    def _cidr(self, cidr: str, excepts: tuple[str, ...]) -> set[int]:
        if not _v4(cidr):
            return set()
        net = ipaddress.IPv4Network(cidr)
        outs = [ipaddress.IPv4Network(e) for e in excepts if _v4(e)]
        found = {
            ident
            for prefix, ident in self.cidr_id.items()
            if (p := ipaddress.IPv4Network(prefix)).subnet_of(net)
            and not any(p.subnet_of(e) for e in outs)
        }
        if net.prefixlen == 0:
            found.add(ids.WORLD)  # addresses no prefix covers
        return found

    # -- ports --------------------------------------------------------------
    def ports(self, rule: PolicyRule, named_on: set[int]) -> list[tuple[int, int, int]]:
        """(proto, lo, hi) for a rule; named ports resolve on the pods of `named_on`."""
        if not rule.ports:
            return [(TCP, *ALL_PORTS), (UDP, *ALL_PORTS)]
        out: list[tuple[int, int, int]] = []
        for port in rule.ports:
            for proto in _protos(port.protocol):
                out.extend((proto, lo, hi) for lo, hi in self._numbers(port, proto, named_on))
        return out

    def _numbers(self, port: PortRule, proto: int, named_on: set[int]) -> list[tuple[int, int]]:
        if not port.name:
            return [ALL_PORTS] if port.port == 0 else [(port.port, port.end_port or port.port)]
        wanted = "TCP" if proto == TCP else "UDP"
        every = ids.ANY in named_on or not named_on <= set(self.id_labels)
        return sorted(
            {
                (c.port, c.port)
                for p in self.pods
                if every or self.pod_id[_key(p)] in named_on
                for c in p.container_ports
                if c.name == port.name and c.protocol == wanted
            }
        )

    # -- the plan -------------------------------------------------------------
    def compile(self) -> PolicyPlan:
        names = ("default-deny", *(str(s.ref) for s in self.specs))
        flags: dict[int, int] = defaultdict(int)
        selecting: dict[int, list[str]] = defaultdict(list)
        per: dict[tuple[int, int, int, int], list[Interval]] = defaultdict(list)
        for pid, spec in enumerate(self.specs, start=1):
            subjects = self.selected(spec.subject)
            for subject in subjects:
                selecting[subject].append(str(spec.ref))
                flags[subject] |= (FLAG_INGRESS if spec.enforce_ingress else 0) | (
                    FLAG_EGRESS if spec.enforce_egress else 0
                )
            for direction, deny, rule in _rules(spec):
                remotes = self.remotes(rule)
                named_on = remotes if direction == EGRESS else subjects
                for subject in subjects:
                    where = {subject} if direction == INGRESS else named_on
                    for proto, lo, hi in self.ports(rule, where):
                        for remote in remotes:
                            verdict = DENY if deny else ALLOW
                            per[(subject, direction, proto, remote)].append((lo, hi, verdict, pid))
        entries = _entries(per, flags)
        return PolicyPlan(
            model_version=self.model.version,
            identities={i: ids.canonical(v.items()) for i, v in sorted(self.id_labels.items())},
            ipcache=self._ipcache(flags),
            endpoints=self._endpoints(flags, selecting),
            entries=entries,
            policy_names=names,
            warnings=tuple(self.warnings),
            flags=dict(flags),
        )

    def _ipcache(self, flags: dict[int, int]) -> dict[str, tuple[int, int]]:
        out = {prefix: (ident, 0) for prefix, ident in self.cidr_id.items()}
        for ip, ident in self.pod_ips.items():
            out[f"{ip}/32"] = (ident, flags.get(ident, 0))
        for ip in self.host_ips:
            out[f"{ip}/32"] = (ids.HOST, 0)
        return dict(sorted(out.items()))

    def _endpoints(
        self, flags: dict[int, int], selecting: dict[int, list[str]]
    ) -> dict[str, Endpoint]:
        out = {}
        for pod in self.pods:
            key = _key(pod)
            if key in self.exempt or (self.node and pod.node_name not in (self.node, None)):
                continue
            ident = self.pod_id[key]
            out[key] = Endpoint(key, ident, flags.get(ident, 0), tuple(selecting.get(ident, ())))
        return dict(sorted(out.items()))


def _entries(
    per: dict[tuple[int, int, int, int], list[Interval]], flags: dict[int, int]
) -> dict[EntryKey, EntryValue]:
    # Fold each wildcard-remote list into the specific remotes of the same
    # subject, direction and protocol (the kernel tries specific, then any).
    for (subject, direction, proto, remote), items in list(per.items()):
        if remote == ids.ANY:
            continue
        items.extend(per.get((subject, direction, proto, ids.ANY), ()))
    out: dict[EntryKey, EntryValue] = {}
    for (subject, direction, proto, remote), items in sorted(per.items()):
        need = FLAG_INGRESS if direction == INGRESS else FLAG_EGRESS
        if not flags.get(subject, 0) & need:
            continue  # a deny-only rule of a policy that does not enforce
        for lo, hi, verdict, pid in resolve_intervals(items):
            for port, bits in port_prefixes(lo, hi):
                out[(subject, direction, proto, remote, port, bits)] = (verdict, pid)
    return out


def _rules(spec: PolicySpec) -> Iterator[tuple[int, bool, PolicyRule]]:
    for rule in spec.ingress:
        yield INGRESS, False, rule
    for rule in spec.ingress_deny:
        yield INGRESS, True, rule
    for rule in spec.egress:
        yield EGRESS, False, rule
    for rule in spec.egress_deny:
        yield EGRESS, True, rule


def _specs(model: MeshModel) -> Iterator[PolicySpec]:
    for cnp in model.network_policies:
        if cnp.rules is not None:
            yield cnp.rules
    for knp in model.kube_network_policies:
        yield knp.rules


def _protos(protocol: str) -> tuple[int, ...]:
    return {"TCP": (TCP,), "UDP": (UDP,)}.get(protocol, (TCP, UDP))


def _v4(text: str) -> bool:
    return ":" not in text


def _key(pod: Pod) -> str:
    return f"{pod.ref.namespace}/{pod.ref.name}"


def plan(
    model: MeshModel, node_name: str = "", host_ips: Iterable[str] = (), exempt: Iterable[str] = ()
) -> PolicyPlan:
    """The policy plan for `node_name` ("" makes every pod a local endpoint).

    `host_ips` are this node's addresses (identity `host`); `exempt` pods
    (the node Envoy) are never endpoints: the proxy is not policed.
    """
    return _Compiler(model, node_name, host_ips, set(exempt)).compile()
