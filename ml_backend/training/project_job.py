"""A training run started from Label Studio, as a job process: labels -> media -> f, then g -> versions.

Started by the backend's "Start Training" hook (``ml_backend.server.training``) through
:class:`ml_backend.training.jobs.JobManager`, so it runs in its own process, never in a web
request, one at a time per MODEL_DIR, and a kill at any point leaves the active versions
as they were. The Label Studio token reaches this process only through its environment
(``LABEL_STUDIO_API_KEY``), never its arguments, ``request.json`` or the log.

Steps:

1. Labels: every task with a completed annotation, its MOS from the project's MOS control
   (``ml_backend.labelstudio.labels``: annotations averaged, skipped ones ignored, mapped to
   1-5 by the control's min/max). Too few labels are refused here, before any download.
2. Media: each labelled video through the backend's bounded downloader into the job folder
   (local-files media is read in place); ``labels.jsonl`` = ``{"video", "mos"}`` rows.
3. For each objective of ``MDSVQA_TRAIN_OBJECTIVES`` (default quality, then difficulty):
   train from the active version of that kind (or the stock model), evaluate before/after on
   the held-out split, publish, promote per ``MDSVQA_TRAIN_PROMOTE``. The difficulty
   objective's target is e = |f - MOS| with the *current* f: the active quality version
   (just promoted, if it was), else the base model; its scores are computed first and
   written as ``f_score`` into the label rows.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..answers import SCORE_MAX, SCORE_MIN
from ..errors import ConfigurationError, TrainingDataError
from ..settings import Settings, TrainingSettings
from .reporting import describe_metrics
from .versions import VersionStore

log = logging.getLogger(__name__)

TARGET = "ml_backend.training.project_job:project_training_job"
LABELS_FILE = "labels.jsonl"
MEDIA_DIR = "media"
COLLECT_SHARE = 0.15  # of the job's progress bar


def labels_needed(ts: TrainingSettings) -> int:
    """The fewest labels that pass the train/held-out split's minimums (see ``data.split_labels``)."""
    total = ts.min_train_labels + ts.min_held_out_labels
    while total - max(ts.min_held_out_labels, round(total * ts.held_out_fraction)) < ts.min_train_labels:
        total += 1
    return total


