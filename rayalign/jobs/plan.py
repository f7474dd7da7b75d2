"""Dry-run sizing of a job spec: memory per GPU, GPUs and nodes, steps per epoch.

Pure arithmetic over the config and the model's dimensions, so a plan for a 7B model
runs on a laptop in milliseconds. Memory follows the ZeRO paper's accounting
(Rajbhandari et al., 2020): with mixed precision and Adam, each trainable parameter
costs 2 bytes of 16-bit weights, 2 bytes of 16-bit gradients and 12 bytes of fp32
optimizer state (master weights, momentum, variance); ZeRO stage 1 shards the
optimizer state over the data-parallel world, stage 2 also the gradients, stage 3
also the weights. Activations follow Korthikanti et al. (2022) adapted to SwiGLU
layers with memory-efficient attention: the tensors a decoder layer saves for its
backward pass, or only each layer's input when gradient checkpointing recomputes
the rest. Figures exclude the CUDA context, communication buffers and allocator
fragmentation, so the fit check keeps 10% of the GPU free for them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from rayalign.config import Config, LoraConfig, ModelConfig
from rayalign.data.mixing import steps_per_epoch, total_steps
from rayalign.errors import UserError
from rayalign.jobs.archs import HEAD_CHUNK_TOKENS, ModelDims, resolve_dims
from rayalign.jobs.jobspec import job_command, plan_launch
from rayalign.jobs.rowcounts import count_rows
from rayalign.losses.registry import LOSSES

GB = 1024**3
#: Share of GPU memory the estimate may use; the rest covers what it leaves out.
FIT_FRACTION = 0.9


@dataclass(frozen=True)
class Precision:
    """Bytes per element of the training state for one dtype policy."""

    name: str
    weight: int
    grad: int
    optimizer: int  # per trainable parameter (Adam)
    activation: int


MIXED_16BIT = Precision("bf16 mixed precision", weight=2, grad=2, optimizer=12, activation=2)
FULL_FP32 = Precision("fp32", weight=4, grad=4, optimizer=8, activation=4)


def training_precision(model: ModelConfig, use_gpu: bool) -> Precision:
    """``auto`` means bf16 on GPUs and fp32 on CPUs (the dtype policy of models.py)."""
    if model.dtype in ("bfloat16", "float16") or (model.dtype == "auto" and use_gpu):
        return MIXED_16BIT
    return FULL_FP32


def lora_parameters(dims: ModelDims, lora: LoraConfig) -> int:
    """r * (fan_in + fan_out) per adapted Linear (the A and B matrices), in every adapted layer."""
    total = 0
    for module, (fan_in, fan_out) in dims.linear_shapes().items():
        if any(module.split(".")[-1] == target for target in lora.target_modules):
            total += lora.r * (fan_in + fan_out)
    return total * len(lora.adapted_layers(dims.num_layers))


def trainable_parameters(dims: ModelDims, model: ModelConfig) -> int:
    """Parameters that get gradients: all, the LoRA adapters, or those matching trainable_modules."""
    if model.lora is not None:
        return lora_parameters(dims, model.lora)
    if model.trainable_modules is None:
        return dims.num_parameters()
    patterns = [re.compile(p) for p in model.trainable_modules]
    return sum(n for name, n in dims.named_parameters() if any(p.search(name) for p in patterns))


def activation_bytes(
    dims: ModelDims, seq_len: int, sequences: int, checkpointing: bool, bytes_per: int,
    chunked_head: bool = False,
) -> int:
    """Saved activations of one micro-batch: decoder layers plus the logits.

    Logits exist only for positions that predict a response token (at most every token:
    the bound used here). With ``chunked_head`` (a plain output head, as
    ``rayalign.logprobs.head_token_logps`` computes it) only :data:`HEAD_CHUNK_TOKENS`
    positions' logits exist at once, in forward and in the recomputing backward.
    """
    tokens = seq_len * sequences
    h, kv, i = dims.hidden_size, dims.kv_dim, dims.intermediate_size
    # Per token and layer: norm inputs/outputs, q, attention output, o_proj input (7 of h),
    # k and v (2 of kv), gate, up, act(gate) and their product (4 of intermediate).
    full_layer = tokens * (7 * h + 2 * kv + 4 * i) * bytes_per
    if checkpointing:
        layers = dims.num_layers * tokens * h * bytes_per + full_layer
    else:
        layers = dims.num_layers * full_layer
    # Logits in the compute dtype plus their fp32 copy for the log-softmax.
    logit_tokens = min(tokens, HEAD_CHUNK_TOKENS) if chunked_head else tokens
    logits = logit_tokens * dims.vocab_size * (bytes_per + 4)
    return layers + logits


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU (or per worker process on CPU) by component."""

    total_params: int
    trainable_params: int
    precision: str
    weights: int
    gradients: int
    optimizer: int
    reference: int
    activations: int
    offloaded_to_cpu: int

    @property
    def total(self) -> int:
        """Bytes on the device (what was offloaded to the host is not counted)."""
        return self.weights + self.gradients + self.optimizer + self.reference + self.activations


