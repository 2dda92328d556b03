"""DatapathAgent keeps following the model stream when a plan cannot apply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from test_planner_golden import model

from nodemesh.ebpf.agent import APPLIES, AgentSettings, DatapathAgent
from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.ebpf.loader import DatapathConfig
from nodemesh.model.snapshot import MeshModel


async def _models(*versions: str) -> AsyncIterator[MeshModel]:
    base = model()
    for v in versions:
        yield MeshModel(
            version=v,
            generation=base.generation,
            services=base.services,
            pods=base.pods,
            redirects=base.redirects,
            backends=base.backends,
        )


async def test_a_plan_that_cannot_apply_is_logged_and_the_stream_goes_on(tmp_path: Path) -> None:
    # No proxy address while the model has L7 redirects: every plan is refused
    # before any map is touched, so no kernel is needed to see the behaviour.
    settings = AgentSettings(DatapathConfig(pin_dir=tmp_path / "pins"), proxy_address=None)
    agent = DatapathAgent(settings, DirectoryPodCgroups(tmp_path))
    before = APPLIES.labels(result="error")._value.get()
    await agent.run(_models("m1", "m2", "m3"))
    assert APPLIES.labels(result="error")._value.get() == before + 3
    assert agent.applied_version is None
