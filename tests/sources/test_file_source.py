"""The file source: loading, hot reload, broken and deleted files."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from nodemesh.model.objects import Kind, ServiceName
from nodemesh.model.snapshot import MeshModel
from nodemesh.model.store import MeshStore
from nodemesh.sources.files import FileSource

CANARY = Path(__file__).resolve().parents[2] / "examples" / "canary"


def service_yaml(name: str, port: int = 80) -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  ports:
  - port: {port}
"""


def services_of(store: MeshStore) -> dict[str, int]:
    model = store.build()
    return {s.name: model.services[s].ports[0].port for s in model.services}


def test_loads_the_canary_example(tmp_path: Path) -> None:
    for path in CANARY.glob("*.yaml"):
        shutil.copy(path, tmp_path)
    store = MeshStore()
    source = FileSource(tmp_path, store)
    assert source.load()
    model = store.build()
    assert source.errors == () and source.warnings == ()
    assert model.errors == ()
    assert sorted(s.name for s in model.services) == ["httpbin", "httpbin-v1", "httpbin-v2"]
    assert len(model.deployments) == 2 and len(model.endpoint_slices) == 4
    assert [c.ref.kind for c in model.envoy_configs] == [Kind.ENVOY_CONFIG]
    assert len(model.redirects) == 1
    assert not source.load()  # nothing changed


def test_broken_yaml_keeps_last_good_content(tmp_path: Path) -> None:
    store = MeshStore()
    source = FileSource(tmp_path, store)
    good = tmp_path / "svc.yaml"
    good.write_text(service_yaml("web") + "---\n" + service_yaml("db", 5432))
    source.load()
    assert services_of(store) == {"web": 80, "db": 5432}
    good.write_text(service_yaml("web", 81) + "  - port: [unclosed\n")
    source.load()
    (problem,) = source.errors
    assert problem.path == str(good)
    # The scanner notices at the end of the file; the reason names where the
    # unclosed sequence began.
    assert problem.line == 9
    assert "invalid YAML" in problem.reason and "from line 8" in problem.reason
    assert services_of(store) == {"web": 80, "db": 5432}
    good.write_text(service_yaml("web", 81))
    source.load()
    assert source.errors == ()
    assert services_of(store) == {"web": 81}


def test_non_object_document_is_a_file_error(tmp_path: Path) -> None:
    store = MeshStore()
    source = FileSource(tmp_path, store)
    (tmp_path / "a.yaml").write_text(service_yaml("web") + "---\n- just\n- a list\n")
    source.load()
    (problem,) = source.errors
    assert "document 2 is not a mapping" in problem.reason
    assert services_of(store) == {}


def test_deleting_a_file_deletes_its_objects(tmp_path: Path) -> None:
    store = MeshStore()
    source = FileSource(tmp_path, store)
    (tmp_path / "a.yaml").write_text(service_yaml("web"))
    (tmp_path / "b.yml").write_text(service_yaml("db"))
    (tmp_path / "notes.txt").write_text(service_yaml("ignored"))
    (tmp_path / ".a.yaml.swp").write_text(service_yaml("ignored-too"))
    source.load()
    assert services_of(store) == {"web": 80, "db": 80}
    (tmp_path / "a.yaml").unlink()
    assert source.load()
    assert services_of(store) == {"db": 80}


def test_object_in_two_files_last_file_wins_with_warning(tmp_path: Path) -> None:
    store = MeshStore()
    source = FileSource(tmp_path, store)
    (tmp_path / "a.yaml").write_text(service_yaml("web", 80))
    (tmp_path / "b.yaml").write_text(service_yaml("web", 81))
    source.load()
    assert services_of(store) == {"web": 81}
    (warning,) = source.warnings
    assert warning.path == str(tmp_path / "b.yaml")
    assert "Service default/web" in warning.reason and "a.yaml" in warning.reason
    (tmp_path / "b.yaml").write_text(service_yaml("web", 82) + "---\n" + service_yaml("web", 83))
    source.load()
    assert services_of(store) == {"web": 83}
    assert [w.reason.split(" is also ")[1] for w in source.warnings] == [
        f"in {tmp_path / 'a.yaml'}; this one wins",
        "earlier in this file; this one wins",
    ]


