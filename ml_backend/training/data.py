"""Label rows for training: loading with per-row problems, a deterministic split, a data hash.

Labels arrive as JSONL (``{"video": path, "mos": x}`` per line, optionally with
``"f_score"``: the quality model's score, precomputed e.g. by ``mdsvqa score``) from ``mdsvqa train``
or as records from Label Studio annotations. One bad row must not sink a training
run, and must not vanish silently either: every rejected row is returned with its
reason. Too few usable labels for a train/held-out split is refused up front, before
any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TrainingDataError, VideoError
from ..video.decoding import probe_video

_CHUNK = 1 << 20


@dataclass(frozen=True)
class LabelRow:
    video: Path
    mos: float
    line: int  # 1-based line (or record number) where it came from
    f_score: float | None = None  # optional precomputed quality-model score (difficulty objective)


@dataclass(frozen=True)
class RowProblem:
    line: int
    video: str | None
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" ({self.video})" if self.video else "")
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class LabelSet:
    rows: tuple[LabelRow, ...]
    problems: tuple[RowProblem, ...]

    @property
    def videos(self) -> list[Path]:
        return [row.video for row in self.rows]

    @property
    def mos(self) -> list[float]:
        return [row.mos for row in self.rows]

    def report(self, limit: int = 20) -> str:
        """Human-readable summary of what was kept and what was skipped."""
        lines = [f"{len(self.rows)} usable label(s), {len(self.problems)} skipped"]
        lines += [f"  skipped {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


def _mos_value(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def labels_from_records(records: Iterable[tuple[int, Any]], base_dir: Path | None = None, *,
                        check_videos: bool = True,
                        probe: Callable[[Path], object] = probe_video) -> LabelSet:
    """Validate ``(line, record)`` pairs into a :class:`LabelSet`.

    Relative video paths are resolved against ``base_dir``. With ``check_videos`` each
    video is opened and its first frame decoded, so missing, unreadable and corrupt
    files are reported here rather than failing mid-training.
    """
    rows: list[LabelRow] = []
    problems: list[RowProblem] = []
    seen: dict[Path, int] = {}
    for line, record in records:
        if not isinstance(record, dict):
            problems.append(RowProblem(line, None, "not a JSON object"))
            continue
        video_raw = record.get("video")
        if not isinstance(video_raw, str) or not video_raw.strip():
            problems.append(RowProblem(line, None, 'no "video" path'))
            continue
        if "mos" not in record:
            problems.append(RowProblem(line, video_raw, 'no "mos" value'))
            continue
        mos = _mos_value(record["mos"])
        if mos is None:
            problems.append(RowProblem(line, video_raw, f'"mos" is not a finite number: {record["mos"]!r}'))
            continue
        f_score = None
        if record.get("f_score") is not None:
            f_score = _mos_value(record["f_score"])
            if f_score is None:
                problems.append(RowProblem(line, video_raw, f'"f_score" is not a finite number: {record["f_score"]!r}'))
                continue
        video = Path(video_raw).expanduser()
        if not video.is_absolute() and base_dir is not None:
            video = base_dir / video
        video = video.resolve()
        if video in seen:
            problems.append(RowProblem(line, video_raw, f"duplicate of line {seen[video]}; first one kept"))
            continue
        if check_videos:
            try:
                probe(video)
            except VideoError as exc:
                problems.append(RowProblem(line, video_raw, str(exc)))
                continue
        seen[video] = line
        rows.append(LabelRow(video, mos, line, f_score))
    return LabelSet(tuple(rows), tuple(problems))


def load_labels(path: str | os.PathLike, *, check_videos: bool = True,
                probe: Callable[[Path], object] = probe_video) -> LabelSet:
    """Read a JSONL label file; bad lines and bad videos are skipped and reported, not fatal."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrainingDataError(f"label file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingDataError(f"label file {path} cannot be read: {exc}") from exc

    def records():
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, _Unparsable(str(exc))

    parsed = list(records())
    bad = [RowProblem(n, None, f"not valid JSON ({r.error})") for n, r in parsed if isinstance(r, _Unparsable)]
    good = [(n, r) for n, r in parsed if not isinstance(r, _Unparsable)]
    labels = labels_from_records(good, path.parent, check_videos=check_videos, probe=probe)
    problems = tuple(sorted(bad + list(labels.problems), key=lambda p: p.line))
    return LabelSet(labels.rows, problems)


@dataclass(frozen=True)
class _Unparsable:
    error: str


@dataclass(frozen=True)
class Split:
    train: tuple[LabelRow, ...]
    held_out: tuple[LabelRow, ...]


def split_labels(labels: LabelSet | Iterable[LabelRow], *, held_out_fraction: float = 0.2, seed: int = 0,
                 min_train: int = 4, min_held_out: int = 5) -> Split:
    """Deterministic train/held-out split of usable labels.

    Each video's place is decided by a hash of (seed, video path), so the split does not
    depend on row order and changes only a little when labels are added. The held-out
    part gets round(n * fraction) videos but never fewer than ``min_held_out``; too few
    labels for both minimums is refused with what is needed.
    """
    rows = list(labels.rows if isinstance(labels, LabelSet) else labels)
    if not 0 < held_out_fraction < 1:
        raise TrainingDataError(f"held-out fraction must be between 0 and 1, got {held_out_fraction}")
    total = len(rows)
    held = max(min_held_out, round(total * held_out_fraction))
    if total - held < min_train:
        raise TrainingDataError(
            f"too few labels to train: {total} usable, but a meaningful run needs at least {min_train} for "
            f"training and {min_held_out} held out for evaluation ({min_train + min_held_out} in all, more "
            f"with a held-out fraction of {held_out_fraction:g}). Label more videos; the minimums are "
            "MDSVQA_TRAIN_MIN_TRAIN_LABELS and MDSVQA_TRAIN_MIN_HELD_OUT_LABELS."
        )

    def key(row: LabelRow) -> str:
        return hashlib.sha256(f"{seed}\0{row.video}".encode()).hexdigest()

    ordered = sorted(rows, key=key)
    held_out = tuple(sorted(ordered[:held], key=lambda r: r.line))
    train = tuple(sorted(ordered[held:], key=lambda r: r.line))
    return Split(train, held_out)


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def data_hash(rows: Iterable[LabelRow]) -> str:
    """Identity of a label set: video contents and MOS values, independent of paths and row order.

    Reads every video once (training decodes them anyway); a renamed or moved copy of
    the same data hashes the same, an edited video or MOS does not.
    """
    entries = sorted(f"{file_digest(row.video)}:{row.mos!r}" for row in rows)
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def mos_by_file_name(path: str | os.PathLike) -> tuple[dict[str, float], LabelSet]:
    """MOS of a JSONL label file keyed by the video's file name (how scores files name videos).

    Raises :class:`TrainingDataError` when two labeled videos share a file name.
    """
    labels = load_labels(path, check_videos=False)
    mos: dict[str, float] = {}
    clashes: set[str] = set()
    for row in labels.rows:
        name = Path(row.video).name
        if name in mos:
            clashes.add(name)
        mos[name] = row.mos
    if clashes:
        raise TrainingDataError(f"{path}: file names labeled more than once (matching is by file name): "
                                f"{', '.join(sorted(clashes)[:5])}")
    return mos, labels
