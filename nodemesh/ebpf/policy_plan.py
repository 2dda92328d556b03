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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from nodemesh.ebpf import identity as ids
from nodemesh.model.objects import LabelSelector, ObjectWarning, Pairs, Pod
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
    def __init__(
        self,
        model: MeshModel,
        node_name: str,
        host_ips: Iterable[str],
        exempt: set[str],
        memo: _Memo,
    ):
        self.model = model
        self.node = node_name
        self.exempt = exempt
        self.memo = memo
        self.warnings: list[ObjectWarning] = []
        ns_labels = {n.ref.name: n.labels for n in model.namespaces}
        live = [p for p in model.pods if p.ips and p.phase not in ("Succeeded", "Failed")]
        # hostNetwork pods and the node Envoy are the host, not endpoints:
        # their addresses are `host` (a hostNetwork pod's IP is the node's),
        # so ingress admits the proxy's upstream connections (allow-localhost).
        hosts = [p for p in live if p.host_network or _key(p) in exempt]
        self.pods = [p for p in live if not (p.host_network or _key(p) in exempt)]
        # pod -> canonical label text (the identity's name), and back.
        self.canon = {_key(p): memo.labels(p, ns_labels.get(p.ref.namespace)) for p in self.pods}
        memo.keep_pods(self.canon)
        self.labelsets = frozenset(self.canon.values())
        numbers, self.id_labels, self.index = memo.identities(self.labelsets)
        self.pod_id = {k: numbers[c] for k, c in self.canon.items()}
        self.host_ips = sorted({*host_ips, *(ip for p in hosts for ip in p.ips if _v4(ip))})
        self.pod_ips = {
            ip: self.pod_id[_key(p)]
            for p in self.pods
            for ip in p.ips
            if _v4(ip) and ip not in self.host_ips
        }
        self.specs = tuple(sorted(_specs(model), key=lambda s: s.ref))
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
        entries, flags, selecting = self.memo.entries(self._entry_inputs(), self._entries)
        self.selecting = selecting  # for policy_incremental's patches
        return PolicyPlan(
            model_version=self.model.version,
            identities=self.memo.names,
            ipcache=self._ipcache(flags),
            endpoints=self._endpoints(flags, selecting),
            entries=entries,
            policy_names=names,
            warnings=tuple(self.warnings),
            flags=dict(flags),
        )

    def _entry_inputs(self) -> tuple[object, ...]:
        """Everything the policy entries depend on: the policies, the set of
        identities (which fixes their numbers and labels), the CIDR
        identities, and where a policy names them, named ports and Service
        backends. Equal inputs, equal entries."""
        rules = [r for s in self.specs for _, _, r in _rules(s)]
        named = any(p.name for r in rules for p in r.ports)
        services = sorted({a for r in rules for a in self._service_addresses(r)})
        return (
            self.specs,
            self.labelsets,
            self.cidr_id,
            tuple((self.pod_id[_key(p)], p.container_ports) for p in self.pods) if named else (),
            tuple((a, self.pod_ips.get(a)) for a in services),
        )

    def _entries(self) -> tuple[dict[EntryKey, EntryValue], dict[int, int], dict[int, list[str]]]:
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
        return _entries(per, flags), dict(flags), dict(selecting)

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


class _Memo:
    """What one compile can hand the next: per-pod identity labels, the
    identity numbering of a set of label sets, and the policy entries of
    equal inputs. One model to the next changes little (a pod relabelled,
    one added), so most of a compile is a lookup. Holds the last result of
    each step only: memory stays one plan's worth."""

    def __init__(self) -> None:
        self._pods: dict[str, tuple[Pod, Pairs | None, str]] = {}
        self._canon_pairs: dict[str, tuple[tuple[str, str], ...]] = {}
        self._identities: tuple[frozenset[str], _Identities] | None = None
        self._entries: tuple[tuple[object, ...], _Entries] | None = None
        self.names: dict[int, str] = {}

    def labels(self, pod: Pod, ns_labels: Pairs | None) -> str:
        """The canonical text of `pod`'s identity labels."""
        key = _key(pod)
        hit = self._pods.get(key)
        if hit is not None and (hit[0] is pod or hit[0] == pod) and hit[1] == ns_labels:
            return hit[2]
        namespace = dict(ns_labels) if ns_labels is not None else None
        pairs = identity_labels(pod.ref.namespace, dict(pod.labels), namespace)
        text = ids.canonical(pairs)
        self._canon_pairs[text] = pairs
        self._pods[key] = (pod, ns_labels, text)
        return text

    def keep_pods(self, keys: Mapping[str, str]) -> None:
        """Forget pods that are gone (the model no longer has them)."""
        if len(self._pods) > len(keys):
            self._pods = {k: v for k, v in self._pods.items() if k in keys}

    def identities(self, labelsets: frozenset[str]) -> _Identities:
        """Numbers, labels and the label index of exactly these identities."""
        if self._identities is not None and self._identities[0] == labelsets:
            return self._identities[1]
        numbers = ids.label_identities(self._canon_pairs[t] for t in labelsets)
        id_labels = {numbers[t]: dict(self._canon_pairs[t]) for t in labelsets}
        # (key, value) -> identities with that label: a matchLabels selector
        # costs a few set intersections, not a pass over every identity
        # (1,000 policies x 10,000 identities would be 10^8 matches).
        index: dict[tuple[str, str], set[int]] = defaultdict(set)
        for ident, labels in id_labels.items():
            for pair in labels.items():
                index[pair].add(ident)
        self.names = {i: ids.canonical(v.items()) for i, v in sorted(id_labels.items())}
        self._identities = (labelsets, (numbers, id_labels, index))
        # Forget pods and label sets that are gone.
        self._canon_pairs = {t: self._canon_pairs[t] for t in labelsets}
        return self._identities[1]

    def entries(self, inputs: tuple[object, ...], compute: Callable[[], _Entries]) -> _Entries:
        """The entries of `inputs`: the same objects as last time if equal."""
        if self._entries is not None and self._entries[0] == inputs:
            return self._entries[1]
        result = compute()
        self._entries = (inputs, result)
        return result


_Identities = tuple[dict[str, int], dict[int, dict[str, str]], dict[tuple[str, str], set[int]]]
_Entries = tuple[dict[EntryKey, EntryValue], dict[int, int], dict[int, list[str]]]


def plan(
    model: MeshModel, node_name: str = "", host_ips: Iterable[str] = (), exempt: Iterable[str] = ()
) -> PolicyPlan:
    """The policy plan for `node_name` ("" makes every pod a local endpoint).

    `host_ips` are this node's addresses (identity `host`); `exempt` pods
    (the node Envoy) are never endpoints: the proxy is not policed.
    """
    return _Compiler(model, node_name, host_ips, set(exempt), _Memo()).compile()
