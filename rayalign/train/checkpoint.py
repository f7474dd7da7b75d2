"""What a training checkpoint holds, and how a worker writes and reads its part.

Layout of one checkpoint directory (Ray Train merges every worker's files into it)::

    deepspeed/              engine.save_checkpoint: weights, optimizer, scheduler, per rank
    worker_{rank}.pt        data position + RNG states of that rank
    metrics.jsonl           rank 0: the metrics log up to this step
    trainer_state.json      rank 0, written LAST: step, epoch, position; marks "complete"

**Data position (exact resume).** Each worker streams its shard of the Ray Dataset
(``streaming_split``, ``preserve_order=True``), so an epoch's row order per worker is
a deterministic function of the dataset; length grouping is a pure function of that
order and ``(seed, epoch, rank)``. The position is therefore just ``(epoch,
micro_batches_done)``: on resume the worker replays the epoch's stream and skips the
batches it already trained on (reading them is cheap, computing is not). No pair is
skipped or seen twice, and the test checks this by comparing the pair ids of every
step with an uninterrupted run. We chose this over materialising per-worker shards so
the data stays a stream (no local copy), at the cost of re-reading the skipped prefix.

**Atomicity.** Files are written to a fresh local temp dir; Ray Train registers the
checkpoint only after every worker's upload finished, so a crash mid-save leaves the
previous checkpoint as the latest. ``trainer_state.json`` is written last and checked
on load as a second guard.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayalign.atomic import atomic_path, write_json

STATE_FILE = "trainer_state.json"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainerState:
    """Where training stands: optimizer steps done and the data position within the epoch."""

    step: int = 0
    epoch: int = 0
    micro_batches_in_epoch: int = 0
    pairs_seen: int = 0
    skipped_nonfinite: int = 0
    # Steps this run resumed from (after a worker failure or a re-run with the same name).
    resumed_from: list[int] = field(default_factory=list)


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


def load_worker_state(directory: Path, rank: int) -> TrainerState:
    """Restore this rank's position and RNG states; fails loudly on an incomplete checkpoint."""
    if not (directory / STATE_FILE).is_file():
        raise RuntimeError(f"checkpoint {directory} is incomplete (no {STATE_FILE})")
    path = directory / f"worker_{rank}.pt"
    if not path.is_file():
        raise RuntimeError(
            f"checkpoint {directory} has no state for rank {rank}: resume with the same "
            "train.num_workers it was written with"
        )
    saved = torch.load(path, weights_only=False)
    set_rng_states(saved["rng"])
    return TrainerState(**saved["state"])
