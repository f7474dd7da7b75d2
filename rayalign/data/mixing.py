"""BFPO buffered mixing and the epoch length it implies: the one home of both.

BFPO trains on a red-teaming (safety) set and a much larger helpfulness set at once;
every optimisation step sees ``batch_size`` rows of each, whatever their sizes. The
shorter stream is cycled (restarted from the beginning), and an epoch ends when the
*longer* stream is exhausted, so every row of both sets is seen at least once per epoch:
ending with the shorter stream instead would never train on the tail of the longer one
(the row order is fixed for exact resume), i.e. lose most of a large helpfulness set.

The training loop (``train.loop.epoch_batches``) mixes with :func:`zip_cycling`; the
trainer and ``rayalign plan`` size a run with :func:`steps_per_epoch` and
:func:`total_steps`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rayalign.config import TrainConfig

T = TypeVar("T")
U = TypeVar("U")


class EmptyStreamError(ValueError):
    """One of the streams :func:`zip_cycling` mixes yields nothing at all."""


def zip_cycling(
    make_a: Callable[[], Iterable[T]], make_b: Callable[[], Iterable[U]]
) -> Iterator[tuple[T, U]]:
    """Pairs ``(a, b)`` until the longer of the two streams ends, restarting the shorter.

    ``make_a``/``make_b`` return a *fresh* iterable each call (e.g.
    ``lambda: ds.iter_batches(batch_size=8, drop_last=True)``). The epoch ends at the
    first step where both streams have run out at least once; a stream is restarted only
    when the other has not run out yet (a restart of a Ray Data split starts a new epoch
    on every worker), and one that is empty from the start raises
    :class:`EmptyStreamError` instead of looping forever.
    """
    makers = (make_a, make_b)
    streams = [iter(make_a()), iter(make_b())]
    wrapped, seen = [False, False], [0, 0]
    try:
        while True:
            items: list[Any] = [_END, _END]
            for k in (0, 1):
                items[k] = next(streams[k], _END)
                if items[k] is _END:
                    if not seen[k]:
                        raise EmptyStreamError(f"stream {'ab'[k]} yields no batches")
                    wrapped[k] = True
            if all(wrapped):
                return
            for k in (0, 1):
                if items[k] is _END:
                    streams[k] = iter(makers[k]())
                    items[k] = next(streams[k], _END)
                    if items[k] is _END:
                        raise EmptyStreamError(f"stream {'ab'[k]} yields no batches on restart")
            seen[0], seen[1] = seen[0] + 1, seen[1] + 1
            yield items[0], items[1]
    finally:
        for stream in streams:  # release Ray iterators now, not at garbage collection
            close = getattr(stream, "close", None)
            if close is not None:
                close()


#: Marks the end of a stream in :func:`zip_cycling`.
_END = object()


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


def steps_per_epoch(row_counts: Mapping[str, int], train: TrainConfig) -> int:
    """Optimizer steps in one epoch over the prepared splits ``row_counts``.

    ``row_counts`` maps the streams a run reads (``train``, and ``helpfulness`` in BFPO's
    buffered mode) to their rows. Only whole global steps of ``batch_size x
    gradient_accumulation_steps x num_workers`` pairs run (``rayalign.train.position``), so
    keeping that product keeps the epoch's length whatever the number of workers; buffered
    mode cycles the shorter stream, so the longer one decides. 0 when there are too few
    rows for one step.
    """
    step_pairs = train.batch_size * train.gradient_accumulation_steps * train.num_workers
    return max(row_counts.values()) // step_pairs


def total_steps(steps_per_epoch: int, train: TrainConfig) -> int:
    """Optimizer steps of the whole run: ``train.max_steps`` when set (it overrides
    ``epochs``, and may be more than one epoch), else ``epochs x steps_per_epoch``."""
    return train.max_steps or train.epochs * steps_per_epoch
