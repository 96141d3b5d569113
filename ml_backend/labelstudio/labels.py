"""Training labels from a Label Studio project: one MOS per labelled task, on the model's 1-5 scale.

The MOS is the value annotators entered in the project's MOS control (the Number control
found by :func:`ml_backend.labelstudio.config.parse_label_config`, never a hard-coded
name). Several annotations of one task are averaged; skipped ("cancelled") annotations and
annotations without a MOS value are ignored, as are values outside the control's
``min``/``max``. MOS values are mapped to 1-5 with ``(mos - lo) / (hi - lo) * 4 + 1``
(SPEC 6), where ``lo``/``hi`` are the control's ``min``/``max`` -- the scale annotators
actually used -- and only when the config gives no usable bounds, the smallest and largest
collected value.

Pure functions over the dicts Label Studio's API returns (``task["annotations"]``), so the
rules are tested without a server; :meth:`ml_backend.labelstudio.client.LabelStudioApi.annotated_tasks`
supplies them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import TrainingDataError
from .config import NumberControl, ProjectConfig
from .predictions import control_numbers


@dataclass(frozen=True)
class TaskMos:
    """A labelled task: its media reference and the mean raw MOS of its counted annotations."""

    task_id: int
    ref: str
    mos: float  # raw, on the control's scale
    votes: int  # annotations averaged


@dataclass(frozen=True)
class LabelIssue:
    task_id: int | None
    reason: str

    def __str__(self) -> str:
        return f"task {self.task_id}: {self.reason}" if self.task_id is not None else self.reason


@dataclass
class CollectedLabels:
    tasks: list[TaskMos] = field(default_factory=list)
    issues: list[LabelIssue] = field(default_factory=list)  # tasks left out and why
    ignored_annotations: int = 0  # skipped/cancelled or without a usable MOS, in tasks that were kept
    scale: tuple[float, float] | None = None  # raw (lo, hi) mapped onto 1..5
    scale_source: str = ""  # "label config" or "labels"

    def normalised(self) -> list[float]:
        """Each task's MOS on the model's 1-5 scale."""
        if self.scale is None:
            raise TrainingDataError("no MOS scale: no labelled tasks were collected")
        lo, hi = self.scale
        return [(t.mos - lo) / (hi - lo) * 4.0 + 1.0 for t in self.tasks]

    def summary(self) -> dict[str, Any]:
        return {"labelled_tasks": len(self.tasks), "left_out": len(self.issues),
                "ignored_annotations": self.ignored_annotations,
                "scale": list(self.scale) if self.scale else None, "scale_source": self.scale_source}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def annotation_mos(annotation: dict[str, Any], control: NumberControl) -> tuple[float | None, str | None]:
    """(MOS, None) from one annotation, or (None, why it does not count)."""
    if annotation.get("was_cancelled"):
        return None, "skipped (cancelled) annotation"
    values = []
    for raw in control_numbers(annotation.get("result") or [], control.name):
        number = _number(raw)
        if number is None:
            return None, f"'{control.name}' holds no number ({raw!r:.40})"
        values.append(number)
    if not values:
        return None, f"no '{control.name}' value"
    mos = values[-1]  # one control, one value; should a result repeat it, the last one stands
    below = control.minimum is not None and mos < control.minimum
    if below or (control.maximum is not None and mos > control.maximum):
        return None, f"'{control.name}' = {mos:g} is outside the control's range [{control.minimum}, {control.maximum}]"
    return mos, None


def task_mos(annotations: Iterable[dict[str, Any]], control: NumberControl) -> tuple[float | None, int, list[str]]:
    """Mean MOS of the annotations that count, how many counted, and why the others did not."""
    counted: list[float] = []
    ignored: list[str] = []
    for annotation in annotations:
        if not isinstance(annotation, dict):
            continue
        mos, why = annotation_mos(annotation, control)
        if mos is None:
            ignored.append(why or "unusable annotation")
        else:
            counted.append(mos)
    if not counted:
        return None, 0, ignored
    return sum(counted) / len(counted), len(counted), ignored


def mos_scale(control: NumberControl, values: list[float]) -> tuple[tuple[float, float], str]:
    """The raw range mapped onto 1..5: the control's min/max, else the collected values' range."""
    lo, hi = control.minimum, control.maximum
    if lo is not None and hi is not None and hi > lo:
        return (lo, hi), "label config"
    if not values:
        raise TrainingDataError("no MOS values to derive a scale from")
    lo_data, hi_data = min(values), max(values)
    lo = lo if lo is not None else lo_data
    hi = hi if hi is not None else hi_data
    if not hi > lo:
        raise TrainingDataError(
            f"MOS range is degenerate (min {lo:g}, max {hi:g}): set min and max on the '{control.name}' Number "
            "control or label videos of different quality")
    return (lo, hi), "labels"


def collect_labels(tasks: Iterable[tuple[int, dict[str, Any], list[dict[str, Any]]]],
                   config: ProjectConfig) -> CollectedLabels:
    """Labels from ``(task id, task data, annotations)`` triples, as Label Studio returns them."""
    if config.mos is None:
        raise TrainingDataError(
            "the project's label config has no MOS control to learn from: add a Number control for the "
            'annotators\' rating, e.g. <Number name="mos" toName="<your video>" min="1" max="5" '
            'mdsvqa-role="mos"/> (see label_config.xml)')
    control = config.mos
    collected = CollectedLabels()
    for task_id, data, task_annotations in tasks:
        mos, votes, ignored = task_mos(task_annotations or [], control)
        if mos is None:
            if task_annotations:
                collected.issues.append(LabelIssue(task_id, "no usable MOS: " + "; ".join(sorted(set(ignored)))))
            continue
        ref, why = config.media_ref(data or {})
        if ref is None:
            collected.issues.append(LabelIssue(task_id, why))
            continue
        collected.ignored_annotations += len(ignored)
        collected.tasks.append(TaskMos(int(task_id), ref, mos, votes))
    if collected.tasks:
        collected.scale, collected.scale_source = mos_scale(control, [t.mos for t in collected.tasks])
    return collected
