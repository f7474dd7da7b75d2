"""The per-worker training loop: read :func:`train` top to bottom to know what a run does.

Ray Train calls :func:`train_loop_per_worker` in every worker; benchmarks and unit
tests call :func:`train` directly with a :class:`~rayalign.train.runtime.LocalRuntime`.
The maths lives elsewhere (``rayalign.losses``, ``logprobs.py``); the pieces here only wire
model, data, DeepSpeed, checkpoints and metrics together.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayalign.config import Config
from rayalign.data.mixing import EmptyStreamError, zip_cycling
from rayalign.data.mixing import total_steps as schedule_total_steps
from rayalign.errors import UserError
from rayalign.logprobs import batch_logps, mean_token_logps
from rayalign.losses import anchor_nll, anchor_weights, preference_loss, preference_metric_sums
from rayalign.train.checkpoint import (
    DEEPSPEED_DIR,
    DEEPSPEED_TAG,
    METRICS_FILE,
    TrainerState,
    load_worker_state,
    save_trainer_state,
    save_worker_state,
    saved_state,
    to_universal,
)
from rayalign.train.collate import (
    make_collate,
    padding_fraction,
    split_by_tokens,
    stream_batches,
    to_device,
)
from rayalign.train.metrics import add_metric_sums, reduce_metric_sums
from rayalign.train.position import (
    RESHARDABLE_ZERO_STAGES,
    global_batch,
    micro_batch_pairs,
    micro_batches_done,
    rank_micro_batches,
    resume_problem,
)
from rayalign.train.runtime import RayTrainRuntime, Runtime, fresh_checkpoint_dir

#: Progress lines; in Ray Train workers :func:`rayalign.console.worker_logging` prints them.
logger = logging.getLogger("rayalign.train.loop")

#: Batches buffered and sorted together by length grouping.
LENGTH_GROUP_WINDOW = 16


class NonFiniteLossError(UserError):
    """The loss became NaN/inf; weights were not updated with it."""


class SequenceLogpsModel(nn.Module):
    """What DeepSpeed wraps: the causal LM, returning response log-probs per row.

    Going through ``engine(...)`` (not the bare module) keeps DeepSpeed's forward hooks
    (ZeRO-3 gathering, gradient-accumulation scaling) in play.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):  # type: ignore[override]
        return batch_logps(self.model, batch)


class ReferenceLogps:
    """Reference log-probs when the data carries none: the LoRA base with the adapter
    disabled (no second model in memory), else a frozen copy loaded on first use.

    A reference-free loss (its registry entry's ``needs_reference`` is false) gets
    zeros and no reference model is ever loaded or run.
    """

    def __init__(self, cfg: Config, policy: nn.Module, device: torch.device) -> None:
        self.cfg, self.policy, self.device = cfg, policy, device
        self.needed = cfg.loss.spec.needs_reference
        self.frozen: nn.Module | None = None

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.needed:
            zeros = torch.zeros(len(batch["ids"]), device=self.device)
            return zeros, zeros
        if "ref_chosen_logps" in batch:
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if self.cfg.model.lora is not None:
            with self.policy.disable_adapter():
                logps = batch_logps(self.policy, batch)
        else:
            if self.frozen is None:
                from rayalign.modeling.models import load_model

                self.frozen = load_model(self.cfg.model, device=str(self.device)).eval()
                self.frozen.requires_grad_(False)
            logps = batch_logps(self.frozen, batch)
        half = logps.shape[0] // 2
        return logps[:half], logps[half:]


