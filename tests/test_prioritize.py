"""The labeling-queue order without Label Studio: score mapping, feature store, ordering pass, debouncing."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ml_backend.labelstudio.client import Connection, LabelStudioApiError, ProjectInfo, ProjectTask, TaskPrediction
from ml_backend.labelstudio.media import LocalMedia, media_key
from ml_backend.prioritize.features import FeatureRecorder, FeatureRequest, FeatureSource, FeatureStore
from ml_backend.prioritize.order import (
    PICK_FLOOR,
    default_budget,
    new_prediction_priority,
    pick_priority,
    queue_order,
    rest_priority,
    rest_sort_key,
)
from ml_backend.prioritize.run import (
    VIEW_ORDERING,
    VIEW_TITLE,
    PriorityError,
    PriorityInterruptedError,
    prioritize_project,
)
from ml_backend.prioritize.view import DIFFICULTY_FIELD, RANK_FIELD, column_ids, hidden_columns, view_data
from selection.lambdas import CLIP_RN101_OPENAI
from tests.conditions import wait_for

LABEL_CONFIG = (Path(__file__).resolve().parents[1] / "label_config.xml").read_text()
VERSION = "V2"
LS = Connection("http://ls.invalid:8080", "token")
DM_COLUMNS = json.loads((Path(__file__).parent / "data" / "dm_columns_ls_1.23.2.json").read_text())["columns"]


# -- the order and its scores -----------------------------------------------------------------------

def test_queue_scores_strictly_decrease_picks_first_then_difficulty():
    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.integers(1, 60))
        ids = rng.choice(np.arange(1, 10_000), size=n, replace=False).tolist()
        # two decimals, as the Number control holds them, with many ties
        difficulty = {int(t): float(rng.integers(100, 501)) / 100 for t in ids}
        picks = [int(t) for t in rng.permutation(ids)[: int(rng.integers(0, n + 1))]]
        order = queue_order(picks, difficulty)
        scores = [entry.priority for entry in order]
        assert sorted(e.task_id for e in order) == sorted(difficulty), "every task exactly once"
        assert [e.task_id for e in order[: len(picks)]] == picks, "picks first, in pick order"
        assert all(0 < s <= 1 for s in scores)
        assert all(a > b for a, b in itertools.pairwise(scores)), f"trial {trial}: not strictly decreasing"
        rest = [e.task_id for e in order[len(picks):]]
        assert rest == sorted(rest, key=lambda t: (-difficulty[t], t)), "rest by difficulty, ties: older first"
        if picks:
            assert scores[0] == 1.0 and min(scores[: len(picks)]) > PICK_FLOOR >= max(scores[len(picks):] or [0])


def test_scores_survive_a_json_round_trip_distinct():
    import json

    ids = list(range(1, 2001))
    order = queue_order([], {t: 3.0 for t in ids})  # all tied: only the id tells them apart
    scores = json.loads(json.dumps([e.priority for e in order]))
    assert len(set(scores)) == len(ids) and scores == sorted(scores, reverse=True)


def test_rest_scores_do_not_depend_on_the_other_tasks():
    """A label that moves only the picks must not rewrite every other task's score."""
    difficulty = {1: 4.2, 2: 3.1, 3: 3.1, 4: 1.0, 5: 5.0}
    before = {e.task_id: e.priority for e in queue_order([5, 1], difficulty)}
    del difficulty[5]  # task 5 got labeled; the greedy now picks 1 then 3
    after = {e.task_id: e.priority for e in queue_order([1, 3], difficulty)}
    assert after[2] == before[2] and after[4] == before[4]
    assert after[1] == 1.0 and after[3] > PICK_FLOOR > before[3]


def test_priority_helpers_refuse_bad_input():
    with pytest.raises(ValueError):
        queue_order([1, 1], {1: 2.0})
    with pytest.raises(ValueError):
        queue_order([9], {1: 2.0})
    with pytest.raises(ValueError):
        rest_priority(float("nan"), 1)
    for bad_id in (0, 2**40, True, 3.0):
        with pytest.raises(ValueError):
            rest_priority(2.0, bad_id)
    with pytest.raises(ValueError):
        pick_priority(3, 3)
    assert rest_sort_key(7.5, 1) == rest_sort_key(5.0, 1), "clamped to the 1-5 scale"
    assert rest_priority(1.0, 2**40 - 1) > 0 and rest_priority(5.0, 1) < PICK_FLOOR


