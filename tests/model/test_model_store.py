"""MeshStore: keep-last-good, admission, versions, backends, change notification."""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY

from nodemesh.model.errors import UnknownKindError
from nodemesh.model.objects import EnvoyConfig, Kind, ObjectError, ObjectRef, ServiceName
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore
from tests.support import factory

ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
WEB = ObjectRef(Kind.SERVICE, "shop", "web")


def service(name: str = "web", port: Any = 80, **spec: Any) -> dict[str, Any]:
    ports = [factory.port(port, name="http", target=8080)]
    return factory.k8s_service(name, "shop", ports=ports, selector={"app": name}, **spec)


def endpoint_slice(
    name: str, service_name: str, ips: list[str], port: int = 8080
) -> dict[str, Any]:
    ports = [factory.port(port, name="http")]
    return factory.endpoint_slice(service_name, ips, "shop", name=name, ports=ports)


def cec(name: str, services: Sequence[str] = ("web",), created: str = "") -> dict[str, Any]:
    return factory.cec(name, "shop", services=services, created=created)


def errors_of(model: MeshModel, name: str) -> list[ObjectError]:
    return [e for e in model.errors if e.ref.name == name]


def test_bad_update_keeps_last_good_version() -> None:
    store = MeshStore()
    store.apply("test", service(port=80))
    first = store.build()
    assert first.services[ServiceName("shop", "web")].ports[0].port == 80
    store.apply("test", service(port=99999))
    second = store.build()
    (error,) = second.errors
    assert (error.ref, error.field, error.kept_previous) == (WEB, "spec.ports[0].port", True)
    assert second.services[ServiceName("shop", "web")].ports[0].port == 80
    assert second.version == first.version
    store.apply("test", service(port=81))
    third = store.build()
    assert third.errors == ()
    assert third.services[ServiceName("shop", "web")].ports[0].port == 81


def test_bad_object_without_previous_version_is_just_reported() -> None:
    store = MeshStore()
    store.apply("test", service("other"))
    store.apply("test", service(port="eighty"))
    model = store.build()
    (error,) = model.errors
    assert error.ref == WEB and not error.kept_previous
    assert list(model.services) == [ServiceName("shop", "other")]
    store.delete("test", "Service", "shop", "web")
    assert store.build().errors == ()


def test_build_only_when_something_changed() -> None:
    store = MeshStore()
    store.apply("test", service())
    model = store.build()
    assert store.build() is model
    store.apply("test", service())  # same content
    assert store.build() is model
    store.apply("test", service(port=81))
    assert store.build().generation == model.generation + 1


def test_missing_service_rejects_cec_until_it_appears() -> None:
    store = MeshStore()
    store.apply("test", cec("split"))
    model = store.build()
    (error,) = model.errors
    assert error.ref == ObjectRef(Kind.ENVOY_CONFIG, "shop", "split")
    assert error.field == "spec.services[0].name" and "shop/web" in error.reason
    assert model.envoy_configs == () and model.redirects == ()
    store.apply("test", service())
    model = store.build()
    assert model.errors == ()
    assert [c.ref.name for c in model.envoy_configs] == ["split"]
    assert [(r.service.name, r.port) for r in model.redirects] == [("web", 80)]


def test_conflict_oldest_wins_and_loser_names_winner() -> None:
    store = MeshStore()
    store.apply("test", service())
    store.apply("test", cec("young", created="2024-06-01T00:00:00Z"))
    store.apply("test", cec("old", created="2024-01-01T00:00:00Z"))
    model = store.build()
    assert [c.ref.name for c in model.envoy_configs] == ["old"]
    (error,) = model.errors
    assert error.ref.name == "young" and error.field == "spec.services[0]"
    assert "CiliumEnvoyConfig shop/old" in error.reason
    assert model.redirects[0].owners == (ObjectRef(Kind.ENVOY_CONFIG, "shop", "old"),)
    # Same age: the name decides.
    store.apply("test", cec("young", created="2024-01-01T00:00:00Z"))
    model = store.build()
    assert [c.ref.name for c in model.envoy_configs] == ["old"]
    store.delete("test", "CiliumEnvoyConfig", "shop", "old")
    model = store.build()
    assert [c.ref.name for c in model.envoy_configs] == ["young"] and model.errors == ()


