"""The selection features the backend keeps per task media, for ordering without re-decoding.

Features are stored per **media key** (the same key the backend store uses for scores:
the task's video reference, made absolute for Label Studio paths) under
``MDSVQA_CACHE_DIR/features/<store folder>/``, one ``<sha256 of the key>_features.npz``
each (the reference layout ``mdsvqa select`` reads; loading and validation reuse
``selection.features.load_features``). The folder is named after the extractor identity
(``ml_backend.features.identity``): ``clip:RN101:openai`` by default (every frame),
``siglip2:<model>``, or ``vision:<fingerprint>`` (the base model's vision tower: adapters
never touch it, so retrained versions share features). Each file records the identity
too; files of a folder written before that are taken as the folder's.

Three ways features get there:

- while the backend scores: each result carries its features (CLIP / SigLIP2 from the
  scorer's own decode, or the tower during generation) and the scoring queue hands them
  to ``FeatureRecorder.record`` with its job's media key;
- ``mdsvqa score-project`` does the same;
- tasks scored earlier (their score came from a cache, so the model never saw them) get
  theirs when an ordering pass needs them (``FrameFeatureComputer``: one decode with the
  every-frame sink; ``VisionFeatureComputer`` for 'vision').
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from selection.features import features_path
from selection.features import save_features as write_features

from ..errors import MdsVqaError
from ..features.identity import extractor_identity, store_dirname, vision_identity
from ..labelstudio.client import Connection
from ..labelstudio.media import MediaResolver, describe

log = logging.getLogger(__name__)


def feature_identity(spec: Any, video_settings: Any) -> str:
    """Store folder of the vision-tower features (``vision-<fingerprint>``; not the adapter)."""
    return store_dirname(vision_identity(spec, video_settings))


def key_stem(key: str) -> str:
    """File stem of a media key (hex: no clashes, nothing unsafe in a file name)."""
    return hashlib.sha256(key.encode()).hexdigest()[:40]


@dataclass
class LoadedTaskFeatures:
    frames: dict[str, np.ndarray]  # media key -> (n, dim) float32
    problems: dict[str, str]  # media key -> why none can be used


class FeatureStore:
    """Features of one extractor, by media key, in ``directory``."""

    def __init__(self, directory: str | Path, extractor: str | None) -> None:
        self.extractor = extractor  # identity recorded in (and required of) every file; None: read-only, any one
        self.directory = Path(directory)

    @classmethod
    def under(cls, root: str | Path, extractor: str) -> FeatureStore:
        """The store of ``extractor`` in the features root (``MDSVQA_CACHE_DIR/features``)."""
        return cls(Path(root) / store_dirname(extractor), extractor)

    @classmethod
    def for_settings(cls, root: str | Path, settings: Any, spec: Any = None) -> FeatureStore:
        return cls.under(root, extractor_identity(settings, spec))

    @property
    def identity(self) -> str:
        return self.directory.name

    def path(self, key: str) -> Path:
        return features_path(self.directory, key_stem(key))

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, frames: np.ndarray) -> None:
        if self.extractor is None:
            raise ValueError(f"{self.directory}: a store opened without its extractor is read-only")
        write_features(self.directory, key_stem(key), frames, extractor=self.extractor)

    def load(self, keys: Iterable[str]) -> LoadedTaskFeatures:
        """Every key's frames, or the reason it has none (missing, unreadable, other dimension...).

        Raises ``MixedExtractorsError`` when a file records another extractor than the store's.
        """
        from selection.features import load_features

        unique = list(dict.fromkeys(keys))
        by_stem = {key_stem(key): key for key in unique}
        loaded = load_features(self.directory, list(by_stem))
        if self.extractor is not None:
            loaded.extractors[f"(the store {self.directory.name})"] = self.extractor
        loaded.extractor(unrecorded=self.extractor)  # older files of this folder are the folder's
        frames = {by_stem[stem]: array for stem, array in zip(loaded.names, loaded.frames)}
        problems = {by_stem[problem.name]: problem.reason for problem in loaded.problems}
        return LoadedTaskFeatures(frames, problems)


# -- recording while scoring ---------------------------------------------------------------------

class FeatureRecorder:
    """Keeps the features scoring results carry, under the media key of the job that asked.

    ``attach`` makes a scorer put its features on every result (``ScoreResult.features``,
    from the same decode) and opens the store of that scorer's extractor; the scoring queue
    hands each result's features here with the job's media key (``record``).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.store: FeatureStore | None = None
        self.recorded = 0

    def attach(self, scorer: Any) -> Any:
        """Make ``scorer`` (a DifficultyScorer) carry features on its results; others are left alone."""
        spec, settings = getattr(scorer, "spec", None), getattr(scorer, "settings", None)
        if spec is None or settings is None or not hasattr(scorer, "with_features"):
            log.info("scorer %s has no features to record", type(scorer).__name__)
            return scorer
        self.store = FeatureStore.for_settings(self.root, settings, spec)
        scorer.with_features = True
        return scorer

    def attaching(self, factory: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: self.attach(factory())

    def record(self, key: str, embedding: np.ndarray) -> None:
        """Store one video's features under ``key``. Never raises: storing must not fail the scoring."""
        store = self.store
        if store is None:
            return
        try:
            store.put(key, embedding)
            self.recorded += 1
        except Exception:
            log.exception("storing the features of %s failed", describe(key))


# -- features for an ordering pass ---------------------------------------------------------------

@dataclass(frozen=True)
class FeatureRequest:
    key: str  # media key
    ref: str  # the reference as in the task data
    task_id: int


class FeatureComputer(Protocol):
    def compute(self, requests: Sequence[FeatureRequest], store: FeatureStore) -> dict[str, str]:
        """Store features for as many requests as possible; return media key -> why not, for the rest."""


class FeatureSource:
    """Features for a pass: the store first, the computer (if any) for what the store lacks."""

    def __init__(self, store: FeatureStore, computer: FeatureComputer | None = None) -> None:
        self.store = store
        self.computer = computer
        self.computed = 0

    def features(self, requests: Sequence[FeatureRequest]) -> LoadedTaskFeatures:
        unique = list({request.key: request for request in requests}.values())
        missing = [request for request in unique if not self.store.has(request.key)]
        failed: dict[str, str] = {}
        if missing and self.computer is not None:
            log.info("computing vision features for %d videos scored earlier", len(missing))
            failed = self.computer.compute(missing, self.store)
            self.computed += len(missing) - len(failed)
        loaded = self.store.load(request.key for request in unique)
        loaded.problems.update({key: f"features could not be computed: {reason}" for key, reason in failed.items()})
        return loaded


class FrameFeatureComputer:
    """Fetch, decode once and embed every frame (CLIP / SigLIP2) of videos the scorer never saw."""

    def __init__(self, settings: Any, resolver: MediaResolver, connection: Connection | None) -> None:
        self._settings = settings
        self._resolver = resolver
        self._connection = connection

    def compute(self, requests: Sequence[FeatureRequest], store: FeatureStore) -> dict[str, str]:
        from ..features.frames import embed_video_frames, load_frame_encoder

        try:
            encoder = load_frame_encoder(self._settings)  # once per process
        except MdsVqaError as exc:
            return {request.key: str(exc) for request in requests}
        failed: dict[str, str] = {}

        def embed(request: FeatureRequest, path) -> None:
            store.put(request.key, embed_video_frames(path, self._settings, encoder)[1])

        for_each_media(requests, self._resolver, self._connection, failed, embed)
        return failed


def for_each_media(requests: Sequence[FeatureRequest], resolver: MediaResolver, connection: Connection | None,
                   failed: dict[str, str], work: Callable[[FeatureRequest, Any], None]) -> None:
    """Fetch each request's media and run ``work(request, local path)``; a failure is that video's only.

    Errors land in ``failed`` by request key, with the temporary path replaced by the task's
    media reference; the local copy is released after ``work`` either way.
    """
    for request in requests:
        try:
            media = resolver.fetch(request.ref, task_id=request.task_id, connection=connection)
        except MdsVqaError as exc:
            failed[request.key] = str(exc)
            continue
        try:
            work(request, media.path)
        except MdsVqaError as exc:
            failed[request.key] = str(exc).replace(str(media.path), describe(request.ref))
        except Exception as exc:
            log.exception("features of %s failed", describe(request.ref))
            failed[request.key] = f"{describe(request.ref)}: {type(exc).__name__}: {exc}"
        finally:
            media.release()


def feature_computer(settings: Any, loaded: Callable[[], Any], resolver: MediaResolver,
                     connection: Connection | None) -> FeatureComputer:
    """The computer for the configured extractor (``loaded`` gives the model, for 'vision' only)."""
    if settings.features.extractor == "vision":
        return VisionFeatureComputer(loaded, settings, resolver, connection)
    return FrameFeatureComputer(settings, resolver, connection)


class VisionFeatureComputer:
    """Fetch, decode and embed videos with the model's vision tower (batches of ``batch_size``)."""

    def __init__(self, loaded: Callable[[], Any], settings: Any, resolver: MediaResolver,
                 connection: Connection | None) -> None:
        self._loaded = loaded  # called only when something is missing: loading the model is not free
        self._settings = settings
        self._resolver = resolver
        self._connection = connection

    def compute(self, requests: Sequence[FeatureRequest], store: FeatureStore) -> dict[str, str]:
        from ..features.vision import VisionFeatureExtractor
        from ..scoring.scorer import prepare_video

        loaded = self._loaded()
        extractor = VisionFeatureExtractor(loaded)
        failed: dict[str, str] = {}
        batch: list[tuple[FeatureRequest, Any]] = []

        def flush() -> None:
            if not batch:
                return
            try:
                embeddings = extractor.extract([prepared for _, prepared in batch])
            except Exception as exc:
                log.exception("vision features failed for a batch of %d", len(batch))
                failed.update({request.key: f"vision tower failed: {type(exc).__name__}: {exc}"
                               for request, _ in batch})
            else:
                for (request, _), embedding in zip(batch, embeddings):
                    store.put(request.key, embedding)
            batch.clear()

        def prepare(request: FeatureRequest, path) -> None:
            batch.append((request, prepare_video(path, self._settings, loaded)))
            if len(batch) >= max(1, int(self._settings.batch_size)):
                flush()

        for_each_media(requests, self._resolver, self._connection, failed, prepare)
        flush()
        return failed
