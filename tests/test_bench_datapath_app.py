"""The datapath benchmark's inputs: the model it hands `nodemesh agent` yields,
through the real file source, translator and planner, the node-Envoy path the
benchmark measures (bench/datapath_app.py); the nginx config; the per-netns
TCP counters and the Envoy listener summary (bench/datapath_measure.py,
bench/datapath_envoy.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from bench.datapath_app import nginx_config, write_model
from bench.datapath_envoy import Hop, sidecar_config, summarize_listener
from bench.datapath_measure import counter_delta, cpu_seconds, net_counters
from nodemesh.ebpf import planner
from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource
from nodemesh.xds.translate import registry
from nodemesh.xds.translate.result import TranslateOptions
from nodemesh.xds.translate.translator import translate

KERNEL = ("10.96.0.10", "10.0.2.2", 8082)
VIA_ENVOY = ("10.96.0.11", "10.0.2.2", 8083)


def _model(tmp_path: Path) -> MeshStore:
    write_model(tmp_path / "model", kernel=KERNEL, via_envoy=VIA_ENVOY)
    store = MeshStore()
    source = FileSource(tmp_path / "model", store)
    source.load()
    assert source.errors == ()
    return store


def test_bench_model_steers_only_the_envoy_service_to_an_original_dst_listener(
    tmp_path: Path,
) -> None:
    model = _model(tmp_path).build()
    plan = planner.plan(model, "bench-node")
    frontends = {(f.vip, f.port): [(b.address, b.port) for b in f.backends] for f in plan.frontends}
    assert frontends == {
        ("10.96.0.10", 80): [("10.0.2.2", 8082)],
        ("10.96.0.11", 80): [("10.0.2.2", 8083)],
    }
    assert [(r.vip, r.port, r.all_clients) for r in plan.redirects] == [("10.96.0.11", 80, True)]

    options = TranslateOptions(listener_address="10.0.0.1", use_original_dst=True)
    result = translate(model, options)
    assert result.errors == ()
    # What the node Envoy holds (proxyless targets are served by name only).
    listeners = list(result.wildcard_resources()[registry.LISTENER].values())
    assert len(listeners) == 1
    listener: Any = listeners[0]
    assert listener.address.socket_address.port_value == plan.redirects[0].proxy_port
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.original_dst"]
    endpoints: Any = result.resources[registry.ENDPOINT]["bench/viaenvoy"]
    address = endpoints.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("10.0.2.2", 8083)


def test_nginx_config_has_one_worker_no_access_log_and_every_port(tmp_path: Path) -> None:
    text = nginx_config(tmp_path, "app", (8080, 8081))
    assert "worker_processes 1;" in text and "access_log off;" in text
    assert "listen 8080 backlog=4096;" in text and "listen 8081 backlog=4096;" in text
    assert 'return 200 "ok\\n";' in text


def test_sidecar_and_node_listeners_summarize_alike() -> None:
    config = sidecar_config([Hop("outbound", 15001, "10.0.3.2", 8080)])
    summary = summarize_listener(config["static_resources"]["listeners"][0])
    assert summary == (
        "listener filters ['listener.original_dst']; network ['network.http_connection_manager']"
        "; http ['http.router']; access logs 0"
    )


def test_net_counters_of_this_namespace_and_their_delta() -> None:
    now = net_counters(os.getpid())
    assert {"ListenOverflows", "TCPSynRetrans", "OutRsts", "tw"} <= now.keys()
    later = {**now, "OutRsts": now["OutRsts"] + 3, "tw": 7}
    assert counter_delta(now, later) == {"OutRsts": 3, "tw": 7}


def test_cpu_seconds_counts_a_process_and_its_children() -> None:
    import subprocess

    script = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    script += "print('busy done', flush=True)\ninput()\n"
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "busy done"
        alone = cpu_seconds([child.pid])
        assert alone >= 0.25  # it burned 0.3 s of CPU; /proc counts in 10 ms ticks
        own = os.times()
        # Without the child, this process would count only its own CPU.
        assert cpu_seconds([os.getpid()]) >= own.user + own.system + alone - 0.05
    finally:
        child.communicate("\n", timeout=30)
