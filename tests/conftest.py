from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.media import GOLDEN, VIDEOS

# Scorers decode in their own threads in tests (also in the CLI and backend processes tests start):
# a decode worker process imports torch first, seconds on this shared machine for each scorer.
# tests/test_decode_workers.py runs the worker processes, the default outside tests.
os.environ.setdefault("MDSVQA_DECODE_WORKERS", "0")


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    if not VIDEOS.is_dir():
        raise RuntimeError(f"shared test videos not found at {VIDEOS}: the repo must sit beside shared/")
    return VIDEOS


@pytest.fixture(scope="session")
def golden_path() -> Path:
    if not GOLDEN.is_file():
        raise RuntimeError(f"golden tensors not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random Qwen2.5-VL base + adapter on disk, written once per test session."""
    from ml_backend.model.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model) -> Path:
    """The folder holding the tiny model's ``base`` and ``adapter``."""
    return tiny_model[0].parent


@pytest.fixture
def settings_factory(tiny_model, tmp_path):
    """Settings for the tiny model with a private score cache."""
    from ml_backend.settings import Settings

    base, adapter = tiny_model

    def make(**overrides):
        values = {"base": str(base), "adapter": str(adapter), "cache_dir": tmp_path / "cache", **overrides}
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def label_studio_bin():
    """Label Studio's executable, installed into its own virtualenv on first use (about 70 s)."""
    from ml_backend.demo.processes import label_studio_binary

    return label_studio_binary()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """One real Label Studio 1.23.2 for the whole session (end-to-end modules share it)."""
    from tests.labelstudio_support import start_label_studio, stop_process

    ls = start_label_studio(tmp_path_factory.mktemp("label-studio"))
    yield ls
    stop_process(ls.process)


@pytest.fixture
def one_torch_thread():
    """One torch thread: the machine is shared, and one thread is also fastest for the tiny model."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def browser(tmp_path):
    """A fresh headless Chromium driven by selenium (tests/browser.py); skipped when not installed, except in CI."""
    from tests.browser import open_browser

    yield from open_browser(tmp_path)


@pytest.fixture
def make_outbox(tmp_path):
    """``make(kinds, **options)``: a started outbox in the test's folder, stopped at the end."""
    from ml_backend.server.outbox import Outbox

    made: list[Outbox] = []

    def make(kinds, **kwargs) -> Outbox:
        outbox = Outbox(tmp_path / f"outbox{len(made)}.sqlite", kinds, **kwargs)
        outbox.start()
        made.append(outbox)
        return outbox

    yield make
    for outbox in made:
        outbox.stop()
