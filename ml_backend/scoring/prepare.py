"""Videos prepared for the model in worker processes: decode, resize, patches (and frame features).

Decoding a 20 s 1080p clip costs seconds of one core (exact 2-fps sampling decodes, and
converts to RGB, every frame up to the last sampled one), and the resize, the patch builder
and the every-frame CLIP/SigLIP2 preprocessing hold the GIL long enough that threads do not
scale. So a scorer prepares videos in a pool of worker processes
(:mod:`ml_backend.procpool`), one per core by default (``MDSVQA_DECODE_WORKERS``), shared by
the scorers of one process. A worker runs exactly what the in-process path runs
(:func:`prepare_checked`: ``decode_video`` with the visual-token budget's check, then the
patches; the frame features through the same :class:`FrameFeatureAccumulator`), with one
torch thread and one decoder thread per core, so the results are the same bit for bit
(``tests/test_decode_workers.py``). The patches come back as a memfd the parent maps (no
copy). At most ``MDSVQA_DECODE_AHEAD`` videos (default: workers + batch size) are prepared
ahead of the model, which bounds the memory they hold.

Decoding stays in the scorer's own threads (``MDSVQA_DECODE_WORKERS`` 0 or 1, the Ray actors'
choice, or a scorer whose engine prepares videos its own way) and for frame features on a
GPU: each worker would hold its own CUDA context and encoder copy, outside the memory the
visual-token budget measured at model load.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MdsVqaError
from ..procpool import ProcessPool, acquire_shared, available_cpus, default_transport, release_shared
from ..settings import Settings, VideoSettings
from ..video.patches import PatchLayout
from ..video.sampling import SamplingPlan
from .budget import DECODE_WORKER_MEMORY, TokenBudget, available_host_memory
from .inputs import PreparedVideo

log = logging.getLogger(__name__)

# Environment of a worker: one worker per core, so one thread each for the libraries that
# would otherwise start one per core in every worker.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# Workers run at a lower priority than the model's process: where both need the same cores (a
# model on the CPU), the model's OpenMP threads, which stall whenever one of them is preempted,
# come first and the workers take the rest (measured: the tiny model's time in a 2-worker run on
# 2 busy cores fell from 17-18 s to 9-12 s at nice 19). A model on a GPU leaves them the cores.
WORKER_NICE = 10


def default_decode_workers() -> int:
    """One worker per usable core, as many as fit in half the free RAM at DECODE_WORKER_MEMORY each (at least 2)."""
    by_memory = int(0.5 * available_host_memory() // DECODE_WORKER_MEMORY)
    return max(1, min(available_cpus(), max(2, by_memory)))


def decode_workers(settings: Settings) -> int:
    """MDSVQA_DECODE_WORKERS, or the default for this machine."""
    value = getattr(settings, "decode_workers", None)
    return default_decode_workers() if value is None else int(value)


def prepare_checked(path: Path, video: VideoSettings, layout: PatchLayout, budget: TokenBudget | None, *,
                    every_frame: Callable[[np.ndarray, int], None] | None = None) -> PreparedVideo:
    """Decode and patch one video, refusing it (VideoTooLongError) when its plan exceeds ``budget``.

    The one implementation behind :func:`ml_backend.scoring.scorer.prepare_video` and the workers.
    """
    from ..video.decoding import decode_video

    def check(plan: SamplingPlan) -> None:
        if budget is not None:
            budget.check(path, plan, layout)

    decoded = decode_video(path, video, every_frame=every_frame, check_plan=check)
    return PreparedVideo.from_decoded(decoded, layout)


@dataclass(frozen=True)
class PrepareJob:
    """What a worker needs to prepare a video as the scorer's own thread would (picklable)."""

    settings: Settings
    layout: PatchLayout
    budget: TokenBudget | None
    frame_features: bool


@dataclass(frozen=True)
class WorkerPrepared:
    """A worker's answer: same fields as the scorer's own ``_Prepared``."""

    video: PreparedVideo
    frame_features: np.ndarray | None = None


_encoder_warned = False


