"""The backend's progress for people: one JSON value (GET /status.json), the same as plain HTML (GET /status),
and the pool report of the latest ordering pass (GET /report).

Everything is read from what the service already holds: the scoring queue, the outbox's
entries, each project's latest ordering pass (``service.priority.last``), the training job's
status and the version store. Nothing calls Label Studio, so a page never waits on it. The
HTML is rendered on the server, with no script and no external asset; every number it shows
carries ``data-key="<path in the JSON>"`` and is written exactly as the JSON holds it (floats
are rounded once, in the JSON), so the page and ``/status.json`` can be compared. Times are
absolute (ISO 8601, UTC): two snapshots of an idle backend differ only in ``generated_at``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import threading
import time
from collections import Counter
from typing import Any

SPV_DIGITS = 3  # seconds per video
ETA_DIGITS = 1
METRIC_DIGITS = 4
SCORE_DIGITS = 6  # queue priorities: distinct at this precision within a page of the head
HEAD = 10  # queue head rows shown per project
WAITING = 20  # outbox entries listed
_report_lock = threading.Lock()  # matplotlib's pyplot is not thread-safe


def _iso(seconds: float | None) -> str | None:
    if not seconds:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def _round(value: Any, digits: int) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return None
    return round(float(value), digits)


def seconds_per_video(registry: Any) -> float | None:
    """Model seconds per video so far (scoring batch time over videos through the model), None before any."""
    total = registry.get_sample_value("mdsvqa_scoring_batch_seconds_sum") or 0.0
    videos = sum(registry.get_sample_value("mdsvqa_videos_scored_total", {"result": result}) or 0.0
                 for result in ("ok", "error"))
    return total / videos if total > 0 and videos > 0 else None


def eta(count: int, per_video: float | None) -> float | None:
    """Seconds to score ``count`` more videos at the rate so far (0 when none; None while the rate is unknown)."""
    if count <= 0:
        return 0.0
    return None if per_video is None else round(count * per_video, ETA_DIGITS)


def _entry(entry: Any) -> dict[str, Any]:
    return {"kind": entry.kind, "key": entry.key, "due_at": _iso(entry.due),
            "attempt": entry.attempt, "reason": str(entry.payload.get("reason") or "") or None,
            "last_error": (entry.last_error or "")[:300] or None}


def _project(project_id: int, summary: Any, entry: Any, running: bool, per_video: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": project_id, "next_pass": _entry(entry) if entry is not None else None,
                           "pass_running": running, "last_pass": None}
    if summary is None:
        return row
    unscored = summary.tasks - summary.predicted
    row.update({
        "model_version": summary.model_version,
        "tasks": summary.tasks,
        "scored": summary.predicted,
        "unscored": unscored,
        "labeled": len(summary.labeled),
        "ordered": len(summary.order),
        "unusable": len(summary.without_difficulty) - summary.lacking_prediction,
        "picks": len(summary.picks),
        "budget": summary.budget,
        "eta_s": eta(unscored, per_video),
        "view_id": summary.view_id,
        "head": [{"rank": rank, "task": item.task_id, "difficulty": summary.difficulty.get(item.task_id),
                  "score": round(item.priority, SCORE_DIGITS), "picked": item.picked}
                 for rank, item in enumerate(summary.order[:HEAD], start=1)],
    })
    row["last_pass"] = {
        "finished": _iso(summary.finished), "seconds": round(summary.seconds, 2), "scores_written": summary.updated,
        "fields_written": summary.fields_updated, "view": summary.view_action, "lambda": summary.lam,
        "extractor": summary.extractor, "sampling": summary.sampling,
    }
    return row


def _metrics(metrics: dict | None) -> dict[str, float | None]:
    metrics = metrics or {}
    return {key: _round(metrics.get(key), METRIC_DIGITS) for key in ("srcc", "plcc")}


def _training(service: Any) -> dict[str, Any]:
    from ..report.versions import version_rows

    status = service.train_status()
    job = status.get("job") or None
    body: dict[str, Any] = {"running": bool(status.get("running")), "job": None, "runs": [], "versions": []}
    if status.get("detail"):
        body["detail"] = status["detail"]
    if job:
        body["job"] = {key: job.get(key) for key in ("job_id", "state", "message", "started", "finished", "error",
                                                      "stale")}
        body["job"]["progress"] = _round(job.get("progress"), 3)
        for run in (job.get("result") or {}).get("runs") or []:
            before, after = _metrics(run.get("metrics_before")), _metrics(run.get("metrics_after"))
            body["runs"].append({"kind": run.get("kind"), "version_id": run.get("version_id"),
                                 "activated": bool(run.get("activated")), "srcc_before": before["srcc"],
                                 "srcc_after": after["srcc"], "plcc_before": before["plcc"],
                                 "plcc_after": after["plcc"]})
    try:
        rows = version_rows(service.settings.model_dir)
    except Exception as exc:  # noqa: BLE001 - a broken store must not break the status page
        body["versions_error"] = f"{type(exc).__name__}: {exc}"
        rows = []
    for row in rows:
        before, after = _metrics(row.before), _metrics(row.after)
        body["versions"].append({"id": row.id, "kind": row.kind, "active": row.active, "created": row.created,
                                 "labels": row.labels, "srcc_before": before["srcc"], "srcc_after": after["srcc"],
                                 "plcc_before": before["plcc"], "plcc_after": after["plcc"]})
    return body


def snapshot(service: Any, *, now: float | None = None) -> dict[str, Any]:
    """Everything the status page shows, as JSON-ready data (``service``: a BackendService)."""
    now = time.time() if now is None else now
    registry = service.metrics.registry
    per_video = seconds_per_video(registry)
    pending = service.queue.pending
    entries = service.outbox.pending()
    counts = Counter(entry.kind for entry in entries)
    kinds = sorted(service.outbox.kinds)
    model: dict[str, Any] = {"state": service.scorer.state, "version": None}
    if model["state"] == "ready":
        model["version"] = service.scorer.get().model_version
    elif model["state"] == "failed":
        model["error"] = service.scorer.error
    last = dict(service.priority.last)
    priority_entries = {entry.key: entry for entry in entries if entry.kind == "priority"}
    running_priority = service.outbox.running("priority") > 0
    projects = []
    for project_id in sorted(set(service.store.projects()) | set(last)):
        entry = priority_entries.get(str(project_id))
        summary = last.get(project_id)
        # a pass is running when the outbox runs one and this project's entry is due (passes run one at a time)
        running = running_priority and entry is not None and entry.due <= now
        projects.append(_project(project_id, summary, entry, running, per_video))
    return {
        "generated_at": _iso(now),
        "instance_id": service.instance_id,
        "started_at": _iso(service.started_at),
        "model": model,
        "queue": {
            "pending": pending,
            "seconds_per_video": _round(per_video, SPV_DIGITS),
            "eta_s": eta(pending, per_video),
            "videos_scored": {result: int(registry.get_sample_value("mdsvqa_videos_scored_total",
                                                                    {"result": result}) or 0)
                              for result in ("ok", "error", "content_cache")},
        },
        "outbox": {
            "total": len(entries),
            "pending": {kind: counts.get(kind, 0) for kind in kinds},
            "running": {kind: service.outbox.running(kind) for kind in kinds},
            "waiting": [_entry(entry) for entry in entries[:WAITING]],
        },
        "priority": {"running": running_priority, "pending": len(priority_entries),
                     "enabled": service.settings.priority.enabled},
        "projects": projects,
        "training": _training(service),
    }


# -- HTML ------------------------------------------------------------------------------------------

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, Segoe UI, sans-serif; margin: 1.5rem auto; max-width: 1100px;
       color: #1d2733; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 1.8rem; }
.sub { color: #5b6b7a; margin-top: 0; } a { color: #1f6fb2; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; } .card { background: #f3f6f8; border-radius: 8px;
       padding: .6rem .9rem; min-width: 130px; } .card b { display: block; font-size: 1.35rem; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: .4rem 0; } th, td { text-align: left;
       padding: .3rem .5rem; border-bottom: 1px solid #e3e8ec; } th { background: #f3f6f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
progress { width: 160px; height: 14px; vertical-align: middle; } .muted { color: #5b6b7a; }
.note { background: #fff4e5; border-left: 4px solid #f0a202; padding: .5rem .8rem; margin: .6rem 0; }
"""