def epoch_batches(
    runtime: Runtime, cfg: Config, epoch: int, collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """This worker's micro-batches for one epoch, in a deterministic order.

    Every worker reads the whole stream (in the dataset's order) and cuts it into global
    steps of :func:`~rayalign.train.position.global_batch` pairs, length-grouped over
    windows of ``LENGTH_GROUP_WINDOW`` steps and seeded by ``(seed, epoch, stream)``: the
    same steps whatever the number of workers. The rank keeps its micro-batches of each
    step (:func:`~rayalign.train.position.rank_micro_batches`); a trailing part-step is
    dropped.

    Each micro-batch is a list of collated chunks: one of ``batch_size`` pairs, or with
    ``train.max_tokens_per_batch`` an optimizer step's ``batch_size x
    gradient_accumulation_steps`` pairs cut into chunks of at most that many tokens.

    BFPO buffered mode: the safety and the helpfulness stream are read in lock-step and
    each micro-batch holds ``batch_size`` pairs of each; the shorter stream is cycled and
    the epoch ends with the longer (:func:`rayalign.data.mixing.zip_cycling`).
    """
    t = cfg.train
    step_pairs = global_batch(t, runtime.world_size)
    size = micro_batch_pairs(t)

    def steps(name: str) -> Iterator[list[dict[str, Any]]]:
        blocks = runtime.shard(name).iter_batches(
            batch_size=step_pairs * LENGTH_GROUP_WINDOW, batch_format="numpy", prefetch_batches=2
        )
        return stream_batches(
            blocks, step_pairs, window=LENGTH_GROUP_WINDOW, length_grouping=t.length_grouping,
            seed=f"{t.seed}:{epoch}:{name}",  # type: ignore[arg-type]
        )

    def mine(step: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        return rank_micro_batches(step, runtime.rank, runtime.world_size, size)

    def chunked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if t.max_tokens_per_batch is None:
            return [collate(rows)]
        return [collate(part) for part in split_by_tokens(rows, t.max_tokens_per_batch, packed=t.packing)]

    if runtime.shard("helpfulness") is None:
        for step in steps("train"):
            for rows in mine(step):
                yield chunked(rows)
    else:
        try:
            for step, helpful in zip_cycling(lambda: steps("train"), lambda: steps("helpfulness")):
                for rows, more in zip(mine(step), mine(helpful), strict=True):
                    yield chunked(rows + more)
        except EmptyStreamError:
            raise UserError(
                f"epoch {epoch}: the safety or the helpfulness stream has fewer than one global "
                f"step of {step_pairs} pairs (batch_size x gradient_accumulation_steps x "
                "num_workers); add data or lower train.batch_size"
            ) from None


def _pair_losses(cfg: Config, engine: Any, reference: ReferenceLogps, batch: dict[str, Any]):
    """Per-pair losses ``[B]`` and what the metrics need, for one collated batch."""
    policy_logps = engine(batch)
    half = policy_logps.shape[0] // 2
    policy_chosen, policy_rejected = policy_logps[:half], policy_logps[half:]
    ref_chosen, ref_rejected = reference(batch)
    safety = (batch["chosen_safe"], batch["rejected_safe"])
    counts = batch["label_counts"]  # response tokens per row: chosen rows, then rejected
    anchor = None
    if cfg.loss.sft_weight or cfg.loss.sft_weight_helpful:  # per-token NLL of the summed log-probs
        anchor = anchor_nll(
            cfg.loss.name, policy_chosen, policy_rejected, counts[:half], counts[half:], *safety
        )
    if cfg.loss.average_logps:
        policy_chosen, ref_chosen = (mean_token_logps(x, counts[:half]) for x in (policy_chosen, ref_chosen))
        policy_rejected, ref_rejected = (mean_token_logps(x, counts[half:]) for x in (policy_rejected, ref_rejected))
    losses = preference_loss(
        cfg.loss.name, policy_chosen, policy_rejected, ref_chosen, ref_rejected, *safety,
        chosen_token_counts=counts[:half], rejected_token_counts=counts[half:],
        **cfg.loss.hyperparameters(),
    )
    if anchor is not None:
        weights = anchor_weights(cfg.loss.sft_weight, cfg.loss.sft_weight_helpful, *safety, like=anchor)
        losses = losses + weights * anchor
    return losses, policy_chosen, policy_rejected, ref_chosen, ref_rejected, *safety


def _skip_single_rank_allreduce(engine: Any, world_size: int, zero_stage: int) -> None:
    """One rank without ZeRO partitioning has nothing to all-reduce: skip DeepSpeed's reduce.

    DeepSpeed's ZeRO-0 reduce flattens every gradient into one fresh buffer per step (up
    to 500M elements: a full extra copy of the gradients, 0.5 GB for a 135M model in
    fp32) even when the world size is 1; that copy put rayalign's peak RSS above TRL's.
    """
    if world_size == 1 and zero_stage == 0:
        engine.enable_backward_allreduce = False


def _zero_loss(model: nn.Module) -> torch.Tensor:
    """A loss with zero gradient for every trainable parameter (keeps ZeRO's hooks in step)."""
    return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0


def _all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=getattr(dist.ReduceOp, op.upper()))
    return values


def _gather_ids(ids: list[str]) -> list[str]:
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return ids
    gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, ids)
    return [i for part in gathered for i in part]


