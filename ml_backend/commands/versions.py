"""``mdsvqa versions``: the trained versions of a model directory, which are active, how much each improved."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "versions",
        help="List trained versions (id, kind, active, held-out SRCC/PLCC before -> after).",
        description="List the complete versions in MODEL_DIR/versions, oldest first, with their kind (quality = "
        "f, difficulty = g), whether each is active, where it came from and its held-out SRCC/PLCC before and "
        "after training. Half-written versions (a crashed save) are never listed; --leftovers names them.",
    )
    parser.add_argument("--model-dir", help="Version store (MDSVQA_MODEL_DIR).")
    parser.add_argument("--kind", choices=["quality", "difficulty"], help="Only this kind.")
    parser.add_argument("--json", action="store_true", help="Machine-readable output.")
    parser.add_argument("--leftovers", action="store_true",
                        help="Also report abandoned staging folders of crashed saves (remove them with --clean).")
    parser.add_argument("--clean", action="store_true", help="Remove abandoned staging folders and temp files.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..settings import load_settings
    from ..training.reporting import describe_metrics, describe_protocol, store_summary
    from ..training.versions import VersionStore

    model_dir = args.model_dir or load_settings().model_dir
    store = VersionStore(model_dir)
    summary = store_summary(store)
    if args.kind:
        summary["versions"] = [v for v in summary["versions"] if v["kind"] == args.kind]
    removed = [str(leftover.path) for leftover in store.clean_leftovers()] if args.clean else []
    leftovers = [{"path": str(item.path), "reason": item.reason} for item in store.leftovers()] \
        if args.leftovers or args.clean else []
    if args.json:
        body = dict(summary, model_dir=str(model_dir))
        if args.leftovers or args.clean:
            body["leftovers"] = leftovers
            body["removed"] = removed
        print(json.dumps(body, indent=2))
        return 0
    if not summary["versions"]:
        print(f"no versions in {model_dir}")
    for version in summary["versions"]:
        mark = "*" if version["active"] else " "
        source = version.get("source") or {}
        origin = f"  project {source['label_studio_project']}" if source.get("label_studio_project") else ""
        print(f"{mark} {version['id']}  {version['kind']:<10} {version['created'][:19]}{origin}")
        print(f"    held-out {describe_metrics(version['metrics_before'], version['metrics_after'])}")
        for line in describe_protocol(version.get("protocol")):
            print(f"    {line}")
        print(f"    {version['path']}" + (f"  (from {version['parent']})" if version["parent"] else ""))
    for kind, active in summary["active"].items():
        print(f"active {kind}: {active or 'none (stock model)'}")
    for path in removed:
        print(f"removed {path}")
    for item in leftovers:
        print(f"leftover {item['path']}: {item['reason']}")
    return 0
