"""Inference engines of the scorer: ``hf`` (transformers + PEFT, ``scoring.generation``) or ``vllm``.

This module stays light (argparse only): commands add ``--engine`` at parse time; vLLM is
imported only when a scorer runs on it (``vllm_engine``, the ``vllm`` extra).
"""

from __future__ import annotations

import argparse

ENGINES = ("hf", "vllm")


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=ENGINES,
                        help="Inference engine (MDSVQA_ENGINE, default hf): 'hf' = transformers + PEFT; 'vllm' = "
                        "vLLM (pip install 'mdsvqa-labelstudio[vllm]') on a merged checkpoint per adapter version, "
                        "built once under MDSVQA_CACHE_DIR/merged.")
