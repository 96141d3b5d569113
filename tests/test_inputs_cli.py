"""``mdsvqa inputs``: one file per video with exactly the documented keys; bad videos fail alone."""

import numpy as np

from ml_backend.cli import main
from ml_backend.commands.inputs import INPUT_KEYS
from tests.media import make_bad_videos


def test_bad_videos_are_reported_and_the_rest_written(tiny_model, shared_videos, tmp_path, capsys):
    bad = make_bad_videos(tmp_path / "bad")
    out = tmp_path / "inputs"
    good = shared_videos / "carphone_distorted.mp4"
    code = main(["inputs", str(bad["text"]), str(good), str(bad["truncated_index"]), "--out", str(out),
                 "--base", str(tiny_model[0])])
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["carphone_distorted.mp4.npz"]
    err = capsys.readouterr().err
    assert f"failed: {bad['text']}" in err and f"failed: {bad['truncated_index']}" in err
    with np.load(out / "carphone_distorted.mp4.npz") as archive:
        assert tuple(archive.files) == INPUT_KEYS
        frames, grid = archive["frames"], archive["video_grid_thw"]
        assert frames.dtype == np.uint8 and frames.shape[-1] == 3
        assert frames.shape[0] == len(archive["frame_indices"])
        assert int(archive["num_video_tokens"]) == int(np.prod(grid)) // 4
        assert str(archive["prompt_text"]).count("<|video_pad|>") == 1


def test_inputs_files_follow_the_umask(tiny_model, shared_videos, tmp_path):
    import os

    old = os.umask(0o027)
    try:
        assert main(["inputs", str(shared_videos / "carphone_distorted.mp4"), "--out", str(tmp_path),
                     "--base", str(tiny_model[0])]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "carphone_distorted.mp4.npz").stat().st_mode & 0o777 == 0o640
