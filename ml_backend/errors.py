"""Error types: each failure a user can meet has its own class and a message that says what to do."""

from __future__ import annotations


class MdsVqaError(Exception):
    """Base class of every error this project raises on purpose."""


class VideoError(MdsVqaError):
    """A video cannot be used: missing, unreadable, corrupt, too short or too large."""


class AnswerParseError(MdsVqaError):
    """The model's answer holds no usable number; ``raw_text`` keeps what it said."""

    def __init__(self, message: str, raw_text: str) -> None:
        super().__init__(message)
        self.raw_text = raw_text


class ModelNotFoundError(MdsVqaError):
    """Weights or processor files for a base model or adapter could not be found."""


class ConfigurationError(MdsVqaError):
    """Settings or a label config that cannot work."""


class TrainingDataError(MdsVqaError):
    """Labels that cannot train or evaluate a model: too few, unreadable, or a degenerate MOS range."""


class JobAlreadyRunningError(MdsVqaError):
    """A training job is already running for this model directory; ``job_id`` names it."""

    def __init__(self, message: str, job_id: str | None) -> None:
        super().__init__(message)
        self.job_id = job_id


class VersionError(MdsVqaError):
    """A model version that does not exist, is incomplete, or cannot be written or activated."""


class FeatureModelError(ModelNotFoundError):
    """A frame-feature extractor (CLIP, SigLIP2) cannot be found or loaded.

    The message says what is missing and how to provide it."""
