"""The outbox on huey's SQLite storage: runs, dedupes, retries, survives a restart of its process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ml_backend.server.outbox import ActionKind, RetryLater
from ml_backend.server.outbox_state import ActionPolicy
from tests.conditions import wait_for

FAST = ActionPolicy("push", retry_delays_s=(0.05, 0.05, 0.1), retry_forever=True)


class Recorder:
    def __init__(self, fail: int = 0, error: type[Exception] = RetryLater) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail
        self.error = error
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()

    def __call__(self, key: str, payload: dict) -> None:
        self.release.wait(30)
        with self.lock:
            self.calls.append((key, payload))
            if self.fail > 0:
                self.fail -= 1
                raise self.error("not yet")


def test_runs_each_key_once_with_the_latest_payload(make_outbox):
    handler = Recorder()
    handler.release.clear()
    outbox = make_outbox({"push": ActionKind(ActionPolicy("push", debounce_s=0.3), handler)})
    for value in range(5):
        outbox.ask("push", "task-1", {"value": value})
    outbox.ask("push", "task-2", {"value": 9})
    handler.release.set()
    assert outbox.wait_idle(20)
    assert sorted(handler.calls) == [("task-1", {"value": 4}), ("task-2", {"value": 9})]


def test_transient_failures_are_retried_until_they_succeed(make_outbox):
    handler = Recorder(fail=4)
    outcomes: list[tuple[str, str]] = []
    outbox = make_outbox({"push": ActionKind(FAST, handler)}, on_outcome=lambda k, o: outcomes.append((k, o)))
    outbox.ask("push", "task-1", {"n": 1})
    assert outbox.wait_idle(20)
    assert len(handler.calls) == 5
    assert outcomes.count(("push", "retry")) == 4 and outcomes[-1] == ("push", "ok")


def test_a_bug_in_a_handler_is_dropped_not_retried(make_outbox):
    handler = Recorder(fail=1, error=ValueError)
    outbox = make_outbox({"push": ActionKind(FAST, handler)})
    outbox.ask("push", "task-1", {})
    assert outbox.wait_idle(20)
    assert len(handler.calls) == 1 and outbox.pending() == []


def test_a_slow_lane_does_not_hold_up_the_fast_one(make_outbox):
    slow, fast = Recorder(), Recorder()
    slow.release.clear()
    outbox = make_outbox({"pass": ActionKind(ActionPolicy("pass", lane="slow"), slow),
                          "push": ActionKind(FAST, fast)})
    outbox.ask("pass", "project-1", {})
    wait_for(lambda: outbox.running("pass") == 1, timeout=20)
    outbox.ask("push", "task-1", {})
    assert outbox.wait_idle(20, kinds=["push"])
    assert fast.calls == [("task-1", {})] and slow.calls == []  # the pass is still running
    slow.release.set()
    assert outbox.wait_idle(20)


def test_payloads_must_be_json(make_outbox):
    outbox = make_outbox({"push": ActionKind(FAST, Recorder())})
    with pytest.raises(TypeError):
        outbox.ask("push", "task-1", {"not json": object()})
    assert outbox.pending() == []


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ml_backend.server.outbox import ActionKind, Outbox, RetryLater
    from ml_backend.server.outbox_state import ActionPolicy

    path, mode = Path(sys.argv[1]), sys.argv[2]
    done = path.with_suffix(".done")

    def handler(key, payload):
        if mode == "down":
            raise RetryLater("Label Studio is down")
        with done.open("a") as out:
            out.write(f"{key}={payload['value']}\\n")

    outbox = Outbox(path, {"push": ActionKind(ActionPolicy("push", retry_delays_s=(0.05,), retry_forever=True),
                                              handler)})
    outbox.start()
    if mode == "down":
        for i in range(20):
            outbox.ask("push", f"task-{i}", {"value": i})
        while not all(e.attempt >= 2 for e in outbox.pending()):
            time.sleep(0.05)
        print("pending", len(outbox.pending()), flush=True)
        time.sleep(3600)  # killed here, as by the OOM killer or kill -9
    else:
        ok = outbox.wait_idle(60)
        print("idle" if ok else "timeout", flush=True)
        outbox.stop()
""")


def test_work_survives_a_killed_process(tmp_path):
    """20 pushes fail while 'Label Studio' is down, the process is SIGKILLed; the next one posts all 20."""
    path = tmp_path / "outbox.sqlite"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    root = str(Path(__file__).resolve().parents[1])
    down = subprocess.Popen([sys.executable, str(script), str(path), "down"], stdout=subprocess.PIPE, text=True,
                            cwd=root)
    try:
        line = down.stdout.readline() if down.stdout else ""
        assert line.strip() == "pending 20"
    finally:
        down.kill()
        down.wait(30)
    up = subprocess.run([sys.executable, str(script), str(path), "up"], capture_output=True, text=True, cwd=root,
                        timeout=120)
    assert up.stdout.strip() == "idle", up.stderr[-2000:]
    posted = sorted(path.with_suffix(".done").read_text().split())
    assert posted == sorted(f"task-{i}={i}" for i in range(20))
