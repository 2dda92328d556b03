"""GAMMA in the model: attachment, status reasons, merge order, steering."""

from __future__ import annotations

from typing import Any

from nodemesh.model.gamma import Condition, RouteStatus
from nodemesh.model.objects import Kind, LabelSelector, ObjectRef, RedirectOrigin, ServiceName
from nodemesh.model.redirects import NAMESPACE_LABEL
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore

GROUP = "gateway.networking.k8s.io"
CART = ServiceName("shop", "cart")


def service(name: str, namespace: str = "shop", ports: tuple[int, ...] = (80,)) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "clusterIP": f"10.96.0.{len(name) + len(namespace)}",
            "ports": [{"name": f"p{p}", "port": p} for p in ports],
        },
    }


def http_route(
    name: str,
    rules: list[Any],
    namespace: str = "shop",
    parent: dict[str, Any] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    kind: str = "HTTPRoute",
) -> dict[str, Any]:
    parent = parent or {"group": "", "kind": "Service", "name": "cart", "namespace": "shop"}
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generation": 3,
            "creationTimestamp": created,
        },
        "spec": {"parentRefs": [parent], "rules": rules},
    }


def to(name: str, namespace: str | None = None, port: int = 80, weight: int = 1) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "port": port, "weight": weight}
    if namespace:
        ref["namespace"] = namespace
    return ref


def build(*objects: dict[str, Any]) -> MeshModel:
    store = MeshStore()
    for obj in objects:
        store.apply("test", obj)
    return store.build()


def status(model: MeshModel, name: str, namespace: str = "shop") -> RouteStatus:
    return next(
        s for s in model.gamma.statuses if (s.ref.name, s.ref.namespace) == (name, namespace)
    )


def conditions(model: MeshModel, name: str, namespace: str = "shop") -> dict[str, Condition]:
    [parent] = status(model, name, namespace).parents
    return {c.type: c for c in parent.conditions}


def test_accepted_route_resolves_and_steers_every_client() -> None:
    model = build(
        service("cart"), service("cart-v2"), http_route("r", [{"backendRefs": [to("cart-v2")]}])
    )
    found = conditions(model, "r")
    assert found["Accepted"].status and found["Accepted"].reason == "Accepted"
    assert found["ResolvedRefs"].status
    assert status(model, "r").generation == 3
    [redirect] = model.redirects
    assert redirect.origin is RedirectOrigin.GATEWAY_ROUTE and redirect.clients is None
    assert redirect.owners == (ObjectRef(Kind.HTTP_ROUTE, "shop", "r"),)


def test_missing_service_or_port_is_no_matching_parent() -> None:
    gone = build(http_route("r", []))
    assert conditions(gone, "r")["Accepted"].reason == "NoMatchingParent"
    parent = {"group": "", "kind": "Service", "name": "cart", "port": 8080}
    no_port = build(service("cart"), http_route("r", [], parent=parent))
    assert conditions(no_port, "r")["Accepted"].reason == "NoMatchingParent"
    assert no_port.redirects == ()
    assert any(e.ref.name == "r" and "NoMatchingParent" in e.reason for e in no_port.errors)


def test_missing_backend_is_backend_not_found_and_answers_500_share() -> None:
    model = build(service("cart"), http_route("r", [{"backendRefs": [to("nope")]}]))
    found = conditions(model, "r")
    assert found["Accepted"].status
    assert (found["ResolvedRefs"].status, found["ResolvedRefs"].reason) == (
        False,
        "BackendNotFound",
    )
    wrong_port = build(service("cart"), http_route("r", [{"backendRefs": [to("cart", port=81)]}]))
    assert conditions(wrong_port, "r")["ResolvedRefs"].reason == "BackendNotFound"


def test_cross_namespace_backend_needs_a_grant() -> None:
    objects = [
        service("cart"),
        service("db", "data"),
        http_route("r", [{"backendRefs": [to("db", "data")]}]),
    ]
    model = build(*objects)
    assert conditions(model, "r")["ResolvedRefs"].reason == "RefNotPermitted"
    grant = {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "g", "namespace": "data"},
        "spec": {
            "from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": "shop"}],
            "to": [{"group": "", "kind": "Service", "name": "db"}],
        },
    }
    assert conditions(build(*objects, grant), "r")["ResolvedRefs"].status


def test_consumer_route_may_send_to_its_parent_without_a_grant_and_steers_its_namespace() -> None:
    rules = [{"backendRefs": [to("cart", "shop")]}]
    model = build(service("cart"), http_route("mine", rules, namespace="web"))
    assert conditions(model, "mine", "web")["ResolvedRefs"].status
    [redirect] = model.redirects
    assert redirect.clients == (LabelSelector(match_labels=((NAMESPACE_LABEL, "web"),)),)
    table = model.gamma.tables[(CART, 80)]
    assert table.producer == () and [ns for ns, _ in table.consumers] == ["web"]


