"""Prepare the next batch in worker threads while the caller works on the current one."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")


def prefetched_batches(items: Sequence[Item], prepare: Callable[[Item], Prepared], batch_size: int,
                       pool: ThreadPoolExecutor) -> Iterator[list[tuple[Item, Future]]]:
    """Yield batches of (item, future of prepare(item)); batch k+1 is submitted before k is yielded.

    At most two batches are in flight, so memory stays bounded by 2 x batch_size prepared items.
    A failed preparation surfaces as that item's future exception, never as a failed batch.
    """
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]

    def submit(chunk: Sequence[Item]) -> list[tuple[Item, Future]]:
        return [(item, pool.submit(prepare, item)) for item in chunk]

    upcoming = submit(chunks[0]) if chunks else []
    for index in range(len(chunks)):
        current = upcoming
        upcoming = submit(chunks[index + 1]) if index + 1 < len(chunks) else []
        yield current