def train(
    cfg: Config,
    runtime: Runtime,
    *,
    steps_per_epoch: int,
    output_dir: str | Path | None = None,
    export: bool = True,
) -> dict[str, Any]:
    """Train one worker's share of the run; returns the last step's metrics.

    The algorithm, each step a function below: set up the model and the DeepSpeed
    engine, resume, then per epoch run micro-batches (forward, loss, backward) and, at
    every accumulation boundary, finish an optimizer step (metrics, log, checkpoint).
    """
    run = _start_run(cfg, runtime, steps_per_epoch, output_dir, export)
    state, last = run.state, {"step": run.state.step}
    step = _StepSums(run.device)
    pairs_per_index = micro_batch_pairs(cfg.train) * runtime.world_size  # all ranks together
    run.engine.train()
    while state.step < run.total_steps:
        steps_before = state.step
        done = micro_batches_done(state.pairs_in_epoch, cfg.train, runtime.world_size)
        for index, chunks in enumerate(epoch_batches(runtime, cfg, state.epoch, run.collate)):
            if index >= run.micro_per_epoch or state.step >= run.total_steps:
                break
            if index < done:
                continue  # trained on before the checkpoint we resumed from
            state.pairs_in_epoch = (index + 1) * pairs_per_index
            if not _train_micro_batch(run, chunks, index, step):
                continue  # every chunk skipped: no update, nothing counted
            step.micro += 1
            lr = run.scheduler.get_last_lr()[0]
            run.engine.step()  # optimizer step only at accumulation boundaries
            if step.micro % run.micro_per_step == 0:
                last = _finish_step(run, step, lr)
                step = _StepSums(run.device)
        _check_epoch(state, steps_before)
        if state.step < run.total_steps:  # this epoch's data is used up
            state.epoch += 1
            state.pairs_in_epoch = 0
    if not math.isfinite(last.get("loss", 0.0)):
        raise NonFiniteLossError(f"non-finite loss at step {state.step}")
    return last


@dataclass
class _Run:
    """What one worker's run holds: config, runtime, model, engine, position, outputs."""

    cfg: Config
    runtime: Runtime
    device: torch.device
    model: nn.Module
    tokenizer: Any
    reference: ReferenceLogps
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    engine: Any
    scheduler: Any
    state: TrainerState
    metrics_log: Path | None
    tensorboard: Any
    total_steps: int
    micro_per_step: int
    micro_per_epoch: int
    by_tokens: bool
    export: bool


@dataclass
class _StepSums:
    """What the micro-batches of the optimizer step in progress add up."""

    device: torch.device
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0
    slots: int = 0
    micro: int = 0
    ids: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


