"""One training run end to end: labels -> split -> evaluate -> train -> evaluate -> version (-> activate).

Shared by ``mdsvqa train`` (in the foreground) and the job process started by
:meth:`ml_backend.training.jobs.JobManager.start_training` (target :func:`training_job`),
so both produce identical versions. Data problems are refused before the model loads.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import TrainingDataError
from ..prompts import Task
from ..scoring.generation import TOP_K, TOP_P
from ..settings import Settings, TrainingSettings, load_settings
from .data import LabelRow, LabelSet, data_hash, load_labels, split_labels
from .evaluation import evaluate
from .rewards import normalize_mos
from .versions import KINDS, Kind, VersionStore, looks_like_version_id

log = logging.getLogger(__name__)

Activation = Literal["never", "always", "if-better", "if-not-worse"]
Progress = Callable[[float, str], None]
QualityScorer = Callable[[list[Path]], np.ndarray]  # f's score per video, NaN where it has none


@dataclass
class TrainingOutcome:
    version_id: str
    kind: str
    activated: bool
    metrics_before: dict[str, Any] | None
    metrics_after: dict[str, Any] | None
    steps: int
    skipped_labels: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"version_id": self.version_id, "kind": self.kind, "activated": self.activated,
                "metrics_before": self.metrics_before, "metrics_after": self.metrics_after, "steps": self.steps,
                "skipped_labels": self.skipped_labels}


def _normalised(rows: list[LabelRow] | tuple[LabelRow, ...], mos_range: tuple[float, float] | None) -> list[float]:
    lo, hi = mos_range if mos_range is not None else (None, None)
    return normalize_mos([r.mos for r in rows], lo, hi).tolist()


def _metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, Any] | None:
    """The reference's SRCC/PLCC over the videos that got a prediction (``None`` metrics with a reason)."""
    ok = np.isfinite(predictions) & np.isfinite(targets)
    result = evaluate(predictions[ok], targets[ok]).to_json()
    result["total"] = len(predictions)
    return result


def _better(before: dict | None, after: dict | None, *, ties: bool = False) -> bool:
    """Held-out SRCC after training beats (``ties``: at least matches) the one before.

    No SRCC after training (too few parseable predictions) is never better; no
    SRCC before, with one after, is.
    """
    b = (before or {}).get("srcc")
    a = (after or {}).get("srcc")
    if a is None or not math.isfinite(a):
        return False
    return b is None or not math.isfinite(b) or a > b or (ties and a >= b)


def should_activate(activate: Activation, before: dict | None, after: dict | None) -> bool:
    """The activation rule: never, always, if held-out SRCC improved, or if it did not get worse."""
    if activate == "always":
        return True
    if activate == "if-better":
        return _better(before, after)
    if activate == "if-not-worse":
        return _better(before, after, ties=True)
    return False


