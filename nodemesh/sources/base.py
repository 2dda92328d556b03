"""The `Source` protocol: what the control plane needs of anything that feeds
Kubernetes-shaped objects into the model store.

Implemented by `nodemesh.sources.files.FileSource` (a directory of YAML) and
`nodemesh.k8s_watch.source.KubernetesSource` (the API server). The wiring
(`nodemesh.wiring.controlplane`) treats every source alike: `open` each
before the first model, `run` each in its TaskGroup, publish nothing until
every one `wait_synced`, `close` each on the way out, and show
`not_ready_reasons` and `problems` in readiness and status.
"""

from __future__ import annotations

from typing import Protocol


class Source(Protocol):
    @property
    def name(self) -> str:
        """How status output names this source (a directory, "kubernetes")."""
        ...

    async def open(self) -> None:
        """Connect and read what can be read at once, so the first model is
        not a partial one where that is possible. Raises `SourceError` (or the
        source's own error hierarchy) for a configuration that cannot work."""
        ...

    async def run(self) -> None:
        """Follow changes into the store until cancelled. Never returns on a
        passing outage: what the store holds keeps serving."""
        ...

    async def wait_synced(self) -> None:
        """Until the store holds this source's first complete state. A model
        built before that would withdraw config for objects not read yet."""
        ...

    async def close(self) -> None:
        """Release connections; the store keeps what was read."""
        ...

    def not_ready_reasons(self) -> list[str]:
        """Why readiness should fail because of this source; empty when fine."""
        ...

    def problems(self) -> list[str]:
        """What this source could not turn into objects, one line each."""
        ...
