"""The version store: atomic publication, active pointer, rollback, crash leftovers, polling."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from ml_backend.errors import VersionError
from ml_backend.training import versions as V

from .training_helpers import spawn_python, wait_for


def fake_adapter(folder: Path, tag: str = "a") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 64, "tag": tag}))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 1024)
    return folder


@pytest.fixture
def store(tmp_path) -> V.VersionStore:
    return V.VersionStore(tmp_path / "models")


def test_draft_publishes_a_complete_version_with_metadata(store, tmp_path):
    with store.draft("quality", data_hash="abc", settings={"lr": 1e-5}) as draft:
        fake_adapter(draft.adapter_dir)
        draft.metadata["metrics_before"] = {"srcc": 0.5}
        draft.metadata["metrics_after"] = {"srcc": 0.6}
        assert store.list() == []  # invisible while being written
    version = draft.published
    assert version is not None and version.kind == "quality"
    assert V._ID.match(version.id)
    meta = json.loads((store.versions_dir / version.id / "metadata.json").read_text())
    assert meta["data_hash"] == "abc" and meta["metrics_after"] == {"srcc": 0.6} and meta["parent"] is None
    assert meta["settings"] == {"lr": 1e-5} and meta["created"]
    assert (version.adapter_path / "adapter_model.safetensors").stat().st_size == 1024
    assert [v.id for v in store.list()] == [version.id]
    assert not any(p.name.startswith(".") for p in store.versions_dir.iterdir())  # no staging, no lock


def test_failed_draft_leaves_nothing(store):
    with pytest.raises(RuntimeError), store.draft("difficulty") as draft:
        fake_adapter(draft.adapter_dir)
        raise RuntimeError("training blew up")
    assert store.list() == [] and store.leftovers() == []


def test_draft_without_adapter_is_refused(store):
    with pytest.raises(VersionError, match="no adapter"), store.draft("quality"):
        pass
    assert store.list() == []


def test_parent_must_exist_and_kinds_are_checked(store, tmp_path):
    with pytest.raises(VersionError), store.draft("quality", parent="quality-20250101-000000-abcdef"):
        pass
    with pytest.raises(VersionError), store.draft("loudness"):  # type: ignore[arg-type]
        pass


def test_list_filters_by_kind_and_orders_by_creation(store, tmp_path):
    src = fake_adapter(tmp_path / "src")
    q1 = store.publish_folder("quality", src)
    d1 = store.publish_folder("difficulty", src)
    q2 = store.publish_folder("quality", src, parent=q1.id)
    assert [v.id for v in store.list("quality")] == [q1.id, q2.id]
    assert {v.id for v in store.list()} == {q1.id, q2.id, d1.id}
    assert store.get(q2.id).parent == q1.id


def test_activate_rollback_and_reset_to_stock(store, tmp_path):
    src = fake_adapter(tmp_path / "src")
    a = store.publish_folder("quality", src)
    b = store.publish_folder("quality", src)
    assert store.active("quality") is None
    store.activate(a.id)
    store.activate(b.id)
    assert store.active("quality").id == b.id and store.pointer("quality").previous == a.id
    store.rollback("quality")
    assert store.active("quality").id == a.id
    assert store.active("difficulty") is None  # kinds are independent
    store.activate(None, kind="quality")
    assert store.active("quality") is None and store.pointer("quality").previous == a.id
    with pytest.raises(VersionError, match="not difficulty"):
        store.activate(a.id, kind="difficulty")
    with pytest.raises(VersionError):
        store.activate("quality-20990101-000000-000000")
    with pytest.raises(VersionError, match="nothing to roll back"):
        store.rollback("difficulty")


def test_delete_refuses_the_active_version(store, tmp_path):
    src = fake_adapter(tmp_path / "src")
    a = store.publish_folder("quality", src)
    b = store.publish_folder("quality", src)
    store.activate(a.id)
    with pytest.raises(VersionError, match="active"):
        store.delete(a.id)
    store.delete(b.id)
    assert [v.id for v in store.list()] == [a.id]
    assert store.leftovers() == []


def test_watcher_sees_activation_changes(store, tmp_path):
    src = fake_adapter(tmp_path / "src")
    a = store.publish_folder("quality", src)
    b = store.publish_folder("quality", src)
    watcher = store.watcher("quality")
    assert watcher.current is None and watcher.poll() is False
    store.activate(a.id)
    assert watcher.poll() is True and watcher.current == a.id
    assert watcher.poll() is False
    store.activate(b.id)
    other = V.VersionStore(store.model_dir).watcher("quality")  # another process would start like this
    assert other.current == b.id
    assert watcher.poll() is True and watcher.current == b.id
    store.activate(b.id)  # rewritten, same version: not a change
    assert watcher.poll() is False


def test_invalid_folders_are_ignored_and_only_reported(store, tmp_path):
    store.versions_dir.mkdir(parents=True)
    broken = store.versions_dir / "quality-20250101-000000-abcdef"
    broken.mkdir()
    (broken / "metadata.json").write_text("{not json")
    assert store.list() == []
    assert [leftover.path for leftover in store.leftovers()] == [broken]
    assert store.clean_leftovers() == [] and broken.exists()  # maybe hand-made: not deleted by default
    assert len(store.clean_leftovers(include_invalid=True)) == 1 and not broken.exists()


WRITER = r"""
import sys, json
from pathlib import Path
from ml_backend.training.versions import VersionStore
store = VersionStore(sys.argv[1])
with store.draft("quality") as draft:
    draft.adapter_dir.mkdir()
    (draft.adapter_dir / "adapter_config.json").write_text("{}")
    with open(draft.adapter_dir / "adapter_model.safetensors", "wb") as f:
        f.write(b"\1" * 4096)
        f.flush()
        Path(sys.argv[2]).write_text(str(draft.staging))  # tell the test we are half-way
        sys.stdin.read()  # block until killed