def test_a_new_prediction_carries_the_score_the_queue_gives_it():
    """/predict's score (Send Test Request, Retrieve predictions) equals what a pass writes for a non-pick."""
    difficulty = {3: 2.0, 4: 4.25, 9: 2.0}
    order = queue_order([4], difficulty)
    for entry in order[1:]:
        assert new_prediction_priority(difficulty[entry.task_id], entry.task_id) == entry.priority
    assert new_prediction_priority(2.0, 3) > new_prediction_priority(2.0, 9)
    assert new_prediction_priority(2.0, 9) < new_prediction_priority(2.0, None) < new_prediction_priority(2.01, 3)
    assert new_prediction_priority(5.0, None) < PICK_FLOOR


@pytest.mark.parametrize(("pool", "fraction", "expected"), [(0, 0.05, 0), (1, 0.05, 1), (20, 0.05, 1),
                                                           (21, 0.05, 2), (1600, 0.04, 64), (100, 1.0, 100)])
def test_default_budget(pool, fraction, expected):
    assert default_budget(pool, fraction) == expected


# -- features kept per media key ------------------------------------------------------------------

class _Resolver:
    """Every reference is the same local file (two tasks, one video): the queue must tell them apart."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fetch(self, ref, *, task_id, connection):
        return LocalMedia(self.path, temporary=False, size=self.path.stat().st_size)

    def close(self):
        pass


class _Scorer:
    """What FeatureRecorder.attach looks at on a DifficultyScorer, and results that carry features."""

    model_version = "FEATURES-v1"

    class spec:  # noqa: N801
        @staticmethod
        def identity(adapter):
            assert adapter is None, "features must not depend on the adapter"
            return {"base": "tiny", "dtype": "float32", "device": "cpu", "attention": "sdpa"}

    def __init__(self, features) -> None:
        from ml_backend.settings import Settings

        self.settings = Settings()
        self.with_features = False
        self.features = features

    def cached_result(self, path):
        return None

    def score_paths(self, paths):
        from ml_backend.scoring import ScoreResult

        for path in paths:
            yield ScoreResult(Path(path), Path(path).name, 2.5, "2.5", None, False, self.model_version,
                              self.features if self.with_features else None)


def _queue(recorder, scorer, resolver, tmp_path):
    from ml_backend.server.metrics import BackendMetrics
    from ml_backend.server.queue import ScoringQueue
    from ml_backend.server.store import BackendStore

    return ScoringQueue(scorer=lambda: scorer, resolver=resolver, store=BackendStore(tmp_path / "state.sqlite"),
                        metrics=BackendMetrics(), on_late_result=lambda *_: None, batch_size=2, download_workers=1,
                        on_features=recorder.record)


def test_scored_features_are_kept_under_each_jobs_media_key(tmp_path):
    from ml_backend.server.queue import MediaRequest

    frames = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    recorder = FeatureRecorder(tmp_path / "features")
    scorer = recorder.attach(_Scorer(frames))
    assert scorer.with_features, "attach asks the scorer for features on its results"
    video = tmp_path / "v.mp4"
    video.write_bytes(b"video")
    queue = _queue(recorder, scorer, _Resolver(video), tmp_path)
    queue.start()
    try:
        refs = ["/data/upload/1/a.mp4", "/data/upload/1/b.mp4"]  # two tasks, one file on disk
        keys = [media_key(ref, LS) for ref in refs]
        jobs = [queue.submit(MediaRequest(key, ref, i, LS), priority=1, model_version=scorer.model_version)
                for i, (key, ref) in enumerate(zip(keys, refs))]
        assert all(job.wait(30) for job in jobs)
    finally:
        queue.stop()
    loaded = recorder.store.load(keys)
    assert not loaded.problems
    assert all(np.array_equal(loaded.frames[key], frames) for key in keys)
    assert recorder.recorded == 2


def test_recorder_never_fails_the_scoring_batch(tmp_path):
    recorder = FeatureRecorder(tmp_path / "features")
    recorder.record("/data/upload/1/a.mp4", np.zeros((2, 3)))  # no store yet: nothing, no error
    recorder.attach(_Scorer(None))
    recorder.record("/data/upload/1/a.mp4", np.zeros((0, 3)))  # invalid features: logged, not raised
    assert recorder.recorded == 0


def test_feature_source_reports_what_it_cannot_load(tmp_path):
    store = FeatureStore(tmp_path, "vision:test")
    store.put("http://x/a.mp4", np.ones((3, 4)))
    store.put("http://x/b.mp4", np.ones((2, 5)))  # a different dimension than the majority
    store.put("http://x/c.mp4", np.ones((2, 4)))
    store.path("http://x/d.mp4").write_bytes(b"not an npz")
    requests = [FeatureRequest(f"http://x/{n}.mp4", f"http://x/{n}.mp4", i) for i, n in enumerate("abcde")]

    class Computer:
        def compute(self, missing, store_):
            assert [r.key for r in missing] == ["http://x/e.mp4"]
            return {"http://x/e.mp4": "404"}

    loaded = FeatureSource(store, Computer()).features(requests)
    assert set(loaded.frames) == {"http://x/a.mp4", "http://x/c.mp4"}
    assert "dimension" in loaded.problems["http://x/b.mp4"]
    assert "unreadable" in loaded.problems["http://x/d.mp4"]
    assert loaded.problems["http://x/e.mp4"] == "features could not be computed: 404"


# -- one ordering pass against an in-memory Label Studio ------------------------------------------

class FakeLabelStudio:
    """The LabelStudioApi surface an ordering pass uses, in memory: records every write."""

    def __init__(self, tasks: list[ProjectTask], *, model_version: str = VERSION,
                 sampling: str = "Sequential sampling") -> None:
        self.info = ProjectInfo(1, model_version, sampling, LABEL_CONFIG)
        self._tasks = {t.id: t for t in tasks}
        self.view_list: list[dict] = []
        self.writes: list[tuple[int, float]] = []
        self.data_writes: list[int] = []
        self.columns_asked = 0
        self.fail_after: int | None = None
        self.version_set: list[str] = []

    connection = LS

    def project(self, project_id):
        return self.info

    def tasks(self, project_id):
        return iter(list(self._tasks.values()))

    def set_project_model_version(self, project_id, version):
        self.version_set.append(version)
        self.info = ProjectInfo(1, version, self.info.sampling, self.info.label_config)

    def set_prediction_score(self, prediction_id, score):
        if self.fail_after is not None and len(self.writes) >= self.fail_after:
            raise LabelStudioApiError("update: Label Studio answered 502", status=502, transient=True)
        self.writes.append((prediction_id, score))
        for task_id, task in list(self._tasks.items()):
            predictions = [TaskPrediction(p.id, p.model_version, score, p.result) if p.id == prediction_id else p
                           for p in task.predictions]
            self._tasks[task_id] = ProjectTask(task.id, task.data, task.labeled, predictions)

    def set_task_data(self, task_id, data):
        if self.fail_after is not None and len(self.writes) + len(self.data_writes) >= self.fail_after:
            raise LabelStudioApiError("update: Label Studio answered 502", status=502, transient=True)
        self.data_writes.append(task_id)
        task = self._tasks[task_id]
        self._tasks[task_id] = ProjectTask(task.id, dict(data), task.labeled, task.predictions)

    def dm_columns(self, project_id):
        self.columns_asked += 1
        return DM_COLUMNS

    def label(self, task_id):
        task = self._tasks[task_id]
        self._tasks[task_id] = ProjectTask(task.id, task.data, True, task.predictions)

    def score(self, task_id):
        return [p.score for p in self._tasks[task_id].predictions]

    def views(self, project_id):
        return [dict(v) for v in self.view_list]

    def create_view(self, project_id, data):
        view = {"id": len(self.view_list) + 10, "project": project_id, "data": dict(data)}
        self.view_list.append(view)
        return view

    def update_view(self, view_id, project_id, data):
        (view,) = [v for v in self.view_list if v["id"] == view_id]
        view["data"] = dict(data)
        return view


def _prediction(pid: int, difficulty, version: str = VERSION, score: float | None = 0.3) -> TaskPrediction:
    return TaskPrediction(pid, version, score, [{"from_name": "difficulty", "to_name": "video", "type": "number",
                                                 "value": {"number": difficulty}}])


def _task(task_id: int, difficulty=None, *, labeled=False, version: str = VERSION) -> ProjectTask:
    predictions = [] if difficulty is None else [_prediction(100 + task_id, difficulty, version)]
    return ProjectTask(task_id, {"video": f"/data/upload/1/v{task_id}.mp4"}, labeled, predictions)


def _features(tmp_path, task_ids, *, dim=8, seed=0) -> tuple[FeatureSource, dict[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    store = FeatureStore.under(tmp_path / "features", CLIP_RN101_OPENAI)
    frames = {}
    for task_id in task_ids:
        frames[task_id] = rng.normal(size=(int(rng.integers(2, 6)), dim)).astype(np.float32)
        store.put(media_key(f"/data/upload/1/v{task_id}.mp4", LS), frames[task_id])
    return FeatureSource(store), frames


def _expected_picks(difficulty: dict[int, float], frames, budget, lam, seeds):
    from selection import reference_select

    candidates = sorted(difficulty)
    values = [difficulty[t] for t in candidates] + [np.nan] * len(seeds)
    result = reference_select(values, [frames[t] for t in candidates] + [frames[t] for t in seeds], budget, lam,
                              list(range(len(candidates), len(candidates) + len(seeds))))
    return [candidates[i] for i in result.picks]


def test_pass_orders_picks_then_difficulty_and_labeled_tasks_seed(tmp_path):
    difficulty = {1: 2.5, 2: 4.1, 3: 3.3, 4: 4.1, 5: 1.7, 6: 3.9}
    tasks = [_task(t, d) for t, d in difficulty.items()] + [_task(7, 4.8, labeled=True), _task(8, labeled=True)]
    ls = FakeLabelStudio(tasks)
    source, frames = _features(tmp_path, [*list(difficulty), 7, 8])
    summary = prioritize_project(ls, 1, model_version=VERSION, features=source, budget=3, lam=2.0)

    expected = _expected_picks(difficulty, frames, 3, 2.0, seeds=[7, 8])
    assert summary.picks == expected
    assert expected != _expected_picks(difficulty, frames, 3, 2.0, seeds=[]), "the seeds change the picks here"
    rest = sorted(set(difficulty) - set(expected), key=lambda t: (-difficulty[t], t))
    assert summary.queue == expected + rest
    scores = [ls.score(t)[0] for t in summary.queue]
    assert all(a > b for a, b in itertools.pairwise(scores)) and scores[0] == 1.0 and scores[-1] > 0
    assert ls.score(7) == [0.0], "a labeled task leaves the queue (score 0)"
    (view,) = ls.view_list
    assert view["data"] == view_data(VIEW_TITLE, VIEW_ORDERING, DM_COLUMNS)
    assert (summary.view_id, summary.view_action) == (10, "created")
    ranks = {t: ls._tasks[t].data.get(RANK_FIELD) for t in ls._tasks}
    assert [ranks[t] for t in summary.queue] == list(range(1, len(summary.queue) + 1)), "rank = place in the queue"
    assert ranks[7] is None and ranks[8] is None, "labeled tasks have no rank"
    shown = {t: ls._tasks[t].data.get(DIFFICULTY_FIELD) for t in ls._tasks}
    assert shown == {**{t: f"{d:.2f}" for t, d in difficulty.items()}, 7: "4.80", 8: None}
    assert all(ls._tasks[t].data["video"] == f"/data/upload/1/v{t}.mp4" for t in ls._tasks), "task data kept"
    for task_id in difficulty:  # the Number control keeps the difficulty
        assert ls._tasks[task_id].predictions[0].result[0]["value"]["number"] == difficulty[task_id]

    data_writes = len(ls.data_writes)
    again = prioritize_project(ls, 1, model_version=VERSION, features=source, budget=3, lam=2.0)
    assert again.queue == summary.queue and again.updated == 0 and again.view_action == "unchanged"
    assert again.fields_updated == 0 and len(ls.data_writes) == data_writes, "unchanged fields are not written"

    ls.label(expected[0])
    writes = len(ls.writes)
    third = prioritize_project(ls, 1, model_version=VERSION, features=source, budget=3, lam=2.0)
    assert third.picks == _expected_picks({t: d for t, d in difficulty.items() if t != expected[0]}, frames, 3, 2.0,
                                          seeds=sorted([7, 8, expected[0]]))
    assert ls.score(expected[0]) == [0.0]
    assert len(ls.writes) - writes <= 3 + 2, "only the picks (and the newly labeled task) are rewritten"
    assert [ls._tasks[t].data.get(RANK_FIELD) for t in third.queue] == list(range(1, len(third.queue) + 1))
    assert RANK_FIELD not in ls._tasks[expected[0]].data, "the newly labeled task leaves the queue"


def test_tasks_without_difficulty_or_features_are_reported(tmp_path):
    tasks = [_task(1, 3.0), _task(2, 4.0), _task(3), _task(4, 9.5), _task(5, 2.0, version="OLD"),
             ProjectTask(6, {"video": 17}, False, [_prediction(106, 4.5)]), _task(7, 5.0)]
    ls = FakeLabelStudio(tasks)
    source, _ = _features(tmp_path, [1, 2])  # 7 has a difficulty but no stored features
    summary = prioritize_project(ls, 1, model_version=VERSION, features=source, budget=5)
    assert set(summary.without_difficulty) == {3, 4, 5}
    assert "outside [1, 5]" in summary.without_difficulty[4]
    assert summary.without_difficulty[5] == f"no prediction of model version {VERSION}"
    assert set(summary.without_features) == {6, 7} and "media URL" in summary.without_features[6]
    assert summary.budget_clipped and sorted(summary.picks) == [1, 2], "budget over the pickable: all picked"
    assert summary.queue[2:] == [7, 6], "the unpickable follow the picks, by difficulty"
    assert ls.score(3) == [] and ls.score(4) == [0.3], "no score invented for tasks without a usable difficulty"
    assert len(summary.problems()) == 5


def test_empty_pool_and_zero_budget(tmp_path):
    ls = FakeLabelStudio([_task(1, labeled=True)])
    source, _ = _features(tmp_path, [1])
    summary = prioritize_project(ls, 1, model_version=VERSION, features=source)
    assert summary.order == [] and summary.picks == [] and summary.budget == 0
    assert summary.view_action == "created", "the view exists even before there is anything to order"

    ls = FakeLabelStudio([_task(1, 2.0), _task(2, 3.0)])
    summary = prioritize_project(ls, 1, model_version=VERSION, features=None, budget=0)
    assert summary.picks == [] and summary.queue == [2, 1] and not summary.without_features


def test_project_without_model_version_is_refused(tmp_path):
    ls = FakeLabelStudio([_task(1, 2.0)], model_version="")
    with pytest.raises(PriorityError, match="no model_version"):
        prioritize_project(ls, 1, features=None)
    with pytest.raises(PriorityError, match="budget"):
        prioritize_project(ls, 1, model_version=VERSION, features=None, budget=-1)


def test_the_project_follows_our_model_version(tmp_path):
    """The model_version trap: scores on predictions of another version than the project's are ignored."""
    ls = FakeLabelStudio([_task(1, 2.0), _task(2, 3.0, version="OLD")], model_version="OLD")
    summary = prioritize_project(ls, 1, model_version=VERSION, features=None, budget=0)
    assert ls.version_set == [VERSION] and summary.project_version_set
    assert summary.queue == [1] and summary.without_difficulty == {2: f"no prediction of model version {VERSION}"}
    default = prioritize_project(FakeLabelStudio([_task(1, 2.0)]), 1, features=None)
    assert default.model_version == VERSION and not default.project_version_set