def prepare_in_worker(job: PrepareJob, item: tuple[Path, str]) -> WorkerPrepared:
    """Runs in a worker: the video's patches, and its frame features when asked (as ``DifficultyScorer._prepare``)."""
    global _encoder_warned
    path = item[0]
    settings = job.settings
    if not job.frame_features:
        return WorkerPrepared(prepare_checked(path, settings.video, job.layout, job.budget))
    from ..features.frames import load_frame_encoder

    try:
        encoder = load_frame_encoder(settings)
    except MdsVqaError as exc:
        if not _encoder_warned:
            _encoder_warned = True
            log.error("no selection features while scoring: %s", exc)
        return WorkerPrepared(prepare_checked(path, settings.video, job.layout, job.budget))
    prepare = functools.partial(prepare_checked, path, settings.video, job.layout, job.budget)
    return WorkerPrepared(*with_frame_features(prepare, path, encoder, settings.features.batch_size))


def with_frame_features(prepare: Callable[..., PreparedVideo], path: Path, encoder: Any, batch_size: int
                        ) -> tuple[PreparedVideo, np.ndarray | None]:
    """``prepare(every_frame=...)`` with every decoded frame through ``encoder`` (worker and scorer thread alike).

    The features are None, logged, when the encoder fails on this video: its score goes on.
    """
    from ..features.frames import FrameFeatureAccumulator, FrameFeatureError

    accumulator = FrameFeatureAccumulator(encoder, batch_size, keep_going=True)
    video = prepare(every_frame=accumulator)
    try:
        return video, accumulator.finish()
    except FrameFeatureError as exc:
        log.error("%s: no selection features: %s", path, exc)
        return video, None


def init_worker(decoder_threads: int) -> None:
    """A worker's start: lower priority, one torch thread, ``decoder_threads`` decord threads, imports done once."""
    logging.basicConfig(level=logging.WARNING,
                        format="mdsvqa-decode[%(process)d] %(levelname)s %(name)s: %(message)s")
    os.nice(WORKER_NICE)
    import torch

    torch.set_num_threads(1)
    from torchvision.transforms import functional  # noqa: F401 - the resize, imported before the first video

    from ..video import decoding

    decoding.DECODER_THREADS = decoder_threads
    decoding._import_decord()


class _Submitter:
    """prefetched_batches' view of a pool: jobs labelled with their video's path."""

    def __init__(self, pool: ProcessPool) -> None:
        self.pool = pool

    def submit(self, fn: Callable[[Any], Any], item: Any, /) -> Future:
        return self.pool.submit(fn, item, label=str(item[0]))


class ProcessDecoding:
    """A scorer's decode worker processes: the process's shared pool of that size, taken on first use."""

    def __init__(self, workers: int, settings: Settings) -> None:
        if workers < 2:
            raise ValueError(f"worker processes need MDSVQA_DECODE_WORKERS >= 2, got {workers}")
        self.workers = workers
        self.ahead = getattr(settings, "decode_ahead", None) or workers + settings.batch_size
        self.in_flight = self.ahead + settings.batch_size  # prepared inputs held at most: ahead + the model's batch
        self._pool: ProcessPool | None = None
        self._lock = threading.Lock()

    def usable(self, settings: Settings, frame_features: bool) -> bool:
        """False for frame features on a GPU (they stay beside the model, in this process)."""
        if not frame_features:
            return True
        from ..errors import FeatureModelError
        from ..features.frames import feature_device

        try:
            return not feature_device(settings).startswith("cuda")
        except FeatureModelError:
            return True  # the encoder cannot load anywhere: the workers report it as the threads would

    def budget_args(self) -> dict[str, int]:
        """What the visual-token budget reserves for these decoders (token_budget's keywords)."""
        return {"decoders": self.workers, "decoder_memory": DECODE_WORKER_MEMORY, "in_flight": self.in_flight}

    def job(self, settings: Settings, loaded, *, frame_features: bool) -> Callable[[tuple[Path, str]], WorkerPrepared]:
        from .budget import token_budget

        budget = token_budget(settings, loaded, **self.budget_args())
        return functools.partial(prepare_in_worker, PrepareJob(settings, loaded.layout, budget, frame_features))

    def submitter(self, videos: int) -> _Submitter:
        """Where to submit ``videos`` videos: the shared pool, with up to that many workers starting now."""
        with self._lock:
            if self._pool is None:
                workers, threads = self.workers, max(1, available_cpus() // self.workers)
                self._pool = acquire_shared(
                    ("decode", workers, threads, default_transport()),
                    lambda: ProcessPool(workers, initializer=init_worker, initargs=(threads,), env=WORKER_ENV,
                                        name="mdsvqa-decode"))
            pool = self._pool
        pool.grow(min(videos, self.ahead))
        return _Submitter(pool)

    @property
    def pool(self) -> ProcessPool | None:
        return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            release_shared(pool)
