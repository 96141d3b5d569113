"""``mdsvqa select --working-set``: the features packed into one file and streamed, the same output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml_backend.cli import main
from ml_backend.commands.select import SelectionInputError, parse_size
from selection.features import load_features, pack_features, save_features
from selection.lambdas import CLIP_RN101_OPENAI
from tests.test_selection_cli import run_select, workspace  # noqa: F401  (the fixture)


def test_streamed_cli_writes_what_the_in_memory_cli_writes(workspace, tmp_path, capsys):  # noqa: F811
    bad = workspace["features"] / "video09_features.npz"
    np.savez(bad, features=np.full((3, 16), np.nan, dtype=np.float32), extractor=np.array(CLIP_RN101_OPENAI))
    save_features(workspace["features"], "video13.mp4", np.ones((2, 8), np.float32), extractor=CLIP_RN101_OPENAI)
    common = ["--budget", "7", "--labeled", str(workspace["labeled"])]
    assert run_select(workspace, *common, "--details", str(tmp_path / "memory.json")) == 0
    in_memory = (workspace["dir"] / "picks.json").read_text()
    memory_err = capsys.readouterr().err
    pack_dir = tmp_path / "packs"
    pack_dir.mkdir()
    assert run_select(workspace, *common, "--details", str(tmp_path / "streamed.json"), "--working-set", "40M",
                      "--pack-dir", str(pack_dir)) == 0
    streamed_err = capsys.readouterr().err
    assert (workspace["dir"] / "picks.json").read_text() == in_memory
    assert json.loads((tmp_path / "streamed.json").read_text()) == json.loads((tmp_path / "memory.json").read_text())
    for line in memory_err.splitlines():  # the same videos left out, for the same reasons
        if "left out " in line:
            assert line in streamed_err
    assert "video09.mp4: features hold NaN" in streamed_err and "video13.mp4: features have dimension 8" in streamed_err
    assert "streamed" in streamed_err and "MiB of them held at once" in streamed_err
    assert list(pack_dir.iterdir()) == []  # the packed file is temporary


def test_pack_features_keeps_load_features_choices(workspace, tmp_path):  # noqa: F811
    save_features(workspace["features"], "video13.mp4", np.ones((2, 8), np.float32), extractor=CLIP_RN101_OPENAI)
    names = workspace["names"]
    loaded = load_features(workspace["features"], names)
    packed = pack_features(workspace["features"], names, tmp_path / "frames.npy")
    assert packed.names == loaded.names and packed.dim == loaded.dim == 16
    assert [str(p) for p in packed.problems] == [str(p) for p in loaded.problems]
    assert packed.extractors == loaded.extractors and packed.extractor() == CLIP_RN101_OPENAI
    assert packed.path is not None
    frames = np.load(packed.path)
    for i, video in enumerate(loaded.frames):
        np.testing.assert_array_equal(frames[packed.offsets[i] : packed.offsets[i + 1]], video)
    assert packed.offsets[-1] == len(frames)
    empty = pack_features(workspace["features"], ["nothing.mp4"], tmp_path / "none.npy")
    assert empty.path is None and empty.names == [] and len(empty.problems) == 1


def test_working_set_too_small_or_malformed(workspace, capsys):  # noqa: F811
    assert run_select(workspace, "--budget", "3", "--working-set", "20k") == 2
    assert "at least" in capsys.readouterr().err
    assert run_select(workspace, "--budget", "3", "--working-set", "lots") == 2
    assert "expected a size" in capsys.readouterr().err
    assert main(["select", "--scores", str(workspace["scores"]), "--features", str(workspace["features"]),
                 "--out", str(workspace["dir"] / "p.json"), "--budget", "3", "--pack-dir", "/tmp"]) == 2
    assert "--pack-dir goes with --working-set" in capsys.readouterr().err


@pytest.mark.parametrize("text, size", [("2G", 2 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", 3 * 2**29),
                                        ("64k", 65536), ("1000", 1000), ("3MB", 3 * 2**20)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "0", "two"])
def test_parse_size_refuses(text):
    with pytest.raises(SelectionInputError):
        parse_size(text)
