"""The version store: trained adapters under ``MODEL_DIR/versions/<id>/`` and which one is active.

Layout::

    MODEL_DIR/versions/<id>/adapter/...        PEFT adapter files
    MODEL_DIR/versions/<id>/metadata.json      id, kind, parent, data hash, settings, metrics, created
    MODEL_DIR/versions/.staging-<id>/          a version being written (invisible to readers)
    MODEL_DIR/versions/.staging-<id>.lock      flock held by its writer while it writes
    MODEL_DIR/active/<kind>.json               {"version": id or null, "previous": ..., "activated_at": ...}

Why this shape: a version is written completely into a staging folder on the same
filesystem and published with one ``os.rename``, so a reader sees all of it or none of
it. The writer holds a flock next to the staging folder; when it dies mid-write the
kernel drops the lock, and :meth:`VersionStore.leftovers` can tell an abandoned
staging folder from one still being written. The active pointer is one small JSON per
kind (quality adapter for f, difficulty adapter for g), replaced atomically, so a
serving process can poll it with one ``stat`` and switch adapters without a restart.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VersionError
from ..settings import MODEL_KINDS, ModelKind
from . import _files

log = logging.getLogger(__name__)

Kind = ModelKind
KINDS = MODEL_KINDS
ADAPTER_DIR = "adapter"
METADATA_FILE = "metadata.json"
STAGING_PREFIX = ".staging-"
_ID = re.compile(r"^(quality|difficulty)-\d{8}-\d{6}-[0-9a-f]{6}$")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_version_id(kind: Kind, when: dt.datetime | None = None) -> str:
    """``<kind>-YYYYmmdd-HHMMSS-<6 hex>``: sortable by time, unique, safe in URLs and as a model_version."""
    when = when or _now()
    return f"{kind}-{when:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def looks_like_version_id(text: str) -> bool:
    return bool(_ID.match(text))


def _check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise VersionError(f"unknown version kind {kind!r}; expected one of {KINDS}")
    return kind


@dataclass(frozen=True)
class VersionInfo:
    """A complete, published version."""

    id: str
    kind: Kind
    path: Path
    metadata: dict[str, Any]

    @property
    def adapter_path(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def parent(self) -> str | None:
        return self.metadata.get("parent")

    @property
    def created(self) -> str:
        return self.metadata.get("created", "")


@dataclass(frozen=True)
class ActivePointer:
    """Contents of ``active/<kind>.json``: None means the stock model (no trained version)."""

    kind: Kind
    version: str | None
    previous: str | None = None
    activated_at: str | None = None


@dataclass
class Draft:
    """A version being written: fill ``adapter_dir`` and ``metadata``; the store publishes it on success."""

    id: str
    kind: Kind
    staging: Path
    metadata: dict[str, Any]
    published: VersionInfo | None = field(default=None, init=False)

    @property
    def adapter_dir(self) -> Path:
        return self.staging / ADAPTER_DIR


@dataclass(frozen=True)
class Leftover:
    path: Path
    reason: str


class VersionStore:
    """Versions and active pointers of one ``MODEL_DIR``. Cheap to construct; holds no open files."""

    def __init__(self, model_dir: str | os.PathLike) -> None:
        self.model_dir = Path(model_dir)
        self.versions_dir = self.model_dir / "versions"
        self.active_dir = self.model_dir / "active"

    # --- writing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def draft(self, kind: Kind, *, parent: str | None = None, data_hash: str | None = None,
              settings: dict[str, Any] | None = None, **extra: Any) -> Iterator[Draft]:
        """Write a new version: ``with store.draft("quality") as d: model.save_pretrained(d.adapter_dir)``.

        On a clean exit the metadata is written, everything is fsynced and the staging
        folder is renamed to ``versions/<id>`` (``d.published`` then holds it). On an
        exception the staging folder is removed; on a crash it stays behind as a leftover.
        """
        kind = _check_kind(kind)
        if parent is not None:
            self.get(parent)  # the parent must exist
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        version_id = new_version_id(kind)
        lock_path = self.versions_dir / f"{STAGING_PREFIX}{version_id}.lock"
        lock_fd = _files.try_lock(lock_path)
        if lock_fd is None:  # practically impossible: ids carry 24 random bits
            raise VersionError(f"version id {version_id} is already being written")
        staging = self.versions_dir / f"{STAGING_PREFIX}{version_id}"
        try:
            staging.mkdir()
            metadata = {"id": version_id, "kind": kind, "parent": parent, "data_hash": data_hash,
                        "settings": settings or {}, "metrics_before": None, "metrics_after": None,
                        "created": _now().isoformat(timespec="microseconds"), **extra}
            draft = Draft(version_id, kind, staging, metadata)
            try:
                yield draft
                draft.published = self._publish(draft)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        finally:
            lock_path.unlink(missing_ok=True)
            os.close(lock_fd)

    def _publish(self, draft: Draft) -> VersionInfo:
        if not (draft.adapter_dir / "adapter_config.json").is_file():
            raise VersionError(f"version {draft.id}: no adapter was written to {draft.adapter_dir} "
                               "(expected adapter_config.json)")
        if draft.metadata.get("id") != draft.id or draft.metadata.get("kind") != draft.kind:
            raise VersionError("a draft's id and kind cannot be changed")
        _files.atomic_write_json(draft.staging / METADATA_FILE, draft.metadata)
        _files.fsync_tree(draft.staging)
        final = self.versions_dir / draft.id
        os.rename(draft.staging, final)
        _files.fsync_dir(self.versions_dir)
        log.info("published version %s", draft.id)
        return self.get(draft.id)

    def publish_folder(self, kind: Kind, adapter_source: str | os.PathLike, **metadata: Any) -> VersionInfo:
        """Copy an existing adapter folder in as a new version (imports, tests)."""
        with self.draft(kind, **metadata) as draft:
            shutil.copytree(adapter_source, draft.adapter_dir)
        assert draft.published is not None
        return draft.published

    # --- reading ---------------------------------------------------------------------------------

    def _load(self, path: Path) -> VersionInfo | None:
        """The version in ``path`` if it is complete and consistent, else None."""
        if not _ID.match(path.name) or not path.is_dir():
            return None
        try:
            metadata = _files.read_json(path / METADATA_FILE)
        except (OSError, ValueError):
            return None
        if not isinstance(metadata, dict) or metadata.get("id") != path.name or metadata.get("kind") not in KINDS:
            return None
        if not (path / ADAPTER_DIR / "adapter_config.json").is_file():
            return None
        return VersionInfo(path.name, metadata["kind"], path, metadata)

    def list(self, kind: Kind | None = None) -> list[VersionInfo]:
        """Complete versions, oldest first; staging folders and broken folders are skipped."""
        if not self.versions_dir.is_dir():
            return []
        found = [v for p in self.versions_dir.iterdir() if (v := self._load(p)) is not None]
        if kind is not None:
            found = [v for v in found if v.kind == _check_kind(kind)]
        return sorted(found, key=lambda v: (v.created, v.id))

    def get(self, version_id: str) -> VersionInfo:
        if not _ID.match(version_id or ""):
            raise VersionError(f"{version_id!r} is not a version id")
        version = self._load(self.versions_dir / version_id)
        if version is None:
            raise VersionError(f"version {version_id} does not exist or is incomplete in {self.versions_dir}")
        return version

    # --- the active pointer ----------------------------------------------------------------------

    def _pointer_path(self, kind: Kind) -> Path:
        return self.active_dir / f"{_check_kind(kind)}.json"

    def pointer(self, kind: Kind) -> ActivePointer:
        path = self._pointer_path(kind)
        try:
            data = _files.read_json(path)
        except FileNotFoundError:
            return ActivePointer(kind, None)
        except (OSError, ValueError) as exc:  # cannot happen with atomic writes; say so loudly if it does
            raise VersionError(f"active pointer {path} is unreadable: {exc}") from exc
        return ActivePointer(kind, data.get("version"), data.get("previous"), data.get("activated_at"))

    def active(self, kind: Kind) -> VersionInfo | None:
        """The active version of ``kind``, or None for the stock model."""
        pointer = self.pointer(kind)
        return None if pointer.version is None else self.get(pointer.version)

    def activate(self, version_id: str | None, *, kind: Kind | None = None) -> ActivePointer:
        """Point ``kind``'s active version at ``version_id`` (None: back to the stock model).

        Any published version can be activated, older ones included: this is rollback.
        """
        if version_id is not None:
            version = self.get(version_id)
            if kind is not None and kind != version.kind:
                raise VersionError(f"version {version_id} is a {version.kind} version, not {kind}")
            kind = version.kind
        if kind is None:
            raise VersionError("say which kind to reset to the stock model")
        kind = _check_kind(kind)
        fd = _files.lock_blocking(self.active_dir / ".lock")
        try:
            current = self.pointer(kind)
            pointer = ActivePointer(kind, version_id,
                                    previous=current.version if current.version != version_id else current.previous,
                                    activated_at=_now().isoformat(timespec="seconds"))
            _files.atomic_write_json(self._pointer_path(kind), {
                "kind": kind, "version": pointer.version, "previous": pointer.previous,
                "activated_at": pointer.activated_at})
        finally:
            os.close(fd)
        log.info("active %s version: %s (was %s)", kind, version_id, current.version)
        return pointer

    def rollback(self, kind: Kind) -> ActivePointer:
        """Re-activate the version that was active before the current one."""
        pointer = self.pointer(kind)
        if pointer.version is None and pointer.previous is None:
            raise VersionError(f"nothing to roll back: no {kind} version was ever activated")
        return self.activate(pointer.previous, kind=kind)

    def watcher(self, kind: Kind) -> ActiveWatcher:
        return ActiveWatcher(self, kind)

    # --- leftovers -------------------------------------------------------------------------------

    def leftovers(self) -> builtins.list[Leftover]:  # in this class body `list` is VersionStore.list
        """Abandoned staging folders, stray temp files and folders that are not complete versions.

        A staging folder whose writer still holds its lock is in progress, not a leftover.
        """
        found: list[Leftover] = []
        if self.versions_dir.is_dir():
            for path in sorted(self.versions_dir.iterdir()):
                if path.name.startswith(STAGING_PREFIX):
                    if path.name.endswith(".lock"):
                        if not (self.versions_dir / path.name[:-5]).exists() and not _files.is_locked(path):
                            found.append(Leftover(path, "lock file of a finished or dead writer"))
                    elif not _files.is_locked(self.versions_dir / f"{path.name}.lock"):
                        found.append(Leftover(path, "staging folder of a writer that died"))
                elif self._load(path) is None:
                    found.append(Leftover(path, "not a complete version (no valid metadata.json or adapter)"))
        if self.active_dir.is_dir():
            for path in self.active_dir.glob(f"{_files.TEMP_PREFIX}*"):
                found.append(Leftover(path, "temp file of an interrupted pointer write"))
        return found

    def clean_leftovers(self, *, include_invalid: bool = False) -> builtins.list[Leftover]:
        """Remove abandoned staging folders and temp files; folders that merely fail validation
        are only reported unless ``include_invalid`` (they may be someone's hand-made copy)."""
        removed = []
        for leftover in self.leftovers():
            path = leftover.path
            if not include_invalid and not path.name.startswith((STAGING_PREFIX, _files.TEMP_PREFIX)):
                log.warning("not removing %s: %s", path, leftover.reason)
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                if path.name.startswith(STAGING_PREFIX):
                    Path(f"{path}.lock").unlink(missing_ok=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(leftover)
        return removed

    def delete(self, version_id: str) -> None:
        """Remove a version that is not active (rename away first, so readers never see half of it)."""
        version = self.get(version_id)
        if self.pointer(version.kind).version == version_id:
            raise VersionError(f"version {version_id} is active; activate another one first")
        doomed = self.versions_dir / f"{STAGING_PREFIX}deleted-{version_id}"
        os.rename(version.path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


class ActiveWatcher:
    """Tells a serving process, with one ``stat`` per call, when the active version of a kind changed.

    Every pointer write is a new file (temp + ``os.replace``), so inode, size or mtime
    change; only then is the file read.
    """

    def __init__(self, store: VersionStore, kind: Kind) -> None:
        self.store = store
        self.kind = _check_kind(kind)
        self._path = store._pointer_path(self.kind)
        self._stamp: tuple[int, int, int] | None = None
        self.current: str | None = None
        self.poll()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def poll(self) -> bool:
        """Refresh; True when the active version id differs from the last poll."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        version = self.store.pointer(self.kind).version
        changed = version != self.current
        self.current = version
        return changed