def run_training(labels: str | os.PathLike | LabelSet, model_dir: str | os.PathLike, *,
                 settings: Settings | None = None, objective: str | None = None, adapter: str | None = "stock",
                 mos_range: tuple[float, float] | None = None, source_labels: str | os.PathLike | None = None,
                 activate: Activation = "if-better", progress: Progress | None = None,
                 quality_scorer: QualityScorer | None = None,
                 metadata: dict[str, Any] | None = None) -> TrainingOutcome:
    """Train one version and publish it in ``model_dir``'s version store.

    ``adapter``: where training starts. "stock" = a fresh LoRA on f for the quality
    objective, the configured failure-predictor adapter for difficulty; "active" = the
    active version of that kind (stock if none); a version id; or an adapter folder/hub id.
    ``source_labels``: an optional second label set (e.g. the source-domain set) trained
    alongside, in batches of its own; evaluation uses the held-out target labels only.
    ``quality_scorer``: the difficulty objective's f scores for videos whose label row has
    no ``f_score``; default: sampled answers of the base with the adapter disabled (e.g.
    pass a constrained-decoding scorer, which always yields a score).
    ``metadata``: extra entries for the version's metadata.json (e.g. where the labels came from).
    ``activate``: "never", "always", "if-better" (held-out SRCC improved) or "if-not-worse".
    """
    from . import loop
    from .policy import Policy

    settings = settings or load_settings()
    ts = settings.training
    objective = objective or ts.objective
    if objective not in KINDS:  # a version's kind is the objective it was trained for
        raise TrainingDataError(f"unknown objective {objective!r}: use quality or difficulty")
    report = progress or (lambda fraction, message: None)
    store = VersionStore(model_dir)

    # 1. Data, refused early.
    label_set = labels if isinstance(labels, LabelSet) else load_labels(labels)
    skipped = [str(p) for p in label_set.problems]
    for problem in skipped:
        log.warning("label skipped: %s", problem)
    split = split_labels(label_set, held_out_fraction=ts.held_out_fraction, seed=ts.split_seed,
                         min_train=ts.min_train_labels, min_held_out=ts.min_held_out_labels)
    all_rows = list(split.train) + list(split.held_out)
    mos_all = dict(zip([r.video for r in all_rows], _normalised(all_rows, mos_range)))
    source_rows: list[LabelRow] = []
    if source_labels is not None:
        source_set = load_labels(source_labels)
        skipped += [f"source {p}" for p in source_set.problems]
        source_rows = list(source_set.rows)
    source_mos = _normalised(source_rows, None) if source_rows else []
    hash_of_data = data_hash(all_rows + source_rows)

    # 2. Where training starts.
    parent, start_adapter = _resolve_start(store, objective, adapter, settings)
    report(0.02, "loading model")
    policy = Policy.load(settings, start_adapter)

    # 3. Quality scores of f (difficulty objective: e = |f - MOS|), adapter disabled.
    f_scores: dict[Path, float] = {}
    if objective == "difficulty":
        all_labelled = all_rows + source_rows
        f_scores = {r.video: r.f_score for r in all_labelled if r.f_score is not None}
        videos = [r.video for r in all_labelled if r.f_score is None]
        if videos:
            report(0.05, f"scoring {len(videos)} video(s) with the quality model")
            scorer = quality_scorer or (lambda paths: policy.predict(
                paths, "quality", samples=ts.eval_samples, max_new_tokens=ts.f_max_new_tokens, use_adapter=False,
                fallback=ts.f_unparsed == "constrained"))
            predicted = np.asarray(scorer(videos), dtype=np.float64)
            f_scores.update({v: float(s) for v, s in zip(videos, predicted) if math.isfinite(s)})
        dropped = [str(r.video) for r in all_labelled if r.video not in f_scores]
        if dropped:
            log.warning("%d video(s) got no parseable quality score from f and are left out of g's targets: %s",
                        len(dropped), ", ".join(dropped[:10]))

    def held_out_metrics(stage: str) -> dict[str, Any] | None:
        videos = [r.video for r in split.held_out]
        task: Task = "quality" if objective == "quality" else "difficulty"
        budget = ts.f_max_new_tokens if task == "quality" else ts.max_new_tokens
        predictions = policy.predict(videos, task, samples=ts.eval_samples, max_new_tokens=budget)
        if objective == "quality":
            targets = np.array([mos_all[v] for v in videos])
        else:  # g should rank f's absolute error
            targets = np.array([abs(f_scores[v] - mos_all[v]) if v in f_scores else np.nan for v in videos])
        metrics = _metrics(predictions, targets)
        log.info("held-out %s: %s", stage, metrics)
        return metrics

    report(0.15, "evaluating before training")
    before = held_out_metrics("before")

    # 4. Train.
    def example(row: LabelRow, mos: float, dataset: str) -> loop.TrainExample | None:
        if objective == "difficulty" and row.video not in f_scores:
            return None
        return loop.TrainExample(row.video, mos, dataset, f_scores.get(row.video))

    examples = [e for r in split.train if (e := example(r, mos_all[r.video], "target")) is not None]
    examples += [e for r, m in zip(source_rows, source_mos) if (e := example(r, m, "source")) is not None]
    if len(examples) < 2:
        raise TrainingDataError(f"only {len(examples)} training video(s) usable for the {objective} objective")

    def on_step(step: loop.StepReport) -> None:
        report(0.25 + 0.65 * step.step / step.total_steps,
               f"step {step.step}/{step.total_steps} loss {step.loss:.4f} reward {step.reward:.3f}")

    steps = loop.train(policy, examples, ts, objective, seed=ts.split_seed, on_step=on_step)
    report(0.9, "evaluating after training")
    after = held_out_metrics("after")

    # 5. Publish, then maybe activate.
    kind = objective
    protocol = training_protocol(ts, objective, source=len(source_rows), train=len(split.train),
                                 held_out=len(split.held_out))
    if not source_rows:
        log.warning("no source-domain labels: training on the target labels only (the reference trains on "
                    "its 813 source videos plus the target picks); pass source labels (MDSVQA_TRAIN_SOURCE_LABELS)")
    with store.draft(kind, parent=parent, data_hash=hash_of_data, protocol=protocol, settings={
        "objective": objective, "base": settings.base, "start_adapter": start_adapter,
        "training": ts.model_dump(mode="json"), "mos_range": list(mos_range) if mos_range else None,
        "labels": {"train": len(split.train), "held_out": len(split.held_out), "source": len(source_rows),
                   "skipped": len(skipped)},
    }, steps=len(steps), tiny_model=bool(policy.base.is_tiny), **(metadata or {})) as draft:
        policy.save_adapter(draft.adapter_dir)
        draft.metadata["metrics_before"] = before
        draft.metadata["metrics_after"] = after
    version = draft.published
    assert version is not None
    activated = should_activate(activate, before, after)
    if activated:
        store.activate(version.id)
    report(1.0, f"published {version.id}" + (" (active)" if activated else ""))
    return TrainingOutcome(version.id, kind, activated, before, after, len(steps), skipped)


