"""How much a version improved, in words and in JSON: shared by the job log, the CLI and ``GET /versions``.

Metrics are the held-out SRCC/PLCC stored in each version's metadata (``metrics_before``:
the model training started from, ``metrics_after``: the new version, same held-out
videos). No model is loaded here.
"""

from __future__ import annotations

import math
from typing import Any

from .versions import KINDS, Kind, VersionInfo, VersionStore


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def improvement(before: dict | None, after: dict | None) -> dict[str, float | None]:
    """Per metric (srcc, plcc): after minus before, None where either is missing."""
    out: dict[str, float | None] = {}
    for name in ("srcc", "plcc"):
        b, a = _finite((before or {}).get(name)), _finite((after or {}).get(name))
        out[name] = None if a is None or b is None else round(a - b, 6)
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def describe_metrics(before: dict | None, after: dict | None) -> str:
    """``SRCC 0.412 -> 0.530 (+0.118), PLCC 0.390 -> 0.501 (+0.111)`` on the held-out videos."""
    delta = improvement(before, after)
    parts = []
    for name in ("srcc", "plcc"):
        b, a = _finite((before or {}).get(name)), _finite((after or {}).get(name))
        text = f"{name.upper()} {_fmt(b)} -> {_fmt(a)}"
        if delta[name] is not None:
            text += f" ({delta[name]:+.3f})"
        parts.append(text)
    count = (after or {}).get("count")
    total = (after or {}).get("total")
    if count is not None and total is not None and count != total:
        parts.append(f"{count}/{total} held-out videos scored")
    return ", ".join(parts)


def version_summary(version: VersionInfo, active: dict[Kind, str | None]) -> dict[str, Any]:
    """One version as JSON: id, kind, path, active, parent, created, metrics and their change."""
    meta = version.metadata
    labels = (meta.get("settings") or {}).get("labels")
    return {
        "id": version.id,
        "kind": version.kind,
        "path": str(version.path),
        "active": active.get(version.kind) == version.id,
        "parent": version.parent,
        "created": version.created,
        "steps": meta.get("steps"),
        "labels": labels,
        "source": meta.get("source"),
        "f_model": meta.get("f_model"),
        "protocol": meta.get("protocol"),
        "metrics_before": meta.get("metrics_before"),
        "metrics_after": meta.get("metrics_after"),
        "improvement": improvement(meta.get("metrics_before"), meta.get("metrics_after")),
    }


def store_summary(store: VersionStore) -> dict[str, Any]:
    """Every complete version (oldest first) and the active one of each kind."""
    active = {kind: store.pointer(kind).version for kind in KINDS}
    return {"active": active, "versions": [version_summary(v, active) for v in store.list()]}


def describe_protocol(protocol: dict | None) -> list[str]:
    """The lines ``mdsvqa versions`` prints about how a version was trained and measured."""
    if not protocol:
        return ["training protocol not recorded (an older version)"]
    g, sc, data = protocol["geometry"], protocol["schedule"], protocol["data"]
    return [
        f"geometry {g['videos_compared']} videos compared per micro-batch, {g['videos_per_step']} per step, "
        f"{g['rollouts_per_video']} rollout(s) per video; lr {sc['learning_rate']:g} {sc['decay']}, "
        f"{sc['epochs']} epoch(s)",
        f"frames {protocol['frames']['training']}",
        f"data {data['regime']}: {data['target_train']} target + {data['source']} source to train, "
        f"{data['target_held_out']} held out (seed {protocol['split']['seed']})",
        f"metric {protocol['metric']}",
    ]


def diagnostic_lines(baseline: str, labels: str, picks: list[str]) -> list[str]:
    """The reference's check after selection: f's SRCC/PLCC on the labeled pool, then on the picks."""
    from selection.files import read_scores

    from .data import mos_by_file_name
    from .evaluation import evaluate_by_name

    f_scores = read_scores(baseline).scores
    mos, _labels = mos_by_file_name(labels)
    lines = []
    for what, names in (("all labeled videos", None), ("the picks", picks)):
        result = evaluate_by_name(f_scores, mos, names)
        if result.ok:
            lines.append(f"quality model on {what}: SRCC {result.srcc:.4f}, PLCC {result.plcc:.4f} (n={result.count})")
        else:
            lines.append(f"quality model on {what}: undefined (n={result.count}): {result.reason}")
    return lines
