"""Reading a score out of the model's text: last <answer> tag, first number, clamped to [1, 5]."""

from __future__ import annotations

import re

from .errors import AnswerParseError

SCORE_MIN = 1.0
SCORE_MAX = 5.0

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def parse_score(text: str) -> float:
    """The score in ``text``; raises :class:`AnswerParseError` (keeping the text) when there is none.

    As in the reference, the last complete ``<answer>...</answer>`` wins and the whole
    text is searched when no tag is present. Unlike the reference, the value is clamped
    to the scale and a missing number is an error, never a random default.
    """
    tags = _ANSWER_TAG.findall(text)
    region = tags[-1] if tags else text
    match = _NUMBER.search(region)
    if match is None:
        where = "the last <answer> tag" if tags else "the answer (no <answer> tag)"
        raise AnswerParseError(f"no number in {where}: {text[:200]!r}", raw_text=text)
    return clamp_score(float(match.group()))


def clamp_score(value: float) -> float:
    return min(SCORE_MAX, max(SCORE_MIN, value))


def format_answer(score: float) -> str:
    """The canonical answer text for a score, as the constrained decoder emits it."""
    return f"<answer>{score:.2f}</answer>"


def canonical_answers() -> list[str]:
    """Every answer the constrained decoder may produce: 1.00, 1.01, ..., 5.00."""
    return [format_answer(hundredths / 100) for hundredths in range(100, 501)]