def test_unknown_kinds_and_nameless_objects(tmp_path: Path) -> None:
    store = MeshStore()
    source = FileSource(tmp_path, store)
    (tmp_path / "a.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {}\n---\n" + service_yaml("web")
    )
    source.load()
    (warning,) = source.warnings
    assert "document 1" in warning.reason and "ConfigMap" in warning.reason
    (problem,) = source.errors
    assert "document 2" in problem.reason and "metadata.name" in problem.reason
    assert services_of(store) == {"web": 80}


def test_object_errors_reach_the_model(tmp_path: Path) -> None:
    store = MeshStore()
    source = FileSource(tmp_path, store)
    (tmp_path / "a.yaml").write_text(service_yaml("web", 0))
    source.load()
    (error,) = store.build().errors
    assert (str(error.ref), error.field) == ("Service default/web", "spec.ports[0].port")


def test_missing_directory_keeps_content(tmp_path: Path) -> None:
    directory = tmp_path / "manifests"
    directory.mkdir()
    store = MeshStore()
    source = FileSource(directory, store)
    (directory / "a.yaml").write_text(service_yaml("web"))
    source.load()
    shutil.rmtree(directory)
    assert not source.load()
    (problem,) = source.errors
    assert problem.path == str(directory) and "cannot list" in problem.reason
    assert services_of(store) == {"web": 80}


async def wait_for_model(store: MeshStore, check: Callable[[MeshModel], bool]) -> MeshModel:
    async def watch() -> MeshModel:
        async for model in store.updates(debounce=0.02):
            if check(model):
                return model
        raise AssertionError("updates() ended")

    return await asyncio.wait_for(watch(), timeout=30)


async def test_hot_reload_while_running(tmp_path: Path) -> None:
    store = MeshStore()
    source = FileSource(tmp_path, store, poll_interval=0.05)
    path = tmp_path / "svc.yaml"
    path.write_text(service_yaml("web"))
    task = asyncio.create_task(source.run(), name="file-source")
    try:
        web = ServiceName("default", "web")
        await wait_for_model(store, lambda m: web in m.services)
        path.write_text(service_yaml("web", 8080))
        model = await wait_for_model(store, lambda m: m.services[web].ports[0].port == 8080)
        assert model.errors == ()
        path.write_text("kind: [broken\n")
        for _ in range(600):
            if source.errors:
                break
            await asyncio.sleep(0.05)
        assert source.errors and source.errors[0].line == 2
        assert store.build().services[web].ports[0].port == 8080
        path.unlink()
        await wait_for_model(store, lambda m: web not in m.services)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_unreadable_content_is_that_files_problem_only(tmp_path: Path) -> None:
    store = MeshStore()
    source = FileSource(tmp_path, store)
    (tmp_path / "a.yaml").write_text(service_yaml("web"))
    (tmp_path / "b.yaml").write_bytes(b"kind: \xff\xfe\n")
    source.load()
    (problem,) = source.errors
    assert problem.path == str(tmp_path / "b.yaml") and "UTF-8" in problem.reason
    assert services_of(store) == {"web": 80}


def test_yaml_error_is_logged_with_file_and_line(tmp_path: Path) -> None:
    store = MeshStore()
    source = FileSource(tmp_path, store)
    path = tmp_path / "a.yaml"
    path.write_text(service_yaml("web") + "  bad: [\n")
    with structlog.testing.capture_logs() as logs:
        source.load()
        store.build()
    (event,) = [e for e in logs if e["event"] == "file_source_parse_error"]
    assert event["file"] == str(path) and event["line"] == 9
    assert event["log_level"] == "error"


def test_rejected_object_is_logged_once(tmp_path: Path) -> None:
    store = MeshStore()
    source = FileSource(tmp_path, store)
    (tmp_path / "a.yaml").write_text(service_yaml("web", 0))
    with structlog.testing.capture_logs() as logs:
        source.load()
        store.build()
        (tmp_path / "b.yaml").write_text(service_yaml("db"))
        source.load()
        store.build()
    rejected = [e for e in logs if e["event"] == "object_rejected"]
    assert [(e["object"], e["field"]) for e in rejected] == [
        ("Service default/web", "spec.ports[0].port")
    ]