def test_rejected_cec_update_keeps_previous_version() -> None:
    store = MeshStore()
    store.apply("test", service())
    store.apply("test", cec("split"))
    good = store.build()
    broken = cec("split", services=("web", "gone"))
    store.apply("test", broken)
    model = store.build()
    (error,) = model.errors
    assert error.kept_previous and error.field == "spec.services[1].name"
    assert model.envoy_configs == good.envoy_configs
    unparsable = copy.deepcopy(broken)
    del unparsable["spec"]["resources"][0]["name"]
    store.apply("test", unparsable)
    model = store.build()
    (error,) = model.errors
    assert (error.field, error.kept_previous) == ("spec.resources[0].name", True)
    assert model.envoy_configs == good.envoy_configs


class RejectNamed:
    """A validator in the shape the xDS translator provides."""

    def __init__(self, bad: str) -> None:
        self.bad = bad
        self.calls = 0

    def __call__(self, config: EnvoyConfig) -> Sequence[ObjectError]:
        self.calls += 1
        return [
            ObjectError(config.ref, r.field, "invalid Envoy resource")
            for r in config.resources
            if r.name == self.bad
        ]


def test_validators_decide_admission_and_are_not_rerun_needlessly() -> None:
    validator = RejectNamed("routes")
    store = MeshStore([validator])
    store.apply("test", service())
    store.apply("test", cec("split"))
    model = store.build()
    (error,) = model.errors
    assert (error.field, error.reason) == ("spec.resources[0]", "invalid Envoy resource")
    assert model.envoy_configs == ()
    calls = validator.calls
    store.apply("test", service(port=81))  # Services change: admission re-runs
    store.build()
    assert validator.calls == calls


def test_version_is_independent_of_order_and_source_names() -> None:
    raws = [service(), service("db"), endpoint_slice("web-1", "web", ["10.0.0.1"]), cec("split")]
    versions = set()
    for seed in range(5):
        shuffled = raws[:]
        random.Random(seed).shuffle(shuffled)
        store = MeshStore()
        for raw in shuffled:
            store.apply(f"source-{seed}", raw)
        versions.add(store.build().version)
    assert len(versions) == 1
    store = MeshStore()
    store.replace_all("files", raws)
    model = store.build()
    assert model.version in versions
    store.apply("files", endpoint_slice("web-1", "web", ["10.0.0.2"]))
    assert store.build().version != model.version


def test_replace_all_deletes_missing_and_skips_unknown() -> None:
    store = MeshStore()
    store.replace_all("files", [service(), service("db")])
    assert len(store.build().services) == 2
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    skipped = store.replace_all("files", [service("db"), config_map])
    assert [s.reason for s in skipped] == ["v1 ConfigMap is not a kind nodemesh models"]
    assert list(store.build().services) == [ServiceName("shop", "db")]


def test_first_source_by_name_wins_for_shared_objects() -> None:
    store = MeshStore()
    store.apply("b-kube", service(port=81))
    store.apply("a-files", service(port=80))
    assert store.build().services[ServiceName("shop", "web")].ports[0].port == 80
    store.delete("a-files", "Service", "shop", "web")
    assert store.build().services[ServiceName("shop", "web")].ports[0].port == 81


def test_backends_resolve_ports_by_name_across_slices() -> None:
    store = MeshStore()
    store.apply("test", service())
    store.apply("test", endpoint_slice("web-1", "web", ["10.0.0.1", "10.0.0.2"]))
    store.apply("test", endpoint_slice("web-2", "web", ["10.0.0.3", "10.0.0.1"]))
    wrong_name = endpoint_slice("web-3", "web", ["10.0.0.9"])
    wrong_name["ports"][0]["name"] = "metrics"
    store.apply("test", wrong_name)
    model = store.build()
    found = [(b.address, b.port) for b in model.backends_of(ServiceName("shop", "web"), 80)]
    assert found == [("10.0.0.1", 8080), ("10.0.0.2", 8080), ("10.0.0.3", 8080)]
    store.delete("test", "EndpointSlice", "shop", "web-1")
    model = store.build()
    found = [(b.address, b.port) for b in model.backends_of(ServiceName("shop", "web"), 80)]
    assert found == [("10.0.0.3", 8080), ("10.0.0.1", 8080)]


