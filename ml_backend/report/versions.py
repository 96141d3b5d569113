"""Model versions and their held-out metrics, read from a model directory."""

from __future__ import annotations

from pathlib import Path

from .data import VersionRow


def labels_spent(metadata: dict) -> int | None:
    """Labels a version cost: its training and held-out rows (``settings.labels``), None when not recorded."""
    labels = (metadata.get("settings") or {}).get("labels") or {}
    train, held_out = labels.get("train"), labels.get("held_out")
    if isinstance(train, bool) or isinstance(held_out, bool) or not isinstance(train, int) \
            or not isinstance(held_out, int):
        return None
    return train + held_out


def version_rows(model_dir: str | Path) -> list[VersionRow]:
    from ..training.versions import VersionStore

    store = VersionStore(model_dir)
    rows = []
    for info in store.list():
        active = store.active(info.kind)
        rows.append(VersionRow(info.id, info.kind, active is not None and active.id == info.id, info.created,
                               info.metadata.get("metrics_before"), info.metadata.get("metrics_after"),
                               labels_spent(info.metadata)))
    return rows
