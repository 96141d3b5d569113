"""Greedy difficulty-diversity selection of videos to label (MDS-VQA), exact and fast.

``select_greedy`` is the scalable implementation (torch, imported on first use; frames in
memory, or a packed .npy file streamed within a working set), ``reference_select`` the
per-pair float64 one it is tested against; both return a ``SelectionResult``. See
docs/selection.md.
"""

from .chamfer import chamfer_distance
from .errors import (
    BudgetError,
    DifficultyError,
    DuplicateNameError,
    EmptyPoolError,
    FrameError,
    InitialSetError,
    InputFileError,
    LambdaError,
    SelectionError,
    WorkingSetError,
)
from .objective import TIE_TOLERANCE
from .reference import reference_select
from .result import SelectionResult, SelectionStep


def __getattr__(name: str):
    if name == "select_greedy":  # keeps `import selection` free of torch
        from .greedy import select_greedy

        return select_greedy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TIE_TOLERANCE",
    "BudgetError",
    "DifficultyError",
    "DuplicateNameError",
    "EmptyPoolError",
    "FrameError",
    "InitialSetError",
    "InputFileError",
    "LambdaError",
    "SelectionError",
    "SelectionResult",
    "SelectionStep",
    "WorkingSetError",
    "chamfer_distance",
    "reference_select",
    "select_greedy",
]
