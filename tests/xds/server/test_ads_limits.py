"""Bounds on what one client can make the server keep (issue 10, items 9-11):
type URLs per stream and their length, node ids, metric labels and NACK
messages. Each bound ends only the offending stream."""

from __future__ import annotations

import grpc
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from nodemesh.xds.cache import CLUSTER
from nodemesh.xds.server.callbacks import MAX_DETAIL_CHARS
from nodemesh.xds.vocab import TYPE_PREFIX
from tests.xds.server.ads_harness import Harness, MakeHarness, mesh, wait_until
from tests.xds.server.test_ads_bad_input import _healthy_stream_still_served


def _serve_mesh(harness: Harness) -> None:
    harness.cache.set_default_snapshot(harness.cache.build_snapshot(mesh(), "v"))


def _invented(i: int) -> str:
    return f"{TYPE_PREFIX}evil.Invented{i}"


async def _ask(client, api: str, type_url: str) -> None:  # type: ignore[no-untyped-def]
    if api == "sotw":
        await client.request(type_url, ["x"])
    else:
        await client.request(type_url, subscribe=["x"])


async def _wildcard_cds(client, api: str) -> None:  # type: ignore[no-untyped-def]
    await (client.request(CLUSTER) if api == "sotw" else client.request(CLUSTER, subscribe=["*"]))


async def test_unknown_type_urls_are_bounded_per_stream(
    make_harness: MakeHarness, api: str
) -> None:
    harness = await make_harness(max_other_types=4)
    _serve_mesh(harness)
    client = await harness.client(api)
    for i in range(4):  # up to the bound: served (empty), the stream stays up
        await _ask(client, api, _invented(i))
    await wait_until(
        lambda: len(harness.server.clients()[0].types) == 4, what="four unknown types taken"
    )
    await _ask(client, api, _invented(4))
    error = await client.closed()
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Invented4" in (error.details() or "")
    await _healthy_stream_still_served(harness, api)


async def test_known_types_do_not_count_against_the_unknown_bound(
    make_harness: MakeHarness, api: str
) -> None:
    harness = await make_harness(max_other_types=0)
    _serve_mesh(harness)
    client = await harness.client(api)
    await _wildcard_cds(client, api)
    await client.recv()
    await _ask(client, api, _invented(0))
    error = await client.closed()
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_overlong_type_url_is_refused(harness: Harness, api: str) -> None:
    _serve_mesh(harness)
    client = await harness.client(api)
    await _ask(client, api, TYPE_PREFIX + "a" * (1 << 20))  # 1 MiB, as in the report
    error = await client.closed()
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert "type_url" in details and len(details) < 300  # the URL itself is not echoed
    assert harness.server.clients() == []
    await _healthy_stream_still_served(harness, api)


async def test_overlong_node_id_is_refused(harness: Harness, api: str) -> None:
    _serve_mesh(harness)
    client = await harness.client(api, node_id="n" * 100_000)
    await _ask(client, api, CLUSTER)
    error = await client.closed()
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node.id" in (error.details() or "")
    assert harness.server.clients() == []


async def test_oversized_node_is_refused(harness: Harness, api: str) -> None:
    _serve_mesh(harness)
    client = await harness.client(api)
    client.node.metadata.fields["junk"].string_value = "j" * 200_000
    await _ask(client, api, CLUSTER)
    error = await client.closed()
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node is" in (error.details() or "")


def _type_labels() -> set[str]:
    labels: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("nodemesh_xds_"):
            labels.update(s.labels["type"] for s in family.samples if "type" in s.labels)
    return labels


async def test_metric_labels_never_carry_client_type_urls(harness: Harness) -> None:
    """18,299 delta ACKs with invented type URLs once grew /metrics to 35 MB."""
    _serve_mesh(harness)
    client = await harness.delta()
    for i in range(3):
        await client.request(_invented(i), subscribe=["x"])
        resp = await client.recv()  # "x does not exist", in removed_resources
        await client.ack(resp)
    await wait_until(lambda: harness.metric("nodemesh_xds_acks_total", type="other") == 3)
    assert not any("Invented" in label for label in _type_labels())
    assert harness.metric("nodemesh_xds_pushes_total", type="other") == 3
    await client.close()


async def test_nack_detail_is_truncated_for_storage_logs_and_status(
    harness: Harness, api: str
) -> None:
    _serve_mesh(harness)
    client = await harness.client(api)
    await _wildcard_cds(client, api)
    resp = await client.recv()
    huge = "E" * 2_000_000
    with capture_logs() as logs:
        if api == "sotw":
            await client.nack(resp, "", huge)
        else:
            await client.nack(resp, huge)
        await wait_until(
            lambda: harness.server.clients()[0].types[CLUSTER].last_nack_error is not None,
            what="NACK recorded",
        )
    stored = harness.server.clients()[0].types[CLUSTER].last_nack_error or ""
    assert len(stored) < MAX_DETAIL_CHARS + 100
    assert stored.startswith("E" * 100) and "truncated: 2000000 characters" in stored
    nack_logs = [entry for entry in logs if entry["event"] == "xds_nack"]
    assert nack_logs and all(len(str(entry["error"])) == len(stored) for entry in nack_logs)
    await client.close()