def test_interrupted_writes_say_so_and_a_rerun_finishes(tmp_path):
    ls = FakeLabelStudio([_task(t, 1 + t / 2) for t in range(1, 7)])
    ls.fail_after = 2
    with pytest.raises(PriorityInterruptedError, match="after 2 of 6") as caught:
        prioritize_project(ls, 1, model_version=VERSION, features=None, budget=0)
    assert caught.value.transient and ls.view_list == []
    ls.fail_after = None
    summary = prioritize_project(ls, 1, model_version=VERSION, features=None, budget=0)
    assert summary.updated == 4 and summary.unchanged == 2 and summary.view_action == "created"
    assert summary.fields_updated == 6

    ls = FakeLabelStudio([_task(t, 1 + t / 2) for t in range(1, 4)])
    ls.fail_after = 4  # 3 scores, then the first task's fields
    with pytest.raises(PriorityInterruptedError, match="1 of 3 task rank/difficulty"):
        prioritize_project(ls, 1, model_version=VERSION, features=None, budget=0)
    ls.fail_after = None
    assert prioritize_project(ls, 1, model_version=VERSION, features=None, budget=0).fields_updated == 2


def test_an_edited_view_gets_its_ordering_back_and_keeps_the_rest():
    ls = FakeLabelStudio([_task(1, 2.0)])
    ls.view_list = [{"id": 4, "data": {"title": "other", "ordering": ["tasks:id"]}},
                    {"id": 5, "data": {"title": VIEW_TITLE, "ordering": ["tasks:id"],
                                       "hiddenColumns": {"explore": ["tasks:inner_id"]}}}]
    summary = prioritize_project(ls, 1, model_version=VERSION, features=None)
    assert (summary.view_id, summary.view_action) == (5, "updated")
    assert ls.view_list[1]["data"] == {"title": VIEW_TITLE, "ordering": VIEW_ORDERING,
                                       "hiddenColumns": {"explore": ["tasks:inner_id"]}}
    assert ls.view_list[0]["data"]["ordering"] == ["tasks:id"]
    assert ls.columns_asked == 0, "columns someone chose are kept"


