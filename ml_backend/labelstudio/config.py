"""Finding the video and the difficulty / MOS controls in any project's label config.

Names are never hard-coded: a project may call its tags anything. The difficulty control
is the Number control marked ``mdsvqa-role="difficulty"``, else the one whose name contains
"difficulty"; the MOS control likewise with role ``mos`` or a name containing "mos".
Label Studio accepts the extra ``mdsvqa-role`` attribute and ignores it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import ConfigurationError

ROLE_ATTRIBUTE = "mdsvqa-role"
DIFFICULTY_ROLE = "difficulty"
MOS_ROLE = "mos"


class LabelConfigError(ConfigurationError):
    """A project's label config cannot carry difficulty predictions (says what to add)."""


@dataclass(frozen=True)
class NumberControl:
    name: str
    to_name: str
    minimum: float | None
    maximum: float | None


@dataclass(frozen=True)
class ProjectConfig:
    """What the backend needs to know about one label config."""

    video_name: str  # name of the <Video> object tag (to_name of results)
    video_field: str  # key in task["data"] holding the video URL ("$video" -> "video")
    difficulty: NumberControl
    mos: NumberControl | None  # annotators' MOS; needed for training, not for predictions

    def media_ref(self, data: object) -> tuple[str | None, str]:
        """The task's video reference (stripped), or None and why the task has none we can use.

        The one check of task media every path makes (/predict, project passes, ordering, labels).
        """
        if not isinstance(data, dict) or self.video_field not in data:
            return None, f"task has no '{self.video_field}' field in its data"
        ref = data[self.video_field]
        if not isinstance(ref, str) or not ref.strip():
            return None, f"'{self.video_field}' in the task data is not a media URL"
        return ref.strip(), ""


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _pick(controls: list, role: str) -> list:
    """Controls marked with the role; failing that, controls whose name contains it."""
    marked = [c for c in controls if str(c.attr.get(ROLE_ATTRIBUTE, "")).lower() == role]
    if marked:
        return marked
    return [c for c in controls if role in c.name.lower()]


def parse_label_config(xml: str) -> ProjectConfig:
    """Parse once with label-studio-sdk's LabelInterface; raise LabelConfigError saying what is missing."""
    from label_studio_sdk.label_interface import LabelInterface

    if not xml or not xml.strip():
        raise LabelConfigError("the project has no label config; use label_config.xml from this repository")
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises several XML / schema exception types
        raise LabelConfigError(f"the label config cannot be parsed: {exc}") from exc

    videos = {obj.name: obj for obj in interface.objects if obj.tag.lower() == "video"}
    if not videos:
        raise LabelConfigError(
            "the label config has no <Video> tag: MDS-VQA scores videos; add e.g. "
            '<Video name="video" value="$video"/> (see label_config.xml)'
        )
    numbers = [c for c in interface.controls if c.tag.lower() == "number" and any(t in videos for t in c.to_name)]
    candidates = _pick(numbers, DIFFICULTY_ROLE)
    if not candidates:
        raise LabelConfigError(
            "the label config has no Number control for the predicted difficulty: add "
            '<Number name="difficulty" toName="<your video>" min="1" max="5" step="0.01"/> '
            f'(a name containing "difficulty" or the attribute {ROLE_ATTRIBUTE}="difficulty")'
        )
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise LabelConfigError(
            f"several Number controls could hold the difficulty ({names}): mark one with "
            f'{ROLE_ATTRIBUTE}="difficulty"'
        )
    difficulty_tag = candidates[0]
    video = videos[next(t for t in difficulty_tag.to_name if t in videos)]
    field = str(video.value or "").lstrip("$")
    if not field:
        raise LabelConfigError(f'the <Video name="{video.name}"> tag has no value="$field" naming the task field')

    others = [c for c in numbers if c is not difficulty_tag]
    mos_candidates = _pick(others, MOS_ROLE) or (others if len(others) == 1 else [])
    mos_tag = mos_candidates[0] if len(mos_candidates) == 1 else None
    return ProjectConfig(
        video_name=video.name,
        video_field=field,
        difficulty=_number(difficulty_tag, video.name),
        mos=_number(mos_tag, video.name) if mos_tag is not None else None,
    )


def _number(tag, video_name: str) -> NumberControl:
    return NumberControl(
        name=tag.name,
        to_name=video_name,
        minimum=_float_or_none(tag.attr.get("min")),
        maximum=_float_or_none(tag.attr.get("max")),
    )


class ConfigCache:
    """Parsed configs by content hash: /predict carries the config on every call, parse it once."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._items: OrderedDict[str, ProjectConfig | LabelConfigError] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, xml: str) -> ProjectConfig:
        key = hashlib.sha256((xml or "").encode()).hexdigest()
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                cached = self._items[key]
                if isinstance(cached, LabelConfigError):
                    raise cached
                return cached
        try:
            parsed: ProjectConfig | LabelConfigError = parse_label_config(xml)
        except LabelConfigError as exc:
            parsed = exc
        with self._lock:
            self._items[key] = parsed
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        if isinstance(parsed, LabelConfigError):
            raise parsed
        return parsed
