"""Label Studio project ids as they arrive in request bodies: one parser for every route.

/setup and /predict send ``"<id>.<created timestamp>"``; webhooks send the project as an
object with an ``id`` (older servers: the bare id). Whatever the spelling, a project id
is a plain decimal integer in [1, 2^63 - 1] (it is stored in SQLite's signed 64-bit
INTEGER): a bool, a float (``1e400`` is ``inf``), ``"1e3"``, ``"-4"``, ``" 7"`` or a
20-digit number is refused, never coerced.
"""

from __future__ import annotations

import re
from typing import Any

MAX_PROJECT_ID = 2**63 - 1
# "<id>" or "<id>.<timestamp>" (the timestamp: digits, possibly itself with a fraction), ASCII digits only
_PROJECT = re.compile(r"([0-9]{1,19})(?:\.[0-9]{1,20}){0,2}", re.ASCII)


class ProjectIdError(ValueError):
    """Not a project id; the message names the offending value, shortened."""


def parse_project_id(value: Any) -> int | None:
    """The project id in ``value`` (an int or ``"<id>[.<timestamp>]"``); None when absent (None or "")."""
    if value is None or value == "":
        return None
    if type(value) is int:  # not bool, not a float that happens to be whole
        number = value
    elif isinstance(value, str) and (match := _PROJECT.fullmatch(value)):
        number = int(match.group(1))
    else:
        raise ProjectIdError(f"'project' must look like '<id>.<timestamp>' with a decimal id, "
                             f"got {_shown(value)}")
    if not 1 <= number <= MAX_PROJECT_ID:
        raise ProjectIdError(f"project id {_shown(value)} is outside 1..{MAX_PROJECT_ID}")
    return number


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:40])
    if type(value) is int:  # str() of a huge int is slow (and refused past 4300 digits)
        return str(value) if value.bit_length() <= 64 else f"(an integer of {value.bit_length()} bits)"
    if isinstance(value, (bool, float)):
        return repr(value)
    return f"(a JSON {type(value).__name__})"
