"""The scorer pool on Ray Data: decode tasks on CPUs, scorer actors holding the model, the driver in charge.

::

    driver: items -> score cache lookup (sqlite, on the driver) -> ray.data.from_items (one video a block)
      -> map(decode_row)          CPU tasks: fetch the task media (MediaResolver) or read the path,
                                  decode_video -> uint8 frames at the reference size
      -> map_batches(ScoreBatches) actors, one per GPU (or per N CPUs): budget check, patches, generate
      -> iter_rows on the driver: cache.put, the reference JSON or Label Studio, progress

Same inputs and answers as the single process:

- A worker decodes with the project's own ``decode_video``; the actor builds the patches with
  ``PreparedVideo.from_decoded`` and checks the plan against the visual-token budget of its own
  loaded model (``TokenBudget.check``): exactly what ``scoring.scorer.prepare_video`` composes,
  split over two processes (tested equal, array for array). Decoding cannot wait for the budget
  (it is measured when an actor has loaded its model), so a video over it is decoded, at most
  ``MDSVQA_VIDEO_TOTAL_PIXELS`` pixels of uint8 frames, before the actor refuses it with the
  same ``VideoTooLongError``.
- Batches are the single process's: rows keep their order (``preserve_order``), so each actor
  call gets the same consecutive groups of ``batch_size`` uncached videos, run through the
  scorer's batch rules (one at a time past the budget's padding allowance, a batch the model
  rejects retried video by video) with the scorer's own generator.
- The cache key is the content digest and the identity of the actor's scorer (its device,
  dtype and attention kernel: those of the GPU node, not of the driver).

One bad video never sinks a batch: decode and model errors become that video's error, with
the single process's wording; a worker that dies (a crashing decoder, the kernel's OOM killer)
loses its block only (``max_errored_blocks``), and those videos are tried again one at a time
before they are reported as failed.

Nothing here is imported unless ``--ray`` (or ``MDSVQA_RAY_ADDRESS``) asks for it.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError, MdsVqaError, ModelNotFoundError
from ..fileio import file_digest
from ..labelstudio.client import Connection
from ..settings import Settings, VideoSettings, credential_fields

log = logging.getLogger(__name__)

DECODE_MEMORY = 2 * 2**30  # Ray's memory resource of one decode task: decord's frame queue (scoring.budget)
_NO_FRAMES = np.zeros((0, 0, 0, 3), dtype=np.uint8)


# -- sizing -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolSizing:
    """How many scorer actors, and what each of them holds."""

    actors: int
    actor_cpus: int
    actor_gpus: int  # 0 or 1


def pool_sizing(settings: Settings, resources: dict[str, float], *, actors: int | None = None,
                actor_cpus: int | None = None) -> PoolSizing:
    """One actor per GPU of the cluster (settings.device 'auto' or 'cuda*'), else CPU actors.

    Without GPUs: one actor by default, the actors sharing half of the cluster's CPUs (the
    other half decodes); ``actors`` and ``actor_cpus`` override.
    """
    if actors is not None and actors < 1:
        raise ConfigurationError("--ray-actors must be at least 1")
    if actor_cpus is not None and actor_cpus < 1:
        raise ConfigurationError("--ray-actor-cpus must be at least 1")
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 0))
    if settings.device.startswith("cuda") or (settings.device == "auto" and gpus > 0):
        sizing = PoolSizing(actors or max(1, gpus), actor_cpus or 1, 1)
    else:
        count = actors or 1
        sizing = PoolSizing(count, actor_cpus or max(1, cpus // 2 // count), 0)
    if sizing.actors * sizing.actor_cpus >= cpus:
        log.warning("the %d scorer actors take %d of the cluster's %d CPUs: decoding waits for more nodes",
                    sizing.actors, sizing.actors * sizing.actor_cpus, cpus)
    return sizing


# -- the cluster --------------------------------------------------------------------------------

def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigurationError(
            f"scoring on Ray needs the ray extra: pip install 'mdsvqa-labelstudio[ray]' ({exc})") from None
    return ray


def connect(address: str) -> bool:
    """Join (or start, for 'local' / 'local:N') the cluster; True when this call did, False if Ray was up."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if address == "local" or address.startswith("local:"):
        cpus: int | None = None
        if address != "local":
            text = address.partition(":")[2]
            if not text.isdigit() or int(text) < 1:
                raise ConfigurationError(f"--ray {address!r}: write local or local:N with N CPUs, e.g. local:8")
            cpus = int(text)
        log.info("starting a local Ray cluster%s", f" with {cpus} CPUs" if cpus else "")
        ray.init(address="local", num_cpus=cpus, include_dashboard=False)
    else:
        ray.init(address=address)
    return True


