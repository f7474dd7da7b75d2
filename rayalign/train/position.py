"""The global data position: which pairs a step trains, which of them a rank trains, and
whether a checkpoint can resume exactly on this run's number of workers. Pure functions.

Every worker reads the whole training stream and cuts it into global optimizer steps of
:func:`global_batch` pairs (the cut depends on the data, the seed and the global batch,
never on the number of workers). A step's pairs are split into pieces of
:func:`micro_batch_pairs` pairs; piece ``k`` is micro-batch ``k // world_size`` of rank
``k % world_size`` (:func:`rank_micro_batches`), so the ranks' micro-batches at one
index hold neighbouring (with length grouping: similarly long) pairs. A checkpoint
stores the pairs of the epoch consumed so far (``pairs_in_epoch``); a resumed worker
skips :func:`micro_batches_done` of its micro-batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rayalign.config import TrainConfig

T = TypeVar("T")

#: 2: global steps read by every worker (``pairs_in_epoch``). 1 (no field in the saved
#: state): each worker's ``streaming_split`` shard, position in micro-batches per rank.
DATA_LAYOUT = 2

#: ZeRO stages whose optimizer state is re-sharded for another number of workers
#: (DeepSpeed's universal checkpoint, ``stage_1_and_2.py``).
RESHARDABLE_ZERO_STAGES = (1, 2)


def global_batch(train: TrainConfig, world_size: int) -> int:
    """Pairs per optimizer step over all workers: ``batch_size x accumulation x world_size``."""
    return train.batch_size * train.gradient_accumulation_steps * world_size


def micro_batch_pairs(train: TrainConfig) -> int:
    """Pairs in one rank's micro-batch: ``batch_size``, or with ``train.max_tokens_per_batch``
    a whole step's share ``batch_size x gradient_accumulation_steps`` (cut into token chunks
    later)."""
    if train.max_tokens_per_batch is not None:
        return train.batch_size * train.gradient_accumulation_steps
    return train.batch_size


def rank_micro_batches(step: Sequence[T], rank: int, world_size: int, size: int) -> list[list[T]]:
    """This rank's micro-batches of one global step, in order.

    ``step`` holds a multiple of ``size x world_size`` rows; piece ``k`` (rows ``k*size`` to
    ``(k+1)*size``) goes to rank ``k % world_size``. Raises ``ValueError`` otherwise.
    """
    if size <= 0 or len(step) % (size * world_size):
        raise ValueError(f"a step of {len(step)} pairs is not {world_size} rank(s) x micro-batches of {size}")
    pieces = [list(step[i : i + size]) for i in range(0, len(step), size)]
    return pieces[rank::world_size]


def micro_batches_done(pairs_in_epoch: int, train: TrainConfig, world_size: int) -> int:
    """How many of its micro-batches each rank skips to be ``pairs_in_epoch`` pairs into the
    epoch. Raises ``ValueError`` when that falls inside a micro-batch of this layout."""
    per_index = micro_batch_pairs(train) * world_size
    if pairs_in_epoch < 0 or pairs_in_epoch % per_index:
        raise ValueError(
            f"{pairs_in_epoch} pairs into the epoch is not a whole number of micro-batches of "
            f"{micro_batch_pairs(train)} pairs x {world_size} worker(s)"
        )
    return pairs_in_epoch // per_index


def resume_problem(saved: Mapping[str, Any], train: TrainConfig, world_size: int) -> str | None:
    """Why the checkpoint whose ``trainer_state.json`` is ``saved`` cannot resume exactly with
    ``train`` on ``world_size`` workers; None when it can.

    Refused: the per-rank layout of older checkpoints, another global batch (the step's
    pair set and the LR schedule would change), a position inside a micro-batch, and on
    another number of workers a ZeRO stage whose state is not re-sharded (0 is refused too:
    its bf16/fp16 optimizer is sharded and the fp32 case is not tested) or optimizer offload.
    """
    if saved.get("data_layout") != DATA_LAYOUT:
        return (
            "it was written by an older rayalign whose data position is per worker "
            f"(data layout 1, this version reads layout {DATA_LAYOUT}), so resuming would skip or "
            "repeat pairs. Resume it with the version that wrote it, or start over with a new train.name"
        )
    saved_workers, saved_batch = int(saved["world_size"]), int(saved["global_batch"])
    batch = global_batch(train, world_size)
    if batch != saved_batch:
        return (
            f"its global batch was {saved_batch} pairs a step (batch_size x gradient_accumulation_steps "
            f"x num_workers, {saved_workers} worker(s)); this run's is {batch} "
            f"({train.batch_size} x {train.gradient_accumulation_steps} x {world_size}). "
            f"Keep the global batch{_keeping(saved_batch, train, world_size)}, or start over with a new train.name"
        )
    if saved_workers != world_size:
        change = f"{saved_workers} -> {world_size} workers"
        if train.zero_stage not in RESHARDABLE_ZERO_STAGES:
            return (
                f"resuming on another number of workers ({change}) re-shards ZeRO-1/2 optimizer "
                f"states only; this run uses ZeRO-{train.zero_stage}. Resume with "
                f"train.num_workers={saved_workers}, or start over with a new train.name"
            )
        if train.offload_optimizer:
            return (
                f"resuming on another number of workers ({change}) is not supported with "
                f"train.offload_optimizer. Resume with train.num_workers={saved_workers}, or start over"
            )
    try:
        micro_batches_done(int(saved["pairs_in_epoch"]), train, world_size)
    except ValueError as exc:
        return (
            f"its data position ({exc}; left by micro-batches skipped for a non-finite loss) "
            f"cannot be continued exactly on {world_size} worker(s). Resume with "
            f"train.num_workers={saved_workers} and the settings it was written with"
        )
    return None


def _keeping(saved_batch: int, train: TrainConfig, world_size: int) -> str:
    """``": with num_workers=W set gradient_accumulation_steps=A"`` when such an A exists."""
    per_step = train.batch_size * world_size
    if saved_batch % per_step == 0:
        return (
            f": with train.num_workers={world_size} and train.batch_size={train.batch_size} set "
            f"train.gradient_accumulation_steps={saved_batch // per_step}"
        )
    return f" ({saved_batch} pairs)"