def shown(value: Any) -> str:
    """How the page writes a value of the JSON: numbers exactly as JSON does, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return str(value)


def _v(key: str, value: Any, cls: str = "") -> str:
    """One value with its JSON path (``data-key``), escaped."""
    attr = f" class='{cls}'" if cls else ""
    return f"<span data-key='{html.escape(key)}'{attr}>{html.escape(shown(value))}</span>"


def _td(key: str, value: Any) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"<td{' class=num' if numeric else ''}>{_v(key, value)}</td>"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown until a video has been scored"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s")


def _card(label: str, key: str, value: Any, extra: str = "") -> str:
    return f"<div class='card'><b>{_v(key, value)}</b>{html.escape(label)}{extra}</div>"


def render_status(data: dict[str, Any], *, refresh_s: int = 0) -> str:
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>"]
    if refresh_s > 0:
        parts.append(f"<meta http-equiv='refresh' content='{int(refresh_s)}'>")
    parts += [f"<title>MDS-VQA backend status</title><style>{STYLE}</style></head><body>",
              "<h1>MDS-VQA backend status</h1>",
              f"<p class='sub'>generated {_v('generated_at', data['generated_at'])} · instance "
              f"{_v('instance_id', data['instance_id'])} · started {_v('started_at', data['started_at'])} · "
              "<a href='/status.json'>JSON</a> · <a href='/report'>report</a> · "
              "<a href='/train/status'>training</a> · <a href='/metrics'>metrics</a></p>"]
    model = data["model"]
    parts.append(f"<p>Model: {_v('model.state', model['state'])} · version {_v('model.version', model['version'])}"
                 f"{' · ' + e(str(model['error'])) if model.get('error') else ''}</p>")

    queue = data["queue"]
    parts.append("<h2>Scoring</h2><div class='cards'>")
    parts.append(_card("videos waiting to be scored", "queue.pending", queue["pending"]))
    parts.append(_card("model seconds per video", "queue.seconds_per_video", queue["seconds_per_video"]))
    parts.append(_card("seconds until the queue is empty (ETA)", "queue.eta_s", queue["eta_s"],
                       f"<div class='muted'>{e(_duration(queue['eta_s']))}</div>"))
    for result, count in queue["videos_scored"].items():
        parts.append(_card(f"videos scored: {result}", f"queue.videos_scored.{result}", count))
    parts.append("</div>")

    parts.append("<h2>Projects</h2>")
    if not data["projects"]:
        parts.append("<p class='muted'>No project has called /setup yet.</p>")
    for index, project in enumerate(data["projects"]):
        parts.append(_project_html(index, project))

    outbox = data["outbox"]
    parts.append(f"<h2>Background work (outbox): {_v('outbox.total', outbox['total'])} pending</h2>")
    parts.append("<table><tr><th>kind</th><th>pending</th><th>running</th></tr>")
    for kind in outbox["pending"]:
        parts.append(f"<tr><td>{e(kind)}</td>{_td(f'outbox.pending.{kind}', outbox['pending'][kind])}"
                     f"{_td(f'outbox.running.{kind}', outbox['running'][kind])}</tr>")
    parts.append("</table>")
    if outbox["waiting"]:
        parts.append("<table><tr><th>kind</th><th>key</th><th>due at</th><th>attempt</th><th>reason</th>"
                     "<th>last error</th></tr>")
        for i, entry in enumerate(outbox["waiting"]):
            key = f"outbox.waiting.{i}"
            parts.append("<tr>" + "".join(_td(f"{key}.{name}", entry[name]) for name in
                                          ("kind", "key", "due_at", "attempt", "reason", "last_error")) + "</tr>")
        parts.append("</table>")

    parts.append(_training_html(data["training"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _project_html(index: int, project: dict[str, Any]) -> str:
    e = html.escape
    key = f"projects.{index}"
    parts = [f"<h3>Project {_v(f'{key}.id', project['id'])}</h3>"]
    nxt = project["next_pass"]
    if project["last_pass"] is None:
        parts.append("<p class='muted'>No ordering pass yet"
                     f"{'; one is due at ' + _v(f'{key}.next_pass.due_at', nxt['due_at']) if nxt else ''}."
                     "</p>")
        return "\n".join(parts)
    parts.append("<div class='cards'>")
    scored = (f"<div><progress max='{max(1, project['tasks'])}' value='{project['scored']}'></progress></div>")
    parts.append(f"<div class='card'><b>{_v(f'{key}.scored', project['scored'])} / "
                 f"{_v(f'{key}.tasks', project['tasks'])}</b>tasks scored{scored}</div>")
    parts.append(_card("labeled", f"{key}.labeled", project["labeled"]))
    parts.append(_card("in the queue", f"{key}.ordered", project["ordered"]))
    parts.append(f"<div class='card'><b>{_v(f'{key}.picks', project['picks'])} / "
                 f"{_v(f'{key}.budget', project['budget'])}</b>greedy picks / budget</div>")
    parts.append(_card("seconds to score the rest (ETA)", f"{key}.eta_s", project["eta_s"],
                       f"<div class='muted'>{e(_duration(project['eta_s']))}</div>"))
    parts.append(_card("without a usable difficulty", f"{key}.unusable", project["unusable"]))
    parts.append("</div>")
    last = project["last_pass"]
    lk = f"{key}.last_pass"
    parts.append(f"<p>Ordering pass: last finished {_v(f'{lk}.finished', last['finished'])} "
                 f"(took {_v(f'{lk}.seconds', last['seconds'])} s; "
                 f"{_v(f'{lk}.scores_written', last['scores_written'])} scores and "
                 f"{_v(f'{lk}.fields_written', last['fields_written'])} rank/difficulty fields written; view "
                 f"{_v(f'{key}.view_id', project['view_id'])} {_v(f'{lk}.view', last['view'])}; λ "
                 f"{_v(f'{lk}.lambda', last['lambda'])}; sampling {_v(f'{lk}.sampling', last['sampling'])}). "
                 f"{'A pass is running now. ' if project['pass_running'] else ''}"
                 + (f"Next pass due at {_v(f'{key}.next_pass.due_at', nxt['due_at'])} "
                    f"({_v(f'{key}.next_pass.reason', nxt['reason'])})." if nxt else "No pass waiting.") + "</p>")
    if project["head"]:
        parts.append("<table><tr><th>rank</th><th>task</th><th>difficulty</th><th>queue priority (score)</th>"
                     "<th>greedy pick</th></tr>")
        for i, item in enumerate(project["head"]):
            hk = f"{key}.head.{i}"
            parts.append("<tr>" + "".join(_td(f"{hk}.{name}", item[name]) for name in
                                          ("rank", "task", "difficulty", "score", "picked")) + "</tr>")
        parts.append("</table>")
    return "\n".join(parts)


def _training_html(training: dict[str, Any]) -> str:
    e = html.escape
    parts = ["<h2>Training</h2>"]
    if training.get("detail"):
        parts.append(f"<p class='muted'>{e(training['detail'])}</p>")
    job = training["job"]
    if job is None:
        parts.append("<p class='muted'>No training job yet (Label Studio: Settings > Model > Start Training).</p>")
    else:
        progress = job["progress"] or 0.0
        parts.append(f"<p>Job {_v('training.job.job_id', job['job_id'])}: {_v('training.job.state', job['state'])}, "
                     f"<progress max='1' value='{progress}'></progress> "
                     f"{_v('training.job.progress', job['progress'])} · {_v('training.job.message', job['message'])}"
                     f"{' · error: ' + _v('training.job.error', job['error']) if job.get('error') else ''}</p>")
    if training["runs"]:
        parts.append("<table><tr><th>run</th><th>version</th><th>activated</th><th>SRCC before</th>"
                     "<th>SRCC after</th><th>PLCC before</th><th>PLCC after</th></tr>")
        for i, run in enumerate(training["runs"]):
            rk = f"training.runs.{i}"
            parts.append("<tr>" + "".join(_td(f"{rk}.{name}", run[name]) for name in
                                          ("kind", "version_id", "activated", "srcc_before", "srcc_after",
                                           "plcc_before", "plcc_after")) + "</tr>")
        parts.append("</table>")
    if training["versions"]:
        parts.append("<h3>Versions (held-out metrics; labels = train + held-out)</h3><table><tr><th>version</th>"
                     "<th>kind</th><th>active</th><th>labels</th><th>SRCC before</th><th>SRCC after</th>"
                     "<th>PLCC before</th><th>PLCC after</th></tr>")
        for i, version in enumerate(training["versions"]):
            vk = f"training.versions.{i}"
            parts.append("<tr>" + "".join(_td(f"{vk}.{name}", version[name]) for name in
                                          ("id", "kind", "active", "labels", "srcc_before", "srcc_after",
                                           "plcc_before", "plcc_after")) + "</tr>")
        parts.append("</table><p><a href='/report'>The report</a> draws SRCC against labels spent.</p>")
    return "\n".join(parts)


# -- the live report ---------------------------------------------------------------------------------

def live_report(service: Any, project_id: int | None = None) -> tuple[int, str]:
    """(HTTP status, page): the report of ``project_id``'s latest ordering pass (default: the latest pass)."""
    from ..labelstudio.media import media_key
    from ..report.html import render
    from ..report.project import project_report_data
    from ..report.versions import version_rows

    last = dict(service.priority.last)
    if project_id is None and last:
        project_id = max(last, key=lambda pid: last[pid].finished)
    summary = last.get(project_id) if project_id is not None else None
    if summary is None:
        which = f"project {project_id}" if project_id is not None else "any project"
        page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>No report yet</title>"
                f"<style>{STYLE}</style></head><body><h1>No report yet</h1><p>No ordering pass of {which} has run "
                "in this backend process yet: it runs after predictions arrive (see <a href='/status'>status</a>)."
                "</p></body></html>")
        return 404, page
    frames: dict[int, Any] = {}
    notes = []
    store = getattr(service.features, "store", None)
    if store is not None:
        connection = service.connection_for(project_id)
        keys = {task_id: media_key(ref, connection) for task_id, ref in summary.media.items()}
        try:
            loaded = store.load(keys.values())
            frames = {task_id: loaded.frames[key] for task_id, key in keys.items() if key in loaded.frames}
        except Exception as exc:  # noqa: BLE001 - the report still shows everything but the map
            notes.append(f"features could not be read: {exc}")
    data = project_report_data(summary, f"Project {project_id}", frames)
    data.notes.insert(0, f"live: the ordering pass of {_iso(summary.finished)} "
                         f"({len(summary.order)} tasks in the queue)")
    data.notes.extend(notes)
    try:
        data.versions = version_rows(service.settings.model_dir)
    except Exception as exc:  # noqa: BLE001
        data.notes.append(f"versions could not be read: {exc}")
    with _report_lock:
        return 200, render(data)
