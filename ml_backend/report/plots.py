"""The report's figures as PNG bytes (matplotlib, headless)."""

from __future__ import annotations

import io

import numpy as np

from .data import ReportData, budget_points, project_2d, video_means

PICK_COLOUR = "#d1495b"
POOL_COLOUR = "#8aa1b1"
LABELED_COLOUR = "#2e4057"


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def difficulty_histogram(data: ReportData) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 3.2))
    values = np.array(list(data.difficulty.values()), dtype=float)
    picked = np.array([p.difficulty for p in data.picks], dtype=float)
    bins = np.linspace(1, 5, 33)
    axis.hist(values, bins=bins, color=POOL_COLOUR, label=f"pool ({len(values)})")
    if len(picked):
        axis.hist(picked, bins=bins, color=PICK_COLOUR, label=f"picked ({len(picked)})")
    axis.set_xlabel("predicted difficulty (1 = easy to assess, 5 = hard)")
    axis.set_ylabel("videos")
    axis.set_xlim(1, 5)
    axis.legend(frameon=False)
    axis.spines[["top", "right"]].set_visible(False)
    return _png(figure)


def embedding_map(data: ReportData) -> bytes:
    plt = _pyplot()
    names, means = video_means(data.embeddings)
    coords = project_2d(means)
    position = {name: coords[i] for i, name in enumerate(names)}
    figure, axis = plt.subplots(figsize=(6.4, 5.2))
    colours = [data.difficulty.get(n, np.nan) for n in names]
    scatter = axis.scatter(coords[:, 0], coords[:, 1], c=colours, cmap="viridis", vmin=1, vmax=5, s=22,
                           edgecolors="none", alpha=0.85)
    figure.colorbar(scatter, ax=axis, label="difficulty", shrink=0.8)
    labeled = [position[n] for n in data.labeled if n in position]
    if labeled:
        xy = np.array(labeled)
        axis.scatter(xy[:, 0], xy[:, 1], marker="s", s=46, facecolors="none", edgecolors=LABELED_COLOUR,
                     label="already labeled")
    span = float(np.ptp(coords, axis=0).max()) if len(coords) else 1.0
    placed: list[np.ndarray] = []
    for pick in data.picks:
        if pick.name not in position:
            continue
        xy = position[pick.name]
        axis.scatter([xy[0]], [xy[1]], s=120, facecolors="none", edgecolors=PICK_COLOUR, linewidths=1.6)
        # Fan labels of nearby picks out around the point (golden-angle steps) so numbers stay legible.
        crowd = sum(1 for other in placed if np.linalg.norm(other - xy) < 0.04 * max(span, 1e-9))
        angle, radius = 0.8 + crowd * 2.4, 9 + 6 * crowd
        axis.annotate(str(pick.rank), xy, textcoords="offset points", fontsize=8, color=PICK_COLOUR,
                      fontweight="bold", xytext=(radius * np.cos(angle), radius * np.sin(angle)),
                      ha="center", va="center",
                      arrowprops={"arrowstyle": "-", "color": PICK_COLOUR, "lw": 0.5} if crowd else None)
        placed.append(xy)
    axis.set_xlabel("first principal component")
    axis.set_ylabel("second principal component")
    axis.set_title("pool embeddings (mean per video); picks numbered in order", fontsize=10)
    if labeled:
        axis.legend(frameon=False, loc="best")
    return _png(figure)


def budget_curve(data: ReportData) -> bytes:
    """Held-out SRCC after each training run against the labels it spent, one line per model kind."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 3.2))
    for (kind, points), colour in zip(sorted(budget_points(data.versions).items()), (PICK_COLOUR, LABELED_COLOUR)):
        xs, ys = zip(*points)
        axis.plot(xs, ys, marker="o", color=colour, label=f"{kind} ({len(points)} points)")
    axis.set_xlabel("labels spent (train + held-out)")
    axis.set_ylabel("held-out SRCC")
    axis.legend(frameon=False, fontsize=8)
    axis.spines[["top", "right"]].set_visible(False)
    return _png(figure)


def objective_terms(data: ReportData) -> bytes:
    plt = _pyplot()
    ranks = np.array([p.rank for p in data.picks])
    difficulty = np.array([p.difficulty for p in data.picks])
    diversity = np.array([(data.lam or 0.0) * p.mean_distance for p in data.picks])
    figure, axis = plt.subplots(figsize=(6.4, 3.2))
    axis.bar(ranks, difficulty, color=POOL_COLOUR, label="difficulty g(x)")
    axis.bar(ranks, diversity, bottom=difficulty, color=PICK_COLOUR, label=f"λ·mean Chamfer distance (λ={data.lam})")
    axis.set_xlabel("pick")
    axis.set_ylabel("objective")
    axis.legend(frameon=False, fontsize=8)
    axis.spines[["top", "right"]].set_visible(False)
    return _png(figure)
