"""The datapath follower keeps following the model stream when a plan cannot apply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from nodemesh.ebpf.endpoints import DirectoryPodCgroups
from nodemesh.ebpf.loader import DatapathConfig
from nodemesh.model.snapshot import MeshModel
from nodemesh.node.datapath import APPLIES, AgentSettings, DatapathAgent, DatapathFollower
from tests.ebpf.test_planner_golden import model


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
    follower = DatapathFollower(agent)
    await follower.follow(_models("m1", "m2", "m3"))
    assert APPLIES.labels(result="error")._value.get() == before + 3
    assert agent.applied_version is None
    assert follower.last_error is not None and "m3" in follower.last_error
