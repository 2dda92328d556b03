"""Fixtures for the datapath integration tests: a node, and the datapath on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodemesh._gen.nodemesh.v1 import datapath_pb2 as pb
from nodemesh.ebpf import applier, loader
from nodemesh.ebpf.endpoints import DirectoryPodCgroups

from .node import NODE_IP, MeshNode


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root)")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[MeshNode]:
    _need_root()
    n = MeshNode(tmp_path)
    try:
        n.setup()
        yield n
    finally:
        try:
            loader.cleanup(n.config())
        finally:
            n.teardown()


class Datapath:
    """The datapath on a test node, driven in-process."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node
        self.config = node.config()
        self.pods = DirectoryPodCgroups(node.mesh)

    def load(self) -> loader.LoadReport:
        return loader.load(self.config)

    def apply(self, plan: pb.DatapathPlan) -> applier.ApplyResult:
        return applier.apply(plan, self.config.maps_dir, NODE_IP, self.pods)


@pytest.fixture
def datapath(node: MeshNode) -> Datapath:
    dp = Datapath(node)
    dp.load()
    return dp
