"""Model versions and their held-out metrics, read from a model directory."""

from __future__ import annotations

from pathlib import Path

from .data import VersionRow


def version_rows(model_dir: str | Path) -> list[VersionRow]:
    from ..training.versions import VersionStore

    store = VersionStore(model_dir)
    rows = []
    for info in store.list():
        active = store.active(info.kind)
        rows.append(VersionRow(info.id, info.kind, active is not None and active.id == info.id, info.created,
                               info.metadata.get("metrics_before"), info.metadata.get("metrics_after")))
    return rows