def worker_settings(settings: Settings) -> Settings:
    """The settings the workers get: everything that changes an answer, no credential."""
    return settings.model_copy(update={name: None for name in credential_fields(Settings)})


# -- what the workers run -----------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerFacts:
    """What the driver needs to know of a scorer actor before anything is dispatched."""

    identity: dict
    model_version: str
    is_tiny: bool


def describe_worker(settings: Settings) -> WorkerFacts:
    """Resolve the model where an actor would run (its device, its files): cheap, no weights loaded."""
    from ..model.loading import resolve_model
    from ..scoring.scorer import DifficultyScorer

    scorer = DifficultyScorer(resolve_model(settings), settings, None, decode_workers=1)
    try:
        return WorkerFacts(scorer.identity(), scorer.model_version, scorer.is_tiny)
    finally:
        scorer.close()


@dataclass(frozen=True)
class MediaAccess:
    """How a decode task fetches a task's media (score-project): Label Studio and the media limits."""

    connection: Connection | None
    max_bytes: int
    timeout_s: float
    local_files_root: Path | None

    @classmethod
    def from_settings(cls, settings: Settings, connection: Connection | None) -> MediaAccess:
        return cls(connection, settings.media_max_bytes, settings.media_timeout_s, settings.local_files_root)


_resolvers: dict[tuple, Any] = {}
_resolvers_lock = threading.Lock()


def _resolver(media: MediaAccess):
    """One MediaResolver per worker process and limits; downloads go to the node's temporary folder."""
    from ..labelstudio.media import MediaResolver

    key = (media.max_bytes, media.timeout_s, media.local_files_root)
    with _resolvers_lock:
        if key not in _resolvers:
            _resolvers[key] = MediaResolver(Path(tempfile.gettempdir()) / "mdsvqa-ray-downloads",
                                            max_bytes=media.max_bytes, timeout_s=media.timeout_s,
                                            local_files_root=media.local_files_root)
        return _resolvers[key]


def decode_row(row: dict[str, Any], *, video: VideoSettings, media: MediaAccess | None) -> dict[str, Any]:
    """A decode task: one video's frames as the single process decodes them, or its error."""
    from ..labelstudio.media import MediaError
    from ..video.decoding import decode_video

    name = str(row["name"])
    out: dict[str, Any] = {"index": row["index"], "name": name, "digest": row["digest"], "frames": _NO_FRAMES,
                           "meta": b"", "error": "", "final": True}
    path = Path(str(row["source"]))
    held = None
    try:
        if media is not None:  # a task's media reference: fetched here, on the worker
            held = _resolver(media).fetch(str(row["source"]), task_id=row["task_id"], connection=media.connection)
            path = held.path
            out["digest"] = file_digest(path)
        decoded = decode_video(path, video)
    except MediaError as exc:
        out.update(error=str(exc), final=False)  # a fetch failure: retried by a later run, never stored
    except MdsVqaError as exc:
        out["error"] = str(exc).replace(str(path), name) if held is not None else str(exc)
    except Exception as exc:  # an unexpected decoder fault is still one item's failure
        log.exception("decoding %s failed", name)
        message = f"{path}: {type(exc).__name__}: {exc}"
        out["error"] = message.replace(str(path), name) if held is not None else message
    else:
        out["frames"] = decoded.frames
        out["meta"] = pickle.dumps(dataclasses.replace(decoded, frames=_NO_FRAMES))
    finally:
        if held is not None:
            held.release()
    return out


