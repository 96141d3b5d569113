import json
import re

import numpy as np

from ml_backend.cli import main
from ml_backend.report.data import PickRow, ReportData, project_2d, video_means
from ml_backend.report.html import render


def clustered_pool(folder, count=24, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim))
    scores = {}
    (folder / "features").mkdir(parents=True)
    for i in range(count):
        frames = centres[i % 3] + 0.2 * rng.normal(size=(6, dim))
        frames /= np.linalg.norm(frames, axis=1, keepdims=True)
        np.savez(folder / "features" / f"clip{i:02d}_features.npz", features=frames.astype(np.float32),
                 extractor=np.array("clip:RN101:openai"))
        scores[f"clip{i:02d}.mp4"] = {"reasoning": "N/A", "score": round(float(rng.uniform(1, 5)), 2)}
    scores["bad <b>name</b>.mp4"] = {"reasoning": "N/A", "score": None, "error": "not a decodable video"}
    (folder / "scores.json").write_text(json.dumps(scores))
    return folder


def test_projection_is_deterministic_and_keeps_cluster_structure():
    rng = np.random.default_rng(1)
    points = np.vstack([rng.normal(0, 0.01, (5, 8)) + 1, rng.normal(0, 0.01, (5, 8)) - 1])
    first, second = project_2d(points), project_2d(points.copy())
    assert np.array_equal(first, second)
    assert abs(first[:5, 0].mean() - first[5:, 0].mean()) > 1.0  # the two groups separate on PC1
    assert project_2d(points[:1]).shape == (1, 2) and project_2d(np.zeros((0, 8))).shape == (0, 2)
    names, means = video_means({"b": np.ones((2, 3)), "a": np.full((1, 3), 2.0)})
    assert names == ["a", "b"] and np.allclose(np.linalg.norm(means, axis=1), 1)


def test_render_is_self_contained_and_escapes_names():
    data = ReportData(title="T <x>", difficulty={"a.mp4": 2.0, "b.mp4": 4.0},
                      failed={"<script>.mp4": "broken"},
                      embeddings={"a.mp4": np.eye(2, 4), "b.mp4": np.eye(2, 4)[::-1]},
                      picks=[PickRow(1, "b.mp4", 4.0, 4.0, 0.0), PickRow(2, "a.mp4", 2.3, 2.0, 1.2)], lam=0.25)
    page = render(data)
    assert page.count("data:image/png;base64,") == 3  # histogram, map, objective terms
    assert "<script>" not in page and "&lt;script&gt;.mp4" in page and "T &lt;x&gt;" in page
    assert not re.search(r"(src|href)=[\"'](https?:|//)", page)  # nothing loaded from outside
    assert "2.300" in page and "0.300" in page  # objective and lambda * distance of pick 2


def test_report_command_selects_and_lists_versions(tmp_path):
    pool = clustered_pool(tmp_path)
    out = tmp_path / "report.html"
    code = main(["report", "--scores", str(pool / "scores.json"), "--features", str(pool / "features"),
                 "--budget", "5", "--out", str(out), "--title", "Pool A"])
    assert code == 0
    page = out.read_text()
    rows = re.findall(r"<tr><td class='num'>(\d+)</td><td>(clip\d\d\.mp4)</td>", page)
    assert [int(rank) for rank, _ in rows] == [1, 2, 3, 4, 5]
    assert len({name for _, name in rows}) == 5
    assert "bad &lt;b&gt;name&lt;/b&gt;.mp4" in page and "not a decodable video" in page
    assert page.count("data:image/png;base64,") == 3


def test_report_refuses_names_sharing_a_features_stem_cleanly(tmp_path, capsys):
    pool = clustered_pool(tmp_path, count=3)
    scores = json.loads((pool / "scores.json").read_text())
    scores["clip00.mkv"] = {"reasoning": "N/A", "score": 2.0}  # same stem as clip00.mp4
    (pool / "scores.json").write_text(json.dumps(scores))
    code = main(["report", "--scores", str(pool / "scores.json"), "--features", str(pool / "features"),
                 "--out", str(tmp_path / "r.html")])
    assert code == 2
    assert "clip00" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_report_prints_the_reference_diagnostic_with_labels(tmp_path):
    from ml_backend.training.evaluation import evaluate

    pool = clustered_pool(tmp_path)
    rng = np.random.default_rng(3)
    names = [f"clip{i:02d}.mp4" for i in range(24)]
    mos = {n: float(rng.uniform(1, 5)) for n in names}
    f = {n: {"score": round(mos[n] + float(rng.normal(0, 0.8)), 2)} for n in names}
    (tmp_path / "f.json").write_text(json.dumps(f))
    (tmp_path / "mos.jsonl").write_text("".join(json.dumps({"video": n, "mos": m}) + "\n" for n, m in mos.items()))
    out = tmp_path / "report.html"
    assert main(["report", "--scores", str(pool / "scores.json"), "--features", str(pool / "features"),
                 "--budget", "6", "--out", str(out), "--mos", str(tmp_path / "mos.jsonl"),
                 "--baseline", str(tmp_path / "f.json")]) == 0
    html = out.read_text()
    whole = evaluate([f[n]["score"] for n in names], [mos[n] for n in names])
    assert f"quality model on all labeled videos: SRCC {whole.srcc:.4f}, PLCC {whole.plcc:.4f} (n=24)" in html
    assert "quality model on the picks: SRCC " in html and "(n=6)" in html


def test_budget_curve_points_follow_labels_spent():
    from ml_backend.report.data import VersionRow, budget_points
    from ml_backend.report.versions import labels_spent

    rows = [VersionRow("d2", "difficulty", True, "2026-01-02", {"srcc": 0.45}, {"srcc": 0.53}, 26),
            VersionRow("d1", "difficulty", False, "2026-01-01", {"srcc": 0.41}, {"srcc": 0.45}, 12),
            VersionRow("q1", "quality", True, "2026-01-01", {"srcc": 0.3}, {"srcc": None}, 12),
            VersionRow("d0", "difficulty", False, "2025-12-31", None, {"srcc": 0.2}, None)]
    assert budget_points(rows) == {"difficulty": [(0, 0.41), (12, 0.45), (26, 0.53)]}
    assert labels_spent({"settings": {"labels": {"train": 8, "held_out": 4, "source": 100}}}) == 12
    assert labels_spent({"settings": {}}) is None and labels_spent({"settings": {"labels": {"train": True}}}) is None
    page = render(ReportData(title="t", difficulty={"a": 2.0}, failed={}, embeddings={}, versions=rows))
    assert "Budget curve" in page and page.count("data:image/png;base64,") == 2