def _start_run(
    cfg: Config, runtime: Runtime, steps_per_epoch: int, output_dir: str | Path | None, export: bool
) -> _Run:
    """Check the schedule, set up the model and the engine, and resume where a checkpoint left off."""
    t = cfg.train
    on_gpu = t.use_gpu and torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if on_gpu else "cpu")
    torch.manual_seed(t.seed)  # same LoRA init on every rank
    total_steps = schedule_total_steps(steps_per_epoch, t)
    if steps_per_epoch <= 0 or total_steps <= 0:
        raise UserError(
            f"no training steps: {steps_per_epoch} steps per epoch (too few pairs per worker "
            f"for batch_size={t.batch_size} x gradient_accumulation_steps="
            f"{t.gradient_accumulation_steps} x num_workers={runtime.world_size})"
        )
    # train.max_tokens_per_batch: one micro-batch holds a whole optimizer step's pairs, cut
    # into token-bounded chunks (backward passes); otherwise micro-batches of batch_size pairs
    by_tokens = t.max_tokens_per_batch is not None
    micro_per_step = 1 if by_tokens else t.gradient_accumulation_steps
    tokenizer, model, reference, collate = _setup_model(cfg, device, runtime.rank)
    metrics_log = Path(output_dir) / METRICS_FILE if output_dir is not None and runtime.rank == 0 else None
    with runtime.latest_checkpoint() as checkpoint, tempfile.TemporaryDirectory(prefix="rayalign-uc-") as tmp:
        load_from = _checkpoint_to_load(cfg, runtime, checkpoint, Path(tmp))
        engine, scheduler = _setup_engine(
            cfg, model, runtime, device, on_gpu, total_steps, universal=load_from is not None and load_from[1]
        )
        state = _resume(engine, runtime, metrics_log, checkpoint, load_from)
    state.world_size, state.global_batch = runtime.world_size, global_batch(t, runtime.world_size)
    return _Run(
        cfg, runtime, device, model, tokenizer, reference, collate, engine, scheduler, state,
        metrics_log, _open_tensorboard(cfg, metrics_log, state), total_steps, micro_per_step,
        steps_per_epoch * micro_per_step, by_tokens, export,
    )


def _setup_model(cfg: Config, device: torch.device, rank: int):
    """The policy (+ LoRA or selective unfreeze), its tokenizer, the reference log-probs
    and the collate function (packed when the model takes it)."""
    from rayalign.modeling.models import (
        apply_lora,
        apply_selective_unfreeze,
        enable_activation_checkpointing,
        load_model,
        load_tokenizer,
    )

    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, device=str(device))
    if cfg.model.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.model.lora is not None:
        model = apply_lora(model, cfg.model.lora)
    elif cfg.model.trainable_modules is not None:
        apply_selective_unfreeze(model, cfg.model.trainable_modules)
    collate = make_collate(
        model, tokenizer.pad_token_id, packing=cfg.train.packing, row_tokens=cfg.train.pack_row_tokens,
        notice=logger.info if rank == 0 else None,
    )
    return tokenizer, model, ReferenceLogps(cfg, model, device), collate


def _setup_engine(
    cfg: Config, model: nn.Module, runtime: Runtime, device: torch.device, on_gpu: bool, total_steps: int,
    *, universal: bool = False,
):
    """The DeepSpeed engine (ZeRO stage, offload, accumulation, clipping) and the LR schedule;
    ``universal``: it will load a universal checkpoint (``checkpoint.load_universal``)."""
    import deepspeed

    from rayalign.modeling.models import resolve_dtype
    from rayalign.train.engine import deepspeed_config, make_scheduler

    t = cfg.train
    dtype = str(resolve_dtype(cfg.model, str(device))).removeprefix("torch.")
    config = deepspeed_config(t, world_size=runtime.world_size, dtype=dtype, on_gpu=on_gpu)
    if universal:
        config["checkpoint"] = {"load_universal": True}
    engine, _, _, scheduler = deepspeed.initialize(
        model=SequenceLogpsModel(model),
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=config,
        lr_scheduler=lambda optimizer: make_scheduler(optimizer, t, total_steps),
        dist_init_required=False,
    )
    _skip_single_rank_allreduce(engine, runtime.world_size, t.zero_stage)
    return engine, scheduler


