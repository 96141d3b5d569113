"""Greedy difficulty-diversity selection of videos to label (MDS-VQA), exact and fast.

``select_greedy`` is the scalable implementation, ``reference_select`` the per-pair one it
is tested against; both return a ``SelectionResult``. See docs/selection.md.
"""

from .chamfer import chamfer_distance
from .errors import (BudgetError, DifficultyError, DuplicateNameError, EmptyPoolError, FrameError, InitialSetError,
                     LambdaError, SelectionError)
from .objective import TIE_TOLERANCE
from .result import SelectionResult, SelectionStep


def select_greedy(*args, **kwargs):
    """See ``selection.greedy.select_greedy`` (imported lazily: it needs torch)."""
    from .greedy import select_greedy as run

    return run(*args, **kwargs)


def reference_select(*args, **kwargs):
    """See ``selection.reference.reference_select``."""
    from .reference import reference_select as run

    return run(*args, **kwargs)


__all__ = ["BudgetError", "DifficultyError", "DuplicateNameError", "EmptyPoolError", "FrameError", "InitialSetError",
           "LambdaError", "SelectionError", "SelectionResult", "SelectionStep", "TIE_TOLERANCE", "chamfer_distance",
           "reference_select", "select_greedy"]