"""


def test_writer_killed_mid_write_leaves_an_invisible_cleanable_leftover(store, tmp_path):
    src = fake_adapter(tmp_path / "src")
    old = store.publish_folder("quality", src)
    store.activate(old.id)
    marker = tmp_path / "halfway"
    proc = spawn_python(WRITER, str(store.model_dir), str(marker), stdin=subprocess.PIPE)
    try:
        staging = Path(wait_for(lambda: marker.exists() and marker.read_text(), what="writer half-way"))
        assert staging.is_dir()
        assert store.leftovers() == []  # the writer is alive: in progress, not a leftover
        assert store.clean_leftovers() == [] and staging.is_dir()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [v.id for v in store.list()] == [old.id]  # the half-written version never became visible
    assert store.active("quality").id == old.id
    reasons = {leftover.path: leftover.reason for leftover in store.leftovers()}
    assert staging in reasons and "died" in reasons[staging]
    store.clean_leftovers()
    assert not staging.exists() and store.leftovers() == []
    assert not any(p.name.startswith(".") for p in store.versions_dir.iterdir())
    with store.draft("quality") as draft:  # the store keeps working
        fake_adapter(draft.adapter_dir)
    assert len(store.list()) == 2


FLIPPER = r"""
import sys
from ml_backend.training.versions import VersionStore
store = VersionStore(sys.argv[1])
ids = sys.argv[2:4]
n = 0
while True:
    store.activate(ids[n % 2])
    n += 1
    if n == 200:
        print("ready", flush=True)
"""


def test_pointer_writer_killed_at_any_moment_leaves_a_readable_pointer(store, tmp_path):
    src = fake_adapter(tmp_path / "src")
    a, b = store.publish_folder("quality", src), store.publish_folder("quality", src)
    proc = spawn_python(FLIPPER, str(store.model_dir), a.id, b.id, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert store.active("quality").id in {a.id, b.id}
    for leftover in store.leftovers():  # at most a temp file of the interrupted write
        assert leftover.path.name.startswith(".tmp-")
    store.clean_leftovers()
    assert store.leftovers() == []


def test_stray_pointer_temp_file_is_ignored(store, tmp_path):
    a = store.publish_folder("quality", fake_adapter(tmp_path / "src"))
    store.activate(a.id)
    stray = store.active_dir / ".tmp-quality.json.xyz"
    stray.write_text('{"version": "quality-2025')  # torn write of a crashed process
    assert store.active("quality").id == a.id
    assert [leftover.path for leftover in store.leftovers()] == [stray]
    store.clean_leftovers()
    assert not stray.exists()
