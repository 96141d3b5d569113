"""Per-video frame features on disk: ``DIR/<stem>_features.npz`` holding ``features`` (frames x dim).

The layout of the reference code, plus a string ``extractor`` naming what made the
features (``clip:RN101:openai``, ``siglip2:<model>``, ``vision:<fingerprint>``): distances
between embeddings of different extractors mean nothing, and lambda depends on it, so a
run must use one extractor (``LoadedFeatures.extractor``). Files written before the key
existed load fine and count as "not recorded".

A video ``clips/x.mp4`` is matched to ``DIR/x_features.npz`` by its stem. Loading never
stops at a bad file: each missing, unreadable, empty, ill-shaped or non-finite file
becomes a ``FeatureProblem`` so the caller can report it and go on with the rest.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.fileio import atomic_writer

from .errors import DuplicateNameError, MixedExtractorsError

FEATURES_SUFFIX = "_features.npz"
FEATURES_KEY = "features"
EXTRACTOR_KEY = "extractor"
UNRECORDED = "not recorded (file written before extractors were recorded)"


def features_path(directory: str | Path, video_name: str | Path) -> Path:
    return Path(directory) / f"{Path(video_name).stem}{FEATURES_SUFFIX}"


def save_features(directory: str | Path, video_name: str | Path, frames: np.ndarray, *, extractor: str) -> Path:
    """Write one video's (frames, dim) features as float32 with their extractor, atomically (temp file + rename)."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 2 or frames.shape[0] == 0:
        raise ValueError(f"features of {video_name} must be a non-empty (frames, dim) array, got {frames.shape}")
    if not isinstance(extractor, str) or not extractor.strip():
        raise ValueError(f"features of {video_name}: name the extractor that made them, got {extractor!r}")
    path = features_path(directory, video_name)
    with atomic_writer(path) as handle:
        arrays: dict[str, Any] = {FEATURES_KEY: frames, EXTRACTOR_KEY: np.array(extractor)}  # Any: savez's **kwds
        np.savez(handle, **arrays)
    return path


@dataclass(frozen=True)
class FeatureProblem:
    name: str
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason} ({self.path})"


@dataclass
class LoadedFeatures:
    """Videos whose features loaded (same order as asked), and what went wrong with the others."""

    names: list[str] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)  # float32 (n_i, dim)
    problems: list[FeatureProblem] = field(default_factory=list)
    dim: int | None = None
    # every readable file (those left out for their dimension too): its extractor, None if not recorded
    extractors: dict[str, str | None] = field(default_factory=dict)

    def extractor(self, *, unrecorded: str | None = None) -> str | None:
        """The one extractor of all readable files (None if none records one); mixing is refused.

        Files without the key count as ``unrecorded`` (None: unknown, so a mix with recorded
        files is refused too). Raises :class:`MixedExtractorsError` naming each group.
        """
        return _one_extractor(self.extractors, unrecorded)


@dataclass
class PackedFeatures:
    """``LoadedFeatures`` whose frames went to one packed frames file instead of memory.

    ``path`` (None when no file was usable) holds the frames of ``names`` in order, video i
    at rows offsets[i]:offsets[i+1]: what ``select_greedy`` streams with a working set.
    """

    path: Path | None = None
    names: list[str] = field(default_factory=list)
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    problems: list[FeatureProblem] = field(default_factory=list)
    dim: int | None = None
    extractors: dict[str, str | None] = field(default_factory=dict)

    def extractor(self, *, unrecorded: str | None = None) -> str | None:
        """As ``LoadedFeatures.extractor``."""
        return _one_extractor(self.extractors, unrecorded)


def _one_extractor(extractors: dict[str, str | None], unrecorded: str | None) -> str | None:
    groups: dict[str | None, list[str]] = {}
    for name, extractor in extractors.items():
        groups.setdefault(extractor if extractor is not None else unrecorded, []).append(name)
    if len(groups) <= 1:
        return next(iter(groups), None)
    shown = "; ".join(f"{_label(extractor)}: {len(names)} video(s), e.g. {', '.join(names[:3])}"
                      for extractor, names in sorted(groups.items(), key=lambda item: -len(item[1])))
    raise MixedExtractorsError(
        f"the features come from different extractors ({shown}). Distances between embeddings of different "
        "extractors mean nothing: extract every video's features with one extractor (mdsvqa features "
        "--extractor ...) into its own folder")


def _label(extractor: str | None) -> str:
    return UNRECORDED if extractor is None else repr(extractor)


