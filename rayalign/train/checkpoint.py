"""What a training checkpoint holds, and how a worker writes and reads its part.

Layout of one checkpoint directory (Ray Train merges every worker's files into it)::

    deepspeed/              engine.save_checkpoint: weights, optimizer, scheduler, per rank
    worker_{rank}.pt        data position + RNG states of that rank
    metrics.jsonl           rank 0: the metrics log up to this step
    trainer_state.json      rank 0, written LAST: step, epoch, position; marks "complete"

**Data position (exact resume, any number of workers).** The position is global: the
pairs of the current epoch consumed so far (``pairs_in_epoch``), the same number on
every rank. It can be global because the order is: every worker reads the *whole*
training stream in the dataset's order (``preserve_order=True``, no ``streaming_split``)
and cuts it into global optimizer steps of ``global_batch = batch_size x
gradient_accumulation_steps x num_workers`` pairs (``rayalign.train.loop.epoch_batches``);
length grouping sorts and shuffles whole global steps, seeded by ``(seed, epoch,
stream)`` only. Which pairs form step ``k`` therefore depends on the data, the seed and
the global batch, never on the number of workers; each rank trains its slice of the step
(``rayalign.train.position.rank_micro_batches``). On resume the worker replays the
epoch's stream and skips ``pairs_in_epoch`` pairs (reading is cheap, computing is not).
So a run checkpointed on 2 workers continues on 1 (or 1 -> 2) with the same pairs in
every step, provided the global batch is kept (e.g. 2 workers x accumulation 1 -> 1
worker x accumulation 2); the LR schedule, counted in optimizer steps, continues
unchanged. The cost: every worker reads (not trains on) every row, ``num_workers``
times the reading of a split stream; we chose that over materialising shards so the
data stays a stream.

**Another number of workers.** ZeRO-1/2 shard the optimizer state per rank: every rank
converts the checkpoint with DeepSpeed's universal checkpoint conversion
(``deepspeed.checkpoint.ds_to_universal``, :func:`to_universal`) into a temporary folder
and loads it with ``checkpoint.load_universal``, which re-shards the fp32 weights and
Adam moments for the new world size; the scheduler state is world-size free. What
cannot be resumed exactly is refused by ``rayalign.train.position.resume_problem``
before any worker starts (and again in the worker): another global batch; ZeRO-0,
ZeRO-3 or optimizer offload on another number of workers; a position that is not a
whole number of the new run's micro-batches; a checkpoint of the per-worker layout
written before ``DATA_LAYOUT`` 2. RNG states are per rank and restored only on the same
number of workers (with dropout the continuation then differs from an uninterrupted run).

**Atomicity.** Files are written to a fresh local temp dir; Ray Train registers the
checkpoint only after every worker's upload finished, so a crash mid-save leaves the
previous checkpoint as the latest. ``trainer_state.json`` is written last and checked
on load as a second guard.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayalign.atomic import atomic_path, write_json
from rayalign.train.position import DATA_LAYOUT

STATE_FILE = "trainer_state.json"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainerState:
    """Where training stands: optimizer steps done and the data position within the epoch."""

    step: int = 0
    epoch: int = 0
    # Pairs of this epoch consumed by all workers together (world-size free).
    pairs_in_epoch: int = 0
    pairs_seen: int = 0
    skipped_nonfinite: int = 0
    # Steps this run resumed from (after a worker failure or a re-run with the same name).
    resumed_from: list[int] = field(default_factory=list)
    # What the position is counted in: the workers and global batch that wrote it.
    world_size: int = 1
    global_batch: int = 0
    data_layout: int = DATA_LAYOUT


def rng_states() -> dict[str, Any]:
    """This process's torch, numpy, Python (and CUDA) random states, for a checkpoint."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` saved (CUDA only where CUDA is available)."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_worker_state(directory: Path, rank: int, state: TrainerState) -> None:
    """This rank's data position and RNG states (written to a temp name, then renamed)."""
    with atomic_path(directory / f"worker_{rank}.pt") as tmp:
        torch.save({"state": asdict(state), "rng": rng_states()}, tmp)


def save_trainer_state(directory: Path, state: TrainerState, metrics_log: Path | None) -> None:
    """Rank 0's part: the metrics log, then the state file that marks the checkpoint complete."""
    if metrics_log is not None and metrics_log.is_file():
        (directory / METRICS_FILE).write_bytes(metrics_log.read_bytes())
    write_json(directory / STATE_FILE, asdict(state))


def saved_state(directory: Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint; fails loudly on an incomplete one."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise RuntimeError(f"checkpoint {directory} is incomplete (no {STATE_FILE})")
    return json.loads(path.read_text())


def load_worker_state(directory: Path, rank: int, world_size: int) -> TrainerState:
    """The position saved in ``directory`` (rank 0's state file, the same for every rank) and,
    when it was written by as many workers, this rank's RNG states.

    Raises ``RuntimeError`` for an incomplete checkpoint or a missing rank file.
    """
    saved = saved_state(directory)
    if saved.get("world_size") == world_size:
        path = directory / f"worker_{rank}.pt"
        if not path.is_file():
            raise RuntimeError(f"checkpoint {directory} has no state for rank {rank}")
        set_rng_states(torch.load(path, weights_only=False)["rng"])
    return TrainerState(**saved)


def written_files(deepspeed_dir: Path, world_size: int) -> list[Path]:
    """The DeepSpeed files of ``deepspeed_dir/<tag>`` that ``world_size`` ranks wrote: the
    model states and the ZeRO shards of ranks ``0..world_size-1``.

    A folder can hold more: Ray Train merges every upload into the folder named for the
    step, so ranks of an earlier, killed attempt with more workers may have left their
    shards of the same step there; the universal conversion counts every shard it finds.
    """
    folder = deepspeed_dir / DEEPSPEED_TAG
    files = sorted(folder.glob("mp_rank_*_model_states.pt"))
    for rank in range(world_size):
        files += sorted(folder.glob(f"*zero_pp_rank_{rank}_mp_rank_*_optim_states.pt"))
    return files


def to_universal(deepspeed_dir: Path, world_size: int, out_dir: Path) -> None:
    """Convert the DeepSpeed checkpoint ``deepspeed_dir/<tag>`` written by ``world_size`` ranks
    (ZeRO-1/2 shards) into DeepSpeed's universal layout ``out_dir/<tag>``, which an engine
    built with ``checkpoint.load_universal`` loads on any number of ranks.

    ``deepspeed.checkpoint.ds_to_universal`` in-process (no worker pool), reading links to
    :func:`written_files` only; its console output is kept and raised with any failure as
    ``RuntimeError``.
    """
    import argparse
    import contextlib
    import io

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    source = out_dir / "written" / DEEPSPEED_TAG
    source.mkdir(parents=True)
    for path in written_files(deepspeed_dir, world_size):
        (source / path.name).symlink_to(path.resolve())
    args = argparse.Namespace(
        input_folder=str(source),
        output_folder=str(out_dir / DEEPSPEED_TAG),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # our saves carry no universal_checkpoint_info
    )
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            ds_to_universal(args)
    except Exception as exc:
        raise RuntimeError(
            f"converting {deepspeed_dir} ({world_size} rank(s)) to a universal checkpoint failed: "
            f"{exc!r}\n{log.getvalue()[-4000:]}"
        ) from exc
