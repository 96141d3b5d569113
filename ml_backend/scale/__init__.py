"""Scoring at scale: the scorer pool on a Ray cluster (``ray_pool``, ``ray_project``).

This module stays light (argparse only): commands add the ``--ray`` options at parse time
and import ``ray`` (the ``ray`` extra) only when a run asks for it.
"""

from __future__ import annotations

import argparse


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", metavar="ADDRESS", dest="ray_address",
                        help="Score on a Ray cluster (pip install 'mdsvqa-labelstudio[ray]'): 'local' starts one on "
                        "this machine ('local:N': N CPUs), 'auto' or HOST:6379 joins a running one, "
                        "ray://HOST:10001 through Ray Client (MDSVQA_RAY_ADDRESS).")
    parser.add_argument("--ray-actors", type=int, metavar="N",
                        help="Scorer actors, each holding the model (default: one per GPU of the cluster, or one "
                        "without GPUs).")
    parser.add_argument("--ray-actor-cpus", type=int, metavar="N",
                        help="CPUs of each scorer actor (default: 1 beside a GPU; without GPUs half the cluster's "
                        "CPUs divided among the actors, the rest decodes).")


def ray_options(args: argparse.Namespace) -> dict:
    """The pool's sizing options given on the command line (None: the pool's defaults)."""
    return {"actors": getattr(args, "ray_actors", None), "actor_cpus": getattr(args, "ray_actor_cpus", None)}
