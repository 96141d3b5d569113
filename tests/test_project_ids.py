"""One parser for project ids: plain decimal integers in [1, 2^63 - 1], whatever the route."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ml_backend.server.project_ids import MAX_PROJECT_ID, ProjectIdError, parse_project_id
from ml_backend.server.service import BadRequestError
from ml_backend.server.service import parse_project_id as service_parse
from ml_backend.server.webhooks import project_id_of


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), (7, 7), ("7", 7), ("7.1700000000", 7), ("7.1700000000.25", 7),
    (MAX_PROJECT_ID, MAX_PROJECT_ID), (f"{MAX_PROJECT_ID}.1", MAX_PROJECT_ID),
])
def test_accepted(value, expected):
    assert parse_project_id(value) == expected


@pytest.mark.parametrize("value", [
    0, -1, MAX_PROJECT_ID + 1, pytest.param(10**5000, id="5000-digit-int"), True, False,
    7.0, float("inf"), float("nan"),
    "0", "-1", "+1", " 7", "7 ", "1e400", "1e3", "0x10", "7.", ".7", "7.abc", "1.2.3.4", "٣", "7_000",
    str(MAX_PROJECT_ID + 1), pytest.param("9" * 5000, id="5000-digit-str"), [7], {"ID": 7}, b"7",
])
def test_refused(value):
    with pytest.raises(ProjectIdError):
        parse_project_id(value)
    with pytest.raises(BadRequestError):
        service_parse(value)
    assert project_id_of({"project": value}) is None
    assert project_id_of({"project": {"id": value}}) is None


@given(st.integers(min_value=1, max_value=MAX_PROJECT_ID), st.integers(min_value=0, max_value=2**40))
def test_every_route_reads_the_same_id(number, timestamp):
    assert parse_project_id(number) == number
    assert service_parse(f"{number}.{timestamp}") == number
    assert project_id_of({"project": {"id": number}}) == number
    assert project_id_of({"project": f"{number}.{timestamp}"}) == number


@given(st.integers().filter(lambda n: not 1 <= n <= MAX_PROJECT_ID))
def test_out_of_range_integers_are_refused(number):
    with pytest.raises(ProjectIdError, match="outside"):
        parse_project_id(number)
    with pytest.raises(ProjectIdError):
        parse_project_id(str(number))
