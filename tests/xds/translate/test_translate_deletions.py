"""Issue 10 item 16: deleting is deleting, and status says what is in effect
(docs/semantics.md). Through the real file source, store and translator."""

from __future__ import annotations

import shutil
from pathlib import Path

from nodemesh.model.objects import Kind, ObjectError
from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource
from nodemesh.xds.translate import ENDPOINT, LISTENER, Translation, Translator
from nodemesh.xds.translate import validate_envoy_config as validate

CANARY = Path(__file__).resolve().parents[3] / "examples" / "canary"
LISTENER_NAME = "default/httpbin-traffic-split/listener"


def _setup(tmp_path: Path) -> tuple[MeshStore, FileSource, Translator, Translation]:
    for path in CANARY.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    store = MeshStore(validators=[validate])
    source = FileSource(tmp_path, store)
    source.load()
    translator = Translator()
    translation = translator.translate(store.build())
    assert translation.errors == () and LISTENER_NAME in translation.resources[LISTENER]
    return store, source, translator, translation


def _cec_errors(errors: tuple[ObjectError, ...]) -> list[ObjectError]:
    return [e for e in errors if e.ref.kind is Kind.ENVOY_CONFIG]


def test_deleting_backend_services_is_reported_as_503s_not_as_serving(tmp_path: Path) -> None:
    store, source, translator, _ = _setup(tmp_path)
    (tmp_path / "local-backends.yaml").unlink()
    source.load()
    translation = translator.translate(store.build())
    # The Services and their endpoints are gone: what was deleted is deleted.
    for name in ("default/httpbin-v1", "default/httpbin-v2"):
        assignment = translation.resources[ENDPOINT].get(name)
        assert assignment is None or not getattr(assignment, "endpoints")  # noqa: B009
    errors = _cec_errors(translation.errors)
    assert errors and all(e.kept_previous for e in errors)
    # ...and status says which routes of the version still in effect fail.
    for error in errors:
        assert "answer 503" in error.reason
        assert "default/httpbin-v1" in error.reason and "default/httpbin-v2" in error.reason


def test_deleting_the_redirected_service_takes_the_cec_out_of_effect(tmp_path: Path) -> None:
    store, source, translator, _ = _setup(tmp_path)
    path = tmp_path / "httpbin-deployment.yaml"
    text = path.read_text()
    path.write_text(text[: text.index("---\napiVersion: v1\nkind: Service")])
    source.load()
    model = store.build()
    translation = translator.translate(model)
    assert LISTENER_NAME not in translation.resources[LISTENER]
    assert model.envoy_configs == ()
    (error,) = _cec_errors(model.errors)
    # Not "previous version still serving": nothing of it is.
    assert error.field == "spec.services[0].name" and not error.kept_previous
    assert "does not exist" in error.reason
    path.write_text(text)
    source.load()
    translation = translator.translate(store.build())
    assert LISTENER_NAME in translation.resources[LISTENER] and translation.errors == ()