async def test_updates_coalesce_bursts_latest_wins() -> None:
    store = MeshStore()
    store.apply("test", service())
    seen: list[MeshModel] = []
    started = asyncio.Event()

    async def consume() -> None:
        # A window far longer than the burst below, even on a loaded machine.
        async for model in store.updates(debounce=0.5):
            seen.append(model)
            started.set()
            if any(len(m.endpoint_slices) == 50 for m in seen):
                return

    consumer = asyncio.create_task(consume(), name="consumer")
    await asyncio.wait_for(started.wait(), timeout=30)
    for index in range(50):
        store.apply("test", endpoint_slice(f"web-{index}", "web", [f"10.0.1.{index}"]))
        await asyncio.sleep(0)  # let the consumer run between changes
    await asyncio.wait_for(consumer, timeout=30)
    # The first model, then the burst as at most two: its first change at
    # once (leading edge), the rest together once they settle.
    assert len(seen) <= 3
    assert len(seen[-1].endpoint_slices) == 50


async def test_an_isolated_change_is_built_without_waiting() -> None:
    """Leading edge: with a debounce of an hour, a change reaching an idle
    consumer still arrives at once (held for the debounce, it would not
    within the wait below)."""
    store = MeshStore()
    store.apply("test", service())
    updates = store.updates(debounce=3600)
    assert isinstance(updates, AsyncGenerator)  # closed in `finally`
    try:
        first = await anext(updates)
        waiting = asyncio.ensure_future(anext(updates))
        await asyncio.sleep(0)  # the consumer waits for a change (idle)
        store.apply("test", endpoint_slice("web-1", "web", ["10.0.1.1"]))
        model = await asyncio.wait_for(waiting, timeout=60)
        assert model.generation > first.generation
        assert [s.ref.name for s in model.endpoint_slices] == ["web-1"]
    finally:
        await updates.aclose()


async def test_updates_generator_cleans_up() -> None:
    store = MeshStore()
    stream = store.updates(debounce=0.01)
    await anext(stream)
    assert isinstance(stream, AsyncGenerator)  # updates() is a generator: it can be closed
    await stream.aclose()
    store.apply("test", service())  # no subscriber left to wake; must not fail
    assert store.build().services


@pytest.mark.parametrize("kind", ["CiliumEnvoyConfig", "Service"])
def test_delete_removes_object(kind: str) -> None:
    store = MeshStore()
    store.apply("test", service())
    store.apply("test", cec("split"))
    assert store.build().redirects
    name = "split" if kind == "CiliumEnvoyConfig" else "web"
    store.delete("test", kind, "shop", name)
    model = store.build()
    assert model.redirects == ()


def test_delete_of_unknown_kind_is_refused_clearly() -> None:
    store = MeshStore()
    with pytest.raises(UnknownKindError):
        store.delete("test", "ConfigMap", "shop", "x")
    store.delete("test", "Service", "shop", "never-applied")  # no-op
    assert store.build().generation == 0


def test_a_failing_validator_rejects_only_that_config() -> None:
    def broken(config: EnvoyConfig) -> Sequence[ObjectError]:
        raise RuntimeError("bug in validator")

    store = MeshStore([broken])
    store.apply("test", service())
    store.apply("test", cec("split"))
    model = store.build()
    (error,) = model.errors
    assert error.ref.name == "split" and "bug in validator" in error.reason
    assert list(model.services) == [ServiceName("shop", "web")]