def chunked_head(cfg: Config) -> bool:
    """Whether the loop computes response log-probs chunk by chunk (``logprobs``): a plain
    output head, i.e. not partitioned by ZeRO-3 and not wrapped by LoRA."""
    lora_on_head = cfg.model.lora is not None and "lm_head" in cfg.model.lora.target_modules
    return cfg.train.zero_stage != 3 and not lora_on_head


def training_memory(dims: ModelDims, cfg: Config) -> MemoryEstimate:
    """Per-worker memory for the config's ZeRO stage, offload, LoRA/selective and batch."""
    train, world = cfg.train, cfg.train.num_workers
    prec = training_precision(cfg.model, train.use_gpu)
    total, trainable = dims.num_parameters(), trainable_parameters(dims, cfg.model)
    # LoRA adapters are extra parameters on top of the frozen base.
    weight_count = total + trainable if cfg.model.lora is not None else total
    weights = weight_count * prec.weight
    gradients = trainable * prec.grad
    optimizer = trainable * prec.optimizer
    # Frozen 16-bit base weights have no master copy; fp32 training needs none anyway.
    if train.zero_stage >= 1:
        optimizer //= world
    if train.zero_stage >= 2:
        gradients //= world
    if train.zero_stage >= 3:
        weights //= world
    offloaded = 0
    if train.offload_optimizer and train.zero_stage >= 1:
        offloaded += optimizer
        optimizer = 0
    if train.offload_params and train.zero_stage == 3:
        offloaded += weights
        weights = 0
    # A second frozen model only when the loss uses a reference, its log-probs are computed
    # on the fly and LoRA cannot stand in for it (adapter-disabled base = reference). The
    # loop loads a full copy per worker (train.loop.ReferenceLogps), under any ZeRO stage.
    reference = 0
    if cfg.loss.spec.needs_reference and not cfg.data.precompute_ref_logps and cfg.model.lora is None:
        reference = total * prec.weight
    activations = activation_bytes(
        dims,
        seq_len=cfg.data.max_length,
        sequences=2 * train.batch_size,  # chosen + rejected in one concatenated forward
        checkpointing=cfg.model.gradient_checkpointing,
        bytes_per=prec.activation,
        chunked_head=chunked_head(cfg),
    )
    return MemoryEstimate(
        total, trainable, prec.name, weights, gradients, optimizer, reference, activations, offloaded
    )


def inference_memory(dims: ModelDims, cfg: Config) -> dict[str, int]:
    """Generation on one GPU: 16-bit weights plus the KV cache of concurrent requests."""
    tokens = cfg.eval.concurrency * (cfg.data.max_prompt_length + cfg.eval.max_new_tokens)
    kv_cache = 2 * dims.num_layers * dims.kv_dim * 2 * tokens
    return {"weights": dims.num_parameters() * 2, "kv_cache": kv_cache}


