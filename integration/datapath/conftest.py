"""Fixtures for the datapath integration tests: a node, and the datapath on it."""

from __future__ import annotations

import os
import shutil
import tempfile
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
def workdir() -> Iterator[Path]:
    """Like tmp_path, but private: other pytest sessions on the same machine
    rename old basetemp dirs, which would pull files from under running Envoys."""
    path = Path(tempfile.mkdtemp(prefix="nm-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def node(workdir: Path) -> Iterator[MeshNode]:
    _need_root()
    n = MeshNode(workdir)
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