def test_regexes_re2_rejects_are_unsupported_values() -> None:
    for regex in ("/(?!admin).*", "/(a{1,100}){1,100}"):
        rules = [{"matches": [{"path": {"type": "RegularExpression", "value": regex}}]}]
        model = build(service("cart"), http_route("r", rules))
        found = conditions(model, "r")["Accepted"]
        assert (found.status, found.reason) == (False, "UnsupportedValue"), regex
        assert model.redirects == ()


def test_cors_is_unsupported_and_extension_ref_invalid_kind() -> None:
    cors = [{"filters": [{"type": "CORS", "cors": {"allowOrigins": ["*"]}}]}]
    assert conditions(build(service("cart"), http_route("r", cors)), "r")["Accepted"].reason == (
        "UnsupportedValue"
    )
    ext = [
        {
            "filters": [
                {
                    "type": "ExtensionRef",
                    "extensionRef": {"group": "x.io", "kind": "K", "name": "n"},
                }
            ]
        }
    ]
    found = conditions(build(service("cart"), http_route("r", ext)), "r")
    assert found["Accepted"].status and found["ResolvedRefs"].reason == "InvalidKind"


def test_identical_matches_go_to_the_oldest_route_and_the_loser_says_so() -> None:
    rules = [{"backendRefs": [to("cart")]}]
    model = build(
        service("cart"),
        http_route("young", rules, created="2026-02-01T00:00:00Z"),
        http_route("old", rules, created="2026-01-01T00:00:00Z"),
    )
    entries = model.gamma.tables[(CART, 80)].producer
    assert [e.rule.route.name for e in entries] == ["old", "young"]
    assert "older HTTPRoute shop/old, which wins" in conditions(model, "young")["Accepted"].message
    assert "wins" not in conditions(model, "old")["Accepted"].message


def test_precedence_exact_then_longest_prefix_then_more_headers() -> None:
    def match(kind: str, value: str, headers: int = 0) -> dict[str, Any]:
        found: dict[str, Any] = {"path": {"type": kind, "value": value}}
        if headers:
            found["headers"] = [{"name": f"h{i}", "value": "v"} for i in range(headers)]
        return found

    rules = [
        {"matches": [match("PathPrefix", "/a")]},
        {"matches": [match("PathPrefix", "/a/b")]},
        {"matches": [match("PathPrefix", "/a", headers=2)]},
        {"matches": [match("Exact", "/a")]},
        {"matches": [match("RegularExpression", "/a.*")]},
    ]
    model = build(service("cart"), http_route("r", rules))
    order = [e.rule.rule.index for e in model.gamma.tables[(CART, 80)].producer]
    assert order == [3, 1, 2, 0, 4]


def test_cec_keeps_its_port_and_both_objects_say_so() -> None:
    cec = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEnvoyConfig",
        "metadata": {"name": "split", "namespace": "shop"},
        "spec": {"services": [{"name": "cart"}], "resources": []},
    }
    model = build(service("cart"), cec, http_route("r", [{"backendRefs": [to("cart")]}]))
    found = conditions(model, "r")["Accepted"]
    assert (found.status, found.reason) == (False, "ConflictsWithEnvoyConfig")
    [redirect] = model.redirects
    assert redirect.origin is RedirectOrigin.ENVOY_CONFIG
    assert any(w.ref.name == "split" and "HTTPRoute shop/r" in w.reason for w in model.warnings)


def test_gateway_parents_are_left_alone() -> None:
    parent = {"name": "gw"}
    model = build(service("cart"), http_route("r", [], parent=parent))
    assert model.gamma.statuses == () and model.redirects == () and model.errors == ()


def test_values_envoy_would_refuse_are_unsupported() -> None:
    """Allowed by the CRDs, refused by Envoy's own rules (a NACK of the whole
    route table): each is UnsupportedValue and nothing is served for it."""
    modifier = "requestHeaderModifier"
    cases: list[list[Any]] = [
        [
            {
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        modifier: {"set": [{"name": "Host", "value": "x"}]},
                    }
                ]
            }
        ],
        [
            {
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        modifier: {"add": [{"name": "X", "value": "a\nb"}]},
                    }
                ]
            }
        ],
        [{"matches": [{"path": {"type": "PathPrefix", "value": "/a?b"}}]}],
        [{"matches": [{"path": {"type": "RegularExpression", "value": ""}}]}],
    ]
    for rules in cases:
        model = build(service("cart"), http_route("r", rules))
        found = conditions(model, "r")["Accepted"]
        assert (found.status, found.reason) == (False, "UnsupportedValue"), rules
        assert model.redirects == ()