def test_a_view_of_an_older_version_gets_its_columns_and_title():
    """Views created without hiddenColumns show most columns empty in Label Studio 1.23.2."""
    ls = FakeLabelStudio([_task(1, 2.0)])
    ls.view_list = [{"id": 5, "data": {"title": "MDS-VQA priority", "ordering": VIEW_ORDERING,
                                       "columnsDisplayType": {"tasks:data.video": "String"}}}]
    summary = prioritize_project(ls, 1, model_version=VERSION, features=None)
    assert (summary.view_id, summary.view_action) == (5, "updated")
    data = ls.view_list[0]["data"]
    assert data["title"] == VIEW_TITLE and data["hiddenColumns"] == hidden_columns(DM_COLUMNS)
    assert data["columnsDisplayType"] == {"tasks:data.video": "String", f"tasks:data.{RANK_FIELD}": "Number"}


def test_hidden_columns_have_label_studios_format_and_leave_ours_visible():
    hidden = hidden_columns(DM_COLUMNS)
    assert set(hidden) == {"explore", "labeling"}
    every = {ident for ident, _ in column_ids(DM_COLUMNS)}
    assert "tasks:data" not in every and "tasks:data.video" in every and "tasks:predictions_score" in every
    assert set(hidden["explore"]) | set(hidden["labeling"]) <= every
    # Label Studio computes a column unless it is hidden in both modes
    computed = every - (set(hidden["explore"]) & set(hidden["labeling"]))
    for wanted in ("tasks:predictions_score", "tasks:predictions_model_versions", "tasks:file_upload",
                   f"tasks:data.{RANK_FIELD}", f"tasks:data.{DIFFICULTY_FIELD}", "tasks:data.video"):
        assert wanted in computed and wanted not in hidden["explore"], wanted
    assert "tasks:predictions_results" in hidden["explore"], "the difficulty has its own column, not the JSON blob"
    assert f"tasks:data.{RANK_FIELD}" not in hidden["labeling"]


