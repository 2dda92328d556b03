"""The file source against what editors, typos and broken entries do
(issue 10 items 4, 5, 6, 7): nothing that serves is withdrawn by a
half-written file, a typo or a bad directory entry, and every document the
source could not use is named in status with its file and line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nodemesh.model.objects import Kind
from nodemesh.model.store import MeshStore
from nodemesh.sources.documents import MAX_OBJECT_BYTES
from nodemesh.sources.files import FileSource
from nodemesh.xds.translate import LISTENER, Translator, validate_envoy_config

CANARY = Path(__file__).resolve().parents[2] / "examples" / "canary"
SPLIT_LISTENER = "default/httpbin-traffic-split/listener"
CEC_LINE = 22  # where the CEC starts in traffic-split.yaml


class FakeClock:
    """The settle window's clock, advanced by the test: a double for time
    itself, so no test waits out a real window."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def canary(tmp_path: Path) -> tuple[MeshStore, FileSource, FakeClock]:
    for path in CANARY.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    store = MeshStore(validators=[validate_envoy_config])
    clock = FakeClock()
    source = FileSource(tmp_path, store, settle_seconds=1.0, clock=clock)
    source.load()
    return store, source, clock


def listeners(store: MeshStore, translator: Translator) -> set[str]:
    return set(translator.translate(store.build()).resources[LISTENER])


def kinds(store: MeshStore) -> dict[Kind, int]:
    model = store.build()
    return {Kind.ENVOY_CONFIG: len(model.envoy_configs), Kind.SERVICE: len(model.services)}


