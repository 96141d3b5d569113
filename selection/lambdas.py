"""lambda per feature extractor: the paper's values where it chose one, an explicit one otherwise.

lambda weighs a distance between frame embeddings against a 1-5 difficulty, so its
meaning depends on the embedding's scale: the paper chose 0.25 for CLIP RN101 (OpenAI
weights, every frame L2-normalised) and 0.075 for SigLIP2 giant (not normalised). For any
other embedding (the base model's vision tower, another CLIP, random weights, features
that do not record their extractor) no value was chosen and any default would be
arbitrary, so the caller must give one.
"""

from __future__ import annotations

from .errors import LambdaError
from .inputs import check_lambda

CLIP_RN101_OPENAI = "clip:RN101:openai"
SIGLIP2_GIANT = "siglip2:google/siglip2-giant-opt-patch16-384"
PAPER_LAMBDAS = {CLIP_RN101_OPENAI: 0.25, SIGLIP2_GIANT: 0.075}

_HOW = "give lambda explicitly (mdsvqa select/report/prioritize --lambda, or MDSVQA_PRIORITY_DIVERSITY_LAMBDA)"


def default_lambda(extractor: str | None) -> float:
    """The paper's lambda for features of ``extractor``; :class:`LambdaError` (saying why) where it chose none."""
    if extractor in PAPER_LAMBDAS:
        return PAPER_LAMBDAS[extractor]
    chosen = f"the paper chose lambda for {CLIP_RN101_OPENAI} (0.25) and {SIGLIP2_GIANT} (0.075) features only"
    if extractor is None:
        raise LambdaError(
            f"the features do not record their extractor (written before extractors were recorded), and {chosen}: "
            f"re-extract them (mdsvqa features), or {_HOW}")
    if extractor.startswith("vision:"):
        raise LambdaError(
            f"the features come from the base model's own vision tower ({extractor}); {chosen}, and "
            "vision-tower distances have another scale, so a default would weigh diversity against difficulty "
            f"arbitrarily: {_HOW}, or use the clip extractor (MDSVQA_FEATURES_EXTRACTOR=clip)")
    raise LambdaError(f"no lambda was chosen for {extractor!r} features ({chosen}): {_HOW}")


def resolve_lambda(explicit: float | None, extractor: str | None) -> tuple[float, str]:
    """(lambda, where it came from): ``explicit`` when given (checked), else the extractor's default."""
    if explicit is not None:
        return check_lambda(explicit), "given"
    return default_lambda(extractor), f"default for {extractor}"
