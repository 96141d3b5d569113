"""Features folder and input files: every problem reported per item or as a typed error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selection.errors import DuplicateNameError, InputFileError
from selection.features import FEATURES_KEY, features_path, load_features, save_features
from selection.files import read_name_list, read_scores


def test_features_path_uses_the_stem(tmp_path):
    assert features_path(tmp_path, "clips/a.b.mp4") == tmp_path / "a.b_features.npz"
    assert features_path(tmp_path, "x.mp4") == tmp_path / "x_features.npz"


def test_load_good_and_bad_files_reports_each_problem(tmp_path):
    rng = np.random.default_rng(0)
    good = {name: rng.standard_normal((n, 8)).astype(np.float32) for name, n in [("a.mp4", 3), ("b.mp4", 5),
                                                                              ("c.mkv", 1)]}
    for name, frames in good.items():
        save_features(tmp_path, name, frames, extractor="clip:RN101:openai")
    np.savez(tmp_path / "int_features.npz", features=np.arange(16).reshape(2, 8))  # integers: converted
    (tmp_path / "corrupt_features.npz").write_bytes(b"not a zip file")
    np.savez(tmp_path / "wrongkey_features.npz", embeddings=np.zeros((2, 8)))
    np.savez(tmp_path / "flat_features.npz", features=np.zeros(8))
    np.savez(tmp_path / "empty_features.npz", features=np.zeros((0, 8)))
    np.savez(tmp_path / "nan_features.npz", features=np.full((2, 8), np.nan))
    np.savez(tmp_path / "otherdim_features.npz", features=np.zeros((2, 4)))
    np.savez(tmp_path / "text_features.npz", features=np.array([["a"] * 8]))
    names = ["a.mp4", "missing.mp4", "b.mp4", "int.mp4", "corrupt.mp4", "wrongkey.mp4", "flat.mp4", "empty.mp4",
             "nan.mp4", "otherdim.mp4", "text.mp4", "c.mkv"]

    loaded = load_features(tmp_path, names)

    assert loaded.names == ["a.mp4", "b.mp4", "int.mp4", "c.mkv"]
    assert loaded.dim == 8
    for name, frames in zip(loaded.names, loaded.frames):
        assert frames.dtype == np.float32
        if name in good:
            np.testing.assert_array_equal(frames, good[name])
    reasons = {problem.name: problem.reason for problem in loaded.problems}
    assert set(reasons) == set(names) - set(loaded.names)
    assert reasons["missing.mp4"] == "features file missing"
    assert "unreadable" in reasons["corrupt.mp4"]
    assert f"no '{FEATURES_KEY}' array (has: embeddings)" == reasons["wrongkey.mp4"]
    assert "shape (8,)" in reasons["flat.mp4"]
    assert reasons["empty.mp4"] == "features hold no frame"
    assert "NaN" in reasons["nan.mp4"]
    assert "dimension 4, most videos have 8" in reasons["otherdim.mp4"]
    assert "dtype" in reasons["text.mp4"]
    assert all(str(problem).startswith(problem.name) for problem in loaded.problems)


def test_duplicate_stems_are_refused(tmp_path):
    with pytest.raises(DuplicateNameError, match=r"a: a\.mp4, clips/a\.mkv"):
        load_features(tmp_path, ["a.mp4", "b.mp4", "clips/a.mkv"])


def test_nothing_loadable(tmp_path):
    loaded = load_features(tmp_path, ["a.mp4"])
    assert loaded.names == [] and loaded.dim is None and len(loaded.problems) == 1


def test_read_scores_keeps_order_and_explains_unusable_entries(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({
        "b.mp4": {"reasoning": "N/A", "score": 3.25},
        "a.mp4": {"reasoning": "N/A", "score": 2},
        "failed.mp4": {"reasoning": "N/A", "score": None, "error": "cannot decode"},
        "null.mp4": {"reasoning": "N/A", "score": None},
        "text.mp4": {"reasoning": "N/A", "score": "4.5"},
        "bool.mp4": {"reasoning": "N/A", "score": True},
        "noscore.mp4": {"reasoning": "N/A"},
    }))
    scores = read_scores(path)
    assert list(scores.scores.items()) == [("b.mp4", 3.25), ("a.mp4", 2.0)]
    assert scores.unusable["failed.mp4"] == "score is null (scoring failed: cannot decode)"
    assert scores.unusable["null.mp4"] == "score is null"
    assert "not a finite number" in scores.unusable["text.mp4"]
    assert "not a finite number" in scores.unusable["bool.mp4"]
    assert scores.unusable["noscore.mp4"] == "entry has no 'score'"


@pytest.mark.parametrize("text, error, message", [
    ('{"a.mp4": {"score": 1}, "a.mp4": {"score": 2}}', DuplicateNameError, "a.mp4"),
    ('["a.mp4"]', InputFileError, "expected"),
    ('{"a.mp4": 3}', InputFileError, "expected"),
    ('{"a.mp4": ', InputFileError, "not valid JSON"),
    ('{"a.mp4": {"score": NaN}}', None, None),
])
def test_read_scores_rejects_malformed_files(tmp_path, text, error, message):
    path = tmp_path / "scores.json"
    path.write_text(text)
    if error is None:  # Python's json accepts NaN: it must come out as unusable, not as a score
        assert "a.mp4" in read_scores(path).unusable
        return
    with pytest.raises(error, match=message):
        read_scores(path)


def test_read_scores_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="no such scores file"):
        read_scores(tmp_path / "nope.json")


def test_read_name_list(tmp_path):
    path = tmp_path / "labeled.json"
    path.write_text('["b.mp4", "a.mp4"]')
    assert read_name_list(path) == ["b.mp4", "a.mp4"]
    path.write_text('["a.mp4", "a.mp4"]')
    with pytest.raises(DuplicateNameError, match=r"a\.mp4"):
        read_name_list(path)
    path.write_text('{"a.mp4": 1}')
    with pytest.raises(InputFileError, match="JSON list"):
        read_name_list(path)
    path.write_text('["a.mp4", 3]')
    with pytest.raises(InputFileError, match="JSON list"):
        read_name_list(path)


def test_the_store_records_the_extractor_and_refuses_to_mix(tmp_path):
    from selection.errors import MixedExtractorsError
    from selection.features import EXTRACTOR_KEY

    frames = np.ones((2, 4), dtype=np.float32)
    save_features(tmp_path, "a.mp4", frames, extractor="clip:RN101:openai")
    save_features(tmp_path, "b.mp4", frames, extractor="clip:RN101:openai")
    with np.load(features_path(tmp_path, "a.mp4")) as stored:
        assert str(stored[EXTRACTOR_KEY]) == "clip:RN101:openai"
    assert load_features(tmp_path, ["a.mp4", "b.mp4"]).extractor() == "clip:RN101:openai"
    with pytest.raises(ValueError, match="name the extractor"):
        save_features(tmp_path, "c.mp4", frames, extractor="")

    np.savez(tmp_path / "old_features.npz", features=frames)  # written before extractors were recorded
    loaded = load_features(tmp_path, ["a.mp4", "old.mp4"])
    assert loaded.names == ["a.mp4", "old.mp4"] and loaded.extractors["old.mp4"] is None
    with pytest.raises(MixedExtractorsError, match=r"not recorded .*1 video\(s\), e.g. old.mp4"):
        loaded.extractor()
    assert loaded.extractor(unrecorded="clip:RN101:openai") == "clip:RN101:openai"
    assert load_features(tmp_path, ["old.mp4"]).extractor() is None

    # another extractor (here also another dimension: the mix is named, not hidden as a dimension problem)
    save_features(tmp_path, "s.mp4", np.ones((2, 6)), extractor="siglip2:google/siglip2-giant-opt-patch16-384")
    with pytest.raises(MixedExtractorsError, match="'siglip2:google/siglip2-giant-opt-patch16-384': 1 video"):
        load_features(tmp_path, ["a.mp4", "b.mp4", "s.mp4"]).extractor()

    np.savez(tmp_path / "badkey_features.npz", features=frames, extractor=np.array([1, 2]))
    assert "'extractor' is not a name" in load_features(tmp_path, ["badkey.mp4"]).problems[0].reason


def test_default_lambda_per_extractor():
    from selection.errors import LambdaError
    from selection.lambdas import default_lambda, resolve_lambda

    assert default_lambda("clip:RN101:openai") == 0.25
    assert default_lambda("siglip2:google/siglip2-giant-opt-patch16-384") == 0.075
    for other, why in [("vision:0123456789abcdef", "vision tower"), (None, "do not record"),
                       ("clip:RN101:random", "no lambda was chosen"), ("clip:ViT-B-32:openai", "no lambda")]:
        with pytest.raises(LambdaError, match=why):
            default_lambda(other)
    assert resolve_lambda(0.5, "vision:x") == (0.5, "given")
    assert resolve_lambda(None, "clip:RN101:openai") == (0.25, "default for clip:RN101:openai")
    with pytest.raises(LambdaError):
        resolve_lambda(-1.0, "clip:RN101:openai")
