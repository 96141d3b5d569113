"""``mdsvqa score-project``: predict every task of a Label Studio project that lacks one."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "score-project",
        help="Score every task of a Label Studio project lacking a current-version prediction and store them.",
        description="List the project's tasks, score those without a prediction of the current model version "
        "(cached videos instantly), post the predictions to Label Studio with a progress bar, then set the "
        "project's model_version to ours so the Prediction score column shows them.",
    )
    parser.add_argument("--url", help="Label Studio URL (LABEL_STUDIO_URL).")
    parser.add_argument("--token", help="Label Studio token (LABEL_STUDIO_API_KEY). Prefer the environment.")
    parser.add_argument("--project", type=int, required=True, help="Project id.")
    parser.add_argument("--base", help="Base model (MDSVQA_BASE).")
    parser.add_argument("--adapter", help="Adapter (MDSVQA_ADAPTER).")
    parser.add_argument("--cache-dir", help="Score caches and downloads (MDSVQA_CACHE_DIR).")
    parser.add_argument("--no-project-version", dest="set_project_version", action="store_false",
                        help="Leave the project's model_version alone.")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="No progress bar.")
    from ..scale import add_ray_arguments

    add_ray_arguments(parser)
    from ..engines import add_engine_argument

    add_engine_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigurationError
    from ..server.project_run import score_project
    from ..settings import load_settings

    settings = load_settings(label_studio_url=args.url, label_studio_api_key=args.token, base=args.base,
                             adapter=args.adapter, cache_dir=args.cache_dir, ray_address=args.ray_address,
                             engine=args.engine)
    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise ConfigurationError("give --url and --token, or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    if settings.ray_address:  # the same run with the model work on the cluster (ml_backend/scale)
        from ..scale import ray_options
        from ..scale.ray_project import score_project_on_ray

        summary = score_project_on_ray(settings, args.project, settings.ray_address,
                                       set_project_version=args.set_project_version, progress=args.progress,
                                       **ray_options(args))
    else:
        summary = score_project(settings, args.project, set_project_version=args.set_project_version,
                                progress=args.progress)
    print(summary.describe())
    return 0 if summary.failed_push == 0 else 1