# -- debounced background passes ------------------------------------------------------------------

class _Runs:
    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.errors: list[Exception] = []

    def __call__(self, key, payload):
        assert self.gate.wait(10)
        self.calls.append(int(key))
        if self.errors:
            raise self.errors.pop(0)


@pytest.fixture
def pass_outbox(make_outbox):
    """Ordering passes as the backend runs them: the outbox's priority kind on its slow lane."""
    from ml_backend.server.actions import priority_policy
    from ml_backend.server.outbox import ActionKind

    def make(runs, debounce_s, **policy):
        kind = ActionKind(dataclasses.replace(priority_policy(debounce_s), **policy), runs)
        return make_outbox({"priority": kind}, lanes={"slow": 1})

    return make


def test_asks_within_the_quiet_period_make_one_pass(pass_outbox):
    runs = _Runs()
    outbox = pass_outbox(runs, 1.0)
    for _ in range(5):
        outbox.ask("priority", "1", {})
    outbox.ask("priority", "2", {})
    assert runs.calls == [], "nothing runs inside the asking request"
    assert outbox.wait_idle(20)
    assert sorted(runs.calls) == [1, 2]


def test_an_ask_during_a_pass_gets_another_pass_and_transient_errors_retry(pass_outbox):
    runs = _Runs()
    outbox = pass_outbox(runs, 0.05, retry_delays_s=(0.05,))
    runs.gate.clear()
    outbox.ask("priority", "1", {})
    wait_for(lambda: outbox.running("priority") == 1, timeout=20, what="pass started")
    outbox.ask("priority", "1", {})  # arrives while the first pass runs
    runs.gate.set()
    assert outbox.wait_idle(20)
    assert runs.calls == [1, 1]

    runs.errors = [LabelStudioApiError("502", transient=True)]
    outbox.ask("priority", "1", {})
    assert outbox.wait_idle(20)
    assert runs.calls == [1, 1, 1, 1], "the failed pass and its retry"

    runs.errors = [LabelStudioApiError("400", transient=False), LabelStudioApiError("502", transient=True)]
    outbox.ask("priority", "1", {})
    assert outbox.wait_idle(20)
    assert runs.calls == [1] * 5 and len(runs.errors) == 1, "a permanent error is not retried"


