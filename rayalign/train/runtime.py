"""Where the training loop runs: inside Ray Train workers, or in-process.

The loop talks to its surroundings through four things only: its rank, its data
shards, the latest checkpoint and a ``report`` call. :class:`RayTrainRuntime` maps
them onto ``ray.train``; :class:`LocalRuntime` runs the very same loop in one process
(benchmarks time the loop without Ray's start-up, unit tests exercise it cheaply).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol


class Runtime(Protocol):
    """What the training loop needs from where it runs: its rank, its data shards, the
    checkpoint to resume from, and a place to report metrics and checkpoints."""

    rank: int
    world_size: int

    def shard(self, name: str) -> Any | None:
        """An object with ``iter_batches(batch_size=, batch_format="numpy")`` or ``None``."""

    def latest_checkpoint(self) -> AbstractContextManager[Path | None]:
        """A context whose value is the folder of the checkpoint to resume from, or None."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        """Report a step's metrics, with the folder of a checkpoint written for it (copied
        away by the runtime; the caller deletes the folder afterwards)."""
        ...


class RayTrainRuntime:
    """Inside a ``TorchTrainer`` worker (the process group already exists)."""

    def __init__(self) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()

    def shard(self, name: str) -> Any | None:
        """This worker's iterator of the Ray Dataset ``name`` (the whole stream for ``train``
        and ``helpfulness``, its split of ``eval``; ``trainer.build_trainer``); None if there is
        none."""
        import ray.train

        try:
            return ray.train.get_dataset_shard(name)
        except (KeyError, ValueError):
            return None

    @contextmanager
    def latest_checkpoint(self):
        """Ray Train's latest checkpoint (restored after a failure or by a re-run), as a folder."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        """``ray.train.report`` (a barrier on all workers), the checkpoint named by its step."""
        import ray.train

        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_dir_name=f"checkpoint_{metrics['step']:06d}" if checkpoint else None,
        )


class LocalRuntime:
    """One process, no Ray Train: datasets are passed in, reports are collected."""

    def __init__(
        self,
        datasets: dict[str, Any],
        *,
        on_report: Callable[[dict[str, Any], Path | None], None] | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        self.rank = 0
        self.world_size = 1
        self.datasets = datasets
        self.reports: list[dict[str, Any]] = []
        self.on_report = on_report
        self.checkpoint = checkpoint

    def shard(self, name: str) -> Any | None:
        """The dataset passed in as ``name``, or None."""
        return self.datasets.get(name)

    def latest_checkpoint(self):
        """The ``checkpoint`` folder passed in (None: a fresh run)."""
        return nullcontext(self.checkpoint)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        """Keep ``metrics`` in ``reports`` and call ``on_report`` (while the folder exists)."""
        self.reports.append(metrics)
        if self.on_report is not None:
            self.on_report(metrics, checkpoint_dir)


def init_local_process_group() -> None:
    """A one-process gloo group, so DeepSpeed runs in-process exactly as in a worker."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    dist.init_process_group("gloo", rank=0, world_size=1)


def fresh_checkpoint_dir() -> Path:
    """A new empty temporary folder to write one checkpoint into."""
    return Path(tempfile.mkdtemp(prefix="rayalign-ckpt-"))