def check_unique_stems(names: Sequence[str]) -> None:
    """Two names with one stem would read the same features file: refuse instead of guessing."""
    by_stem: dict[str, list[str]] = {}
    for name in names:
        by_stem.setdefault(Path(name).stem, []).append(name)
    clashes = {stem: group for stem, group in by_stem.items() if len(group) > 1}
    if clashes:
        shown = "; ".join(f"{stem}: {', '.join(group)}" for stem, group in list(clashes.items())[:5])
        raise DuplicateNameError(f"names share a features-file stem, so their features cannot be told apart: {shown}")


def _read_one(path: Path) -> tuple[np.ndarray, str | None] | str:
    """(frames, extractor or None when not recorded), or the reason the file cannot be used."""
    if not path.is_file():
        return "features file missing"
    try:
        with np.load(path, allow_pickle=False) as archive:
            if FEATURES_KEY not in archive.files:
                return f"no '{FEATURES_KEY}' array (has: {', '.join(archive.files) or 'nothing'})"
            frames = archive[FEATURES_KEY]
            extractor = archive[EXTRACTOR_KEY] if EXTRACTOR_KEY in archive.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        return f"unreadable features file ({type(exc).__name__}: {exc})"
    if extractor is not None:
        if extractor.ndim != 0 or extractor.dtype.kind != "U" or not str(extractor[()]).strip():
            return f"'{EXTRACTOR_KEY}' is not a name (dtype {extractor.dtype}, shape {extractor.shape})"
        extractor = str(extractor[()])
    if not (np.issubdtype(frames.dtype, np.floating) or np.issubdtype(frames.dtype, np.integer)):
        return f"features have dtype {frames.dtype}, expected numbers"
    if frames.ndim != 2:
        return f"features have shape {frames.shape}, expected (frames, dim)"
    if frames.shape[0] == 0:
        return "features hold no frame"
    if frames.shape[1] == 0:
        return "features have dimension 0"
    frames = frames.astype(np.float32, copy=False)
    if not np.isfinite(frames).all():
        return "features hold NaN or infinite values"
    return frames, extractor


def load_features(directory: str | Path, names: Sequence[str]) -> LoadedFeatures:
    """Load every video's frames; videos whose dimension differs from the most common one are problems too."""
    check_unique_stems(names)
    loaded: list[tuple[str, np.ndarray]] = []
    result = LoadedFeatures()
    for name in names:
        path = features_path(directory, name)
        read = _read_one(path)
        if isinstance(read, str):
            result.problems.append(FeatureProblem(name, path, read))
        else:
            loaded.append((name, read[0]))
            result.extractors[name] = read[1]
    if not loaded:
        return result
    dims = Counter(frames.shape[1] for _name, frames in loaded)
    result.dim = dims.most_common(1)[0][0]  # ties: the dimension met first
    for name, frames in loaded:
        if frames.shape[1] == result.dim:
            result.names.append(name)
            result.frames.append(frames)
        else:
            result.problems.append(FeatureProblem(
                name, features_path(directory, name),
                f"features have dimension {frames.shape[1]}, most videos have {result.dim}"))
    return result


def pack_features(directory: str | Path, names: Sequence[str], path: str | Path) -> PackedFeatures:
    """``load_features``'s choice of videos and problems, the frames written to one packed float32
    ``.npy`` at ``path`` (``framefile``) instead of kept: one video in memory at a time.

    Two passes over the files: the first checks each one and counts the dimensions (the most
    common one is kept, ties to the one met first, as ``load_features`` does), the second
    copies the kept videos' frames. A file that cannot be read the second time becomes a problem.
    """
    from .framefile import FrameFileWriter

    check_unique_stems(names)
    result = PackedFeatures()
    dims: dict[str, int] = {}
    for name in names:
        read = _read_one(features_path(directory, name))
        if isinstance(read, str):
            result.problems.append(FeatureProblem(name, features_path(directory, name), read))
        else:
            dims[name] = int(read[0].shape[1])
            result.extractors[name] = read[1]
    if not dims:
        return result
    result.dim = Counter(dims.values()).most_common(1)[0][0]
    lengths = []
    with FrameFileWriter(path, result.dim, np.float32) as writer:
        for name in names:
            if name not in dims:
                continue
            if dims[name] != result.dim:
                result.problems.append(FeatureProblem(
                    name, features_path(directory, name),
                    f"features have dimension {dims[name]}, most videos have {result.dim}"))
                continue
            read = _read_one(features_path(directory, name))
            if isinstance(read, str) or read[0].shape[1] != result.dim:
                reason = read if isinstance(read, str) else "features changed while being read"
                result.problems.append(FeatureProblem(name, features_path(directory, name), reason))
                continue
            writer.append(read[0])
            result.names.append(name)
            lengths.append(read[0].shape[0])
    result.path = Path(path) if result.names else None
    result.offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    return result
