"""``mdsvqa evaluate --scores SCORES.json --labels LABELS.jsonl``: SRCC and PLCC as the reference computes them."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="SRCC and PLCC of a scores file against MOS labels, as the MDS-VQA reference computes them.",
        description="Match the scores (reference JSON, as `mdsvqa score` writes it) to labels (JSONL lines "
        '{"video": path or file name, "mos": x}) by file name, fit the reference\'s 4-parameter logistic and '
        "report SRCC and PLCC on the fitted values. Fewer than 4 pairs, constant predictions or no overlap give "
        "null metrics with a reason and exit status 1.",
    )
    parser.add_argument("--scores", required=True, metavar="SCORES.json", help="Scores in the reference format.")
    parser.add_argument("--labels", required=True, metavar="LABELS.jsonl", help='Lines {"video": ..., "mos": ...}.')
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from selection.files import read_scores

    from ..training.data import mos_by_file_name
    from ..training.evaluation import evaluate_by_name

    scores = read_scores(args.scores)
    mos, labels = mos_by_file_name(args.labels)
    result = evaluate_by_name(scores.scores, mos).to_json()
    report = {
        "srcc": result["srcc"], "plcc": result["plcc"], "n": result["count"], "fit": result["fit"],
        "reason": result["reason"],
        "scores_without_label": sorted(set(scores.scores) - set(mos)),
        "labels_without_score": sorted(set(mos) - set(scores.scores)),
        "unusable_scores": scores.unusable,
        "label_problems": [str(p) for p in labels.problems],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        if report["srcc"] is None:
            print(f"SRCC and PLCC undefined on {report['n']} pair(s): {report['reason']}")
        else:
            print(f"SRCC {report['srcc']:.4f}  PLCC {report['plcc']:.4f}  on {report['n']} videos "
                  f"({'4-parameter logistic' if report['fit'] == 'logistic' else 'raw predictions: the fit failed'})")
        for key, label in (("scores_without_label", "scores without a label"),
                           ("labels_without_score", "labels without a usable score")):
            if report[key]:
                print(f"{len(report[key])} {label}: {', '.join(report[key][:5])}", file=sys.stderr)
        for name, why in list(report["unusable_scores"].items())[:5]:
            print(f"unusable score {name}: {why}", file=sys.stderr)
        for problem in report["label_problems"][:5]:
            print(f"skipped label {problem}", file=sys.stderr)
    return 0 if report["srcc"] is not None else 1