def _checkpoint_to_load(
    cfg: Config, runtime: Runtime, checkpoint: Path | None, scratch: Path
) -> tuple[Path, bool] | None:
    """The DeepSpeed folder to load and whether it is universal: the checkpoint's own, or on
    another number of workers its universal conversion in ``scratch``; None for a fresh run.

    Raises :class:`UserError` when the checkpoint cannot resume exactly (``resume_problem``).
    """
    if checkpoint is None:
        return None
    saved = saved_state(checkpoint)
    problem = resume_problem(saved, cfg.train, runtime.world_size)
    if problem is not None:
        raise UserError(f"cannot resume {checkpoint}: {problem}")
    if saved["world_size"] == runtime.world_size:
        return checkpoint / DEEPSPEED_DIR, False
    assert cfg.train.zero_stage in RESHARDABLE_ZERO_STAGES  # resume_problem refused the others
    if runtime.rank == 0:
        logger.info(
            f"re-sharding the step-{saved['step']} checkpoint from {saved['world_size']} to "
            f"{runtime.world_size} worker(s) (DeepSpeed universal checkpoint)"
        )
    to_universal(checkpoint / DEEPSPEED_DIR, saved["world_size"], scratch)
    return scratch, True


def _resume(
    engine: Any, runtime: Runtime, metrics_log: Path | None, checkpoint: Path | None,
    load_from: tuple[Path, bool] | None,
) -> TrainerState:
    """Weights, optimizer, scheduler, data position, RNG and metrics log from ``checkpoint``
    (its DeepSpeed state from ``load_from``), if any; a fresh state (and an empty metrics
    log) otherwise."""
    if metrics_log is not None:
        metrics_log.parent.mkdir(parents=True, exist_ok=True)
    if checkpoint is None or load_from is None:
        if metrics_log is not None:
            metrics_log.write_text("")
        return TrainerState()
    engine.load_checkpoint(str(load_from[0]), tag=DEEPSPEED_TAG)
    state = load_worker_state(checkpoint, runtime.rank, runtime.world_size)
    state.resumed_from.append(state.step)
    if runtime.rank == 0:
        logger.info(f"resumed from checkpoint at step {state.step}")
    if metrics_log is not None:
        saved = checkpoint / METRICS_FILE
        metrics_log.write_bytes(saved.read_bytes() if saved.is_file() else b"")
    return state


def _open_tensorboard(cfg: Config, metrics_log: Path | None, state: TrainerState) -> Any:
    """A TensorBoard writer beside the metrics log (``train.tensorboard``, rank 0), or None."""
    if not cfg.train.tensorboard or metrics_log is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise UserError("train.tensorboard needs the tensorboard package: pip install 'rayalign[tracking]'") from exc
    return SummaryWriter(str(metrics_log.parent / "tensorboard"), purge_step=state.step + 1)


