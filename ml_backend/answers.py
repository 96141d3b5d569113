"""Reading a score out of the model's text: last <answer> tag, first number, clamped to [1, 5].

Also the answers the constrained decoder admits: the formats the published models write
themselves (SPEC 4: g mostly writes ``2.0``), so the constraint never adds a digit.
"""

from __future__ import annotations

import re

from .errors import AnswerParseError

SCORE_MIN = 1.0
SCORE_MAX = 5.0

# The reference's own patterns: case-sensitive tags, an unsigned number with optional decimals.
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


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


def score_texts() -> list[str]:
    """Every score the constrained decoder may write: 1-5 with no, one or two decimals.

    Whole numbers (``3``), tenths (``3.0``, ``4.5``) and hundredths (``4.25``), never past 5.
    """
    whole = [str(value) for value in range(int(SCORE_MIN), int(SCORE_MAX) + 1)]
    tenths = [f"{tenth / 10:.1f}" for tenth in range(10, 51)]
    hundredths = [f"{hundredth / 100:.2f}" for hundredth in range(100, 501)]
    return whole + tenths + hundredths


def allowed_answers() -> list[str]:
    """The complete answers the constrained decoder admits: ``<answer>`` + a score text + ``</answer>``."""
    return [f"<answer>{text}</answer>" for text in score_texts()]


# The same answers as one regular expression, for engines that constrain text rather than tokens
# (vLLM's structured outputs): 1-4 with none, one or two decimals, or 5, 5.0, 5.00.
ANSWER_REGEX = r"<answer>(?:[1-4](?:\.[0-9][0-9]?)?|5(?:\.00?)?)</answer>"


def answer_regex() -> str:
    """A regex whose language is exactly :func:`allowed_answers` (tested).

    It constrains characters, not tokens: an engine applying it also admits other token spellings
    of the same answers, which the token trie of ``scoring.constraint`` does not.
    """
    return ANSWER_REGEX
