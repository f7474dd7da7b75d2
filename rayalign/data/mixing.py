"""BFPO buffered mixing: safety and helpfulness pairs in equal-size per-step batches.

BFPO trains on a red-teaming (safety) set and a much larger helpfulness set at once;
every optimisation step sees ``batch_size`` rows of each, whatever their sizes. The
shorter stream is cycled (restarted from the beginning, reshuffled if its factory
reshuffles), and an epoch ends when the *longer* stream is exhausted, so every row of
both sets is seen at least once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
U = TypeVar("U")


def zip_cycling(
    make_a: Callable[[], Iterable[T]], make_b: Callable[[], Iterable[U]]
) -> Iterator[tuple[T, U]]:
    """Pairs ``(a, b)`` until the longer of the two streams ends, restarting the shorter.

    ``make_a``/``make_b`` return a *fresh* iterable each call (e.g.
    ``lambda: ds.iter_batches(batch_size=8, drop_last=True)``). The epoch ends at the
    first step where both streams have run out at least once; a stream that is empty
    from the start raises ``ValueError`` instead of looping forever.
    """
    streams = [iter(make_a()), iter(make_b())]
    makers = (make_a, make_b)
    wrapped = [False, False]
    while True:
        items = []
        for k in (0, 1):
            try:
                items.append(next(streams[k]))
            except StopIteration:
                wrapped[k] = True
                streams[k] = iter(makers[k]())
                try:
                    items.append(next(streams[k]))
                except StopIteration:
                    raise ValueError(f"stream {'ab'[k]} yields no batches") from None
        if all(wrapped):
            for stream in streams:  # release Ray iterators now, not at garbage collection
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            return
        yield items[0], items[1]


def buffered_batches(
    safety: Any, helpfulness: Any, *, batch_size: int, **iter_kwargs: Any
) -> Iterator[tuple[dict, dict]]:
    """Equal-size ``(safety_batch, helpfulness_batch)`` pairs from two Ray Datasets (one epoch).

    Both are iterated with ``iter_batches(batch_size=batch_size, drop_last=True)`` so the
    two halves of a step always have exactly ``batch_size`` rows each.
    """

    def stream(ds: Any) -> Callable[[], Iterable[dict]]:
        return lambda: ds.iter_batches(batch_size=batch_size, drop_last=True, **iter_kwargs)

    return zip_cycling(stream(safety), stream(helpfulness))