def test_a_steady_stream_of_asks_still_gets_a_pass(pass_outbox):
    runs = _Runs()
    outbox = pass_outbox(runs, 0.2)  # due at most 5 x 0.2 s after the first ask

    def keep_asking():
        outbox.ask("priority", "1", {})
        return runs.calls

    wait_for(keep_asking, timeout=10, interval=0.05, what="a pass despite asks every 50 ms")


# -- wiring: the backend asks for passes, never runs them inside a request --------------------------

def test_backend_asks_for_passes_on_setup_predictions_and_labels(tmp_path):
    from ml_backend.server.app import create_app
    from ml_backend.server.service import BackendService
    from ml_backend.settings import PrioritySettings, Settings
    from tests.backend_fakes import FakeScorer

    settings = Settings(cache_dir=tmp_path / "cache", priority=PrioritySettings(debounce_s=600))
    service = BackendService(settings, scorer_factory=FakeScorer)
    client = create_app(service=service).test_client()
    try:
        wait_for(lambda: client.get("/health").json["model"] == "ready", what="model ready")
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 1}}
        assert client.post("/webhook", json=event).json["status"] == "ignored", "not set up here: not ours"
        assert service.outbox.pending("priority") == []
        client.post("/setup", json={"project": "1.1", "schema": LABEL_CONFIG, "hostname": "http://ls.invalid",
                                    "access_token": "token"})
        (entry,) = service.outbox.pending("priority")
        assert entry.key == "1" and entry.payload["reason"] == "setup"
        assert client.post("/webhook", json=event).json["status"] == "recorded"
        (entry,) = service.outbox.pending("priority")
        assert entry.payload["reason"] == "labels" and entry.due - time.time() > 500
        assert service.outbox.running("priority") == 0
    finally:
        service.stop()
        service.store.close()

    off = BackendService(Settings(cache_dir=tmp_path / "off", priority=PrioritySettings(enabled=False)),
                         scorer_factory=FakeScorer)
    client = create_app(service=off).test_client()
    try:
        wait_for(lambda: client.get("/health").json["model"] == "ready", what="model ready")
        client.post("/setup", json={"project": "1.1", "schema": LABEL_CONFIG, "hostname": "http://ls.invalid",
                                    "access_token": "token"})
        assert off.outbox.pending("priority") == []
    finally:
        off.stop()
        off.store.close()


