"""The golden canary model is what the real pipeline builds from
examples/canary: the file source and model store parse the article's YAML,
and its translation equals the golden one (but for the allocated proxy port
and the model version)."""

from __future__ import annotations

import json
from pathlib import Path

from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource
from nodemesh.xds.translate import translate, validate_envoy_config
from tests.xds.translate.translate_cases import render

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).parent / "golden" / "canary.json"


def test_examples_canary_translates_to_the_golden_resources() -> None:
    store = MeshStore(validators=[validate_envoy_config])
    FileSource(ROOT / "examples" / "canary", store, source_name="test").load()
    model = store.build()
    assert model.errors == ()
    [redirect] = model.redirects
    rendered = render(translate(model))
    golden = json.loads(GOLDEN.read_text())
    listener = golden["resources"]["Listener"][redirect.listener]
    listener["address"]["socket_address"]["port_value"] = redirect.proxy_port
    golden["model_version"] = model.version
    assert rendered == golden