def _train_micro_batch(run: _Run, chunks: list[dict[str, Any]], index: int, step: _StepSums) -> bool:
    """Forward, loss and backward over one micro-batch's chunks; adds its metrics to
    ``step``. False when every chunk was skipped (non-finite loss, ``on_nonfinite=skip``).

    One micro-batch is one chunk, or (``train.max_tokens_per_batch``) a whole step's pairs
    in token-bounded chunks; the loss is the mean over all its pairs: each chunk adds
    ``sum(losses) / pairs``.
    """
    cfg, engine, state, device = run.cfg, run.engine, run.state, run.device
    pairs = sum(len(chunk["ids"]) for chunk in chunks)
    n_chunks = len(chunks)
    if run.by_tokens:  # every rank runs as many backward passes (ZeRO collectives)
        n_chunks = int(_all_reduce(torch.tensor([float(n_chunks)], device=device), "max"))
    parts, loss_sum = [], torch.zeros((), device=device)
    for k in range(n_chunks):
        if run.by_tokens:
            engine.set_gradient_accumulation_boundary(k == n_chunks - 1)
        if k >= len(chunks):  # padding pass of a rank with fewer chunks: zero gradient
            engine.backward(_zero_loss(run.model), scale_wrt_gas=False)
            continue
        batch = to_device(chunks[k], device)
        out = _pair_losses(cfg, engine, run.reference, batch)
        loss = out[0].sum() / pairs
        finite = _all_reduce(torch.isfinite(loss.detach()).float().reshape(1), "min")
        if finite.item() < 1.0:
            where = f"step {state.step + 1} (epoch {state.epoch}, micro-batch {index})"
            if cfg.train.on_nonfinite == "error":
                raise NonFiniteLossError(
                    f"non-finite loss at {where}; weights were not updated. Lower "
                    "train.learning_rate, check the data, or set train.on_nonfinite=skip"
                )
            state.skipped_nonfinite += 1
            logger.info(f"skipping micro-batch with non-finite loss at {where}")
            if run.by_tokens:  # keep the backward count: this chunk adds nothing
                engine.backward(_zero_loss(run.model), scale_wrt_gas=False)
            continue
        engine.backward(loss, scale_wrt_gas=not run.by_tokens)
        loss_sum = loss_sum + loss.detach()
        parts.append([x.detach() for x in out[1:]])
        step.tokens, step.slots = step.tokens + batch["num_tokens"], step.slots + batch["num_slots"]
        step.ids += batch["ids"]
    if not parts:
        return False
    policy_chosen, policy_rejected, ref_chosen, ref_rejected, *safety = (
        torch.cat(column) for column in zip(*parts, strict=True)
    )
    metrics = preference_metric_sums(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, *safety, beta=cfg.loss.beta
    )
    metrics["loss"] = (loss_sum, torch.ones((), device=device))  # mean of micro-batch losses
    add_metric_sums(step.sums, metrics)
    return True


def _finish_step(run: _Run, step: _StepSums, lr: float) -> dict[str, Any]:
    """One optimizer step done: its metrics over micro-batches and workers, written to the
    metrics log (and TensorBoard), reported, checkpointed, shown every ``log_every``."""
    state, t, world = run.state, run.cfg.train, run.runtime.world_size
    state.step += 1
    state.pairs_seen += len(step.ids) * world
    counts = torch.tensor([float(step.tokens), float(step.slots)], device=run.device)
    last, reduced = reduce_metric_sums(step.sums, counts, _all_reduce)  # no value where none
    elapsed = time.perf_counter() - step.started
    grad_norm = run.engine.get_global_grad_norm()
    last.update(
        step=state.step,
        epoch=state.epoch,
        lr=lr,
        grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
        tokens_per_s=float(reduced[-2]) / elapsed,
        pairs_per_s=len(step.ids) * world / elapsed,
        padding_fraction=padding_fraction(int(reduced[-2]), int(reduced[-1])),
        pairs_seen=state.pairs_seen,
    )
    if t.log_pair_ids:
        last["pair_ids"] = _gather_ids(step.ids)
    final = state.step >= run.total_steps
    checkpointing = final or state.step % t.checkpoint_every == 0
    if checkpointing:
        last.update(_evaluate(run))
    _write_metrics(run, last)
    if final:
        _save_checkpoint(run, last, with_export=run.export)
    elif state.step % t.checkpoint_every == 0:
        _save_checkpoint(run, last, with_export=False)
    elif state.step % t.log_every == 0:
        run.runtime.report({k: v for k, v in last.items() if k != "pair_ids"})
    if run.runtime.rank == 0 and (state.step % t.log_every == 0 or final):
        logger.info(
            f"step {state.step}/{run.total_steps} loss {last['loss']:.4f} "
            f"acc {last['rewards/accuracy']:.2f} margin {last['rewards/margins']:.3f} "
            f"lr {lr:.2e} {last['tokens_per_s']:.0f} tok/s"
        )
    if run.runtime.rank == 0 and "eval/loss" in last:
        logger.info(
            f"held-out at step {state.step}: loss {last['eval/loss']:.4f} "
            f"acc {last['eval/rewards/accuracy']:.2f} margin {last['eval/rewards/margins']:.3f} "
            f"({last['eval/pairs']:.0f} pairs)"
        )
    return last


