"""Difficulty scoring: decoded videos in, parsed and cached scores out."""

from .scorer import DifficultyScorer, ScoreResult

__all__ = ["DifficultyScorer", "ScoreResult"]
