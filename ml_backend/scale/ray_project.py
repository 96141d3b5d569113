"""``mdsvqa score-project --ray``: a Label Studio project scored by the Ray pool.

The single-process run (``server.project_run``) feeds the backend's scoring queue; here the
driver does what the queue does around the model, and the pool does the rest:

- tasks lacking a prediction of the actors' model version are listed; a task whose media
  the backend store knows under that version (``backend.sqlite``, on the driver) is answered
  from it and never dispatched; tasks sharing one media reference are scored once;
- decode tasks fetch the media on the worker nodes (``MediaResolver``: uploads with the
  token, local files under ``MDSVQA_LOCAL_FILES_ROOT`` of that node, presigned cloud URIs);
- each outcome is stored as the queue stores it (a score or a final error; a fetch failure
  is not stored, so the next run retries it), the score also in the content cache, and
  pushed through the same outbox, prediction format and priority as the backend's.

Not here (yet): the content cache is written, not read, for fetched media (the driver has no
copy to hash), and the selection features are not kept while scoring: the next ordering pass
computes those it lacks (``prioritize.features``).
"""

from __future__ import annotations

import logging

from ..errors import ConfigurationError
from ..settings import Settings

log = logging.getLogger(__name__)


def score_project_on_ray(settings: Settings, project_id: int, address: str, *, set_project_version: bool = True,
                         progress: bool = True, actors: int | None = None, actor_cpus: int | None = None):
    """Score the project's tasks on the Ray cluster at ``address``; a ProjectRunSummary as the plain run's."""
    from tqdm import tqdm

    from ..labelstudio.client import Connection, api_for
    from ..labelstudio.config import parse_label_config
    from ..labelstudio.media import describe, media_key
    from ..scoring.cache import CachedScore, ScoreCache
    from ..server.project_run import ProjectDelivery, ProjectRunSummary
    from ..server.store import BackendStore, StoredOutcome
    from .ray_pool import MediaAccess, PoolItem, RayPool

    api_key = settings.label_studio_api_key
    if not settings.label_studio_url or api_key is None:
        raise ConfigurationError("score-project needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    connection = Connection(settings.label_studio_url, api_key.get_secret_value())
    api = api_for(connection)
    config = parse_label_config(api.project_label_config(project_id))

    pool = RayPool.start(settings, address, actors=actors, actor_cpus=actor_cpus,
                         media=MediaAccess.from_settings(settings, connection))
    version = pool.model_version
    summary = ProjectRunSummary(project_id, version)
    store = BackendStore(settings.backend_state_path)
    cache = ScoreCache(settings.cache_path) if settings.use_cache else None
    delivery = ProjectDelivery(settings, api, project_id, config, version, summary)
    delivery.start()
    try:
        stored: list[tuple[int, StoredOutcome]] = []
        tasks_of: dict[str, list[int]] = {}  # media key -> tasks showing that video
        first: dict[str, tuple[str, int]] = {}  # media key -> (reference, a task id for presigning)
        unusable = 0
        for task_id, data in api.tasks_lacking_prediction(project_id, version):
            ref, why = config.media_ref(data)
            if ref is None:
                unusable += 1
                log.warning("task %s: no prediction: %s", task_id, why)
                continue
            key = media_key(ref, connection)
            known = store.outcome(version, key)
            if known is not None:
                stored.append((task_id, known))
                continue
            first.setdefault(key, (ref, task_id))
            tasks_of.setdefault(key, []).append(task_id)
        summary.lacking = unusable + len(stored) + sum(len(tasks) for tasks in tasks_of.values())
        summary.failed_video += unusable
        bar = tqdm(total=summary.lacking, desc=f"project {project_id}", unit="task", disable=not progress)
        bar.update(unusable)

        def deliver(task_id: int, difficulty: float | None, error: str | None) -> None:
            delivery.deliver(task_id, difficulty, error)
            bar.update(1)

        for task_id, outcome in stored:
            deliver(task_id, outcome.difficulty, outcome.error)
        keys = list(tasks_of)
        items = [PoolItem(index, first[key][0], describe(first[key][0]), task_id=first[key][1])
                 for index, key in enumerate(keys)]
        log.info("ray: project %s: %d task(s) answered from the backend store on the driver (not dispatched), "
                 "%d video(s) dispatched", project_id, len(stored), len(items))
        for result in pool.run(items):
            key = keys[result.index]
            if result.final:  # a score, or a video the model cannot read (as the backend's queue stores them)
                store.save_outcome(version, key, StoredOutcome(result.difficulty, result.error))
            if cache is not None and result.key and result.difficulty is not None:
                cache.put(result.key, CachedScore(result.difficulty, result.raw_text or "", result.version))
            for task_id in tasks_of[key]:
                deliver(task_id, result.difficulty, result.error)
        bar.close()
        delivery.finish(set_project_version=set_project_version)
    finally:
        delivery.stop()
        store.close()
        if cache is not None:
            cache.close()
        pool.close()
    return summary
