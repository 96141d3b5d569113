"""One self-contained HTML page: figures inlined as base64 PNG, tables, no external asset."""

from __future__ import annotations

import base64
import html
import math

from . import plots
from .data import ReportData, budget_points

_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 980px;
       color: #1d2733; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.sub { color: #5b6b7a; margin-top: 0; } .note { background: #fff4e5; border-left: 4px solid #f0a202;
       padding: .5rem .8rem; margin: .6rem 0; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; } .card { background: #f3f6f8; border-radius: 8px;
       padding: .6rem .9rem; min-width: 110px; } .card b { display: block; font-size: 1.35rem; }
table { border-collapse: collapse; width: 100%; font-size: 13px; } th, td { text-align: left;
       padding: .3rem .5rem; border-bottom: 1px solid #e3e8ec; } th { background: #f3f6f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } img { max-width: 100%; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; align-items: start; }
"""


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _metric(metrics: dict | None, key: str) -> str:
    return _number(metrics.get(key)) if metrics else "–"


def render(data: ReportData) -> str:
    e = html.escape
    scored = len(data.difficulty)
    mean = sum(data.difficulty.values()) / scored if scored else float("nan")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(data.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(data.title)}</h1><p class='sub'>MDS-VQA difficulty-diversity selection report</p>",
    ]
    parts += [f"<div class='note'>{e(note)}</div>" for note in data.notes]
    parts.append("<div class='cards'>")
    for label, value in [("videos scored", scored), ("failed", len(data.failed)),
                         ("mean difficulty", _number(mean, 2)), ("picked", len(data.picks)),
                         ("already labeled", len(data.labeled)), ("λ", _number(data.lam, 3) if data.lam else "–")]:
        parts.append(f"<div class='card'><b>{e(str(value))}</b>{e(label)}</div>")
    parts.append("</div>")

    parts.append("<h2>Difficulty</h2>")
    parts.append(_image(plots.difficulty_histogram(data), "difficulty histogram"))
    if data.embeddings:
        parts.append("<h2>Where the picks lie in the pool</h2>")
        parts.append(_image(plots.embedding_map(data), "embedding map with numbered picks"))
    if data.picks:
        parts.append("<h2>Objective per pick</h2>")
        parts.append(_image(plots.objective_terms(data), "objective terms per pick"))
        parts.append("<table><tr><th>#</th><th>video</th><th>objective</th><th>difficulty</th>"
                     "<th>mean Chamfer distance</th><th>λ·distance</th></tr>")
        for pick in data.picks:
            parts.append(
                f"<tr><td class='num'>{pick.rank}</td><td>{e(pick.name)}</td>"
                f"<td class='num'>{_number(pick.objective)}</td><td class='num'>{_number(pick.difficulty, 2)}</td>"
                f"<td class='num'>{_number(pick.mean_distance)}</td>"
                f"<td class='num'>{_number((data.lam or 0) * pick.mean_distance)}</td></tr>")
        parts.append("</table>")
    if budget_points(data.versions):
        parts.append("<h2>Budget curve: held-out SRCC against labels spent</h2>")
        parts.append(_image(plots.budget_curve(data), "budget curve"))
    if data.versions:
        parts.append("<h2>Model versions (held-out SRCC / PLCC)</h2><table><tr><th>version</th><th>kind</th>"
                     "<th>active</th><th>created</th><th>labels</th><th>SRCC before</th><th>SRCC after</th>"
                     "<th>PLCC before</th><th>PLCC after</th></tr>")
        for v in data.versions:
            parts.append(
                f"<tr><td>{e(v.id)}</td><td>{e(v.kind)}</td><td>{'yes' if v.active else ''}</td>"
                f"<td>{e(v.created)}</td><td class='num'>{'' if v.labels is None else v.labels}</td>"
                f"<td class='num'>{_metric(v.before, 'srcc')}</td>"
                f"<td class='num'>{_metric(v.after, 'srcc')}</td><td class='num'>{_metric(v.before, 'plcc')}</td>"
                f"<td class='num'>{_metric(v.after, 'plcc')}</td></tr>")
        parts.append("</table>")
    if data.failed:
        parts.append("<h2>Videos without a score</h2><table><tr><th>video</th><th>why</th></tr>")
        parts += [f"<tr><td>{e(n)}</td><td>{e(why)}</td></tr>" for n, why in sorted(data.failed.items())]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
