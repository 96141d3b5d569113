"""From video files to difficulty scores: cache lookup, decoding ahead of the model, batching.

Decoding and patch building of the next videos run ahead of the model: in worker processes
(``scoring.prepare``, MDSVQA_DECODE_WORKERS, one per core by default) or, with 0 or 1, in
this process's decode threads. A bad video (or a worker killed on it) becomes a
failed result and never stops the others; a batch the model rejects is retried one
video at a time so that only the culprit fails.

With ``with_features``, each result also carries the video's selection features
(``ScoreResult.features``), from the same decode: CLIP / SigLIP2 embeddings of every frame
(``settings.features.extractor``, the decode's ``every_frame`` sink, in the decode threads)
or the vision tower's output during generation ('vision'). The caller stores them under
its own key (the backend: the task's media key). A feature failure is logged and never
fails the score; cache hits carry none (nothing was decoded).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MdsVqaError
from ..features.frames import load_frame_encoder
from ..features.vision import capture_vision_features
from ..fileio import file_digest
from ..model.loading import DIFFICULTY_ADAPTER, LoadedModel, ModelSpec, resolve_model, shared_model
from ..prefetch import prefetched_batches
from ..prompts import PROMPT_VERSION, Task
from ..settings import Settings
from ..video.decoding import decode_video
from ..video.patches import video_token_count
from ..video.sampling import SamplingPlan
from .budget import token_budget
from .cache import CachedScore, ScoreCache, cache_key
from .generation import Answer, AnswerGenerator, decoding_identity
from .inputs import PreparedVideo
from .prepare import ProcessDecoding, with_frame_features
from .prepare import decode_workers as decode_workers_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreResult:
    path: Path
    name: str
    difficulty: float | None
    raw_text: str | None
    error: str | None
    cached: bool
    model_version: str
    # (frames, dim) selection features from this scoring's own decode (``with_features``), else None
    features: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.difficulty is not None


@dataclass
class _Pending:
    path: Path
    key: str
    prepared: Future
    features: np.ndarray | None = None


@dataclass(frozen=True)
class _Prepared:
    video: PreparedVideo
    frame_features: np.ndarray | None = None  # every frame's CLIP/SigLIP2 embedding, from the same decode


class DifficultyScorer:
    """Scores videos with one adapter of the shared model; safe to call from several threads."""

    def __init__(self, spec: ModelSpec, settings: Settings, cache: ScoreCache | None = None, *,
                 loaded: LoadedModel | None = None, task: Task = "difficulty",
                 adapter: str | None = DIFFICULTY_ADAPTER, decode_workers: int | None = None,
                 with_features: bool = False) -> None:
        self.spec = spec
        self.settings = settings
        self.cache = cache
        self.task = task
        self.adapter = adapter
        self._loaded = loaded
        # Results carry the selection features of every video the model sees (one decode, both outputs).
        self.with_features = with_features
        self._frame_encoder_warned = False
        self._generator: AnswerGenerator | None = None
        self._load_lock = threading.Lock()
        # decode_workers (default MDSVQA_DECODE_WORKERS): >= 2 worker processes, else 1 or 2 threads here
        workers = decode_workers_of(settings) if decode_workers is None else decode_workers
        self._pool = ThreadPoolExecutor(max_workers=1 if workers == 1 else 2, thread_name_prefix="mdsvqa-decode")
        own_prepare = type(self)._prepare_video is DifficultyScorer._prepare_video  # else: the engine's own inputs
        self._processes = ProcessDecoding(workers, settings) if workers >= 2 and own_prepare else None
        self._model_version = spec.version(adapter)  # fixed for the scorer's life, even if the spec grows
        self._identity = {
            "model": spec.identity(adapter),
            "decoding": decoding_identity(settings, task),
            "prompt_version": PROMPT_VERSION,
            "video": settings.video.model_dump(exclude={"max_side"}),
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> DifficultyScorer:
        """Resolve the model now (cheap); load its weights on the first video not in the cache.

        With ``settings.engine == "vllm"`` the scorer runs on vLLM (``ml_backend.engines.vllm_engine``).
        """
        if settings.engine == "vllm" and cls is DifficultyScorer:
            from ..engines.vllm_engine import VllmScorer

            return VllmScorer.from_settings(settings)
        cache = ScoreCache(settings.cache_path) if settings.use_cache else None
        return cls(resolve_model(settings), settings, cache)

    def for_adapter(self, name: str, location: str, *, label: str | None = None) -> DifficultyScorer:
        """A scorer of another adapter (e.g. a trained version) sharing this one's cache.

        Here the adapter is loaded by name onto the shared base; an engine that serves merged
        checkpoints builds its own model for it instead (see ``owns_model``).
        """
        loaded = self.loaded
        loaded.load_adapter(name, location, self.settings, label=label)
        return DifficultyScorer(loaded.spec, self.settings, self.cache, loaded=loaded, adapter=name)

    @property
    def owns_model(self) -> bool:
        """True when closing this scorer frees its own model (an adapter of the shared base is unloaded instead)."""
        return False

    def suspend(self) -> None:
        """Free this scorer's own model while no request uses it; the next use (or :meth:`resume`) restarts it.

        A no-op here: adapters share the base in memory. The vLLM engine stops its engine.
        """

    def resume(self) -> None:
        """Have the model ready now (after :meth:`suspend`), not on the next request."""
        _ = self.loaded

    @property
    def loaded(self) -> LoadedModel:
        """The shared model, loaded on first use (never per request)."""
        with self._load_lock:
            if self._loaded is None:
                self._loaded = shared_model(self.settings)
            return self._loaded

    @property
    def generator(self) -> AnswerGenerator:
        with self._load_lock:
            if self._loaded is None:
                self._loaded = shared_model(self.settings)
            if self._generator is None:
                self._generator = AnswerGenerator(self._loaded, self.settings, task=self.task, adapter=self.adapter)
            return self._generator

    @property
    def model_version(self) -> str:
        return self._model_version

    @property
    def is_tiny(self) -> bool:
        return self.spec.is_tiny

    def identity(self) -> dict:
        """Model, prompt, decoding and frame-sampling settings: everything a cached score depends on."""
        return self._identity

    # -- results -------------------------------------------------------------------------------

    def _result(self, path: Path, *, score: float | None = None, text: str | None = None,
                error: str | None = None, cached: bool = False, features: np.ndarray | None = None) -> ScoreResult:
        return ScoreResult(path, path.name, score, text, error, cached, self.model_version, features)

    def _key(self, path: Path) -> str:
        return cache_key(file_digest(path), self.identity())

    def cached_result(self, path: str | Path) -> ScoreResult | None:
        """The stored score of this file's content under the current model, or None (never computes)."""
        path = Path(path)
        if self.cache is None:
            return None
        try:
            hit = self.cache.get(self._key(path))
        except OSError:
            return None
        return self._result(path, score=hit.score, text=hit.raw_text, cached=True) if hit else None

    # -- scoring -------------------------------------------------------------------------------

    def score_one(self, path: str | Path) -> ScoreResult:
        return next(iter(self.score_paths([Path(path)])))

    def score_paths(self, paths: Iterable[str | Path]) -> Iterator[ScoreResult]:
        """Yield one result per path: cache hits first, then each batch as the model finishes it."""
        misses: list[tuple[Path, str]] = []
        for raw in paths:
            path = Path(raw)
            try:
                key = self._key(path)
            except OSError as exc:
                reason = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
                yield self._result(path, error=f"{path}: {reason}")
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                yield self._result(path, score=hit.score, text=hit.raw_text, cached=True)
            else:
                misses.append((path, key))

        if not misses:
            return
        pool, prepare, ahead = self._decoders(len(misses))
        for batch in prefetched_batches(misses, prepare, self.settings.batch_size, pool, ahead=ahead):
            yield from self._run_batch([_Pending(path, key, future) for (path, key), future in batch])

    def _decoders(self, videos: int) -> tuple[Any, Callable[[tuple[Path, str]], Any], int]:
        """(where, what, how many videos ahead): the decode worker processes, or this process's threads."""
        processes = self._processes
        if processes is None or not processes.usable(self.settings, self.frame_features):
            return self._pool, self._prepare, self.settings.batch_size
        submitter = processes.submitter(videos)  # the workers start while the model loads
        return submitter, processes.job(self.settings, self.loaded, frame_features=self.frame_features), processes.ahead

    @property
    def frame_features(self) -> bool:
        """Whether features come from every decoded frame (clip, siglip2) rather than the vision tower."""
        return self.with_features and self.settings.features.extractor != "vision"

    def _frame_encoder(self):
        """The shared CLIP/SigLIP2 encoder, or None (logged once) when it cannot be loaded: scores go on."""
        try:
            return load_frame_encoder(self.settings)
        except MdsVqaError as exc:
            if not self._frame_encoder_warned:
                self._frame_encoder_warned = True
                log.error("no selection features while scoring: %s", exc)
            return None

    def _prepare(self, item: tuple[Path, str]) -> _Prepared:
        path = item[0]
        encoder = self._frame_encoder() if self.frame_features else None
        if encoder is None:
            return _Prepared(self._prepare_video(path))
        return _Prepared(*with_frame_features(functools.partial(self._prepare_video, path), path, encoder,
                                              self.settings.features.batch_size))

    def _prepare_video(self, path: Path, *, every_frame: Callable[[np.ndarray, int], None] | None = None
                       ) -> PreparedVideo:
        """One video as this scorer's model takes it (here: :func:`prepare_video`'s patches)."""
        return prepare_video(path, self.settings, self.loaded, every_frame=every_frame)

    def _run_batch(self, batch: list[_Pending]) -> Iterator[ScoreResult]:
        ready: list[tuple[_Pending, PreparedVideo]] = []
        for item in batch:
            try:
                prepared: _Prepared = item.prepared.result()
                ready.append((item, prepared.video))
                if prepared.frame_features is not None:
                    item.features = prepared.frame_features
            except MdsVqaError as exc:
                yield self._result(item.path, error=str(exc))
            except Exception as exc:  # an unexpected decoder fault is still one item's failure
                log.exception("preparing %s failed", item.path)
                yield self._result(item.path, error=f"{item.path}: {type(exc).__name__}: {exc}")
        if not ready:
            return
        outcomes = self.answer_videos([video for _, video in ready], [str(item.path) for item, _ in ready],
                                      capture_vision=self.with_features and not self.frame_features)
        for (item, _video), (answer, error, embedding) in zip(ready, outcomes):
            features = item.features if item.features is not None else embedding
            if answer is None or answer.score is None:
                yield self._result(item.path, text=answer.text if answer else None, error=error, features=features)
                continue
            if self.cache is not None:
                self.cache.put(item.key, CachedScore(answer.score, answer.text, self.model_version))
            yield self._result(item.path, score=answer.score, text=answer.text, features=features)

    def answer_videos(self, videos: Sequence[PreparedVideo], names: Sequence[str], *,
                      capture_vision: bool = False) -> list[tuple[Answer | None, str | None, np.ndarray | None]]:
        """The model's answer for each prepared video, with the batch rules every engine path shares.

        Per video: (answer, error or None, vision-tower features when ``capture_vision``). A
        padded batch whose mask would not fit the budget runs one video at a time; a batch the
        model rejects is retried one video at a time, so only the culprit fails.
        """
        if len(videos) > 1 and not self._batch_fits(list(videos)):
            # Prompts of different lengths need a padding mask as large as the longest squared:
            # past one video's allowance, the videos run one at a time (no mask at all).
            log.info("%d videos of very different lengths: scored one at a time", len(videos))
            return [outcome for video, name in zip(videos, names)
                    for outcome in self.answer_videos([video], [name], capture_vision=capture_vision)]
        try:
            embeddings: list[np.ndarray | None] = [None] * len(videos)
            if capture_vision:
                grids = np.stack([video.grid_thw for video in videos])
                with capture_vision_features(self.loaded, grids) as features:
                    answers = self.generator.generate(list(videos))
                embeddings = list(features)
            else:
                answers = self.generator.generate(list(videos))
        except Exception:
            if len(videos) == 1:
                log.exception("model failed on %s", names[0])
                return [(None, f"{names[0]}: the model failed on this video (see log)", None)]
            log.warning("batch of %d failed; retrying one video at a time", len(videos), exc_info=True)
            return [outcome for video, name in zip(videos, names)
                    for outcome in self.answer_videos([video], [name], capture_vision=capture_vision)]
        return [(answer, None if answer.score is not None else f"{name}: {answer.error}", embedding)
                for answer, name, embedding in zip(answers, names, embeddings)]

    def _batch_fits(self, videos: list[PreparedVideo]) -> bool:
        merge = self.loaded.layout.merge_size
        return token_budget(self.settings, self.loaded).batch_fits(
            [video_token_count(video.grid_thw, merge) for video in videos])

    def close(self, *, cache: bool = True) -> None:
        """Stop the decode threads; ``cache=False`` leaves a score cache shared with other scorers open."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.close()  # the last scorer using the shared pool stops its workers
        if cache and self.cache is not None:
            self.cache.close()


def prepare_video(path: Path, settings: Settings, loaded: LoadedModel, *,
                  every_frame: Callable[[np.ndarray, int], None] | None = None) -> PreparedVideo:
    """Decode and patch one video exactly as the model sees it (scoring and features alike).

    ``every_frame`` also receives every decoded frame of that same decode (see ``decode_video``).
    A video over the visual-token budget (``scoring.budget``) raises ``VideoTooLongError``
    before any of its sampled frames is read.
    """
    budget = token_budget(settings, loaded)

    def check(plan: SamplingPlan) -> None:
        budget.check(path, plan, loaded.layout)

    decoded = decode_video(path, settings.video, every_frame=every_frame, check_plan=check)
    return PreparedVideo.from_decoded(decoded, loaded.layout)


def result_record(result: ScoreResult) -> dict:
    return {k: v for k, v in asdict(result).items() if k != "features"} | {"path": str(result.path)}
