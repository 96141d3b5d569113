"""Prepare the next videos in worker threads or processes while the caller works on the current batch."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")


class Submitter(Protocol):
    """A ThreadPoolExecutor, or anything that runs ``fn(item)`` somewhere and returns its Future."""

    def submit(self, fn: Callable[[Any], Any], item: Any, /) -> Future: ...


def prefetched_batches(items: Sequence[Item], prepare: Callable[[Item], Prepared], batch_size: int,
                       pool: Submitter, *, ahead: int | None = None) -> Iterator[list[tuple[Item, Future]]]:
    """Yield batches of (item, future of prepare(item)), in order, preparing ahead of the caller.

    When batch k is yielded, the items of up to ``ahead`` more (default: one batch, k+1) have
    been submitted, so memory stays bounded by the caller's batch + ``ahead`` prepared items.
    Worker processes need more than one batch ahead to stay busy (``scoring.prepare``: workers
    + batch size). A failed preparation surfaces as that item's future exception, never as a
    failed batch. When the caller stops early, what has not started yet is cancelled.
    """
    ahead = batch_size if ahead is None else max(0, ahead)
    pending: deque[tuple[Item, Future]] = deque()  # submitted, not yet yielded
    submitted = 0
    try:
        for start in range(0, len(items), batch_size):
            end = min(len(items), start + batch_size)
            while submitted < min(len(items), end + ahead):
                pending.append((items[submitted], pool.submit(prepare, items[submitted])))
                submitted += 1
            yield [pending.popleft() for _ in range(end - start)]
    finally:
        for _item, future in pending:
            future.cancel()