@dataclass(frozen=True)
class GpuRequest:
    """What the job asks the cluster for."""

    workers: int
    gpus_per_worker: float
    gpus: float
    nodes: int
    placement: str


def train_request(cfg: Config) -> GpuRequest:
    """One Ray Train worker (and DeepSpeed rank) per GPU; nodes follow the placement strategy."""
    train, per_node = cfg.train, cfg.job.gpus_per_node
    default_gpu = 1.0 if train.use_gpu else 0.0
    per_worker = float((train.resources_per_worker or {}).get("GPU", default_gpu))
    gpus = train.num_workers * per_worker
    if train.placement_strategy == "STRICT_SPREAD":
        nodes = train.num_workers
    elif gpus > 0:
        workers_per_node = max(int(per_node // per_worker), 1) if per_worker else train.num_workers
        nodes = math.ceil(train.num_workers / workers_per_node)
    else:
        nodes = 1
    return GpuRequest(train.num_workers, per_worker, gpus, nodes, train.placement_strategy)


def sweep_trials(cfg: Config) -> int | None:
    """Trials a sweep runs: grid points x num_samples (random/Optuna: num_samples)."""
    grids = [len(spec["grid"]) for spec in cfg.sweep.space.values() if "grid" in spec]
    points = math.prod(grids) if grids else 1
    return points * cfg.sweep.num_samples


def expected_row_counts(train_rows: int, cfg: Config, helpfulness_rows: int | None = None) -> dict[str, int]:
    """The prepared splits training reads, estimated from the sources' rows.

    The pipeline holds ``data.eval_fraction`` of the safety stream out (by id hash, so
    the exact count is known only after preparing) and never splits the helpfulness
    stream. Feed the result to :func:`rayalign.data.mixing.steps_per_epoch`, the rule the
    trainer applies to the real counts.
    """
    counts = {"train": math.floor(train_rows * (1.0 - cfg.data.eval_fraction))}
    if helpfulness_rows is not None:
        counts["helpfulness"] = helpfulness_rows
    return counts


@dataclass
class Plan:
    """The dry run's findings; ``format_plan`` turns it into the printed report."""

    command: str
    model: str
    dims: ModelDims | None = None
    dims_error: str | None = None
    memory: MemoryEstimate | None = None
    inference: dict[str, int] | None = None
    request: GpuRequest | None = None
    trials: int | None = None
    concurrent_trials: int = 1
    rows: int | None = None
    rows_source: str = ""
    helpfulness_rows: int | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    gpu_memory_gb: float = 80.0
    entrypoint: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def total_gpus(self) -> float:
        """GPUs the job holds at once (a sweep: per trial x concurrent trials)."""
        if self.request is None:
            return 0.0
        return self.request.gpus * (self.concurrent_trials if self.command == "sweep" else 1)

    @property
    def total_nodes(self) -> int:
        """Nodes the job needs at once (a sweep: per trial x concurrent trials)."""
        if self.request is None:
            return 1
        return self.request.nodes * (self.concurrent_trials if self.command == "sweep" else 1)


def build_plan(
    cfg: Config,
    command: str,
    dims: ModelDims | None,
    *,
    dims_error: str | None = None,
    rows: tuple[int | None, str] = (None, ""),
    helpfulness_rows: int | None = None,
) -> Plan:
    """Size a resolved config; ``dims``/``rows`` come from archs.py / rowcounts.py (or the user)."""
    plan = Plan(command, cfg.model.name_or_path, dims=dims, dims_error=dims_error)
    plan.gpu_memory_gb = cfg.job.gpu_memory_gb
    if command == "toy":
        return plan
    if command == "eval":
        gpus = cfg.job.num_gpus if cfg.job.num_gpus is not None else int(cfg.eval.backend == "vllm")
        plan.request = GpuRequest(1, float(gpus), float(gpus), 1, "-")
        if dims is not None:
            plan.inference = inference_memory(dims, cfg)
        return plan

    plan.request = train_request(cfg)
    if command == "sweep":
        plan.trials = sweep_trials(cfg)
        plan.concurrent_trials = min(cfg.sweep.max_concurrent_trials, plan.trials or 1)
        extra = cfg.sweep.gpus_per_trial
        if extra:
            req = plan.request
            plan.request = GpuRequest(req.workers, req.gpus_per_worker, req.gpus + extra, req.nodes, req.placement)
    if dims is not None:
        plan.memory = training_memory(dims, cfg)
    plan.rows, plan.rows_source = rows
    plan.helpfulness_rows = helpfulness_rows
    if plan.rows is not None:
        plan.steps_per_epoch = steps_per_epoch(expected_row_counts(plan.rows, cfg, helpfulness_rows), cfg.train)
        plan.total_steps = total_steps(plan.steps_per_epoch, cfg.train)
    plan.warnings = check_plan(cfg, plan)
    return plan


def check_plan(cfg: Config, plan: Plan) -> list[str]:
    """Things that will waste GPUs, fail to fit, or not do what the spec suggests."""
    train, notes = cfg.train, []
    req = plan.request
    if req is not None and req.gpus and req.gpus_per_worker != 1:
        notes.append(
            f"train.resources_per_worker GPU={req.gpus_per_worker:g}: DeepSpeed runs one rank "
            "per GPU, so give each worker exactly 1 GPU"
        )
    if train.offload_params and train.zero_stage != 3:
        notes.append("train.offload_params only works with zero_stage 3; it is ignored")
    if train.placement_strategy == "STRICT_SPREAD" and cfg.job.gpus_per_node > 1 and train.use_gpu:
        notes.append(
            "STRICT_SPREAD puts one worker per node: the other GPUs of each node stay idle "
            "(use PACK for one worker per GPU on as few nodes as possible)"
        )
    if plan.memory is not None:
        if not train.use_gpu and plan.memory.total_params > 1_000_000_000:
            notes.append(
                f"train.use_gpu is false: training {plan.memory.total_params / 1e9:.1f}B "
                "parameters on CPUs will be very slow"
            )
        limit = plan.gpu_memory_gb * GB * FIT_FRACTION
        if train.use_gpu and plan.memory.total > limit:
            notes.append(
                f"estimated {plan.memory.total / GB:.1f} GiB per GPU exceeds {FIT_FRACTION:.0%} "
                f"of {plan.gpu_memory_gb:g} GiB: raise zero_stage, turn on "
                "model.gradient_checkpointing or offload, or lower train.batch_size"
            )
    if plan.command in ("train", "sweep"):
        for field_name, value in (("train.output_dir", train.output_dir), ("train.storage_path", train.storage_path)):
            if value and not value.startswith(("/", "~")) and "://" not in value:
                notes.append(
                    f"{field_name} {value!r} is relative: a submitted job resolves it inside its "
                    "temporary working_dir copy on the head; use shared storage for cluster runs"
                )
    ignored = cfg.loss.ignored_hyperparameters()
    if ignored:
        notes.append(ignored_note(cfg))
    if cfg.data.helpfulness_sources and not cfg.loss.spec.uses_helpfulness_stream:
        users = ", ".join(n for n, spec in LOSSES.items() if spec.uses_helpfulness_stream)
        notes.append(f"data.helpfulness_sources is only used by the {users} loss (buffered mode)")
    if plan.steps_per_epoch == 0:
        notes.append("fewer pairs than one global batch: no optimizer step would run")
    if plan.command == "sweep":
        unknown = [k for k in cfg.sweep.space if not _is_config_path(cfg, k)]
        if unknown:
            notes.append(f"sweep.space keys that are not config fields: {', '.join(unknown)}")
    return notes


def ignored_note(cfg: Config) -> str:
    """One line naming the loss hyperparameters set for nothing (``LossConfig.ignored_hyperparameters``)."""
    ignored = ", ".join(f"loss.{n}" for n in cfg.loss.ignored_hyperparameters())
    reads = ", ".join(cfg.loss.spec.hyperparameters)
    them = "them" if "," in ignored else "it"
    return f"{ignored} set, but the {cfg.loss.name} loss does not read {them} (it reads {reads})"


def _is_config_path(cfg: Config, dotted: str) -> bool:
    node: object = cfg
    for part in dotted.split("."):
        fields = getattr(type(node), "model_fields", None)
        if fields is None or part not in fields:
            return False
        node = getattr(node, part)
    return True


def _gib(n: int) -> str:
    """Bytes as GiB, or MiB below one GiB (tiny test models)."""
    return f"{n / GB:8.2f} GiB" if n >= GB else f"{n / 1024**2:8.2f} MiB"


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}" if n < 100 * scale else f"{n / scale:.0f}{unit}"
    return str(n)


def format_plan(plan: Plan, cfg: Config) -> str:
    """The human-readable report ``rayalign plan`` prints."""
    lines = [f"command:        rayalign {plan.command}"]
    if plan.entrypoint:
        lines.append(f"entrypoint:     {plan.entrypoint}")
    if plan.command == "toy":
        lines.append("resources:      1 CPU on the driver; no GPUs")
        return "\n".join(lines)
    lines.append(f"model:          {plan.model}")
    if plan.dims is not None:
        d = plan.dims
        lines.append(
            f"                {_count(d.num_parameters())} params, {d.num_layers} layers, "
            f"hidden {d.hidden_size}, vocab {d.vocab_size} ({d.source})"
        )
    else:
        lines.append(f"                dimensions unknown: {plan.dims_error}")
    if cfg.job.stages:
        names = " -> ".join(stage.name for stage in cfg.job.stages)
        lines.append(f"stages:         {names} (run in order, each from the model the one before "
                     "exported; sized here with the spec's settings)")
    req = plan.request
    if req is not None:
        if plan.command == "eval":
            lines.append(f"GPUs:           {req.gpus:g} (generation/judge replicas)")
        else:
            device = f"{req.gpus_per_worker:g} GPU" if req.gpus else "CPU"
            lines.append(
                f"workers:        {req.workers} x {device} "
                f"(DeepSpeed ZeRO-{cfg.train.zero_stage}, world size {req.workers}), "
                f"placement {req.placement}"
            )
            if plan.command == "sweep":
                lines.append(
                    f"trials:         {plan.trials} ({cfg.sweep.search}), up to "
                    f"{plan.concurrent_trials} at once, {req.gpus:g} GPU(s) each"
                )
            if plan.total_gpus:
                lines.append(
                    f"GPUs/nodes:     {plan.total_gpus:g} GPU(s) on {plan.total_nodes} node(s) "
                    f"of {cfg.job.gpus_per_node} GPUs"
                )
            else:
                lines.append(f"GPUs/nodes:     none (CPU workers) on {plan.total_nodes} node(s)")
    if plan.memory is not None:
        m = plan.memory
        where = "GPU" if cfg.train.use_gpu else "worker (CPU)"
        lines += [
            f"parameters:     {_count(m.total_params)} total, {_count(m.trainable_params)} "
            f"trainable ({m.trainable_params / max(m.total_params, 1):.2%}), {m.precision}",
            f"memory per {where}:",
            f"  weights       {_gib(m.weights)}",
            f"  gradients     {_gib(m.gradients)}",
            f"  optimizer     {_gib(m.optimizer)}",
        ]
        if m.reference:
            lines.append(f"  reference     {_gib(m.reference)}  (on-the-fly reference model)")
        ckpt = "with" if cfg.model.gradient_checkpointing else "without"
        lines.append(
            f"  activations   {_gib(m.activations)}  ({2 * cfg.train.batch_size} seqs x "
            f"{cfg.data.max_length} tokens, {ckpt} gradient checkpointing)"
        )
        lines.append(f"  total         {_gib(m.total)}")
        if m.offloaded_to_cpu:
            lines.append(f"  CPU offload   {_gib(m.offloaded_to_cpu)}  (host memory per worker)")
        if cfg.train.use_gpu:
            fits = m.total <= plan.gpu_memory_gb * GB * FIT_FRACTION
            lines.append(
                f"  fits a {plan.gpu_memory_gb:g} GiB GPU: {'yes' if fits else 'NO'} "
                f"({m.total / (plan.gpu_memory_gb * GB):.0%} of it)"
            )
    if plan.inference is not None:
        lines += [
            "memory per generation GPU:",
            f"  weights       {_gib(plan.inference['weights'])}",
            f"  KV cache      {_gib(plan.inference['kv_cache'])}  ({cfg.eval.concurrency} concurrent requests)",
        ]
    if plan.command in ("train", "sweep"):
        if plan.rows is not None:
            lines.append(f"pairs:          {plan.rows:,} ({plan.rows_source})")
            if plan.helpfulness_rows is not None:
                lines.append(f"helpfulness:    {plan.helpfulness_rows:,} pairs (buffered BFPO stream; the shorter stream is cycled)")
            gb = cfg.train.batch_size * cfg.train.num_workers * cfg.train.gradient_accumulation_steps
            lines.append(
                f"steps/epoch:    {plan.steps_per_epoch:,} (global batch {gb} pairs, "
                f"{cfg.data.eval_fraction:.0%} held out, full batches only), "
                + (f"{plan.total_steps:,} steps in all" if plan.steps_per_epoch else "so no step can run")
            )
            if cfg.applies_safedpo_transform():
                lines.append("                (an upper bound: the SafeDPO transform drops unsafe/unsafe pairs)")
        else:
            lines.append(f"steps/epoch:    unknown: {plan.rows_source}; pass --rows N")
    for note in plan.warnings:
        lines.append(f"warning: {note}")
    return "\n".join(lines)


def total_rows(sources: list, override: int | None) -> tuple[int | None, str]:
    """Pairs over several sources (each scaled by its fraction); unknown if any is unknown."""
    if override is not None:
        return override, "given with --rows"
    if not sources:
        return None, "no sources"
    total, origins = 0, []
    for source in sources:
        if source.where:  # counting would mean reading every row; ask for --rows instead
            return None, f"{source.path} is filtered by where={source.where}"
        rows, origin = count_rows(source.path, source.split)
        if rows is None:
            return None, origin
        total += math.floor(rows * source.fraction)
        origins.append(origin)
    return total, "; ".join(origins)


def plan_spec(
    cfg: Config,
    spec: Path,
    overrides: list[str],
    rows: int | None = None,
    helpfulness_rows: int | None = None,
    *,
    cwd: Path | None = None,
) -> Plan:
    """The dry run for a spec file: gathers model dims and row counts (local reads only)."""
    command = job_command(cfg)
    dims, dims_error = None, None
    if command != "toy":
        try:
            dims = resolve_dims(cfg.model.name_or_path)
        except UserError as exc:
            dims_error = str(exc)
    helpful = None
    if cfg.data.helpfulness_sources:
        helpful, _ = total_rows(cfg.data.helpfulness_sources, helpfulness_rows)
    plan = build_plan(
        cfg, command, dims, dims_error=dims_error,
        rows=total_rows(cfg.data.sources, rows), helpfulness_rows=helpful,
    )
    try:
        plan.entrypoint = plan_launch(cfg, spec, overrides, cwd=cwd).entrypoint
    except UserError as exc:
        plan.warnings.append(f"cannot submit as is: {exc}")
    return plan