class ScoreBatches:
    """A scorer actor: one model for its life, the scorer's batch rules on already decoded videos."""

    def __init__(self, settings: Settings, threads: int | None = None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        from ..model.loading import resolve_model
        from ..scoring.scorer import DifficultyScorer

        self.scorer = DifficultyScorer(resolve_model(settings), settings, None, decode_workers=1)
        self.identity = self.scorer.identity()

    def prepare(self, name: str, frames: np.ndarray, meta: bytes):
        """The PreparedVideo that prepare_video gives for these decoded frames (budget check included)."""
        from ..scoring.budget import token_budget
        from ..scoring.inputs import PreparedVideo

        loaded = self.scorer.loaded
        decoded = dataclasses.replace(pickle.loads(meta), frames=np.asarray(frames))
        token_budget(self.scorer.settings, loaded).check(name, decoded.plan, loaded.layout)
        return PreparedVideo.from_decoded(decoded, loaded.layout)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from ..scoring.cache import cache_key

        count = len(batch["index"])
        out: dict[str, list] = {
            "index": [int(i) for i in batch["index"]], "difficulty": [None] * count, "raw_text": [None] * count,
            "error": [None] * count, "final": [True] * count, "key": [None] * count,
            "version": [self.scorer.model_version] * count,
        }
        ready = []
        for row in range(count):
            name = str(batch["name"][row])
            if batch["error"][row]:
                out["error"][row] = str(batch["error"][row])
                out["final"][row] = bool(batch["final"][row])
                continue
            try:
                ready.append((row, name, self.prepare(name, batch["frames"][row], batch["meta"][row])))
            except MdsVqaError as exc:
                out["error"][row] = str(exc)
            except Exception as exc:  # as the scorer: one item's failure
                log.exception("preparing %s failed", name)
                out["error"][row] = f"{name}: {type(exc).__name__}: {exc}"
        for row, score, text, error in self._score(ready):
            out["difficulty"][row], out["raw_text"][row], out["error"][row] = score, text, error
            digest = batch["digest"][row]
            if score is not None and digest:
                out["key"][row] = cache_key(str(digest), self.identity)
        return out

    def _score(self, ready: list) -> Iterator[tuple[int, float | None, str | None, str | None]]:
        """(row, score, raw text, error) per video, by the scorer's own batch rules (``answer_videos``)."""
        if not ready:
            return
        outcomes = self.scorer.answer_videos([video for _, _, video in ready], [name for _, name, _ in ready])
        for (row, _name, _video), (answer, error, _features) in zip(ready, outcomes):
            if answer is None or answer.score is None:
                yield row, None, answer.text if answer else None, error
            else:
                yield row, float(answer.score), answer.text, None


# -- the driver ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolItem:
    """One video to score: a local path (``mdsvqa score``) or a task's media reference (score-project)."""

    index: int
    source: str
    name: str  # how messages name it: the path as given, or describe(ref)
    task_id: int | None = None
    digest: str | None = None  # known on the driver for local files


@dataclass(frozen=True)
class PoolResult:
    index: int
    difficulty: float | None
    raw_text: str | None
    error: str | None
    final: bool  # False: the media could not be fetched, or the worker died: not to be stored
    key: str | None  # score cache key (content + the scoring actor's identity), for a score
    digest: str | None
    version: str

    @property
    def ok(self) -> bool:
        return self.difficulty is not None


def _with_retries(method: Callable[..., Any], fn: Any, retries: dict[str, int], **kwargs: Any) -> Any:
    """``method(fn, **kwargs)`` with bounded retries (Ray Data's default retries a crashing video forever).

    Ray 2.5x takes them only as deprecated ``**ray_remote_args``; a Ray that refuses them gets the call
    without them.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return method(fn, **kwargs, **retries)
        except TypeError:
            return method(fn, **kwargs)


class RayPool:
    """Scores PoolItems on the cluster; the driver keeps caches, files and Label Studio to itself."""

    def __init__(self, settings: Settings, sizing: PoolSizing, facts: WorkerFacts, *, owns_ray: bool,
                 media: MediaAccess | None = None) -> None:
        self.settings = worker_settings(settings)
        self.sizing = sizing
        self.facts = facts
        self.media = media
        self._owns_ray = owns_ray
        self.dispatched = 0

    @classmethod
    def start(cls, settings: Settings, address: str, *, actors: int | None = None, actor_cpus: int | None = None,
              media: MediaAccess | None = None) -> RayPool:
        owns = connect(address)
        ray = _import_ray()
        try:
            sizing = pool_sizing(settings, ray.cluster_resources(), actors=actors, actor_cpus=actor_cpus)
            facts = _probe(ray, worker_settings(settings), sizing)
        except BaseException:
            if owns:
                ray.shutdown()
            raise
        log.info("ray: %d scorer actor(s) with %d CPU(s)%s each, model %s", sizing.actors, sizing.actor_cpus,
                 " and a GPU" if sizing.actor_gpus else "", facts.model_version)
        return cls(settings, sizing, facts, owns_ray=owns, media=media)

    @property
    def model_version(self) -> str:
        return self.facts.model_version

    @property
    def identity(self) -> dict:
        return self.facts.identity

    def close(self) -> None:
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False

    def _dataset(self, items: list[PoolItem], batch_size: int):
        import ray.data

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the single process's batches (module docstring)
        context.max_errored_blocks = -1  # a block is one video: a dead worker loses that video only
        context.enable_progress_bars = False  # the command shows its own
        if hasattr(context, "print_on_execution_start"):
            context.print_on_execution_start = False
        rows = [dataclasses.asdict(item) for item in items]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        dataset = _with_retries(dataset.map, decode_row, {"max_retries": 1},
                                fn_kwargs={"video": self.settings.video, "media": self.media},
                                num_cpus=1, memory=DECODE_MEMORY)
        threads = None if self.sizing.actor_gpus else self.sizing.actor_cpus
        return _with_retries(dataset.map_batches, ScoreBatches, {"max_task_retries": 1},
                             fn_constructor_kwargs={"settings": self.settings, "threads": threads},
                             batch_size=batch_size, batch_format="numpy",
                             compute=ray.data.ActorPoolStrategy(size=self.sizing.actors),
                             num_cpus=self.sizing.actor_cpus, num_gpus=self.sizing.actor_gpus or None)

    def run(self, items: Iterable[PoolItem]) -> Iterator[PoolResult]:
        """One result per item, as they finish; items a dead worker took are retried one at a time."""
        pending = {item.index: item for item in items}
        self.dispatched += len(pending)
        for attempt, batch_size in enumerate(dict.fromkeys((self.settings.batch_size, 1))):
            if not pending:
                break
            if attempt:
                log.warning("ray: no result for %d video(s) (a worker died): trying each alone", len(pending))
            for row in self._dataset(list(pending.values()), batch_size).iter_rows():
                item = pending.pop(int(row["index"]), None)
                if item is not None:
                    yield PoolResult(item.index, row["difficulty"], row["raw_text"], row["error"] or None,
                                     bool(row["final"]), row["key"], item.digest, str(row["version"]))
        for item in pending.values():
            yield PoolResult(item.index, None, None, f"{item.name}: no result: the Ray worker that had it died "
                             "(see the Ray logs)", False, None, item.digest, self.model_version)


def _probe(ray: Any, settings: Settings, sizing: PoolSizing) -> WorkerFacts:
    """The scorer actors' identity and model version, from a task placed as an actor would be."""
    probe = ray.remote(num_cpus=sizing.actor_cpus, num_gpus=sizing.actor_gpus or None, max_retries=0)(describe_worker)
    try:
        facts: WorkerFacts = ray.get(probe.remote(settings))
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None) or exc
        raise ModelNotFoundError(f"the Ray cluster's workers cannot resolve the model: {cause}") from None
    return facts