async def test_in_place_rewrite_never_takes_the_listener_down(tmp_path: Path) -> None:
    store, source, clock = canary(tmp_path)
    translator = Translator()
    assert SPLIT_LISTENER in listeners(store, translator)
    path = tmp_path / "traffic-split.yaml"
    content = path.read_bytes()
    # What an editor's in-place save does: truncate, then write in pieces.
    with path.open("wb") as handle:
        handle.flush()
        await source.poll()
        assert SPLIT_LISTENER in listeners(store, translator)
        handle.write(content[: len(content) // 2])
        handle.flush()
        await source.poll()
        assert SPLIT_LISTENER in listeners(store, translator)
        handle.write(content[len(content) // 2 :])
    await source.poll()
    assert SPLIT_LISTENER in listeners(store, translator)
    clock.now += 2  # the write settled
    await source.poll()
    assert SPLIT_LISTENER in listeners(store, translator)
    assert source.errors == ()


async def test_delete_and_recreate_within_the_window_changes_nothing(tmp_path: Path) -> None:
    store, source, clock = canary(tmp_path)
    translator = Translator()
    before = store.build()
    path = tmp_path / "traffic-split.yaml"
    content = path.read_bytes()
    path.unlink()
    assert not await source.poll()
    assert SPLIT_LISTENER in listeners(store, translator)
    path.write_bytes(content)
    await source.poll()
    clock.now += 2
    await source.poll()
    assert store.build().version == before.version
    # Gone for longer than the window: deleted, as the user meant.
    path.unlink()
    await source.poll()
    assert SPLIT_LISTENER in listeners(store, translator)
    clock.now += 2
    assert await source.poll()
    assert SPLIT_LISTENER not in listeners(store, translator)


async def test_a_rewrite_is_read_once_settled(tmp_path: Path) -> None:
    store, source, clock = canary(tmp_path)
    path = tmp_path / "local-backends.yaml"
    path.write_text(
        path.read_text() + "\n---\napiVersion: v1\nkind: Service\n"
        "metadata: {name: extra}\nspec: {ports: [{port: 81}]}\n"
    )
    await source.poll()
    assert "extra" not in {s.name for s in store.build().services}
    clock.now += 2
    await source.poll()
    assert "extra" in {s.name for s in store.build().services}


def test_a_misspelled_kind_keeps_the_object_and_is_reported(tmp_path: Path) -> None:
    store, source, _ = canary(tmp_path)
    translator = Translator()
    assert SPLIT_LISTENER in listeners(store, translator)
    path = tmp_path / "traffic-split.yaml"
    text = path.read_text()
    path.write_text(text.replace("kind: CiliumEnvoyConfig", "kind: CiliumEnvoyConfg"))
    source.load()
    assert SPLIT_LISTENER in listeners(store, translator)
    (problem,) = source.errors
    assert problem.path == str(path) and problem.line == CEC_LINE
    assert "CiliumEnvoyConfg" in problem.reason
    assert "did you mean CiliumEnvoyConfig" in problem.reason
    assert "previous version of CiliumEnvoyConfig default/httpbin-traffic-split" in problem.reason
    assert any("CiliumEnvoyConfg" in line for line in source.problems())


def test_a_wrong_api_version_or_bad_name_keeps_the_object(tmp_path: Path) -> None:
    store, source, _ = canary(tmp_path)
    translator = Translator()
    path = tmp_path / "traffic-split.yaml"
    text = path.read_text()
    path.write_text(text.replace("v2\nkind: CiliumEnvoyConfig", "v1\nkind: CiliumEnvoyConfig"))
    source.load()
    assert SPLIT_LISTENER in listeners(store, translator)
    assert "cilium.io/v1" in source.errors[0].reason
    path.write_text(text.replace("name: httpbin-traffic-split", "name: Traffic_Split"))
    source.load()
    assert SPLIT_LISTENER in listeners(store, translator)
    (problem,) = source.errors
    assert "metadata.name" in problem.reason and problem.line == CEC_LINE
    path.write_text(text)
    source.load()
    assert source.errors == ()


def test_a_foreign_kind_is_listed_in_status(tmp_path: Path) -> None:
    store = MeshStore()
    source = FileSource(tmp_path, store)
    (tmp_path / "cm.yaml").write_text("\n\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    source.load()
    assert source.errors == ()
    (line,) = source.problems()
    assert f"{tmp_path / 'cm.yaml'}:3:" in line and "ConfigMap" in line


def test_a_symlink_loop_is_skipped_and_the_rest_still_read(tmp_path: Path) -> None:
    store, source, _ = canary(tmp_path)
    os.symlink("loop.yaml", tmp_path / "loop.yaml")
    (tmp_path / "more.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: more}\nspec: {ports: [{port: 80}]}\n"
    )
    source.load()
    assert "more" in {s.name for s in store.build().services}
    (problem,) = source.errors
    assert problem.path == str(tmp_path / "loop.yaml")
    assert "symbolic links" in problem.reason and "skipped" in problem.reason
    assert source.not_ready_reasons() == []


def test_an_oversized_object_is_refused_and_its_previous_version_kept(tmp_path: Path) -> None:
    store, source, _ = canary(tmp_path)
    translator = Translator()
    path = tmp_path / "traffic-split.yaml"
    text = path.read_text()
    bulk = ("      " + "y" * 1000 + "\n") * (MAX_OBJECT_BYTES // 1000 + 10)
    name = "  name: httpbin-traffic-split\n"
    huge = text.replace(name, name + "  annotations:\n    big: |\n" + bulk)
    path.write_text(huge)
    source.load()
    assert SPLIT_LISTENER in listeners(store, translator)
    (problem,) = source.errors
    assert "objects are limited to 1.5 MiB" in problem.reason and problem.line == CEC_LINE


def test_yaml_errors_and_documents_keep_their_file_lines(tmp_path: Path) -> None:
    store = MeshStore()
    source = FileSource(tmp_path, store)
    good = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n"
    (tmp_path / "a.yaml").write_text(good + "---\n" + good.replace("{name: a}", "{name: [b"))
    source.load()
    (problem,) = source.errors
    assert problem.line is not None and problem.line >= 7
    (tmp_path / "a.yaml").write_text(good + "---\n# note\n---\napiVersion: v1\nkind: Nope\n")
    source.load()
    (line,) = source.problems()
    assert ":8:" in line and "Nope" in line
