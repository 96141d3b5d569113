"""Label loading with per-row problems, deterministic split, refusal of too few labels, data hash."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from ml_backend.errors import TrainingDataError
from ml_backend.training.data import LabelRow, LabelSet, data_hash, load_labels, split_labels

from .training_helpers import SHARED_VIDEOS


@pytest.fixture
def label_dir(tmp_path) -> Path:
    shutil.copy(SHARED_VIDEOS / "carphone_pristine.mp4", tmp_path / "good1.mp4")
    shutil.copy(SHARED_VIDEOS / "carphone_distorted.mp4", tmp_path / "good2.mp4")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)
    (tmp_path / "empty.mp4").write_bytes(b"")
    return tmp_path


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_labels_keeps_good_rows_and_reports_each_bad_one(label_dir):
    lines = [
        json.dumps({"video": "good1.mp4", "mos": 4.5}),                       # 1 relative path
        json.dumps({"video": str(label_dir / "good2.mp4"), "mos": "1.25"}),   # 2 absolute, numeric string
        "{not json",                                                          # 3
        json.dumps({"video": "missing.mp4", "mos": 3}),                       # 4
        json.dumps({"video": "corrupt.mp4", "mos": 3}),                       # 5
        json.dumps({"video": "empty.mp4", "mos": 3}),                         # 6
        json.dumps({"video": "good1.mp4", "mos": 2}),                         # 7 duplicate
        json.dumps({"mos": 3}),                                               # 8
        json.dumps({"video": "good1.mp4"}),                                   # 9
        json.dumps({"video": "good1.mp4", "mos": "bad"}),                     # 10
        '{"video": "good1.mp4", "mos": NaN}',                                 # 11
        json.dumps({"video": "good1.mp4", "mos": True}),                      # 12
        "",                                                                   # 13 blank: ignored
        json.dumps([1, 2]),                                                   # 14
    ]
    labels = load_labels(write_jsonl(label_dir / "labels.jsonl", lines))
    assert [(r.video.name, r.mos, r.line) for r in labels.rows] == [("good1.mp4", 4.5, 1), ("good2.mp4", 1.25, 2)]
    reasons = {p.line: p.reason for p in labels.problems}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14]
    assert "not valid JSON" in reasons[3]
    assert "no such file" in reasons[4]
    assert "not a decodable video" in reasons[5] or "cannot decode" in reasons[5]
    assert "empty file" in reasons[6]
    assert "duplicate of line 1" in reasons[7]
    assert '"video"' in reasons[8] and '"mos"' in reasons[9]
    assert all("finite number" in reasons[n] for n in (10, 11, 12))
    assert "not a JSON object" in reasons[14]
    assert "2 usable label(s), 11 skipped" in labels.report()


def test_optional_f_score_is_read_and_checked(label_dir):
    lines = [json.dumps({"video": "good1.mp4", "mos": 4, "f_score": 3.5}),
             json.dumps({"video": "good2.mp4", "mos": 2, "f_score": "high"})]
    labels = load_labels(write_jsonl(label_dir / "labels.jsonl", lines))
    assert [(r.video.name, r.f_score) for r in labels.rows] == [("good1.mp4", 3.5)]
    assert [p.line for p in labels.problems] == [2] and "f_score" in labels.problems[0].reason


def test_missing_label_file_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingDataError, match="does not exist"):
        load_labels(tmp_path / "nope.jsonl")


def rows(count: int) -> list[LabelRow]:
    return [LabelRow(Path(f"/videos/v{i:03d}.mp4"), float(i % 5 + 1), i + 1) for i in range(count)]


def test_split_is_deterministic_order_independent_and_seeded():
    data = rows(40)
    split = split_labels(data, held_out_fraction=0.25, seed=7)
    assert len(split.held_out) == 10 and len(split.train) == 30
    assert set(split.held_out).isdisjoint(split.train) and set(split.held_out) | set(split.train) == set(data)
    shuffled = data[:]
    random.Random(1).shuffle(shuffled)
    assert split_labels(shuffled, held_out_fraction=0.25, seed=7) == split
    assert split_labels(data, held_out_fraction=0.25, seed=8).held_out != split.held_out


def test_split_keeps_a_minimum_held_out_set_and_refuses_too_few_labels():
    assert len(split_labels(rows(9), held_out_fraction=0.1, min_train=4, min_held_out=5).held_out) == 5
    with pytest.raises(TrainingDataError, match=r"too few labels to train: 8 usable.*at least 4.*5 held out"):
        split_labels(rows(8), min_train=4, min_held_out=5)
    with pytest.raises(TrainingDataError):
        split_labels(LabelSet((), ()))


def test_data_hash_tracks_content_and_mos_not_paths_or_order(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    shutil.copy(SHARED_VIDEOS / "carphone_pristine.mp4", a)
    shutil.copy(SHARED_VIDEOS / "carphone_distorted.mp4", b)
    base = [LabelRow(a, 4.0, 1), LabelRow(b, 2.0, 2)]
    h = data_hash(base)
    assert data_hash(base[::-1]) == h
    moved = tmp_path / "elsewhere.mp4"
    shutil.copy(a, moved)
    assert data_hash([LabelRow(moved, 4.0, 1), LabelRow(b, 2.0, 2)]) == h
    assert data_hash([LabelRow(a, 4.5, 1), LabelRow(b, 2.0, 2)]) != h
    assert data_hash([LabelRow(a, 2.0, 1), LabelRow(b, 4.0, 2)]) != h  # MOS swapped between videos