@torch.no_grad()
def _evaluate(run: _Run) -> dict[str, float]:
    """Held-out preference metrics (the ``eval`` split) at a checkpoint step.

    The training objective and the DPO metrics (``eval/loss``, ``eval/rewards/accuracy``,
    ``eval/rewards/margins``, ...) over full batches of ``batch_size`` pairs of this
    worker's eval shard, summed over workers; ``eval/pairs`` says how many pairs. Every
    rank runs as many batches (the fewest any rank has: ZeRO-3 forwards are collectives).
    Empty when the run has no eval split.
    """
    shard = run.runtime.shard("eval")
    if shard is None:
        return {}
    cfg, device, size = run.cfg, run.device, run.cfg.train.batch_size
    blocks = shard.iter_batches(batch_size=size * LENGTH_GROUP_WINDOW, batch_format="numpy")
    batches = list(stream_batches(blocks, size, window=LENGTH_GROUP_WINDOW, length_grouping=False, seed=0))
    n = int(_all_reduce(torch.tensor([float(len(batches))], device=device), "min"))
    if n == 0:
        return {}
    sums: dict[str, torch.Tensor] = {}
    run.engine.eval()
    try:
        for rows in batches[:n]:
            batch = to_device(run.collate(rows), device)
            losses, *rest = _pair_losses(cfg, run.engine, run.reference, batch)
            metrics = preference_metric_sums(*rest, beta=cfg.loss.beta)
            metrics["loss"] = (losses.sum(), torch.full((), float(losses.numel()), device=device))
            add_metric_sums(sums, metrics)
    finally:
        run.engine.train()
    values, _ = reduce_metric_sums(sums, torch.zeros(0, device=device), _all_reduce)
    out = {f"eval/{name}": value for name, value in values.items()}
    out["eval/pairs"] = float(n * size * run.runtime.world_size)
    return out


def _write_metrics(run: _Run, last: dict[str, Any]) -> None:
    """Append the step's metrics to ``metrics.jsonl`` (rank 0) and TensorBoard."""
    if run.metrics_log is not None:
        with run.metrics_log.open("a") as handle:
            handle.write(json.dumps(last) + "\n")
    if run.tensorboard is not None:
        for key, value in last.items():
            if isinstance(value, float):
                run.tensorboard.add_scalar(key, value, run.state.step)


def _save_checkpoint(run: _Run, metrics: dict[str, Any], *, with_export: bool) -> None:
    """DeepSpeed state, this rank's position, (the export) and rank 0's state file, handed
    to the runtime with the step's metrics."""
    from rayalign.train.export import export_model

    rank = run.runtime.rank
    directory = fresh_checkpoint_dir()
    run.engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG)
    save_worker_state(directory, rank, run.state)
    if with_export:
        export_model(run.engine, run.cfg, run.tokenizer, directory / "export", is_writer=rank == 0)
    if rank == 0:
        save_trainer_state(directory, run.state, run.metrics_log)
    run.runtime.report(metrics, checkpoint_dir=directory)
    shutil.rmtree(directory, ignore_errors=True)


def _check_epoch(state: TrainerState, steps_before: int) -> None:
    """An epoch that trained nothing is an error: no data, or only non-finite losses."""
    if state.step == steps_before and state.pairs_in_epoch == 0:
        raise UserError(f"epoch {state.epoch} gave this worker no batches: no training data")
    if state.step == steps_before and state.skipped_nonfinite:
        raise NonFiniteLossError(
            f"every micro-batch of epoch {state.epoch} had a non-finite loss "
            f"({state.skipped_nonfinite} skipped in total); nothing was trained"
        )


def train_loop_per_worker(payload: dict[str, Any]) -> None:
    """Ray Train entry point: rebuild the config and run :func:`train` in this worker."""
    from rayalign.console import worker_logging

    worker_logging()
    cfg = Config.model_validate(payload["config"])
    train(
        cfg,
        RayTrainRuntime(),
        steps_per_epoch=payload["steps_per_epoch"],
        output_dir=payload.get("output_dir"),
    )
