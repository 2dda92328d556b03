"""Policy plans for one model after another, at the cost of what changed.

`policy_plan.plan()` compiles a model from nothing: at 5,000 pods that is a
few hundred milliseconds of Python, most of it per-pod work whose result
did not change. The agent plans every model version, and the common change
is one pod: relabelled, given an IP, gone Succeeded. `Compiler` keeps the
previous compile and, when only existing pods changed and the set of
identities did not (a relabel onto labels another pod already has; an IP
change), patches that pod's ipcache and endpoint entries into the previous
plan instead. The policy entries are then the previous plan's own dict
object, which `policy_apply` recognises and does not diff again.

Anything else (a policy, a namespace, a pod added or removed, a new or
vanished identity, a pod sharing an IP, named ports or toServices in any
policy) recompiles in full, reusing per-pod labels and, where its inputs
are equal, the entries (`policy_plan._Memo`). Either way the plan equals
`policy_plan.plan()`'s for the same arguments; tests/ebpf/
test_policy_incremental.py checks that on random changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TypeVar

from nodemesh.ebpf.policy_plan import (
    Endpoint,
    PolicyPlan,
    _Compiler,
    _key,
    _Memo,
    _rules,
    _v4,
)
from nodemesh.model.objects import Pod
from nodemesh.model.snapshot import MeshModel


@dataclass
class _Last:
    """The previous compile: its arguments, its compiler state and its plan."""

    model: MeshModel
    args: tuple[str, tuple[str, ...], frozenset[str]]
    compiler: _Compiler
    plan: PolicyPlan
    counts: Counter[str]  # canonical label text -> live pods with it
    ip_pod: dict[str, str]  # pod IP -> the pod that holds it


_V = TypeVar("_V")


class _Fallback(Exception):
    """The change is not one the fast path handles: compile in full."""


class Compiler:
    """Plans one model after another (see the module docstring)."""

    def __init__(self) -> None:
        self._memo = _Memo()
        self._last: _Last | None = None
        self.incremental = 0  # plans patched from the previous one (for tests/benches)

    def plan(
        self,
        model: MeshModel,
        node_name: str = "",
        host_ips: Iterable[str] = (),
        exempt: Iterable[str] = (),
    ) -> PolicyPlan:
        args = (node_name, tuple(host_ips), frozenset(exempt))
        last = self._last
        if last is not None and last.args == args and _patchable(last.model, model):
            try:
                out = _Patch(last, model).run()
            except _Fallback:
                pass
            else:
                self.incremental += 1
                return out
        compiler = _Compiler(model, node_name, args[1], set(args[2]), self._memo)
        out = compiler.compile()
        self._last = _Last(
            model,
            args,
            compiler,
            out,
            Counter(compiler.canon.values()),
            {ip: _key(p) for p in compiler.pods for ip in p.ips if ip in compiler.pod_ips},
        )
        return out


def _patchable(old: MeshModel, new: MeshModel) -> bool:
    """Only pods differ, pod for pod, and no policy reads pod details
    beyond labels and IPs (named ports, toServices backends)."""
    if len(old.pods) != len(new.pods) or old.namespaces != new.namespaces:
        return False
    if old.network_policies != new.network_policies:
        return False
    return old.kube_network_policies == new.kube_network_policies


class _Patch:
    """One fast-path step: the previous plan with the changed pods redone."""

    def __init__(self, last: _Last, model: MeshModel) -> None:
        self.last = last
        self.model = model
        self.c = last.compiler
        if any(p.name for s in self.c.specs for _, _, r in _rules(s) for p in r.ports):
            raise _Fallback
        if any(r.services for s in self.c.specs for _, _, r in _rules(s)):
            raise _Fallback

    def run(self) -> PolicyPlan:
        changed = [
            (a, b) for a, b in zip(self.last.model.pods, self.model.pods, strict=True) if a is not b
        ]
        if any(_key(a) != _key(b) for a, b in changed):
            raise _Fallback  # a pod added and another removed
        plan = self.last.plan
        ipcache, endpoints = dict(plan.ipcache), dict(plan.endpoints)
        counts, ip_pod = self.last.counts.copy(), dict(self.last.ip_pod)
        for old, _ in changed:
            self._remove(old, ipcache, endpoints, counts, ip_pod)
        for _, new in changed:
            self._add(new, ipcache, endpoints, counts, ip_pod)
        if set(+counts) != set(+self.last.counts):
            raise _Fallback  # an identity appeared or went: renumbering
        out = replace(
            plan,
            model_version=self.model.version,
            ipcache=_in_order(ipcache, plan.ipcache),
            endpoints=_in_order(endpoints, plan.endpoints),
        )
        # Commit only a finished step: a _Fallback above leaves `last` as it was.
        self.last.model, self.last.plan = self.model, out
        self.last.counts, self.last.ip_pod = counts, ip_pod
        return out

    def _kind(self, pod: Pod) -> str:
        """Whether `pod` is a live pod ("pod") or not ("skip"). The host's
        pods (hostNetwork, the node Envoy) change host_ips: fall back."""
        if not pod.ips or pod.phase in ("Succeeded", "Failed"):
            return "skip"
        if pod.host_network or _key(pod) in self.c.exempt:
            raise _Fallback
        return "pod"

    def _ips(self, pod: Pod) -> list[str]:
        out = [ip for ip in pod.ips if _v4(ip)]
        for ip in out:
            if ip in self.c.host_ips or f"{ip}/32" in self.c.cidr_id:
                raise _Fallback  # shadowed by or shadowing another entry
        return out

    def _remove(
        self,
        pod: Pod,
        ipcache: dict[str, tuple[int, int]],
        endpoints: dict[str, Endpoint],
        counts: Counter[str],
        ip_pod: dict[str, str],
    ) -> None:
        key = _key(pod)
        if self._kind(pod) == "skip":
            return
        counts[self.c.canon[key]] -= 1
        for ip in self._ips(pod):
            if ip_pod.get(ip) != key:
                raise _Fallback  # another pod holds this IP too
            del ip_pod[ip]
            self.c.pod_ips.pop(ip, None)
            ipcache.pop(f"{ip}/32", None)
        endpoints.pop(key, None)

    def _add(
        self,
        pod: Pod,
        ipcache: dict[str, tuple[int, int]],
        endpoints: dict[str, Endpoint],
        counts: Counter[str],
        ip_pod: dict[str, str],
    ) -> None:
        key = _key(pod)
        if self._kind(pod) == "skip":
            return
        text = self.c.memo.labels(pod, _ns_labels(self.model, pod))
        if text not in self.last.counts or self.last.counts[text] == 0:
            raise _Fallback  # a new identity
        self.c.canon[key] = text
        counts[text] += 1
        ident = self.c.pod_id[key] = self.c.memo.identities(self.c.labelsets)[0][text]
        flags = self.last.plan.flags.get(ident, 0)
        for ip in self._ips(pod):
            if ip in ip_pod:
                raise _Fallback
            ip_pod[ip] = key
            self.c.pod_ips[ip] = ident
            ipcache[f"{ip}/32"] = (ident, flags)
        if not self.c.node or pod.node_name in (self.c.node, None):
            selecting = self.c.selecting.get(ident, ())
            endpoints[key] = Endpoint(key, ident, flags, tuple(selecting))


def _in_order(patched: dict[str, _V], before: dict[str, _V]) -> dict[str, _V]:
    """Sorted by key, as a full compile gives it: re-sorted only if a key
    was added or removed (a changed value keeps its place)."""
    if patched.keys() == before.keys():
        return patched
    return dict(sorted(patched.items()))


def _ns_labels(model: MeshModel, pod: Pod) -> tuple[tuple[str, str], ...] | None:
    for ns in model.namespaces:
        if ns.ref.name == pod.ref.namespace:
            return ns.labels
    return None
