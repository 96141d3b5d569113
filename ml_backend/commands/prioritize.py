"""``mdsvqa prioritize``: order a Label Studio project's labeling queue by MDS-VQA selection."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prioritize",
        help="Order a Label Studio project's unlabeled tasks by greedy difficulty + diversity (the labeling queue).",
        description="Read the project's difficulty predictions, pick K tasks greedily (difficulty + lambda x mean "
        "Chamfer distance of frame features to everything selected, labeled tasks included), put the rest after "
        "them by difficulty, write that order into the predictions' scores and keep a Data Manager view "
        "\"MDS-VQA priority\" sorted by it: under Sequential sampling, 'Label Tasks As Displayed' in that view "
        "serves the tasks in this order. Features come from MDSVQA_CACHE_DIR (stored while scoring, by the "
        "extractor MDSVQA_FEATURES_EXTRACTOR: CLIP RN101 on every frame by default); missing ones are computed.",
    )
    parser.add_argument("--url", help="Label Studio URL (LABEL_STUDIO_URL).")
    parser.add_argument("--token", help="Label Studio token (LABEL_STUDIO_API_KEY). Prefer the environment.")
    parser.add_argument("--project", type=int, required=True, help="Project id.")
    parser.add_argument("--budget", type=int, metavar="K",
                        help="Greedy picks at the head of the queue (MDSVQA_PRIORITY_BUDGET; default: "
                        "MDSVQA_PRIORITY_BUDGET_FRACTION, 5%%, of the unlabeled scored tasks, at least 1).")
    parser.add_argument("--budget-fraction", type=float, metavar="F",
                        help="Default K as a share of the pool (MDSVQA_PRIORITY_BUDGET_FRACTION, 0.05).")
    parser.add_argument("--lambda", dest="lam", type=float, metavar="L",
                        help="Weight of diversity against difficulty (MDSVQA_PRIORITY_DIVERSITY_LAMBDA; default from "
                        "the extractor: 0.25 CLIP RN101, 0.075 SigLIP2; required for vision-tower features).")
    parser.add_argument("--model-version",
                        help="Order the predictions of this model version (default: the project's model_version); "
                        "the project is switched to it.")
    parser.add_argument("--base", help="Base model (MDSVQA_BASE); its vision tower gives the features with "
                        "--extractor vision.")
    parser.add_argument("--extractor", choices=["clip", "siglip2", "vision"],
                        help="Which features the backend keeps (MDSVQA_FEATURES_EXTRACTOR, default clip).")
    parser.add_argument("--adapter", help="Adapter (MDSVQA_ADAPTER); it does not change the features.")
    parser.add_argument("--cache-dir", help="Where the features are kept (MDSVQA_CACHE_DIR).")
    parser.add_argument("--device", help="Model and selection device: auto, cpu, cuda (MDSVQA_DEVICE).")
    parser.add_argument("--no-extract", dest="extract", action="store_false",
                        help="Do not compute missing features: tasks without stored features are not picked "
                        "(they follow the picks, by difficulty).")
    parser.set_defaults(run=run)


def _report(message: str) -> None:
    print(f"mdsvqa prioritize: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigurationError
    from ..prioritize.run import PriorityError, prioritize_project
    from ..settings import load_settings

    settings = load_settings(label_studio_url=args.url, label_studio_api_key=args.token, base=args.base,
                             adapter=args.adapter, cache_dir=args.cache_dir, device=args.device)
    settings = with_extractor(settings, args.extractor)
    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise ConfigurationError("give --url and --token, or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    priority = settings.priority
    budget = args.budget if args.budget is not None else priority.budget
    fraction = args.budget_fraction if args.budget_fraction is not None else priority.budget_fraction
    lam = args.lam if args.lam is not None else priority.diversity_lambda
    if budget is not None and budget < 0:
        raise PriorityError(f"--budget must be >= 0, got {budget}")
    if not 0 < fraction <= 1:
        raise PriorityError(f"--budget-fraction must be in (0, 1], got {fraction}")
    client, features, resolver, device = open_project(settings, args.project, extract=args.extract)
    try:
        summary = prioritize_project(client, args.project,
                                     model_version=args.model_version, features=features,
                                     budget=budget, budget_fraction=fraction, lam=lam, device=device)
    finally:
        resolver.close()
    problems = summary.problems()
    for line in problems[:50]:
        _report(line)
    if len(problems) > 50:
        _report(f"... and {len(problems) - 50} more")
    print(summary.describe())
    return 0


def with_extractor(settings, extractor: str | None):
    """``settings`` with ``features.extractor`` overridden (None: unchanged)."""
    if extractor is None:
        return settings
    return settings.model_copy(update={"features": settings.features.model_copy(update={"extractor": extractor})})


def open_project(settings, project: int, *, extract: bool = True):
    """Reach the project (with plain errors) and the backend's feature store: (client, features, resolver, device).

    The caller closes the resolver. Shared by `prioritize` and `report --project`.
    """
    from ..errors import ConfigurationError
    from ..labelstudio.client import Connection, LabelStudioApiError, api_for
    from ..labelstudio.media import MediaResolver
    from ..model.loading import resolve_model, shared_model
    from ..prioritize.features import FeatureSource, FeatureStore, feature_computer
    from ..prioritize.run import PriorityError

    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise ConfigurationError("give --url and --token, or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    try:
        connection = Connection(settings.label_studio_url, settings.label_studio_api_key.get_secret_value())
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    client = api_for(connection)
    try:  # reach Label Studio before anything else, and say so plainly when it cannot be reached
        client.project(project)
    except LabelStudioApiError as exc:
        if exc.status is None:
            raise LabelStudioApiError(f"cannot reach Label Studio at {connection.url}: {exc}") from exc
        if exc.status in (401, 403):
            raise LabelStudioApiError(f"Label Studio at {connection.url} refused the token: {exc}") from exc
        if exc.status == 404:
            raise PriorityError(f"Label Studio at {connection.url} has no project {project}") from exc
        raise
    spec = resolve_model(settings)  # cheap: names the model without loading it
    store = FeatureStore.for_settings(settings.cache_dir / "features", settings, spec)
    resolver = MediaResolver(settings.download_dir, max_bytes=settings.media_max_bytes,
                             timeout_s=settings.media_timeout_s, local_files_root=settings.local_files_root)
    computer = (feature_computer(settings, lambda: shared_model(settings), resolver, connection)
                if extract else None)
    device = spec.runtime.device if spec.runtime.device.startswith("cuda") else "cpu"
    return client, FeatureSource(store, computer), resolver, device
