"""L7 redirects: the article's canary exactly, merging, naming, proxy ports."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.ebpf.planner import plan
from nodemesh.model.errors import PortAllocationError
from nodemesh.model.objects import (
    HTTPPolicy,
    HTTPRule,
    Kind,
    L7Redirect,
    LabelSelector,
    ObjectRef,
    RedirectOrigin,
    ServiceName,
    pairs,
)
from nodemesh.model.ports import PROXY_PORT_MAX, PROXY_PORT_MIN, allocate_proxy_ports, home_port
from nodemesh.model.redirects import NAMESPACE_LABEL
from nodemesh.model.store import MeshStore
from tests.support import factory

CANARY = Path(__file__).resolve().parents[2] / "examples" / "canary"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CEC_REF = ObjectRef(Kind.ENVOY_CONFIG, "default", "httpbin-traffic-split")
CNP_REF = ObjectRef(Kind.NETWORK_POLICY, "default", "httpbin-l7-policy")
CURL = LabelSelector(pairs({"app": "curl"}))
# What the kernel matches for the namespaced CNP's selector: its namespace's pods.
CURL_IN_DEFAULT = LabelSelector(pairs({"app": "curl", NAMESPACE_LABEL: "default"}))


def canary_store(*extra: dict[str, Any]) -> MeshStore:
    store = MeshStore()
    for path in sorted(CANARY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            store.apply("files", doc)
    for raw in extra:
        store.apply("files", raw)
    return store


def pod(name: str, ip: str, labels: dict[str, str], namespace: str = "default") -> dict[str, Any]:
    return factory.k8s_pod(name, namespace, ip=ip, labels=labels)


def test_canary_example_gives_exactly_one_merged_redirect() -> None:
    model = canary_store().build()
    assert model.errors == ()
    listener = "default/httpbin-traffic-split/listener"
    assert model.redirects == (
        L7Redirect(
            service=ServiceName("default", "httpbin"),
            port=80,
            protocol="TCP",
            proxy_port=home_port(listener),
            listener=listener,
            route_config="default/httpbin-traffic-split/httpbin-listener-route",
            origin=RedirectOrigin.ENVOY_CONFIG,
            owners=(CEC_REF, CNP_REF),
            clients=(CURL_IN_DEFAULT,),
            policies=(HTTPPolicy(CNP_REF, CURL, (), (HTTPRule(),)),),
        ),
    )
    # The port is part of the on-node contract: it must not move between
    # releases any more than between restarts.
    assert model.redirects[0].proxy_port == 13275
    assert [w.field.rsplit(".", 1)[-1] for w in model.warnings] == ["total_weight"]


def test_canary_policy_lists_selected_pod_ips_only() -> None:
    store = canary_store(
        pod("curl", "10.0.1.5", {"app": "curl"}),
        pod("curl-other-ns", "10.0.2.5", {"app": "curl"}, namespace="other"),
        pod("web", "10.0.1.6", {"app": "web"}),
    )
    (redirect,) = store.build().redirects
    assert redirect.policies[0].client_ips == ("10.0.1.5",)
    store.apply("files", pod("curl-2", "10.0.1.4", {"app": "curl"}))
    (redirect,) = store.build().redirects
    assert redirect.policies[0].client_ips == ("10.0.1.4", "10.0.1.5")


def test_same_model_same_ports_on_restart() -> None:
    first = canary_store().build()
    second = canary_store().build()
    assert first.redirects == second.redirects and first.version == second.version


def policy_only() -> MeshStore:
    store = canary_store()
    store.delete("files", "CiliumEnvoyConfig", "default", "httpbin-traffic-split")
    return store


def test_policy_only_redirect_names_and_clients() -> None:
    (redirect,) = policy_only().build().redirects
    name = "nodemesh/l7/default/httpbin/80"
    assert (redirect.listener, redirect.route_config) == (name, name)
    assert redirect.origin is RedirectOrigin.NETWORK_POLICY
    assert redirect.clients == (CURL_IN_DEFAULT,)
    assert redirect.owners == (CNP_REF,)
    assert redirect.proxy_port == home_port(name)


def test_l4_only_policy_redirects_nothing() -> None:
    store = policy_only()
    store.apply(
        "files",
        {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "httpbin-l7-policy"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "curl"}},
                "egress": [{"toServices": [{"k8sService": {"serviceName": "httpbin"}}]}],
            },
        },
    )
    assert store.build().redirects == ()


def test_to_ports_select_by_service_or_target_port() -> None:
    store = MeshStore()
    store.apply(
        "t",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "api"},
            "spec": {
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080},
                    {"name": "admin", "port": 9000},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                ]
            },
        },
    )
    rule: dict[str, Any] = {
        "toServices": [{"k8sService": {"serviceName": "api"}}],
        "toPorts": [{"ports": [{"port": "8080"}], "rules": {"http": [{"method": "GET"}]}}],
    }
    cnp: dict[str, Any] = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "p"},
        "spec": {"endpointSelector": {}, "egress": [rule]},
    }
    store.apply("t", cnp)
    assert [r.port for r in store.build().redirects] == [80]
    changed = copy.deepcopy(cnp)
    changed["spec"]["egress"][0]["toPorts"][0]["ports"] = [{"port": "0"}]
    store.apply("t", changed)
    # Every TCP port; UDP never goes to Envoy.
    assert [r.port for r in store.build().redirects] == [80, 9000]


def test_cec_with_own_listener_and_rds() -> None:
    listener = {
        "@type": LISTENER,
        "name": "l7",
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {"rds": {"route_config_name": "routes"}},
                    }
                ]
            }
        ],
    }
    raw = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideEnvoyConfig",
        "metadata": {"name": "edge"},
        "spec": {
            "services": [{"name": "httpbin", "namespace": "default"}],
            "resources": [listener, {"@type": ROUTE, "name": "routes"}],
        },
    }
    store = canary_store()
    store.delete("files", "CiliumEnvoyConfig", "default", "httpbin-traffic-split")
    store.apply("files", raw)
    (redirect,) = store.build().redirects
    assert (redirect.listener, redirect.route_config) == ("edge/l7", "edge/routes")
    assert redirect.owners == (ObjectRef(Kind.CLUSTERWIDE_ENVOY_CONFIG, "", "edge"), CNP_REF)


def test_port_allocation_never_collides_and_is_order_independent() -> None:
    rng = random.Random(7)
    for _ in range(20):
        names = [f"ns{rng.randrange(50)}/svc{rng.randrange(10**6)}/listener" for _ in range(2000)]
        reserved = {home_port(names[0]), 15000}
        ports = allocate_proxy_ports(names, reserved)
        assert len(ports) == len(set(names))
        assert len(set(ports.values())) == len(ports)
        assert all(PROXY_PORT_MIN <= p < PROXY_PORT_MAX for p in ports.values())
        assert not reserved & set(ports.values())
        rng.shuffle(names)
        assert allocate_proxy_ports(names, reserved) == ports


def test_port_allocation_moves_nothing_else_on_a_sparse_change() -> None:
    rng = random.Random(11)
    names = [f"default/cec{i}/listener" for i in range(100)]
    before = allocate_proxy_ports(names)
    for _ in range(20):
        added = f"default/new{rng.randrange(10**6)}/listener"
        after = allocate_proxy_ports([*names, added])
        moved = {n for n in names if after[n] != before[n]}
        near = {n for n in names if 0 <= home_port(n) - home_port(added) <= 3}
        assert moved <= near


def test_port_allocation_refuses_overflow() -> None:
    with pytest.raises(PortAllocationError):
        allocate_proxy_ports(["a", "b", "c"], reserved=[10], low=10, high=12)
    assert sorted(allocate_proxy_ports(["a", "b"], low=10, high=12).values()) == [10, 11]


def test_many_redirected_services_get_distinct_stable_ports() -> None:
    raws: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % 7}"},
            "spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 8080}]},
        }
        for i in range(400)
    ]
    raws.append(
        {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "all-http"},
            "spec": {
                "endpointSelector": {},
                "egress": [
                    {
                        "toServices": [
                            {"k8sService": {"serviceName": f"svc-{i}", "namespace": f"ns-{i % 7}"}}
                            for i in range(400)
                        ],
                        "rules": {"http": [{"method": "GET"}]},
                    }
                ],
            },
        }
    )
    first = MeshStore()
    first.replace_all("a", raws)
    redirects = first.build().redirects
    assert len(redirects) == 800
    assert len({r.proxy_port for r in redirects}) == 800
    second = MeshStore()
    second.replace_all("b", list(reversed(raws)))
    assert second.build().redirects == redirects


def test_policy_naming_a_missing_service_warns_until_it_exists() -> None:
    store = canary_store()
    store.delete("files", "Service", "default", "httpbin")
    model = store.build()
    (warning,) = [w for w in model.warnings if w.ref == CNP_REF]
    assert "default/httpbin does not exist" in warning.reason
    assert model.redirects == ()
    assert [e.ref for e in model.errors] == [CEC_REF]  # the CEC is refused outright
    model = canary_store().build()
    assert [w.ref for w in model.warnings] == [CEC_REF]


def client_ips(store: MeshStore) -> tuple[str, ...]:
    (redirect,) = store.build().redirects
    return redirect.policies[0].client_ips


def test_client_ips_follow_pod_changes() -> None:
    store = canary_store(pod("curl", "10.0.1.5", {"app": "curl"}))
    assert client_ips(store) == ("10.0.1.5",)
    store.apply("files", pod("curl", "10.0.1.5", {"app": "other"}))  # relabelled away
    assert client_ips(store) == ()
    store.apply("files", pod("curl", "10.0.1.7", {"app": "curl"}))  # back, new IP
    assert client_ips(store) == ("10.0.1.7",)
    done = pod("curl", "10.0.1.7", {"app": "curl"})
    done["status"]["phase"] = "Succeeded"
    store.apply("files", done)
    assert client_ips(store) == ()
    store.apply("files", pod("curl", "10.0.1.8", {"app": "curl"}))
    assert client_ips(store) == ("10.0.1.8",)
    store.delete("files", "Pod", "default", "curl")
    assert client_ips(store) == ()


def test_unrelated_pod_churn_leaves_redirects_untouched() -> None:
    store = canary_store(pod("curl", "10.0.1.5", {"app": "curl"}))
    before = store.build().redirects
    for index in range(20):
        store.apply("files", pod(f"web-{index}", f"10.0.2.{index}", {"app": "web"}))
    model = store.build()
    assert model.redirects is before and len(model.pods) == 21


def test_clusterwide_policy_selects_pods_in_every_namespace() -> None:
    store = policy_only()
    store.delete("files", "CiliumNetworkPolicy", "default", "httpbin-l7-policy")
    store.apply(
        "files",
        {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "everyone-curl"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "curl"}},
                "egress": [
                    {
                        "toServices": [
                            {"k8sService": {"serviceName": "httpbin", "namespace": "default"}}
                        ],
                        "rules": {"http": [{}]},
                    }
                ],
            },
        },
    )
    store.apply("files", pod("a", "10.0.1.5", {"app": "curl"}))
    store.apply("files", pod("b", "10.0.9.5", {"app": "curl"}, namespace="other"))
    assert client_ips(store) == ("10.0.1.5", "10.0.9.5")


def test_a_namespaced_policy_steers_its_own_namespace_only() -> None:
    """The same labels in another namespace are not the policy's clients: their
    connections stay in the kernel (steered, they would meet a policy-only
    listener that denies every client the policy does not name)."""
    store = MeshStore()
    objects = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "api", "namespace": "a"},
            "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}]},
        },
        {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "pol", "namespace": "a"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "x"}},
                "egress": [
                    {
                        "toServices": [{"k8sService": {"serviceName": "api", "namespace": "a"}}],
                        "rules": {"http": [{"path": "/ok"}]},
                    }
                ],
            },
        },
    ]
    for namespace, name, ip in (("a", "p", "10.0.0.1"), ("b", "q", "10.0.0.2")):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": {"app": "x"}},
                "status": {"phase": "Running", "podIP": ip},
            }
        )
    for obj in objects:
        store.apply("test", obj)
    model = store.build()
    assert [c.pod for r in plan(model).redirects for c in r.clients] == ["a/p"]
