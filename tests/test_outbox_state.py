"""The outbox's pure decisions: debounce, dedupe by token, retry schedules, restarts. No threads."""

from __future__ import annotations

import pytest

from ml_backend.server.outbox_state import ActionPolicy, Entry, on_ask, on_failure, on_restart, on_success, should_run

PUSH = ActionPolicy("push", retry_delays_s=(1.0, 2.0, 60.0), retry_forever=True)
PASS = ActionPolicy("priority", lane="slow", debounce_s=2.0, max_wait_s=10.0, retry_delays_s=(5.0, 15.0))


def test_first_ask_waits_the_debounce():
    entry = on_ask(PASS, None, "3", {"reason": "labels"}, now=100.0)
    assert (entry.due, entry.first_ask, entry.attempt) == (102.0, 100.0, 0)
    assert entry.payload == {"reason": "labels"}


def test_later_ask_moves_the_run_but_not_past_the_bound():
    entry = on_ask(PASS, None, "3", {}, now=100.0)
    entry = on_ask(PASS, entry, "3", {}, now=101.0)
    assert entry.due == 103.0 and entry.first_ask == 100.0
    for now in (104.0, 106.0, 108.0, 109.5):  # a steady stream of asks
        entry = on_ask(PASS, entry, "3", {}, now=now)
    assert entry.due == 110.0  # first ask + max_wait_s, not 111.5


def test_explicit_delay_replaces_the_debounce():
    entry = on_ask(PASS, None, "3", {}, now=100.0, delay=0.0)
    assert entry.due == 100.0
    # an explicit wait longer than the bound is honoured: the bound counts from the first ask
    assert on_ask(PASS, entry, "3", {}, now=100.5, delay=30.0).due == 130.0
    assert on_ask(PASS, entry, "3", {}, now=100.5, delay=3.0).due == 103.5


def test_polling_kinds_let_a_nudge_bring_the_run_forward():
    poll = ActionPolicy("follow", lane="model", retry_delays_s=(2.0,), retry_forever=True, earliest_wins=True)
    entry = on_ask(poll, None, "difficulty", {}, now=100.0, delay=2.0)
    assert on_ask(poll, entry, "difficulty", {}, now=100.5, delay=0.0).due == 100.5
    assert on_ask(poll, entry, "difficulty", {}, now=100.5, delay=5.0).due == 102.0
    assert on_ask(PASS, entry, "3", {}, now=100.5, delay=0.0).due == 102.0  # a debounced kind keeps the later


def test_every_ask_takes_a_new_token_so_older_runs_are_stale():
    first = on_ask(PUSH, None, "7:v1", {"difficulty": 2.0}, now=0.0)
    second = on_ask(PUSH, first, "7:v1", {"difficulty": 3.0}, now=0.5)
    assert first.token != second.token
    assert should_run(second, second.token) and not should_run(second, first.token)
    assert not should_run(None, first.token)
    assert second.payload == {"difficulty": 3.0}  # the latest ask wins


def test_success_removes_only_the_run_that_is_still_current():
    entry = on_ask(PUSH, None, "7:v1", {}, now=0.0)
    assert on_success(entry, entry.token)
    newer = on_ask(PUSH, entry, "7:v1", {}, now=1.0)  # asked again while the first run ran
    assert not on_success(newer, entry.token)


def test_retries_follow_the_schedule_then_give_up():
    entry = on_ask(PASS, None, "3", {}, now=0.0)
    first = on_failure(PASS, entry, entry.token, now=10.0, transient=True, error="503")
    assert first.entry is not None and first.entry.due == 15.0 and first.entry.attempt == 1
    assert first.entry.token != entry.token and first.entry.last_error == "503"
    second = on_failure(PASS, first.entry, first.entry.token, now=20.0, transient=True, error="503")
    assert second.entry is not None and second.entry.due == 35.0
    third = on_failure(PASS, second.entry, second.entry.token, now=40.0, transient=True, error="503")
    assert third.entry is None and third.gave_up


def test_pushes_retry_forever_at_the_last_delay():
    entry = on_ask(PUSH, None, "7:v1", {}, now=0.0)
    for attempt in range(1, 500):
        decision = on_failure(PUSH, entry, entry.token, now=float(attempt), transient=True, error="down")
        assert decision.entry is not None, f"gave up at attempt {attempt}"
        entry = decision.entry
    assert entry.attempt == 499 and entry.due == 499.0 + 60.0


def test_permanent_failure_gives_up_at_once_even_for_pushes():
    entry = on_ask(PUSH, None, "7:v1", {}, now=0.0)
    decision = on_failure(PUSH, entry, entry.token, now=1.0, transient=False, error="404 task deleted")
    assert decision.gave_up and decision.entry is None


def test_failure_of_a_superseded_run_changes_nothing():
    entry = on_ask(PUSH, None, "7:v1", {}, now=0.0)
    newer = on_ask(PUSH, entry, "7:v1", {}, now=0.1)
    decision = on_failure(PUSH, newer, entry.token, now=1.0, transient=True, error="x")
    assert decision.entry is None and not decision.gave_up


def test_retry_after_overrides_the_wait_and_a_new_ask_restarts_the_count():
    entry = on_ask(PUSH, None, "7:v1", {}, now=0.0)
    failed = on_failure(PUSH, entry, entry.token, now=1.0, transient=True, error="429", delay=7.0).entry
    assert failed is not None and failed.due == 8.0
    asked = on_ask(PUSH, failed, "7:v1", {}, now=2.0)
    assert asked.attempt == 0 and asked.due == 2.0  # new information: run now, not at the retry time


def test_restart_reissues_with_a_new_token_never_in_the_past():
    entry = Entry("push", "7:v1", {}, due=50.0, first_ask=40.0, token="old", attempt=3)
    restored = on_restart(entry, now=100.0)
    assert restored.token != "old" and restored.due == 100.0 and restored.attempt == 3
    assert on_restart(entry, now=10.0).due == 50.0
    assert Entry.from_json(restored.to_json()) == restored


def test_policy_validation():
    with pytest.raises(ValueError):
        ActionPolicy("x", retry_delays_s=(), retry_forever=True)
    with pytest.raises(ValueError):
        ActionPolicy("x", debounce_s=-1)
    with pytest.raises(ValueError):
        PUSH.retry_delay(0)
    assert PUSH.retry_delay(3) == 60.0 and PUSH.retry_delay(4) == 60.0
    assert PASS.retry_delay(2) == 15.0 and PASS.retry_delay(3) is None
