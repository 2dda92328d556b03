"""Fingerprints and normalisation: what counts as a change the model must see."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nodemesh.k8s_watch.informer import MalformedObject, content, normalize
from nodemesh.k8s_watch.resources import CLUSTERWIDE_ENVOY_CONFIGS, ENVOY_CONFIGS, PODS


def _cec() -> dict[str, Any]:
    return {
        "metadata": {"name": "x", "namespace": "default", "resourceVersion": "5", "generation": 1},
        "spec": {"services": [{"name": "a", "namespace": "default"}]},
    }


def test_status_and_resource_version_are_not_content_for_cilium_kinds() -> None:
    cec = _cec()
    later = copy.deepcopy(cec)
    later["metadata"]["resourceVersion"] = "9"
    later["status"] = {"conditions": [{"type": "Accepted", "status": "True"}]}
    assert content(ENVOY_CONFIGS, cec) == content(ENVOY_CONFIGS, later)
    later["spec"]["services"][0]["name"] = "b"
    assert content(ENVOY_CONFIGS, cec) != content(ENVOY_CONFIGS, later)
    labelled = copy.deepcopy(cec)
    labelled["metadata"]["labels"] = {"team": "a"}
    assert content(ENVOY_CONFIGS, cec) != content(ENVOY_CONFIGS, labelled)


def test_last_applied_annotation_is_not_content_but_other_annotations_are() -> None:
    cec = _cec()
    applied = copy.deepcopy(cec)
    applied["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": "{...}",
        "team": "a",
    }
    kept = content(ENVOY_CONFIGS, applied)
    assert kept["metadata"]["annotations"] == {"team": "a"}
    assert kept != content(ENVOY_CONFIGS, cec)


def test_content_reads_like_the_object_and_compares_by_value() -> None:
    compact = content(ENVOY_CONFIGS, _cec())
    assert compact["spec"] == {"services": [{"name": "a", "namespace": "default"}]}
    assert set(compact) == {"metadata", "spec"} and len(compact) == 2
    assert "resourceVersion" not in compact["metadata"]
    assert compact == {
        "metadata": {"name": "x", "namespace": "default"},
        **{"spec": compact["spec"]},
    }


def test_pod_status_is_content() -> None:
    pod = {"metadata": {"name": "p", "namespace": "default"}, "status": {"podIP": "10.0.0.1"}}
    moved = copy.deepcopy(pod)
    moved["status"]["podIP"] = "10.0.0.2"
    assert content(PODS, pod) != content(PODS, moved)


def test_normalize_fills_kind_and_checks_identity() -> None:
    key, raw = normalize(ENVOY_CONFIGS, _cec())
    assert key == ("default", "x")
    assert (raw["apiVersion"], raw["kind"]) == ("cilium.io/v2", "CiliumEnvoyConfig")
    key, _ = normalize(CLUSTERWIDE_ENVOY_CONFIGS, {"metadata": {"name": "cw"}})
    assert key == ("", "cw")
    with pytest.raises(MalformedObject, match=r"metadata\.name"):
        normalize(ENVOY_CONFIGS, {"metadata": {"namespace": "default"}})
    with pytest.raises(MalformedObject, match=r"metadata\.namespace"):
        normalize(ENVOY_CONFIGS, {"metadata": {"name": "x"}})
    with pytest.raises(MalformedObject):
        normalize(ENVOY_CONFIGS, {"metadata": "nope"})
