"""The shared parser on the core kinds: what it reads and how it refuses."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nodemesh.model.errors import ParseError, UnknownKindError
from nodemesh.model.objects import (
    Deployment,
    EndpointSlice,
    Kind,
    ObjectRef,
    Pod,
    Service,
    ServicePort,
)
from nodemesh.model.parse import object_ref, parse_object
from nodemesh.model.store import MeshStore


def service(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ports": [{"port": 80, "targetPort": 8080}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": body}


def slice_(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abc",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "nodeName": "n1"},
            {
                "addresses": ["10.0.0.2"],
                "conditions": {"ready": False, "terminating": True},
                "targetRef": {"kind": "Pod", "name": "web-2"},
            },
        ],
    }
    raw.update(extra)
    return raw


def error_of(raw: Any) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_object(raw)
    return info.value


def test_service_defaults_namespace_and_reads_ports() -> None:
    svc = parse_object(service(clusterIP="10.96.0.10", selector={"app": "web"})).obj
    assert isinstance(svc, Service)
    assert svc.ref == ObjectRef(Kind.SERVICE, "default", "web")
    assert svc.cluster_ips == ("10.96.0.10",)
    assert svc.ports == (ServicePort("", 80, "TCP", 8080),)
    assert svc.selector == (("app", "web"),)


def test_service_without_cluster_ip_or_selector_is_valid() -> None:
    svc = parse_object(service()).obj
    assert isinstance(svc, Service)
    assert svc.cluster_ips == ()
    assert svc.selector is None
    headless = parse_object(service(clusterIP="None")).obj
    assert isinstance(headless, Service) and headless.cluster_ips == ()


@pytest.mark.parametrize(
    ("ports", "field", "words"),
    [
        ([{"port": 70000}], "spec.ports[0].port", "out of range"),
        ([{"port": "80"}], "spec.ports[0].port", "must be an integer"),
        ([{"port": True}], "spec.ports[0].port", "must be an integer"),
        ([{}], "spec.ports[0].port", "is required"),
        ([{"port": 80, "protocol": "HTTP"}], "spec.ports[0].protocol", "must be one of"),
        ([{"port": 80, "name": "a"}, {"port": 81}], "spec.ports[1].name", "is required"),
        ([{"port": 80, "name": "a"}, {"port": 81, "name": "a"}], "spec.ports[1].name", "names two"),
        ([{"port": 80, "targetPort": 0}], "spec.ports[0].targetPort", "out of range"),
        ("80", "spec.ports", "must be a list"),
    ],
)
def test_service_port_errors_name_the_field(ports: Any, field: str, words: str) -> None:
    err = error_of(service(ports=ports))
    assert err.ref == ObjectRef(Kind.SERVICE, "default", "web")
    assert err.field == field
    assert words in err.reason
    assert "Service default/web" in str(err)


def test_service_bad_cluster_ip() -> None:
    err = error_of(service(clusterIP="10.96.0.300"))
    assert (err.field, "not an IP address" in err.reason) == ("spec.clusterIP", True)


def test_endpoint_slice_conditions_follow_kubernetes_defaults() -> None:
    eps = parse_object(slice_()).obj
    assert isinstance(eps, EndpointSlice)
    assert eps.service_name == "web"
    first, second = eps.endpoints
    assert (first.ready, first.serving, first.terminating) == (True, True, False)
    assert first.node_name == "n1"
    assert (second.ready, second.serving, second.terminating) == (False, False, True)
    assert second.pod_name == "web-2"
    unset = parse_object(slice_(endpoints=[{"addresses": ["10.0.0.3"]}])).obj
    assert isinstance(unset, EndpointSlice)
    assert unset.endpoints[0].ready and unset.endpoints[0].serving


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"addressType": "IPv5"}, "addressType"),
        ({"endpoints": [{"addresses": ["fe80::1"]}]}, "endpoints[0].addresses[0]"),
        ({"endpoints": [{"addresses": []}]}, "endpoints[0].addresses"),
        ({"endpoints": [{"addresses": ["x"]}]}, "endpoints[0].addresses[0]"),
        (
            {"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]},
            "endpoints[0].conditions.ready",
        ),
        ({"endpoints": [{"addresses": ["10.0.0.1"], "nodeName": 3}]}, "endpoints[0].nodeName"),
        ({"endpoints": ["10.0.0.1"]}, "endpoints[0]"),
        ({"endpoints": [{"addresses": ["10.0.0.1", "10.0.0.256"]}]}, "endpoints[0].addresses[1]"),
        ({"ports": [{"name": "http", "port": -1}]}, "ports[0].port"),
    ],
)
def test_endpoint_slice_errors(change: dict[str, Any], field: str) -> None:
    err = error_of(slice_(**change))
    assert err.ref == ObjectRef(Kind.ENDPOINT_SLICE, "shop", "web-abc")
    assert err.field == field


def test_unknown_kind_is_its_own_error() -> None:
    raw = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "a"}}
    with pytest.raises(UnknownKindError) as info:
        parse_object(raw)
    assert (info.value.kind, info.value.namespace, info.value.name) == ("ConfigMap", "a", "x")
    wrong_group = {**service(), "apiVersion": "apps/v1"}
    with pytest.raises(UnknownKindError) as info:
        object_ref(wrong_group)
    assert (
        info.value.reason
        == "apps/v1 Service is not a kind nodemesh models (it reads Service as v1)"
    )
    missing = {k: v for k, v in service().items() if k != "apiVersion"}
    with pytest.raises(UnknownKindError) as info:
        object_ref(missing)
    assert info.value.reason == "Service is not a kind nodemesh models (it reads Service as v1)"


def test_object_without_name_or_bad_name() -> None:
    err = error_of({"apiVersion": "v1", "kind": "Service", "spec": {}})
    assert err.field == "metadata.name" and "Service" in err.reason
    bad = service()
    bad["metadata"] = {"name": "Web_1"}
    assert error_of(bad).field == "metadata.name"
    assert error_of(["not", "a", "mapping"]).field == ""


def test_deployment_and_pod() -> None:
    raw: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 3,
            "selector": {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}],
            },
            "template": {
                "metadata": {"labels": {"app": "web", "tier": "a"}},
                "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]},
            },
        },
    }
    dep = parse_object(raw).obj
    assert isinstance(dep, Deployment)
    assert dep.replicas == 3 and dep.container_ports == (8080,)
    assert dep.selector.matches({"app": "web", "tier": "a"})
    assert not dep.selector.matches({"app": "web", "tier": "b"})
    broken = copy.deepcopy(raw)
    broken["spec"]["selector"]["matchExpressions"][0]["operator"] = "Like"
    assert error_of(broken).field == "spec.selector.matchExpressions[0].operator"
    pod_raw: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "curl", "namespace": "shop", "labels": {"app": "curl"}},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.0.1.5"}, {"ip": "fd00::5"}]},
    }
    pod = parse_object(pod_raw).obj
    assert isinstance(pod, Pod)
    assert pod.ips == ("10.0.1.5", "fd00::5") and pod.node_name == "n1"
    assert pod.uid is None
    pod_raw["metadata"]["uid"] = "0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
    with_uid = parse_object(pod_raw).obj
    assert isinstance(with_uid, Pod) and with_uid.uid == "0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
    pod_raw["metadata"]["uid"] = 7
    assert error_of(pod_raw).field == "metadata.uid"
    del pod_raw["metadata"]["uid"]
    assert pod.deleting is False
    pod_raw["metadata"]["deletionTimestamp"] = "2026-11-26T09:00:00Z"
    terminating = parse_object(pod_raw).obj
    assert isinstance(terminating, Pod) and terminating.deleting is True
    pod_raw["metadata"]["deletionTimestamp"] = 5
    assert error_of(pod_raw).field == "metadata.deletionTimestamp"
    del pod_raw["metadata"]["deletionTimestamp"]
    pod_raw["status"]["podIPs"][1]["ip"] = "nope"
    assert error_of(pod_raw).field == "status.podIPs[1].ip"


def test_labels_must_be_strings() -> None:
    raw = service()
    raw["metadata"]["labels"] = {"version": 2}
    err = error_of(raw)
    assert err.field == "metadata.labels.version"


def test_endpoint_with_several_addresses_keeps_them_all() -> None:
    eps = parse_object(slice_(endpoints=[{"addresses": ["10.0.0.1", "10.0.0.2"]}])).obj
    assert isinstance(eps, EndpointSlice)
    assert eps.endpoints[0].addresses == ("10.0.0.1", "10.0.0.2")
    v6 = parse_object(slice_(addressType="IPv6", endpoints=[{"addresses": ["FD00:0::1"]}])).obj
    assert isinstance(v6, EndpointSlice) and v6.endpoints[0].addresses == ("fd00::1",)


@pytest.mark.parametrize(
    ("address_type", "address", "why"),
    [
        ("IPv4", "0.0.0.0", "unspecified"),
        ("IPv4", "255.255.255.255", "broadcast"),
        ("IPv4", "224.0.0.1", "multicast"),
        ("IPv4", "239.1.2.3", "multicast"),
        ("IPv6", "::", "unspecified"),
        ("IPv6", "ff02::1", "multicast"),
    ],
)
def test_endpoints_nothing_can_listen_on_are_refused(
    address_type: str, address: str, why: str
) -> None:
    # Issue 10 item 22: these reached Envoy as backends.
    raw = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": address_type,
        "endpoints": [
            {"addresses": ["10.0.0.1" if address_type == "IPv4" else "fd00::1"]},
            {"addresses": [address]},
        ],
    }
    with pytest.raises(ParseError) as caught:
        parse_object(raw)
    assert caught.value.field == "endpoints[1].addresses[0]" and why in caught.value.reason


def test_a_service_with_only_sctp_ports_gets_a_warning() -> None:
    store = MeshStore()
    store.apply(
        "t",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "sig"},
            "spec": {"ports": [{"port": 3868, "protocol": "SCTP"}]},
        },
    )
    store.apply(
        "t",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "mixed"},
            "spec": {
                "ports": [
                    {"name": "a", "port": 3868, "protocol": "SCTP"},
                    {"name": "b", "port": 80},
                ]
            },
        },
    )
    model = store.build()
    (warning,) = model.warnings
    assert warning.ref.name == "sig" and warning.field == "spec.ports" and "SCTP" in warning.reason
