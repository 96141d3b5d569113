"""Typed errors of the selection package.

Every bad input gets its own class so callers (the CLI, the backend) can tell a user
what to fix; all derive from ``SelectionError``, itself a ``ValueError`` because each
one means "this argument cannot be used", never a silently wrong ordering.
"""

from __future__ import annotations


class SelectionError(ValueError):
    """Base class of every error the selection package raises on purpose."""


class EmptyPoolError(SelectionError):
    """The pool holds no video at all."""


class BudgetError(SelectionError):
    """The budget is negative or not an integer."""


class LambdaError(SelectionError):
    """The diversity weight is negative, NaN or infinite."""


class DifficultyError(SelectionError):
    """A difficulty score is missing, NaN, infinite or outside the allowed range."""


class FrameError(SelectionError):
    """A frame set is empty, not 2-D, holds NaN/inf, or has another dimension than the rest."""


class InitialSetError(SelectionError):
    """The already-labeled (initial) set names a video twice or one outside the pool."""


class DuplicateNameError(SelectionError):
    """Two pool entries share a name (or a features-file stem)."""


class InputFileError(SelectionError):
    """A scores, name-list or features file cannot be read or is not in the expected format."""


class MixedExtractorsError(SelectionError):
    """The features of one run come from different extractors (or some do not say which)."""


class WorkingSetError(SelectionError):
    """A streamed run's working-set budget cannot hold what the run must keep at once."""
