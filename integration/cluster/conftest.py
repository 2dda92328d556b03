"""The session's real Kubernetes control plane (kube_cluster.py), for every
test marked `k8s`. It is built on first use (cluster_build.py; `make test` builds it
before pytest runs), started once per test run, and torn down at the end:
processes, ports and the temp dir."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integration.cluster import cluster_build as build
from integration.cluster.kube_cluster import KubeCluster, apply_deploy
from integration.cluster.kubelet_role import KubeletRole


@pytest.fixture(scope="session")
def cluster() -> Iterator[KubeCluster]:
    try:
        bin_dir = build.ensure_built()
    except build.BuildError as exc:
        pytest.fail(str(exc), pytrace=False)
    kube = KubeCluster(bin_dir)
    kube.start()
    kubelet = KubeletRole(kube.admin)
    try:
        kubelet.start()
        kube.kubelet = kubelet
        yield kube
    finally:
        kubelet.stop()
        kube.stop()


@pytest.fixture(scope="session")
def deployed(cluster: KubeCluster) -> KubeCluster:
    """deploy/ installed as deploy/README.md says, once per run."""
    apply_deploy(cluster)
    return cluster