# -- the command's bad inputs ---------------------------------------------------------------------------

@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MDSVQA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MDSVQA_OFFLINE", "true")


def test_command_says_plainly_when_label_studio_is_unreachable(cli_env, capsys):
    import socket

    from ml_backend.cli import main

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["prioritize", "--url", f"http://127.0.0.1:{port}", "--token", "t", "--project", "3"])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot reach Label Studio at http://127.0.0.1:{port}" in err
    assert "Traceback" not in err

    assert main(["prioritize", "--project", "3"]) == 2
    assert "give --url and --token" in capsys.readouterr().err
    assert main(["prioritize", "--url", "http://x", "--token", "t", "--project", "3", "--budget", "-1"]) == 2
    assert "--budget must be >= 0" in capsys.readouterr().err


def test_lambda_comes_from_the_store_extractor_and_vision_needs_one(tmp_path):
    difficulty = {1: 2.5, 2: 4.1, 3: 3.3, 4: 1.2}
    ls = FakeLabelStudio([_task(t, d) for t, d in difficulty.items()])
    source, frames = _features(tmp_path, list(difficulty))  # a clip:RN101:openai store
    summary = prioritize_project(ls, 1, model_version=VERSION, features=source, budget=2)
    assert (summary.lam, summary.extractor) == (0.25, CLIP_RN101_OPENAI)
    assert summary.picks == _expected_picks(difficulty, frames, 2, 0.25, seeds=[])
    assert "lambda 0.25 (default for clip:RN101:openai)" in summary.describe()

    vision = FeatureStore.under(tmp_path / "features", "vision:0123456789abcdef")
    assert vision.directory.name == "vision-0123456789abcdef", "the folder the vision features always had"
    for task_id, array in frames.items():
        vision.put(media_key(f"/data/upload/1/v{task_id}.mp4", LS), array)
    with pytest.raises(PriorityError, match=r"vision tower.*lambda"):
        prioritize_project(ls, 1, model_version=VERSION, features=FeatureSource(vision), budget=2)
    summary = prioritize_project(ls, 1, model_version=VERSION, features=FeatureSource(vision), budget=2, lam=0.25)
    assert summary.lam == 0.25 and summary.picks == _expected_picks(difficulty, frames, 2, 0.25, seeds=[])


def test_a_store_refuses_files_of_another_extractor(tmp_path):
    from selection.features import save_features

    store = FeatureStore.under(tmp_path, CLIP_RN101_OPENAI)
    store.put("http://x/a.mp4", np.ones((2, 4)))
    np.savez(store.path("http://x/old.mp4"), features=np.ones((2, 4)))  # an older file of this folder: the folder's
    assert set(store.load(["http://x/a.mp4", "http://x/old.mp4"]).frames) == {"http://x/a.mp4", "http://x/old.mp4"}
    save_features(store.directory, store.path("http://x/b.mp4").name.replace("_features.npz", ".mp4"),
                  np.ones((2, 4)), extractor="siglip2:other")
    from selection.errors import MixedExtractorsError

    with pytest.raises(MixedExtractorsError, match="siglip2:other"):
        store.load(["http://x/a.mp4", "http://x/b.mp4"])