# -- `mdsvqa score` on the pool -----------------------------------------------------------------

class RayScorer:
    """What ``mdsvqa score`` uses of a DifficultyScorer, with the model work on a Ray cluster.

    The score cache stays on the driver: it is looked up here before anything is dispatched,
    and written here with each score the actors send back.
    """

    def __init__(self, pool: RayPool, settings: Settings) -> None:
        from ..scoring.cache import ScoreCache

        self.pool = pool
        self.settings = settings
        self.cache = ScoreCache(settings.cache_path) if settings.use_cache else None

    @classmethod
    def start(cls, settings: Settings, address: str, *, actors: int | None = None,
              actor_cpus: int | None = None) -> RayScorer:
        return cls(RayPool.start(settings, address, actors=actors, actor_cpus=actor_cpus), settings)

    @property
    def model_version(self) -> str:
        return self.pool.model_version

    @property
    def is_tiny(self) -> bool:
        return self.pool.facts.is_tiny

    def _result(self, path: Path, *, score: float | None = None, text: str | None = None,
                error: str | None = None, cached: bool = False):
        from ..scoring.scorer import ScoreResult

        return ScoreResult(path, path.name, score, text, error, cached, self.model_version)

    def cached_result(self, path: str | Path):
        """The stored score of this file under the actors' model, or None (never computes)."""
        from ..scoring.cache import cache_key

        path = Path(path)
        if self.cache is None:
            return None
        try:
            hit = self.cache.get(cache_key(file_digest(path), self.pool.identity))
        except OSError:
            return None
        return self._result(path, score=hit.score, text=hit.raw_text, cached=True) if hit else None

    def score_paths(self, paths: Iterable[str | Path]) -> Iterator:
        """ScoreResults as DifficultyScorer.score_paths gives them: cache hits first, then as scored."""
        from ..scoring.cache import CachedScore, cache_key

        items: list[PoolItem] = []
        by_index: dict[int, Path] = {}
        hits = 0
        for raw in paths:
            path = Path(raw)
            try:
                digest = file_digest(path)
            except OSError as exc:
                reason = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
                yield self._result(path, error=f"{path}: {reason}")
                continue
            hit = self.cache.get(cache_key(digest, self.pool.identity)) if self.cache is not None else None
            if hit is not None:
                hits += 1
                yield self._result(path, score=hit.score, text=hit.raw_text, cached=True)
                continue
            by_index[len(items)] = path
            items.append(PoolItem(len(items), str(path), str(path), digest=digest))
        log.info("ray: %d video(s) found in the score cache on the driver (not dispatched), %d dispatched",
                 hits, len(items))
        for item in items:
            log.debug("ray: dispatching %s", item.name)
        for result in self.pool.run(items):
            path = by_index[result.index]
            if result.ok and result.key and self.cache is not None and result.difficulty is not None:
                self.cache.put(result.key, CachedScore(result.difficulty, result.raw_text or "", result.version))
            yield self._result(path, score=result.difficulty, text=result.raw_text, error=result.error)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.pool.close()
