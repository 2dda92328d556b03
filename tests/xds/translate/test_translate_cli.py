"""`nodemesh translate`: manifests in, Envoy resources and problems out,
exit status 1 when anything was rejected."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

CANARY = Path(__file__).resolve().parents[3] / "examples" / "canary"


def _nodemesh(*args: str) -> subprocess.CompletedProcess[str]:
    # A process of its own, as users run it (logging set-up is process-wide).
    return subprocess.run(
        [sys.executable, "-m", "nodemesh.cmd.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_canary_translates_with_exit_zero() -> None:
    result = _nodemesh("translate", "--source-dir", str(CANARY), "--type", "routes", "-o", "json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["errors"] == []
    route = out["resources"]["RouteConfiguration"][
        "default/httpbin-traffic-split/httpbin-listener-route"
    ]
    weighted = route["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]
    assert [c["weight"] for c in weighted["clusters"]] == [90, 10]
    assert list(out["resources"]) == ["RouteConfiguration"]


def test_rejected_config_exits_one_and_names_the_field(tmp_path: Path) -> None:
    source = tmp_path / "canary"
    shutil.copytree(CANARY, source)
    split = source / "traffic-split.yaml"
    docs = list(yaml.safe_load_all(split.read_text()))
    for doc in docs:
        if doc and doc.get("kind") == "CiliumEnvoyConfig":
            doc["spec"]["resources"][0]["@type"] = "type.googleapis.com/envoy.config.route.v3.Nope"
    split.write_text(yaml.safe_dump_all(docs))
    result = _nodemesh("translate", "--source-dir", str(source))
    assert result.returncode == 1, result.stderr
    out = yaml.safe_load(result.stdout)
    assert any("spec.resources[0]" in e and "Nope" in e for e in out["errors"])
