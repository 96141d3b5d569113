"""``mdsvqa demo``: the whole loop on loopback, offline, in a few minutes.

Label Studio and the backend start as subprocesses; a project gets the shared videos and a
derived pool; the backend scores them (and keeps their features); the queue is ordered by
difficulty-diversity selection; the top of the queue is printed. ``check`` mode verifies the
result headless and stops; otherwise both services run until Ctrl-C.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import MdsVqaError
from ..labelstudio.client import Connection, LabelStudioApi
from ..labelstudio.config import parse_label_config
from ..labelstudio.predictions import control_numbers
from ..prioritize.view import RANK_FIELD, VIEW_TITLE, VIEW_TITLE_PREFIX
from .pool import derive_pool
from .processes import REPO, BackendService, LabelStudioService, start_backend, start_label_studio

SHARED_VIDEOS = REPO.parent / "shared" / "videos"


class DemoCheckFailed(MdsVqaError):
    pass


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    videos: Path = SHARED_VIDEOS
    port: int | None = None
    budget: int = 8
    check: bool = False
    show: int = 10
    reset: bool = False


MARKER = ".mdsvqa-demo"  # written into every demo folder: --reset deletes only folders that hold it


def reset_workdir(workdir: Path) -> None:
    """Delete the demo folder (Label Studio's data and user, scores, versions, logs) to start clean.

    Only a folder the demo made (it holds MARKER) is deleted; anything else is refused.
    """
    if not workdir.exists():
        return
    if not (workdir / MARKER).exists():
        raise MdsVqaError(f"{workdir} was not made by `mdsvqa demo` (no {MARKER} in it): not deleting it")
    shutil.rmtree(workdir)
    say(f"reset: removed {workdir}")


def say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def choose_model(workdir: Path) -> tuple[str, str, bool]:
    """(base, adapter, is_tiny): configured or cached real checkpoints, else the tiny random model."""
    from ..model.loading import resolve_model
    from ..settings import load_settings

    configured = load_settings()
    try:
        spec = resolve_model(load_settings(offline=True))
        if not spec.is_tiny:
            return configured.base, configured.adapter, False
    except MdsVqaError:
        pass
    from ..model.tiny import write_tiny_model

    tiny = workdir / "tiny-model"
    if not (tiny / "adapter" / "adapter_config.json").exists():
        write_tiny_model(tiny)
    return str(tiny / "base"), str(tiny / "adapter"), True


def _label_config() -> str:
    path = REPO / "label_config.xml"
    if not path.exists():
        raise MdsVqaError(f"{path} not found: run the demo from a checkout of the repository")
    return path.read_text()


@functools.cache
def _difficulty_control() -> str:
    return parse_label_config(_label_config()).difficulty.name


def _difficulty(prediction: dict) -> float | None:
    control = _difficulty_control()
    numbers = [n for n in control_numbers(prediction.get("result") or [], control) if isinstance(n, (int, float))]
    return float(numbers[0]) if numbers else None


def _good_prediction(task: dict) -> dict | None:
    return next((p for p in task.get("predictions") or [] if _difficulty(p) is not None), None)


def _wait(condition, *, timeout: float, what: str, services: list, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for service in services:
            if not service.managed.alive():
                raise MdsVqaError(f"{service.managed.name} stopped while waiting for {what}; log: "
                                  f"{service.managed.log}")
        if time.monotonic() > deadline:
            raise MdsVqaError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# With the tiny random model on a CPU, CLIP's OpenAI weights are not at hand offline and RN101 on every
# frame would be slow: the demo keeps the tiny model's vision-tower features, whose lambda must be explicit.
# The tiny random model's deviations, each a named setting: vision features (no CLIP weights
# offline), and f estimated by its constrained answers (its sampled text never parses).
TINY_ENV = {"MDSVQA_FEATURES_EXTRACTOR": "vision", "MDSVQA_PRIORITY_DIVERSITY_LAMBDA": "0.25",
            "MDSVQA_TRAIN_F_UNPARSED": "constrained", "MDSVQA_TRAIN_F_MAX_NEW_TOKENS": "32"}


def run_demo(options: DemoOptions) -> int:
    workdir = options.workdir.resolve()
    if options.reset:
        reset_workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).touch()
    say(f"working in {workdir}; logs: {workdir / 'label-studio' / 'label-studio.log'} and "
        f"{workdir / 'backend.log'} (--reset starts from scratch)")
    base, adapter, tiny = choose_model(workdir)
    tiny_env = TINY_ENV if tiny else {}
    if tiny:
        say("real checkpoints not available offline: using a TINY RANDOM model. Every part of the loop runs; "
            "the difficulty values are MEANINGLESS. Set MDSVQA_BASE/MDSVQA_ADAPTER for real ones.")
    else:
        say(f"model: {base} + {adapter}")

    sources = sorted(options.videos.glob("*.mp4"))
    if not sources:
        raise MdsVqaError(f"no .mp4 videos in {options.videos}")
    say(f"deriving the pool from {len(sources)} videos (resolutions, bitrates, blur, noise) ...")
    videos = sources + derive_pool(sources, workdir / "pool")

    services: list = []
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        say("starting Label Studio (about 30 s the first time) ...")
        studio_service: LabelStudioService = start_label_studio(workdir / "label-studio", port=options.port)
        services.append(studio_service)
        say("starting the backend ...")
        backend: BackendService = start_backend(
            base=base, adapter=adapter, cache_dir=workdir / "cache", model_dir=workdir / "models",
            log=workdir / "backend.log",
            extra_env={"LABEL_STUDIO_URL": studio_service.url, "LABEL_STUDIO_API_KEY": studio_service.token,
                       "MDSVQA_OFFLINE": "true", "HF_HUB_OFFLINE": "1", "MDSVQA_SCORE_PROJECT_ON_SETUP": "true",
                       # the backend re-orders by itself too: same K as the command, so both give one order
                       "MDSVQA_PRIORITY_BUDGET": str(options.budget), **tiny_env})
        services.append(backend)
        studio = LabelStudioApi(Connection(studio_service.url, studio_service.token), timeout=120)

        project = studio.create_project(f"MDS-VQA demo {time.strftime('%H:%M:%S')}", _label_config())
        say(f"project {project}: uploading {len(videos)} videos ...")
        studio.import_files(project, videos)
        studio.connect_ml_backend(project, backend.url, title="mdsvqa")
        say("backend connected; scoring every task in the background ...")

        def scored() -> list[dict] | None:
            tasks = studio.tasks_in_view(project)
            done = [t for t in tasks if _good_prediction(t)]
            return tasks if len(done) == len(tasks) else None

        tasks = _wait(scored, timeout=1200, what="difficulty predictions for every task", services=services,
                      interval=2.0)
        say(f"all {len(tasks)} tasks have a predicted difficulty; ordering the queue ...")
        _prioritize(studio_service, project, options.budget, cache_dir=workdir / "cache", base=base, adapter=adapter,
                    env=tiny_env)
        _report(studio_service, project, options.budget, cache_dir=workdir / "cache", base=base, adapter=adapter,
                env=tiny_env,
                out=workdir / "report.html")
        view = next(v for v in studio.views(project) if str(v["data"].get("title")).startswith(VIEW_TITLE_PREFIX))
        queue = studio.tasks_in_view(project, view["id"])
        _print_queue(studio_service, project, queue, options.show)
        print(f"  report: {workdir / 'report.html'} (mdsvqa report --project {project})\n", flush=True)
        if options.check:
            _check(studio, project, view["id"], queue)
            say("check passed: every task predicted, versions aligned, the queue follows the computed order")
            return 0
        say("Ctrl-C stops Label Studio and the backend.")
        try:
            while not stop.wait(1.0):
                if not all(s.managed.alive() for s in services):
                    raise MdsVqaError("a service stopped; logs are in " + str(workdir))
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        for service in reversed(services):
            service.managed.stop()
        if services:
            say("stopped Label Studio and the backend")


def _project_command(name: str, service: LabelStudioService, project: int, arguments: list[str],
                     extra_env: dict[str, str] | None = None) -> None:
    """Run ``mdsvqa <name> --url ... --project ...`` as its own process, the token in its environment."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "MDSVQA_OFFLINE": "true", "HF_HUB_OFFLINE": "1", "LABEL_STUDIO_API_KEY": service.token,
           **(extra_env or {})}
    command = [sys.executable, "-m", "ml_backend.cli", name, "--url", service.url, "--project", str(project),
               *arguments]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise MdsVqaError(f"mdsvqa {name} failed:\n{result.stderr[-2000:]}")


