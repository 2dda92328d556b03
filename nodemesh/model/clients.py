"""Which pod IPs each network policy's endpointSelector picks, kept up to date
as pods come and go.

A big cluster's pods change all the time, and most changes concern no policy
at all. The index caches one answer per (scope, selector) and, on a pod
change, drops only the answers that pod was or is part of, so the redirects
are re-derived only when some policy's clients really moved, and then only
the dropped answers are recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping

from nodemesh.model.objects import LabelSelector, ObjectRef, Pod

_ENDED_PHASES = ("Succeeded", "Failed")
_Key = tuple[str, LabelSelector]  # (namespace, or "" for every namespace; selector)


def _live_labels(pod: Pod | None) -> Mapping[str, str] | None:
    """The labels of a pod that can be a client (has an IP, has not ended)."""
    if pod is None or not pod.ips or pod.phase in _ENDED_PHASES:
        return None
    return dict(pod.labels)


class ClientIndex:
    def __init__(self) -> None:
        self._pods: dict[str, dict[ObjectRef, tuple[Pod, Mapping[str, str]]]] = {}
        self._answers: dict[_Key, tuple[str, ...]] = {}

    def put(self, ref: ObjectRef, old: Pod | None, new: Pod | None) -> bool:
        """Record a pod change. True when a cached answer it touched was dropped."""
        held = self._pods.setdefault(ref.namespace, {})
        labels = _live_labels(new)
        if new is not None and labels is not None:
            held[ref] = (new, labels)
        else:
            held.pop(ref, None)
        touched = [m for m in (_live_labels(old), labels) if m is not None]
        dropped = [
            key
            for key in self._answers
            if key[0] in ("", ref.namespace) and any(key[1].matches(m) for m in touched)
        ]
        for key in dropped:
            del self._answers[key]
        return bool(dropped)

    def ips(self, owner: ObjectRef, selector: LabelSelector) -> tuple[str, ...]:
        """IPs of the pods `selector` picks for policy `owner`: a namespaced
        policy picks in its own namespace only, a clusterwide one everywhere."""
        key = (owner.namespace, selector)
        found = self._answers.get(key)
        if found is None:
            pools = (
                [self._pods.get(owner.namespace, {})] if owner.namespace else self._pods.values()
            )
            found = tuple(
                sorted(
                    {
                        ip
                        for pool in pools
                        for pod, labels in pool.values()
                        if selector.matches(labels)
                        for ip in pod.ips
                    }
                )
            )
            self._answers[key] = found
        return found

    def forget_except(self, keep: set[_Key]) -> None:
        """Drop answers no current policy asks for (policies were removed)."""
        for key in [k for k in self._answers if k not in keep]:
            del self._answers[key]
