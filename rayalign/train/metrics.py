"""Per-step training metrics combined exactly over micro-batches and workers.

Each micro-batch contributes ``(sum, count)`` per metric
(:func:`rayalign.losses.preference_metric_sums`); a step's value is ``Σ sum / Σ count``
over its micro-batches and all workers (one all-reduce). Averaging per-micro-batch means
instead would weigh a micro-batch with one unsafe response like one with eight, and a
micro-batch with none would add a 0 (a masked mean is NaN there): with unsafe rewards of
−1.0 in one micro-batch and none in the other, the step would log −0.5 instead of −1.0.
A metric whose count is 0 for the whole step is left out of the step's metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Per metric name, a float tensor ``[sum, count]``.
MetricSums = dict[str, torch.Tensor]


def add_metric_sums(acc: MetricSums, new: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> MetricSums:
    """Add one micro-batch's ``(sum, count)`` pairs into ``acc`` (in place; also returned)."""
    for name, (total, count) in new.items():
        pair = torch.stack([total.detach().float().reshape(()), count.detach().float().reshape(())])
        acc[name] = acc[name] + pair if name in acc else pair
    return acc


def reduce_metric_sums(
    acc: MetricSums,
    extra: torch.Tensor,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> tuple[dict[str, float], torch.Tensor]:
    """Sum ``acc`` (and ``extra``, e.g. token counts) over workers with one ``all_reduce``.

    Every worker must hold the same metric names (the loop always adds every metric, with
    count 0 when a micro-batch had nothing to average). Returns the step's metric values,
    ``Σ sum / Σ count``, leaving out metrics whose total count is 0, and the summed ``extra``.
    """
    names = sorted(acc)
    device = extra.device
    packed = torch.cat(
        [torch.stack([acc[n].to(device) for n in names]).reshape(-1) if names else extra[:0], extra.float()]
    )
    reduced = all_reduce(packed)
    pairs = reduced[: 2 * len(names)].reshape(-1, 2).tolist()
    values = {n: total / count for n, (total, count) in zip(names, pairs, strict=True) if count > 0}
    return values, reduced[2 * len(names) :]