def _prioritize(service: LabelStudioService, project: int, budget: int, *, cache_dir: Path, base: str,
                adapter: str, env: dict[str, str]) -> None:
    # the backend's cache, model and feature settings: the command reads the features the backend kept while scoring
    _project_command("prioritize", service, project,
                     ["--budget", str(budget), "--cache-dir", str(cache_dir), "--base", base, "--adapter", adapter],
                     env)


def _report(service: LabelStudioService, project: int, budget: int, *, cache_dir: Path, base: str, adapter: str,
            env: dict[str, str], out: Path) -> None:
    _project_command("report", service, project, ["--budget", str(budget), "--cache-dir", str(cache_dir),
                                                   "--base", base, "--adapter", adapter, "--out", str(out)], env)


def _print_queue(service: LabelStudioService, project: int, queue: list[dict], show: int) -> None:
    print(f"\nLabel Studio: {service.url}/projects/{project}/data", flush=True)
    print(f"  user: {service.username}\n  password: {service.password}", flush=True)
    print(f"  view '{VIEW_TITLE}' + 'Label Tasks As Displayed' serves this order:\n", flush=True)
    print(f"  {'#':>3}  {'task':>5}  {'priority':>8}  {'difficulty':>10}  video", flush=True)
    for rank, task in enumerate(queue[:show], start=1):
        prediction = _good_prediction(task) or {}
        number = _difficulty(prediction)
        name = str(task["data"].get("video", "")).rsplit("/", 1)[-1].split("-", 1)[-1]
        print(f"  {rank:>3}  {task['id']:>5}  {prediction.get('score', 0):>8.5f}  {number:>10.2f}  {name}", flush=True)
    print(flush=True)


def _check(studio: LabelStudioApi, project: int, view: int, queue: list[dict]) -> None:
    details = studio.project(project)
    versions = {(_good_prediction(t) or {}).get("model_version") for t in queue}
    if len(versions) != 1 or details.model_version not in versions:
        raise DemoCheckFailed(f"model versions differ: project {details.model_version!r}, "
                              f"predictions {sorted(map(str, versions))}")
    scores = [(_good_prediction(t) or {}).get("score") for t in queue]
    given = [s for s in scores if s is not None]
    if len(given) != len(scores) or given != sorted(given, reverse=True):
        raise DemoCheckFailed(f"the view is not ordered by priority: {scores[:10]}")
    if len(set(scores)) != len(scores):
        raise DemoCheckFailed("priorities are not distinct: the order would be ambiguous")
    ranks = [t["data"].get(RANK_FIELD) for t in queue]
    if ranks != list(range(1, len(queue) + 1)):
        raise DemoCheckFailed(f"the tasks' {RANK_FIELD} column does not follow the queue: {ranks[:10]}")
    first = studio.next_task(project, view)
    if not first or first.get("id") != queue[0]["id"]:
        raise DemoCheckFailed(f"/next served task {first and first.get('id')}, the queue starts with {queue[0]['id']}")
