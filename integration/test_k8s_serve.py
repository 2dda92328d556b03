"""`nodemesh serve --kubernetes` as a process against the API server double:
the model comes from the cluster, conditions go back to it, and an API server
outage leaves the last config serving while readiness says why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.apiserver_double import ApiServerDouble, find_type
from integration.k8s_support import admin_get
from integration.local_mesh import free_port, serve_process
from nodemesh.cmd.demo.run import EXAMPLES
from tests.support.polling import wait_until_async

CEC = find_type("cilium.io", "v2", "ciliumenvoyconfigs")
assert CEC


async def until(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll a blocking predicate (it makes HTTP calls) off the event loop."""
    return await wait_until_async(
        lambda: asyncio.to_thread(predicate), what=what, timeout=timeout, interval=0.2
    )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ApiServerDouble, str]]:
    double = ApiServerDouble(bookmark_interval=0.5)
    for path in sorted(Path(EXAMPLES).glob("*.yaml")):
        double.store.load(d for d in yaml.safe_load_all(path.read_text()) if d)
    await double.start()
    admin = f"127.0.0.1:{free_port()}"
    try:
        with serve_process(
            tmp_path / "serve.log",
            *("--kubernetes", "--k8s-server", double.url, "--admin", admin),
            *("--xds-address", f"127.0.0.1:{free_port()}"),
        ):
            yield double, admin
    finally:
        await double.stop()


def conditions(double: ApiServerDouble, name: str) -> dict[str, str]:
    obj = double.store.get(CEC, "default", name)
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions", [])}


async def test_model_from_the_cluster_conditions_back_and_outage_keeps_serving(
    served: tuple[ApiServerDouble, str],
) -> None:
    double, admin = served
    listeners = "/debug/config_dump?node=n1&type=listeners"

    def has_listener() -> bool:
        code, dump = admin_get(admin, listeners)
        return code == 200 and "default/httpbin-traffic-split/listener" in dump.get("LDS", {})

    await until(has_listener, "the article's listener, from the API server")
    await until(
        lambda: conditions(double, "httpbin-traffic-split").get("Accepted") == "True",
        "Accepted=True on the article's CEC",
    )
    assert admin_get(admin, "/readyz")[0] == 200

    await double.stop()  # the API server goes away
    _, body = await until(
        lambda: (lambda r: r if r[0] == 503 else None)(admin_get(admin, "/readyz")),
        "readiness to report the API server outage",
    )
    assert any(reason.startswith("kubernetes: ") for reason in body["reasons"]), body
    assert has_listener(), "the last model keeps serving while the API server is gone"