def _quiet_http_logs() -> None:
    # media URLs can carry presigned signatures; the SDK logs every URL it resolves at INFO
    for name in ("httpx", "httpcore", "urllib3", "label_studio_sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --- labels and media ------------------------------------------------------------------------------

def gather_labels(settings: Settings, project_id: int, job_dir: Path,
                  progress: Callable[[float, str], None]) -> tuple[Path, dict[str, Any]]:
    """Collect the project's labels, fetch their videos and write ``labels.jsonl``; return it and a summary."""
    from ..labelstudio.client import Connection, LabelStudioApi
    from ..labelstudio.config import parse_label_config
    from ..labelstudio.labels import LabelIssue, collect_labels
    from ..labelstudio.media import MediaError, MediaResolver

    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise ConfigurationError("no Label Studio URL and token for this job (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY)")
    connection = Connection(settings.label_studio_url, settings.label_studio_api_key.get_secret_value())
    api = LabelStudioApi(connection)
    config = parse_label_config(api.project_label_config(project_id))
    collected = collect_labels(api.annotated_tasks(project_id), config)
    for issue in collected.issues:
        log.warning("left out %s", issue)
    ts = settings.training
    needed = labels_needed(ts)
    found = len(collected.tasks)
    log.info("project %s: %d labelled task(s) with a MOS in '%s' (%d annotation(s) ignored, %d task(s) left out); "
             "scale %s from the %s", project_id, found, config.mos.name if config.mos else "?",
             collected.ignored_annotations, len(collected.issues), collected.scale, collected.scale_source)
    if found < needed:
        raise TrainingDataError(
            f"too few labels to train: project {project_id} has {found} labelled task(s) with a MOS in "
            f"'{config.mos.name if config.mos else '?'}', a run needs at least {needed} ({ts.min_train_labels} to "
            f"train, {max(ts.min_held_out_labels, round(needed * ts.held_out_fraction))} held out for evaluation; "
            "MDSVQA_TRAIN_MIN_TRAIN_LABELS, MDSVQA_TRAIN_MIN_HELD_OUT_LABELS, MDSVQA_TRAIN_HELD_OUT_FRACTION). "
            "Label more videos and press Start Training again.")

    media_dir = job_dir / MEDIA_DIR
    resolver = MediaResolver(media_dir, max_bytes=settings.media_max_bytes, timeout_s=settings.media_timeout_s,
                             local_files_root=settings.local_files_root)
    mos = collected.normalised()
    rows: list[dict[str, Any]] = []
    done = 0

    def fetch(index: int):
        task = collected.tasks[index]
        try:
            return index, resolver.fetch(task.ref, task_id=task.task_id, connection=connection), None
        except MediaError as exc:
            return index, None, str(exc)

    try:
        with ThreadPoolExecutor(max_workers=settings.download_workers, thread_name_prefix="mdsvqa-fetch") as pool:
            for index, media, error in pool.map(fetch, range(found)):
                task = collected.tasks[index]
                done += 1
                progress(done / found, f"fetched {done}/{found} labelled videos")
                if media is None:
                    collected.issues.append(LabelIssue(task.task_id, f"video not fetched: {error}"))
                    log.warning("left out task %s: video not fetched: %s", task.task_id, error)
                    continue
                rows.append({"video": str(media.path), "mos": mos[index], "mos_raw": task.mos, "votes": task.votes,
                             "task": task.task_id})
    finally:
        resolver.close()
    labels = job_dir / LABELS_FILE
    labels.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    summary = collected.summary() | {"project": project_id, "mos_control": config.mos.name if config.mos else None,
                                     "rows": len(rows), "left_out_tasks": [str(i) for i in collected.issues[:20]]}
    return labels, summary


def with_f_scores(labels: Path, out: Path, settings: Settings, f_version) -> tuple[Path, int]:
    """Copy of a JSONL label file with ``f_score`` = the current quality model's score of each video.

    ``f_version``: the active quality version, or None for the base model (adapters off).
    Sampled thinking-prompt answers as in the reference (``MDSVQA_TRAIN_EVAL_SAMPLES``);
    where none parses, the constrained answer, so every readable video gets an f. Returns
    the new file and how many videos got no score (unreadable).
    """
    import numpy as np

    from .policy import Policy

    rows = [json.loads(line) for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    base = labels.parent
    videos = [Path(r["video"]) if Path(r["video"]).is_absolute() else base / r["video"] for r in rows]
    ts = settings.training
    policy = Policy.load(settings, str(f_version.adapter_path) if f_version is not None else None)
    try:
        scores = policy.predict(videos, "quality", samples=ts.eval_samples, max_new_tokens=ts.f_max_new_tokens,
                                use_adapter=f_version is not None, fallback=ts.f_unparsed == "constrained")
    finally:
        del policy
        _free_memory()
    missing = 0
    for row, video, score in zip(rows, videos, scores):
        row["video"] = str(video)
        if np.isfinite(score):
            row["f_score"] = float(score)
        else:
            missing += 1
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out, missing


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _remove_old_media(job_dir: Path) -> None:
    """Media folders of earlier jobs (a killed job cannot remove its own); we hold the job lock."""
    for folder in job_dir.parent.glob(f"job-*/{MEDIA_DIR}"):
        if folder.parent != job_dir:
            shutil.rmtree(folder, ignore_errors=True)


# --- the job ---------------------------------------------------------------------------------------

def project_training_job(context, *, project_id: int, model_dir: str, settings: dict[str, Any] | None = None,
                         training: dict[str, Any] | None = None, trigger: str = "button") -> dict[str, Any]:
    """Job target (see :mod:`ml_backend.training.jobs`): train the configured objectives on a project's labels."""
    from .pipeline import make_settings, run_training

    _quiet_http_logs()
    config = make_settings(settings, training)
    ts = config.training
    job_dir = Path(context.job_dir)
    store = VersionStore(model_dir)
    for leftover in store.clean_leftovers():
        log.warning("removed %s (%s)", leftover.path, leftover.reason)
    _remove_old_media(job_dir)
    log.info("training run for Label Studio project %s (%s): objectives %s, promote %s", project_id, trigger,
             ",".join(ts.objectives), ts.promote)

    context.progress(0.0, "collecting labels from Label Studio", force=True)
    try:
        labels, label_summary = gather_labels(
            config, project_id, job_dir, lambda f, m: context.progress(COLLECT_SHARE * f, m))
        source_labels = str(ts.source_labels) if ts.source_labels else None
        runs: list[dict[str, Any]] = []
        share = (1.0 - COLLECT_SHARE) / len(ts.objectives)
        for number, objective in enumerate(ts.objectives):
            start = COLLECT_SHARE + number * share

            def report(fraction: float, message: str, _start=start, _objective=objective) -> None:
                context.progress(_start + share * fraction, f"{_objective}: {message}")

            metadata: dict[str, Any] = {"source": {"label_studio_project": project_id, "job": context.job_id,
                                                   "trigger": trigger, "labels": label_summary["rows"]}}
            train_labels, train_source = labels, source_labels
            if objective == "difficulty":
                f_version = store.active("quality")
                metadata["f_model"] = f_version.id if f_version is not None else "base"
                report(0.0, f"scoring the labelled videos with f ({metadata['f_model']}) for |f - MOS|")
                train_labels, missing = with_f_scores(labels, job_dir / "labels-difficulty.jsonl", config, f_version)
                if missing:
                    log.warning("%d labelled video(s) got no quality score and are left out of difficulty training",
                                missing)
                if source_labels:
                    train_source = str(with_f_scores(Path(source_labels), job_dir / "source-difficulty.jsonl",
                                                     config, f_version)[0])
            outcome = run_training(train_labels, model_dir, settings=config, objective=objective, adapter="active",
                                   mos_range=(SCORE_MIN, SCORE_MAX), source_labels=train_source, activate=ts.promote,
                                   progress=report, metadata=metadata)
            _free_memory()
            verdict = "promoted (active)" if outcome.activated else f"not promoted ({ts.promote})"
            line = (f"{objective} {outcome.version_id}: held-out "
                    f"{describe_metrics(outcome.metrics_before, outcome.metrics_after)}; {verdict}")
            log.info("%s", line)
            runs.append(outcome.to_json() | {"summary": line, "promote": ts.promote})
    finally:
        shutil.rmtree(job_dir / MEDIA_DIR, ignore_errors=True)

    message = " | ".join(run["summary"] for run in runs)
    context.progress(1.0, message, force=True)
    return {
        "project": project_id,
        "trigger": trigger,
        "labels": label_summary,
        "runs": runs,
        "version_ids": [run["version_id"] for run in runs],
        "version_id": runs[-1]["version_id"] if runs else None,
        "active": {kind: store.pointer(kind).version for kind in ("quality", "difficulty")},
    }
