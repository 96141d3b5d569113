"""Training labels from Label Studio annotations: averaging, skipped/cancelled ones, scale bounds.

``tests/data/labelstudio_annotated_tasks.json`` was recorded from Label Studio 1.23.2
(``LabelStudioApi.annotated_tasks``), so the shapes are the server's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_backend.errors import TrainingDataError
from ml_backend.labelstudio.config import NumberControl, parse_label_config
from ml_backend.labelstudio.labels import annotation_mos, collect_labels, mos_scale, task_mos
from ml_backend.settings import TrainingSettings
from ml_backend.training.project_job import labels_needed
from ml_backend.training.rewards import normalize_mos

RECORDED = json.loads((Path(__file__).parent / "data" / "labelstudio_annotated_tasks.json").read_text())
CONFIG = parse_label_config(RECORDED["label_config"])


def recorded_tasks():
    return [(t["id"], t["data"], t["annotations"]) for t in RECORDED["tasks"]]


def test_recorded_project_gives_averaged_mos_on_the_controls_scale():
    assert CONFIG.mos.name == "rating" and (CONFIG.mos.minimum, CONFIG.mos.maximum) == (0.0, 100.0)
    collected = collect_labels(recorded_tasks(), CONFIG)
    a, b, _c, d, e, f = RECORDED["task_ids"]
    by_task = {t.task_id: t for t in collected.tasks}
    assert set(by_task) == {a, b, d, e}
    assert by_task[a].mos == 70.0 and by_task[a].votes == 2  # (80 + 60) / 2
    assert by_task[b].mos == 20.0 and by_task[b].votes == 1  # the skipped annotation's 99 is ignored
    assert by_task[d].mos == 45.5 and by_task[d].votes == 1  # an annotation without the MOS control does not count
    assert by_task[e].mos == 30.0  # the updated value, not the first one
    assert by_task[a].ref == "/data/upload/9/abc-a.mp4"  # raw task data, as /predict sees it
    assert collected.ignored_annotations == 2
    assert [i.task_id for i in collected.issues] == [f] and "outside the control's range" in collected.issues[0].reason
    assert collected.scale == (0.0, 100.0) and collected.scale_source == "label config"
    normalised = dict(zip([t.task_id for t in collected.tasks], collected.normalised()))
    assert normalised[a] == pytest.approx(70 / 100 * 4 + 1)
    assert normalised[b] == pytest.approx(1.8)
    # the same mapping as the training code's (SPEC 6), with the control's bounds
    assert collected.normalised() == pytest.approx(normalize_mos([t.mos for t in collected.tasks], 0, 100).tolist())


def test_skipped_and_cancelled_annotations_never_count():
    control = NumberControl("mos", "video", 1.0, 5.0)
    skipped = {"was_cancelled": True, "result": [{"from_name": "mos", "type": "number", "value": {"number": 5}}]}
    good = {"was_cancelled": False, "result": [{"from_name": "mos", "type": "number", "value": {"number": 2}}]}
    assert annotation_mos(skipped, control) == (None, "skipped (cancelled) annotation")
    assert task_mos([skipped, good, skipped], control)[:2] == (2.0, 1)
    mos, votes, why = task_mos([skipped], control)
    assert mos is None and votes == 0 and why == ["skipped (cancelled) annotation"]
    collected = collect_labels([(7, {"video": "/data/upload/1/x.mp4"}, [skipped])], parse_label_config(
        (Path(__file__).resolve().parents[1] / "label_config.xml").read_text()))
    assert collected.tasks == [] and "skipped" in collected.issues[0].reason and collected.scale is None


@pytest.mark.parametrize("value, counted", [(3, 3.0), ("4.5", 4.5), (True, None), (None, None), ("abc", None),
                                            (float("nan"), None), (0.5, None), (5.01, None), (1, 1.0), (5, 5.0)])
def test_values_must_be_numbers_inside_the_control(value, counted):
    control = NumberControl("mos", "video", 1.0, 5.0)
    annotation = {"result": [{"from_name": "mos", "type": "number", "value": {"number": value}}]}
    assert annotation_mos(annotation, control)[0] == counted


def test_scale_falls_back_to_the_labels_without_bounds():
    assert mos_scale(NumberControl("m", "v", 1, 5), [2, 3]) == ((1, 5), "label config")
    assert mos_scale(NumberControl("m", "v", None, None), [20, 35, 80]) == ((20, 80), "labels")
    assert mos_scale(NumberControl("m", "v", 0, None), [20, 80]) == ((0, 80), "labels")
    with pytest.raises(TrainingDataError, match="degenerate"):
        mos_scale(NumberControl("m", "v", None, None), [3, 3])
    with pytest.raises(TrainingDataError, match="degenerate"):  # inverted bounds are not a scale
        mos_scale(NumberControl("m", "v", 5, 1), [3, 3])


def test_config_without_mos_control_is_refused_with_advice():
    config = parse_label_config('<View><Video name="v" value="$video"/>'
                                '<Number name="difficulty" toName="v" min="1" max="5"/></View>')
    with pytest.raises(TrainingDataError, match='mdsvqa-role="mos"'):
        collect_labels([], config)


def test_tasks_without_media_are_left_out():
    control_config = CONFIG
    good = {"result": [{"from_name": "rating", "type": "number", "value": {"number": 50}}]}
    collected = collect_labels([(1, {"other": "x"}, [good]), (2, {"url": "s3://b/v.mp4"}, [good])], control_config)
    assert [t.task_id for t in collected.tasks] == [2] and "'url'" in collected.issues[0].reason


def test_labels_needed_matches_the_split_minimums():
    from ml_backend.training.data import LabelRow, split_labels

    for fraction, train, held in ((0.2, 4, 5), (0.5, 2, 3), (0.6, 4, 3), (0.9, 2, 5)):
        ts = TrainingSettings(held_out_fraction=fraction, min_train_labels=train, min_held_out_labels=held)
        needed = labels_needed(ts)
        rows = [LabelRow(Path(f"/v{i}.mp4"), float(i), i) for i in range(needed)]
        split_labels(rows, held_out_fraction=fraction, min_train=train, min_held_out=held)  # enough
        with pytest.raises(TrainingDataError, match="too few labels"):
            split_labels(rows[:-1], held_out_fraction=fraction, min_train=train, min_held_out=held)