def training_protocol(ts: TrainingSettings, objective: str, *, source: int, train: int, held_out: int
                      ) -> dict[str, Any]:
    """What a version's numbers mean: geometry, schedule, frames, data regime, split, seeds, metric."""
    compared, per_step = ts.geometry(objective)
    return {
        "geometry": {"videos_compared": compared, "videos_per_step": per_step,
                     "rollouts_per_video": ts.group_size if objective == "quality" else 1},
        "schedule": {"learning_rate": ts.learning_rate, "decay": "linear to 0", "epochs": ts.epochs,
                     "max_steps": ts.max_steps, "kl_beta": ts.kl_beta},
        "rollouts": {"temperature": ts.temperature, "top_k": TOP_K, "top_p": TOP_P, "repetition_penalty": 1.0,
                     "max_new_tokens": ts.max_new_tokens},
        "frames": {"training": f"{ts.max_frames} random sorted frames of the 2-fps sample, redrawn every step, "
                   f"squashed to {ts.frame_side}x{ts.frame_side}", "evaluation": "the inference input"},
        "data": {"target_train": train, "target_held_out": held_out, "source": source,
                 "regime": "source + target" if source else "target only (no source-domain labels)"},
        "f_estimate": {"prompt": "quality, thinking", "input": "inference", "max_new_tokens": ts.f_max_new_tokens,
                       "temperature": "checkpoint's", "top_k": TOP_K, "top_p": TOP_P, "samples": ts.eval_samples,
                       "unparsed": ts.f_unparsed},
        "split": {"held_out_fraction": ts.held_out_fraction, "seed": ts.split_seed},
        "seeds": {"split": ts.split_seed, "rollouts_and_frames": ts.split_seed},
        "metric": "SRCC and PLCC on held-out target labels after the reference's 4-parameter logistic fit "
                  "(raw predictions when the fit is NaN or constant)",
    }


def _resolve_start(store: VersionStore, objective: Kind, adapter: str | None, settings: Settings
                   ) -> tuple[str | None, str | None]:
    """(parent version id, adapter to load) for the ``adapter`` argument of :func:`run_training`."""
    if adapter == "active":
        active = store.active(objective)
        adapter = active.id if active is not None else "stock"
    if adapter in (None, "stock"):
        return None, (settings.adapter if objective == "difficulty" else None)
    if not looks_like_version_id(adapter):
        return None, adapter  # a folder or hub id
    version = store.get(adapter)
    if version.kind != objective:
        raise TrainingDataError(f"version {adapter} is a {version.kind} adapter, not {objective}")
    return version.id, str(version.adapter_path)


def make_settings(settings: dict[str, Any] | None = None, training: dict[str, Any] | None = None) -> Settings:
    """Settings from the environment with explicit overrides, training overrides included.

    Training overrides go through ``TrainingSettings(**overrides)`` so that the
    ``MDSVQA_TRAIN_*`` environment still fills every knob not overridden.
    """
    from ..settings import TrainingSettings

    base = load_settings(**(settings or {}))
    clean = {k: v for k, v in (training or {}).items() if v is not None}
    if clean:
        base = base.model_copy(update={"training": TrainingSettings(**clean)})
    return base


def training_job(context, *, labels: str, model_dir: str, settings: dict[str, Any] | None = None,
                 training: dict[str, Any] | None = None, objective: str | None = None, adapter: str | None = "stock",
                 mos_range: list[float] | None = None, source_labels: str | None = None,
                 activate: Activation = "if-better") -> dict[str, Any]:
    """Job target (see :mod:`ml_backend.training.jobs`): JSON parameters in, JSON result out."""
    low_high = None
    if mos_range:
        low, high = mos_range  # JSON has lists; a range is two numbers
        low_high = (low, high)
    outcome = run_training(labels, model_dir, settings=make_settings(settings, training), objective=objective,
                           adapter=adapter, mos_range=low_high,
                           source_labels=source_labels, activate=activate,
                           progress=lambda fraction, message: context.progress(fraction, message))
    return outcome.to_json()
