"""Job targets for the job-machinery tests (imported by the job process by name)."""

from __future__ import annotations

import time
from pathlib import Path


def wait_for_release(context, release: str, timeout: float = 120.0) -> dict:
    """Report progress, then block until the test creates ``release`` (or give up after ``timeout``)."""
    context.progress(0.25, "waiting for release", force=True)
    deadline = time.monotonic() + timeout
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.01)
    return {"released": True, "job_id": context.job_id}


def fail(context, message: str) -> dict:
    raise ValueError(message)


def backend_probe(context, *, project_id: int, model_dir: str, settings: dict, training: dict,
                  trigger: str) -> dict:
    """Stands in for the backend's project training job: records what it was given, waits for MODEL_DIR/release."""
    import hashlib
    import json
    import os

    token = os.environ.get("LABEL_STUDIO_API_KEY", "")
    probe = {"project_id": project_id, "trigger": trigger, "url": os.environ.get("LABEL_STUDIO_URL"),
             "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
             "secret_env": sorted(k for k in os.environ
                                  if k in ("MDSVQA_BASIC_AUTH_PASSWORD", "MDSVQA_WEBHOOK_SECRET")),
             "settings_keys": sorted(settings), "objectives": training.get("objectives")}
    Path(model_dir, f"probe-{context.job_id}.json").write_text(json.dumps(probe))
    context.progress(0.4, "probing", force=True)
    release = Path(model_dir, "release")
    deadline = time.monotonic() + 120
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.01)
    print("probe done")  # the job log
    return {"version_id": None, "runs": [{"summary": "probe run"}]}


def project_job_crashing_while_saving(context, **params) -> dict:
    """The backend's real project training job, killed (SIGKILL, no cleanup) while it saves its first version.

    Everything up to the save is real: labels from Label Studio, media, training. Then the
    adapter is in the staging folder, metadata half written, and the process dies.
    """
    import os
    import signal

    from ml_backend.training import versions
    from ml_backend.training.project_job import project_training_job

    def die_while_publishing(store, draft):
        (draft.staging / versions.METADATA_FILE).write_text('{"id": "' + draft.id + '", "kind": ')
        context.progress(0.5, f"crashing while saving {draft.id}", force=True)
        os.kill(os.getpid(), signal.SIGKILL)

    versions.VersionStore._publish = die_while_publishing
    return project_training_job(context, **params)
