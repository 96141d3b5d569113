"""What the Data Manager shows of the queue: task fields and the view's columns (pure, no I/O).

Two task data fields, written by each ordering pass, make the queue readable without
opening a JSON blob:

- ``mdsvqa_rank``: the task's place in the queue, 1 = labeled next (an integer; absent on
  labeled tasks and on tasks without a usable difficulty, which are not in the queue);
- ``mdsvqa_difficulty``: the predicted difficulty of the project's model version, two
  decimals as a string ("4.25": the Number control's precision, sorts right as text).

The prediction ``score`` stays the queue priority (Label Studio sorts and samples by it; it
is not a confidence). Label Studio shows it to annotators as "Prediction Score 100.00%" and
rounds it to three decimals in the Data Manager, where tasks of equal difficulty look
alike; the rank is the unambiguous order.

The view: Label Studio 1.23.2 computes a column for the Data Manager only when the view's
``hiddenColumns`` leaves it visible; a view without ``hiddenColumns`` is shown with every
column while only its sort key is computed, so "Prediction results", "Prediction model
versions" and "Upload filename" stay empty until someone toggles a column. The lists have
the frontend's format: ``{"explore": [ids], "labeling": [ids]}``, ids ``tasks:<column>``
and ``tasks:data.<field>`` for task data; a column is computed unless it is in both lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

VIEW_TITLE_PREFIX = "MDS-VQA priority"  # views are found by it (older versions' title: just this)
# the tab shows its start and the whole title on hover: the score column is the queue priority
VIEW_TITLE = f"{VIEW_TITLE_PREFIX} (score = queue priority, not a confidence)"
VIEW_ORDERING = ["-tasks:predictions_score"]

RANK_FIELD = "mdsvqa_rank"
DIFFICULTY_FIELD = "mdsvqa_difficulty"
FIELDS = (RANK_FIELD, DIFFICULTY_FIELD)
TASKS = "tasks:"

# The priority tab's columns (ids as the frontend names them). Label Studio puts task data columns
# last and keeps any re-ordering in the browser only, so the tab shows few other columns: rank and
# difficulty stay on screen. Explore (the table): these, plus the task data Label Studio shows by
# default (the video). Labeling (the list beside the editor): Label Studio's defaults plus these.
SHOWN_EXPLORE = (f"{TASKS}id", f"{TASKS}total_annotations", f"{TASKS}predictions_score",
                 f"{TASKS}predictions_model_versions", f"{TASKS}file_upload", f"{TASKS}data.{RANK_FIELD}",
                 f"{TASKS}data.{DIFFICULTY_FIELD}")
SHOWN_LABELING = (f"{TASKS}id", f"{TASKS}data.{RANK_FIELD}", f"{TASKS}data.{DIFFICULTY_FIELD}")
DISPLAY_TYPES = {f"{TASKS}data.{RANK_FIELD}": "Number"}  # numeric sort when the header is clicked


def difficulty_text(difficulty: float) -> str:
    return f"{difficulty:.2f}"


def wanted_fields(ranks: Mapping[int, int], difficulty: Mapping[int, float], task_id: int) -> dict[str, Any]:
    """The fields one task should hold: rank and difficulty where known (absent otherwise)."""
    fields: dict[str, Any] = {}
    if task_id in ranks:
        fields[RANK_FIELD] = ranks[task_id]
    if task_id in difficulty:
        fields[DIFFICULTY_FIELD] = difficulty_text(difficulty[task_id])
    return fields


def with_fields(data: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """``data`` with our fields set to ``fields`` (others removed); None when nothing changes."""
    updated = {key: value for key, value in data.items() if key not in FIELDS}
    updated.update({key: fields[key] for key in FIELDS if key in fields})
    current = {key: data[key] for key in FIELDS if key in data}
    return None if current == {key: fields[key] for key in FIELDS if key in fields} else updated


def column_ids(columns: Iterable[Mapping[str, Any]]) -> list[tuple[str, dict[str, bool]]]:
    """(frontend id, visibility defaults) of every leaf column in ``/api/dm/columns``' list."""
    found = []
    for column in columns:
        if column.get("target", "tasks") != "tasks" or column.get("children"):
            continue
        ident = str(column.get("id", ""))
        if not ident:
            continue
        full = f"{TASKS}data.{ident}" if column.get("parent") == "data" else f"{TASKS}{ident}"
        defaults = column.get("visibility_defaults") or {}
        found.append((full, {"explore": bool(defaults.get("explore", True)),
                             "labeling": bool(defaults.get("labeling", False))}))
    return found


def hidden_columns(columns: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The priority tab's ``hiddenColumns`` for the columns of ``/api/dm/columns`` (see SHOWN_*).

    Our data fields count as shown even before a task holds them (they are then simply not
    in the list yet, and appear once written).
    """
    hidden: dict[str, list[str]] = {"explore": [], "labeling": []}
    for ident, defaults in column_ids(columns):
        data_default = ident.startswith(f"{TASKS}data.") and defaults["explore"]
        if not (data_default or ident in SHOWN_EXPLORE):
            hidden["explore"].append(ident)
        if not (defaults["labeling"] or ident in SHOWN_LABELING):
            hidden["labeling"].append(ident)
    return hidden


def view_data(title: str, ordering: list[str], columns: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The whole data of a new priority tab."""
    return {"title": title, "ordering": list(ordering), "hiddenColumns": hidden_columns(columns),
            "columnsDisplayType": dict(DISPLAY_TYPES)}