def test_unchanged_parts_are_shared_between_versions() -> None:
    store = MeshStore()
    store.apply("test", service())
    store.apply("test", service("db"))
    store.apply("test", endpoint_slice("web-1", "web", ["10.0.0.1"]))
    store.apply("test", endpoint_slice("db-1", "db", ["10.0.0.2"]))
    store.apply("test", cec("split"))
    first = store.build()
    store.apply("test", endpoint_slice("db-1", "db", ["10.0.0.3"]))
    second = store.build()
    web, db = ServiceName("shop", "web"), ServiceName("shop", "db")
    assert second.backends[web] is first.backends[web]
    assert second.backends[db] is not first.backends[db]
    assert second.services[web] is first.services[web]
    assert second.redirects is first.redirects
    store.apply("test", service("db", port=5432))  # redirects are re-derived, equal
    assert store.build().redirects is first.redirects


async def test_constant_churn_still_publishes() -> None:
    store = MeshStore()
    store.apply("test", service())
    updates = store.updates(debounce=0.05)
    assert isinstance(updates, AsyncGenerator)  # closed in `finally`
    first = await anext(updates)
    received = asyncio.Event()

    async def churn() -> None:
        # Changes arrive faster than the debounce, forever, until a model
        # comes through: only the bounded wait can publish one.
        index = 0
        while not received.is_set():
            index += 1
            store.apply(
                "test", endpoint_slice("web-1", "web", [f"10.0.{index // 250}.{index % 250}"])
            )
            await asyncio.sleep(0.005)

    producer = asyncio.create_task(churn(), name="churn")
    try:
        # The first change may be built at once (leading edge); the churn
        # that follows goes on without a pause, so only the bounded wait can
        # publish the next model.
        leading = await asyncio.wait_for(anext(updates), timeout=60)
        model = await asyncio.wait_for(anext(updates), timeout=60)
        received.set()
        assert model.generation > leading.generation > first.generation
        assert model.endpoint_slices
        await asyncio.wait_for(producer, timeout=30)
    finally:
        received.set()
        await updates.aclose()


def test_rejections_show_as_metrics() -> None:
    store = MeshStore()
    store.apply("test", service())
    store.apply("test", cec("split", services=("web", "gone")))
    store.build()

    def sample(kind: str) -> float | None:
        labels = {"kind": kind}
        return REGISTRY.get_sample_value("nodemesh_model_object_errors", labels)

    assert sample("CiliumEnvoyConfig") == 1
    assert sample("Service") == 0
    store.apply("test", cec("split"))
    store.build()
    assert sample("CiliumEnvoyConfig") == 0


def test_an_older_config_arriving_later_takes_the_port() -> None:
    store = MeshStore()
    store.apply("test", service())
    store.apply("test", cec("first-seen", created="2024-06-01T00:00:00Z"))
    assert [c.ref.name for c in store.build().envoy_configs] == ["first-seen"]
    store.apply("test", cec("restored", created="2024-01-01T00:00:00Z"))
    model = store.build()
    assert [c.ref.name for c in model.envoy_configs] == ["restored"]
    (error,) = model.errors
    assert error.ref.name == "first-seen" and not error.kept_previous
    assert "shop/restored" in error.reason


def test_a_newcomer_without_timestamp_never_displaces_the_incumbent() -> None:
    # Issue 10 item 3: neither has a creationTimestamp; "aaa" sorts first by
    # name, which used to make it the "older" one and take the working port.
    store = MeshStore()
    store.apply("test", service())
    store.apply("test", cec("working"))
    assert [c.ref.name for c in store.build().envoy_configs] == ["working"]
    store.apply("test", cec("aaa-newcomer"))
    model = store.build()
    assert [c.ref.name for c in model.envoy_configs] == ["working"]
    (error,) = model.errors
    assert error.ref.name == "aaa-newcomer" and error.field == "spec.services[0]"
    assert "CiliumEnvoyConfig shop/working" in error.reason
    assert model.redirects[0].owners == (ObjectRef(Kind.ENVOY_CONFIG, "shop", "working"),)
    # A timestamped newcomer still does not beat an untimestamped incumbent.
    store.apply("test", cec("stamped", created="2024-01-01T00:00:00Z"))
    assert [c.ref.name for c in store.build().envoy_configs] == ["working"]
