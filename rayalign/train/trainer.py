"""Build and run the Ray Train ``TorchTrainer`` for a config; collect its outputs.

The driver side of training: it sizes the run (steps per epoch from the row counts),
wires scaling, storage, checkpoint retention and the failure policy, hands each worker
its streaming shard, and afterwards copies the export, the metrics log and a summary
into the output directory. Re-running with the same ``train.storage_path`` and
``train.name`` resumes from the latest checkpoint (Ray Train restores the run).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayalign.config import Config, output_dir_for
from rayalign.data.mixing import steps_per_epoch, total_steps
from rayalign.errors import UserError
from rayalign.ray_session import thread_env
from rayalign.train.checkpoint import METRICS_FILE, STATE_FILE, saved_state
from rayalign.train.position import resume_problem

logger = logging.getLogger("rayalign.train")


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    checkpoint_path: str | None
    model_dir: Path | None
    adapter_dir: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)


def checkpoints_from_other_settings(cfg: Config) -> tuple[Path, list[str]] | None:
    """The local checkpoints a run of ``cfg`` would resume, and the fields changed since
    they were written; None when there are none or nothing changed.

    Resuming goes by ``train.name`` alone, so callers decide: warn, or start over.
    """
    saved = output_dir_for(cfg) / "config.yaml"
    storage = storage_path_for(cfg)
    if not saved.is_file() or "://" in storage:
        return None
    run_dir = Path(storage) / cfg.train.name
    changed = cfg.changed_fields(saved.read_text())
    return (run_dir, changed) if changed and run_dir.is_dir() else None


#: Fields that define what a run learns from and how (dotted prefixes): checkpoints written
#: with other values belong to another run, and resuming them would carry its weights and
#: data position into this one. Changing anything else (steps, learning rate, workers,
#: logging) continues the run, with a warning.
DEFINING_FIELDS = (
    "model.name_or_path", "model.revision", "model.lora", "model.trainable_modules", "loss",
    "data.sources", "data.helpfulness_sources", "data.max_length", "data.max_prompt_length",
    "data.eval_fraction", "data.dedup", "data.safedpo_transform", "data.seed", "data.shuffle",
)


def defining_changes(changed: list[str]) -> list[str]:
    """The changed fields (``Config.changed_fields``) at or under :data:`DEFINING_FIELDS`."""
    return [f for f in changed if any(f == d or f.startswith(d + ".") for d in DEFINING_FIELDS)]


def refuse_another_runs_checkpoints(cfg: Config) -> None:
    """Raise :class:`UserError` when ``train.name`` holds checkpoints written with other
    :data:`DEFINING_FIELDS` (another model, loss or data): cheap, so ``rayalign train``
    calls it before Ray starts."""
    _refuse_stale(cfg, checkpoints_from_other_settings(cfg))


def _refuse_stale(cfg: Config, stale: tuple[Path, list[str]] | None) -> None:
    """:func:`refuse_another_runs_checkpoints` on ``checkpoints_from_other_settings(cfg)``."""
    defining = defining_changes(stale[1]) if stale else []
    if stale and defining:
        raise UserError(
            f"train.name {cfg.train.name!r} has checkpoints from a run with other "
            f"{', '.join(defining)} ({stale[0]}); resuming would continue that run's weights and "
            "data position with these settings. Use a new train.name, or delete that folder to "
            "start over (to train on another run's result, list both in job.stages)"
        )


def storage_path_for(cfg: Config) -> str:
    """Ray Train storage: ``train.storage_path`` or ``<output dir>/ray`` locally."""
    if cfg.train.storage_path:
        path = cfg.train.storage_path
        return path if "://" in path else str(Path(path).expanduser().resolve())
    return str(output_dir_for(cfg) / "ray")


#: Ray Train's record of the checkpoints it registered, in the run's storage folder.
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def latest_local_checkpoint(cfg: Config) -> Path | None:
    """The checkpoint a re-run of ``cfg`` resumes, in local storage (None for none or a bucket).

    Ray Train's snapshot names it when there is one (a killed run can leave a newer, complete
    folder that was never registered); otherwise the newest complete ``checkpoint_*``.
    """
    storage = storage_path_for(cfg)
    if "://" in storage:
        return None
    run_dir = Path(storage) / cfg.train.name
    try:
        latest = json.loads((run_dir / SNAPSHOT_FILE).read_text())["latest_checkpoint_result"]
        name = latest["checkpoint_dir_name"] if latest else None
    except (OSError, ValueError, KeyError, TypeError):
        name = None
    if name and (run_dir / name / STATE_FILE).is_file():
        return run_dir / name
    complete = sorted(run_dir.glob(f"checkpoint_*/{STATE_FILE}"))
    return complete[-1].parent if complete else None


def check_resumable(cfg: Config) -> None:
    """Refuse, before any worker starts, a checkpoint this run cannot continue exactly
    (:func:`rayalign.train.position.resume_problem`: another global batch, an older
    per-worker data layout, or another number of workers with ZeRO-0/3 or offload).
    Another number of workers with ZeRO-1/2 passes: the workers re-shard the state.

    Raises :class:`UserError` naming the checkpoint, what differs and the ways out. Local
    storage only (a bucket's checkpoints are checked by the workers when they load them).
    """
    checkpoint = latest_local_checkpoint(cfg)
    if checkpoint is None:
        return
    problem = resume_problem(saved_state(checkpoint), cfg.train, cfg.train.num_workers)
    if problem is not None:
        raise UserError(f"cannot resume {checkpoint}: {problem}")


def build_trainer(
    cfg: Config,
    datasets: dict[str, Any],
    *,
    steps: int,
    output_dir: Path,
    worker_env: dict[str, str] | None = None,
    callbacks: list[Any] | None = None,
):
    """The ``TorchTrainer`` for ``cfg``: one DeepSpeed worker per ``train.num_workers``."""
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayalign.train.loop import train_loop_per_worker

    t = cfg.train
    env = {"RAYALIGN_CACHE": os.environ["RAYALIGN_CACHE"]} if "RAYALIGN_CACHE" in os.environ else {}
    if not t.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    env.update(thread_env(t.torch_threads))
    env.update(worker_env or {})
    resources = t.resources_per_worker or ({"CPU": 1, "GPU": 1} if t.use_gpu else {"CPU": 1})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "steps_per_epoch": steps,
            "output_dir": str(output_dir),
        },
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker=resources,
            placement_strategy=t.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=t.name,
            storage_path=storage_path_for(cfg),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            worker_runtime_env={"env_vars": env},
            callbacks=callbacks,
        ),
        datasets=datasets,
        # Every worker reads the whole train (and helpfulness) stream in the dataset's order
        # and keeps its slice of each global step: the steps, and so the saved position, do
        # not depend on the number of workers (rayalign.train.position). Only the held-out
        # split is sharded: its metrics are sums over workers.
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["eval"], execution_options=ExecutionOptions(preserve_order=True)
        ),
    )


def user_error_in(exc: BaseException) -> UserError | None:
    """The first UserError in an exception's cause chain (workers wrap ours)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException) and cause is not current:
            # Ray's RayTaskError(X) is also an X, but its text is Ray's traceback: read X.
            stack.append(cause)
            continue
        if isinstance(current, UserError):
            return current
        stack += [e for e in (current.__cause__, current.__context__) if e is not None]
        for attr in ("worker_failures", "_worker_failures"):
            failures = getattr(current, attr, None)
            if isinstance(failures, dict):
                stack += list(failures.values())
    text = str(exc)
    for name in ("NonFiniteLossError", "UserError"):
        if name + ":" in text:
            return UserError(text[text.index(name) + len(name) + 1 :].strip().splitlines()[0])
    return None


def prepare_training_data(cfg: Config, output_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The data pipeline's Ray Datasets for training: ``train``, and when they have rows
    ``helpfulness`` (BFPO's buffered stream) and ``eval`` (held-out metrics at checkpoints)."""
    from rayalign.data.pipeline import prepare_datasets
    from rayalign.modeling.models import load_tokenizer

    prepared = prepare_datasets(
        cfg, load_tokenizer(cfg.model), output_dir=output_dir / "data", ref_model_cfg=cfg.model
    )
    datasets = {"train": prepared.train}
    if prepared.helpfulness is not None:
        datasets["helpfulness"] = prepared.helpfulness
    if prepared.eval is not None:
        datasets["eval"] = prepared.eval
    return datasets, dict(prepared.stats or {})


def run_training(
    cfg: Config,
    *,
    datasets: dict[str, Any] | None = None,
    worker_env: dict[str, str] | None = None,
    verbose: bool = True,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Train ``cfg`` on Ray (already initialised by the caller) and gather the outputs."""
    import ray.train

    out = output_dir_for(cfg)
    out.mkdir(parents=True, exist_ok=True)
    stale = checkpoints_from_other_settings(cfg)
    if verbose:
        _refuse_stale(cfg, stale)
    if stale and verbose:
        changed = ", ".join(stale[1][:6]) + (", ..." if len(stale[1]) > 6 else "")
        logger.warning(
            "resuming %s from checkpoints written with other settings (%s); use a new train.name "
            "to start over", cfg.train.name, changed,
        )
    check_resumable(cfg)
    cfg.save(out / "config.yaml")
    data_stats: dict[str, Any] = {}
    if datasets is None:
        datasets, data_stats = prepare_training_data(cfg, out)
    known = data_stats.get("rows", {})  # the pipeline counted its splits already
    row_counts = {name: known.get(name) or ds.count() for name, ds in datasets.items() if name != "eval"}
    steps = steps_per_epoch(row_counts, cfg.train)
    if steps <= 0:
        pairs = ", ".join(f"{n} {split}" for split, n in row_counts.items())
        raise UserError(
            f"too few pairs ({pairs}) for one step of train.num_workers={cfg.train.num_workers} x "
            f"train.batch_size={cfg.train.batch_size} x "
            f"train.gradient_accumulation_steps={cfg.train.gradient_accumulation_steps}: lower "
            "these or add data (`rayalign plan` shows the count before anything starts)"
        )
    total = total_steps(steps, cfg.train)
    if verbose:
        pairs = " + ".join(f"{n} {split}" for split, n in row_counts.items())
        logger.info(
            "training %s with %s on %s pairs: %d steps x %d worker(s), ZeRO-%d",
            cfg.model.name_or_path, cfg.loss.name, pairs, total, cfg.train.num_workers, cfg.train.zero_stage,
        )
        logger.info("outputs: %s", out)
        logger.info("checkpoints: %s/%s", storage_path_for(cfg), cfg.train.name)
    from rayalign.tracking import TrainingTracker

    tracker = TrainingTracker(cfg, out)
    trainer = build_trainer(
        cfg, datasets, steps=steps, output_dir=out, worker_env=worker_env,
        callbacks=[*(callbacks or []), *tracker.start()],
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        tracker.fail()
        user_error = user_error_in(exc)
        if user_error is not None:
            raise user_error from exc
        raise
    except BaseException:
        tracker.fail()
        raise
    outputs = collect_outputs(cfg, out, result, data_stats)
    tracker.finish(outputs.metrics, outputs.history, outputs.model_dir,
                   [out / "summary.json", out / "config.yaml"])
    return outputs


def collect_outputs(cfg: Config, out: Path, result: Any, data_stats: dict[str, Any]) -> TrainResult:
    """Copy export + metrics from the final checkpoint into ``out``; write the summary."""
    model_dir = adapter_dir = None
    history: list[dict[str, Any]] = []
    checkpoint = result.checkpoint
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            directory = Path(directory)
            for name in ("model", "adapter"):
                source = directory / "export" / name
                if source.is_dir():
                    target = out / name
                    shutil.rmtree(target, ignore_errors=True)
                    shutil.copytree(source, target)
                    model_dir = target if name == "model" else model_dir
                    adapter_dir = target if name == "adapter" else adapter_dir
            if (directory / METRICS_FILE).is_file():
                shutil.copyfile(directory / METRICS_FILE, out / METRICS_FILE)
            state = json.loads((directory / STATE_FILE).read_text())
    else:
        state = {}
    if (out / METRICS_FILE).is_file():
        history = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines() if line]
    metrics = {k: v for k, v in (result.metrics or {}).items() if k != "pair_ids"}
    summary = {
        "loss": cfg.loss.name,
        "model": cfg.model.name_or_path,
        "steps": state.get("step"),
        "pairs_seen": state.get("pairs_seen"),
        "skipped_nonfinite": state.get("skipped_nonfinite"),
        "resumed_from": state.get("resumed_from", []),
        "first_loss": history[0]["loss"] if history else None,
        "final": metrics,
        "checkpoint": checkpoint.path if checkpoint is not None else None,
        "model_dir": str(model_dir) if model_dir else None,
        "adapter_dir": str(adapter_dir) if adapter_dir else None,
        "data": data_stats,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return TrainResult(
        output_dir=out,
        metrics=metrics,
        checkpoint_path=summary["checkpoint"],
        model_dir=model_dir,
        adapter_dir=adapter_dir,
        history=history,
    )
