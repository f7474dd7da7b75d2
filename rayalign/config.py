"""One typed config for every entry point (train, sweep, eval, demo, job specs).

A YAML file is read by PyYAML's safe loader (a key repeated in one mapping is an error,
not the last one silently winning), overridden by ``--set a.b=value`` pairs,
and validated before any work starts: unknown keys and bad values fail with the
full dotted path of the field. The resolved config is saved beside every run's
outputs as its reproducible record.
"""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rayalign.atomic import write_text
from rayalign.cache import cache_root
from rayalign.errors import UserError
from rayalign.losses.registry import HYPERPARAMETERS, LOSSES, LossSpec, get_loss
from rayalign.textio import read_text

#: A registered loss name (``rayalign.losses.registry.LOSSES``), checked by ``LossConfig``.
LossName = str


#: torch threads in a section's Ray processes; None = the CPUs Ray reserved for them. On a
#: small machine, set it to the core count: one process then uses every core while
#: reserving a single CPU, so the tasks that feed it can still be scheduled.
TorchThreads = Annotated[int | None, Field(gt=0)]


def _without_none(annotation: Any) -> list[Any]:
    """The types of an annotation, ``Annotated`` metadata and ``None`` removed."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(annotation) for t in _without_none(a)]
    return [] if annotation is type(None) else [annotation]


def _numeric(annotation: Any) -> bool:
    """True for ``int``, ``float`` and their optional forms (``int | None``)."""
    kinds = _without_none(annotation)
    return bool(kinds) and all(k in (int, float) for k in kinds)


def _numeric_list(annotation: Any) -> bool:
    """True for ``list[int]``, ``list[float]`` and their optional forms."""
    kinds = _without_none(annotation)
    return len(kinds) == 1 and typing.get_origin(kinds[0]) is list and _numeric(typing.get_args(kinds[0])[0])


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored, and a number
    is never read from a YAML boolean (``epochs: yes`` is an error, not 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: Any) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, list) and _numeric_list(annotation):
            numbers = value
        elif _numeric(annotation):
            numbers = [value]
        else:
            return value
        flag = next((v for v in numbers if isinstance(v, bool)), None)
        if flag is not None:
            raise ValueError(f"expected a number, not the boolean {str(flag).lower()} "
                             "(YAML reads yes/no/on/off as booleans)")
        return value


class LoraConfig(Section):
    """A PEFT LoRA adapter (``model.lora``): rank, scaling, dropout, target modules, and
    whether the export merges it into the base."""

    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Decoder layers (0-based) that get adapters; None = every layer (PEFT's
    # `layers_to_transform`). With only later layers adapted, the adapters read features the
    # earlier layers already built, and autograd has nothing to train below the first of them.
    layers_to_transform: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1)
    merge_on_export: bool = False

    def adapted_layers(self, num_layers: int) -> list[int]:
        """The decoder layers that get adapters, of a model with ``num_layers``; UserError
        naming the first index the model does not have."""
        if self.layers_to_transform is None:
            return list(range(num_layers))
        missing = [i for i in self.layers_to_transform if i >= num_layers]
        if missing:
            raise UserError(f"model.lora.layers_to_transform: layer {missing[0]} does not exist; "
                            f"this model's decoder layers are 0..{num_layers - 1}")
        return sorted(set(self.layers_to_transform))


class ModelConfig(Section):
    """Which model to align and how to load it."""

    name_or_path: str = "smollm2-135m-instruct"
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    lora: LoraConfig | None = None
    # Selective fine-tuning: only parameters whose names match one of these regexes train
    # (BFPO tunes the MLP down-projections: ["mlp.down_proj"]). None = all parameters.
    trainable_modules: list[str] | None = None
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _lora_xor_selective(self) -> ModelConfig:
        if self.lora is not None and self.trainable_modules is not None:
            raise ValueError("choose either lora or trainable_modules, not both")
        return self


class DataSource(Section):
    """One preference data set: a path, glob, bucket URI or hub id, and how to read it."""

    path: str
    format: str = "auto"
    split: str = "train"
    revision: str | None = None
    # Fraction of this source's rows to use (after validation), for mixtures.
    fraction: float = Field(1.0, gt=0.0, le=1.0)
    # Declare every response safe (BFPO does this for UltraFeedback).
    all_safe: bool = False
    # PKU-SafeRLHF: order pairs by helpfulness (better_response_id) or safety.
    preference: Literal["helpfulness", "safety"] = "helpfulness"
    # Keep only rows whose original column equals the value, e.g. {kind: harmful}: one file
    # can then feed both of BFPO's buffered sets. Rows filtered out are not rejects.
    where: dict[str, str | int | float | bool] = Field(default_factory=dict)
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _path_alone(cls, value: Any) -> Any:
        """A source written as its path alone (``sources: [builtin:demo, pairs.jsonl]``)."""
        return {"path": value} if isinstance(value, str) else value


class DataConfig(Section):
    """Where pairs come from and how they are validated, transformed and tokenized."""

    sources: list[DataSource] = Field(default_factory=lambda: [DataSource(path="builtin:demo")])
    # BFPO buffered mode: a second set of helpfulness pairs mixed in equal-size batches.
    helpfulness_sources: list[DataSource] = Field(default_factory=list)
    max_length: int = Field(512, gt=0)
    max_prompt_length: int = Field(256, gt=0)
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    max_invalid_fraction: float = Field(0.05, ge=0.0, le=1.0)
    dedup: bool = True
    # Apply the SafeDPO transformation (default: only when the loss is safedpo).
    safedpo_transform: bool | None = None
    precompute_ref_logps: bool = True
    ref_batch_size: int = Field(8, gt=0)
    ref_num_actors: int = Field(1, gt=0)
    ref_torch_threads: TorchThreads = None
    ref_gpus_per_actor: float = Field(0.0, ge=0.0)
    # Concurrent tokenization tasks (None = as many as the Ray cluster has CPUs).
    tokenize_concurrency: int | None = Field(None, gt=0)
    # Prepared data goes to <cache_dir>/prepared; default: the cache root ($RAYALIGN_CACHE,
    # else ~/.cache/rayalign), read when the config is built.
    cache_dir: str = Field(default_factory=lambda: str(cache_root()))
    # Salts the train/eval split and, with ``shuffle``, the pairs' order.
    seed: int = 0
    # Store the pairs in a random order seeded by ``seed`` (fixed in the cache, so resume
    # stays exact). False keeps the sources' order: sources as listed, each source's files
    # in sorted path order, rows as written, so a run shorter than an epoch trains on the
    # first source only.
    shuffle: bool = True

    @model_validator(mode="after")
    def _prompt_fits(self) -> DataConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        return self


def _hyperparameter(name: str) -> Any:
    """A ``LossConfig`` field whose default and bounds come from the loss registry."""
    hp = HYPERPARAMETERS[name]
    return Field(hp.default, description=hp.doc, **hp.bounds())


class LossConfig(Section):
    """Which registered loss trains (``rayalign.losses.registry``) and its hyperparameters.

    One field per registry hyperparameter; each loss reads the ones its entry names, the
    others are ignored. Defaults and valid ranges live in the registry.
    """

    name: LossName = "safedpo"
    beta: float = _hyperparameter("beta")
    delta: float = _hyperparameter("delta")
    b1: float = _hyperparameter("b1")
    alpha: float = _hyperparameter("alpha")
    gamma: float = _hyperparameter("gamma")
    label_smoothing: float = _hyperparameter("label_smoothing")
    # Weight of an NLL term on the response the loss prefers, the safe one for safedpo/bfpo
    # (RPO-style; see rayalign.losses.anchor_nll); 0 = the paper's loss.
    sft_weight: float = Field(0.0, ge=0.0)
    # The anchor's weight on pairs whose two responses are both labelled safe (decided by
    # helpfulness alone: the demo's benign prompts, every all_safe or helpfulness_sources
    # pair, and a harmful prompt with two safe responses) when it should differ from the
    # pairs a safety label decides (one response unsafe: on the demo's harmful prompts the
    # anchored response is the refusal); None = sft_weight. Split by the labels, for every
    # loss, including those whose anchor is the chosen response (dpo, ipo).
    sft_weight_helpful: float | None = Field(None, ge=0.0)
    # Length-normalised log-probs: each response's summed log-prob (policy and reference)
    # divided by its token count before the loss, so h is a per-token log-ratio difference
    # (TRL's convention for IPO). The squared losses (ipo, bfpo) then pull h towards a
    # per-token target whatever the response length, and their gradient stays on the scale
    # of the per-token NLL anchor instead of growing with the summed length.
    average_logps: bool = False

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        get_loss(value)  # ValueError naming the known losses
        return value

    @field_validator(*HYPERPARAMETERS)
    @classmethod
    def _in_range(cls, value: float, info: Any) -> float:
        return HYPERPARAMETERS[info.field_name].check(value)

    @model_validator(mode="after")
    def _not_normalised_twice(self) -> LossConfig:
        if self.average_logps and self.spec.needs_token_counts:
            raise ValueError(f"average_logps: {self.name} already normalises by response length")
        return self

    def ignored_hyperparameters(self) -> list[str]:
        """Hyperparameters set explicitly (config file or ``--set``) that ``name`` does not
        read, e.g. ``alpha`` under safedpo: a note for ``rayalign train``/``plan``, not an
        error, so one file can serve several losses through ``--set loss.name=...``."""
        return sorted(
            n for n in self.model_fields_set & HYPERPARAMETERS.keys()
            if n not in self.spec.hyperparameters
        )

    def hyperparameters(self) -> dict[str, float]:
        """Every registry hyperparameter's value, for ``preference_loss(..., **values)``."""
        return {name: getattr(self, name) for name in HYPERPARAMETERS}

    @property
    def spec(self) -> LossSpec:
        """The registry entry of ``name``."""
        return LOSSES[self.name]


class TrackingConfig(Section):
    """Experiment tracking through Ray's integrations (``ray.air.integrations.mlflow`` /
    ``.wandb``): training, every sweep trial and ``rayalign eval`` each log a run."""

    backend: Literal["none", "mlflow", "wandb"] = "none"
    # MLflow: the tracking URI (default: a local file store, <output folder>/mlruns).
    # W&B: the server's base URL; without one W&B runs offline (files under the output folder).
    uri: str | None = None
    experiment: str = "rayalign"  # MLflow experiment / W&B project
    run_name: str | None = None  # default: train.name (training), the model label (eval)


class TrainConfig(Section):
    """Distributed training: scaling, optimisation, DeepSpeed, checkpoints."""

    num_workers: int = Field(1, gt=0)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    torch_threads: TorchThreads = None
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    learning_rate: float = Field(5e-6, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)
    batch_size: int = Field(4, gt=0, description="pairs per worker per micro-step")
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    length_grouping: bool = True
    # Packed micro-batches: each pair once as [prompt | chosen | rejected] with a 4D mask,
    # pairs concatenated with no padding (docs/training.md). Models whose attention cannot
    # take the mask exactly fall back to padded pairs with a one-line notice.
    packing: bool = True
    # Token budget of one packed row; None = all pairs of a micro-batch in one row.
    pack_row_tokens: int | None = Field(None, gt=0)
    # Micro-batches by tokens: an optimizer step still trains batch_size x
    # gradient_accumulation_steps pairs per worker (the loss is their mean), cut into
    # micro-batches of at most this many (packed) tokens. None = batch_size pairs each.
    max_tokens_per_batch: int | None = Field(None, gt=0)
    on_nonfinite: Literal["error", "skip"] = "error"
    checkpoint_every: int = Field(50, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    max_failures: int = Field(0, ge=-1)
    # Metrics-only ray.train.report every N steps (a barrier on all workers; Tune
    # schedulers see these). metrics.jsonl gets every step regardless.
    log_every: int = Field(10, gt=0)
    # Record the ids of the pairs each step trained on in metrics.jsonl (resume audits).
    log_pair_ids: bool = False
    tensorboard: bool = False
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    seed: int = 42
    output_dir: str = "outputs"
    # Ray Train storage (local folder, NFS path, s3://, gs://); shared by all nodes.
    storage_path: str | None = None
    name: str = "rayalign-train"

    @model_validator(mode="before")
    @classmethod
    def _old_mlflow_field(cls, data: Any) -> Any:
        """``mlflow_tracking_uri`` (never read before ``tracking`` existed) means MLflow there."""
        if isinstance(data, dict) and "mlflow_tracking_uri" in data:
            data = dict(data)
            uri = data.pop("mlflow_tracking_uri")
            if uri and "tracking" not in data:
                data["tracking"] = {"backend": "mlflow", "uri": uri}
        return data


class EvalConfig(Section):
    """Generation and judging settings for safety evaluation."""

    benchmarks: list[str] = Field(default_factory=lambda: ["demo"], min_length=1)
    judge: str = "refusal"
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    limit: int | None = Field(None, gt=0, description="prompts per benchmark")
    concurrency: int = Field(4, gt=0)
    backend: Literal["auto", "transformers", "vllm"] = "auto"
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="Serve HTTP port; 0 = any free port")
    output_dir: str = "outputs/eval"
    # Where benchmark files live (the layout of ../shared/data: advbench/, xstest/, ...);
    # a benchmark can also name its file directly: "custom:prompts.jsonl".
    data_dir: str | None = None
    # An OpenAI-compatible server already running (e.g. vLLM elsewhere): skip serving.
    endpoint: str | None = None
    api_key: str | None = None
    # Judges: `judge` rules harmful prompts; `refusal_judge` decides compliance on benign ones.
    refusal_judge: str = "refusal"
    judge_url: str | None = None  # served judge endpoint (harmbench, llamaguard, llm)
    judge_model: str | None = None  # or a judge model to serve locally next to the policy
    judge_prompt: str | None = None  # llm judge template with {prompt} and {completion}
    judge_max_tokens: int = Field(16, gt=0)
    # A run fails when a judge leaves more than this share of a benchmark's verdicts undecided.
    max_undecided_fraction: float = Field(0.02, ge=0.0, le=1.0)
    # Helpfulness ranker for win rates and redteam: heuristic needs nothing, llm needs a URL.
    ranker: Literal["heuristic", "llm"] = "heuristic"
    ranker_url: str | None = None
    ranker_prompt: str | None = None
    score_references: bool = True
    retries: int = Field(4, ge=0)
    # An evaluation whose share of failed requests (after retries) passes this fails, showing
    # the first errors; below it, failed rows are reported and left out of the metrics.
    max_error_fraction: float = Field(0.1, ge=0.0, le=1.0)
    request_timeout_s: float = Field(300.0, gt=0.0)
    max_batch_size: int = Field(8, gt=0)
    # How long the served model holds a batch open for more requests. An evaluation sends
    # `concurrency` requests at once, but they reach the replica spread out in time: at
    # 0.02 s a round of 64 ran as ten batches of 2-34, at 0.5 s as one of 64, 1.3x the
    # tokens/s (benchmarks/eval_throughput.py, docs/evaluation.md). A full batch never
    # waits (the replica's batch is capped at `concurrency`); `rayalign serve`
    # (interactive) keeps its own 0.02 s.
    batch_wait_timeout_s: float = Field(0.5, ge=0.0)
    num_cpus: float = Field(1.0, gt=0.0, description="CPUs per generation replica")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per generation replica")
    # The dtype the served model generates in; "auto" keeps model.dtype's policy (bf16 on GPUs
    # that support it, fp32 on CPU). bfloat16 roughly halves CPU generation time on CPUs with
    # native bf16 instructions (AVX512-BF16, AMX); `rayalign demo` picks it there.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    torch_threads: TorchThreads = None
    seed: int = 0
    # Red-teaming (BFPO §4.3): sampled responses per prompt and their temperature.
    redteam_samples: int = Field(2, ge=2)
    redteam_temperature: float = Field(1.0, gt=0.0)

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, value: list[str]) -> list[str]:
        """An unknown name or a bad ``@N`` fails with the config, before Ray starts."""
        from rayalign.eval.benchmarks import parse_spec, spec_limit

        for spec in value:
            try:
                parse_spec(spec)
                spec_limit(spec)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("judge", "refusal_judge")
    @classmethod
    def _known_judge(cls, value: str) -> str:
        from rayalign.eval.judges import get_judge

        try:
            get_judge(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _served_judge_has_a_model(self) -> EvalConfig:
        """A judge run by a model needs one to run on: said with the config, before Ray starts."""
        from rayalign.eval.judges import get_judge

        served = [n for n in dict.fromkeys((self.judge, self.refusal_judge)) if get_judge(n).served]
        if served and not (self.judge_url or self.judge_model):
            raise ValueError(
                f"judge {served[0]!r} is driven by a served model: set eval.judge_url or "
                "eval.judge_model (CLI: --judge-url URL, or --judge-model PATH to serve one locally)"
            )
        return self


class SweepConfig(Section):
    """A Ray Tune search over any config field, addressed by dotted path."""

    search: Literal["grid", "random", "optuna"] = "grid"
    # {"loss.delta": {"grid": [0, 5, 10]}, "loss.beta": {"loguniform": [0.01, 0.5]}}
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    num_samples: int = Field(1, gt=0)
    metrics: list[str] = Field(default_factory=lambda: ["harmless_ratio", "benign_compliance"])
    modes: list[Literal["max", "min"]] = Field(default_factory=lambda: ["max", "max"])
    scheduler: Literal["none", "asha"] = "none"
    max_concurrent_trials: int = Field(1, gt=0)
    cpus_per_trial: float = Field(1.0, gt=0.0)
    gpus_per_trial: float = Field(0.0, ge=0.0)
    output_dir: str = "outputs/sweep"
    name: str = "rayalign-sweep"


class StageConfig(Section):
    """One stage of a multi-stage training job (``job.stages``, read by ``rayalign train``).

    ``overrides`` is a nested mapping merged over the spec (mappings merge key by key, any
    other value replaces), e.g. ``{loss: {beta: 0.05}, data: {sources: [...]}}``. The stage
    trains as ``train.name``-``name``; every stage after the first starts from the model
    the stage before exported (``rayalign.jobs.stages``).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    overrides: dict[str, Any] = Field(default_factory=dict)


class JobConfig(Section):
    """How a spec runs as a Ray job (``rayalign submit``/``plan``); ignored by local runs."""

    # Which sub-command runs the spec. None = inferred: sweep if the file has a sweep
    # section, else eval if it has an eval section and no train section, else train.
    command: Literal["train", "sweep", "eval", "toy"] | None = None
    # Extra command-line arguments appended to the sub-command (e.g. ["--resume"]).
    args: list[str] = Field(default_factory=list)
    # Shipped to the cluster as the job's working directory (relative to where you submit).
    working_dir: str = "."
    excludes: list[str] = Field(
        default_factory=lambda: [".git", ".venv", "outputs", "**/__pycache__", "*.egg-info"]
    )
    pip: list[str] = Field(default_factory=list)
    env_vars: dict[str, str] = Field(default_factory=dict)
    # Capacity of the nodes the job lands on; used by `rayalign plan` to count nodes and
    # check that the per-GPU memory estimate fits.
    gpus_per_node: int = Field(8, gt=0)
    gpu_memory_gb: float = Field(80.0, gt=0.0)
    # GPUs the job needs that its train/sweep sections do not imply (eval/serve replicas).
    num_gpus: int | None = Field(None, ge=0)
    # Training in stages, each from the previous stage's exported model (e.g. SACPO:
    # helpfulness first, then safety). Empty = one stage, the spec itself.
    stages: list[StageConfig] = Field(default_factory=list)

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must differ: {names}")
        return stages


class Config(Section):
    """The root: every command reads the sections it needs and ignores the rest."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    job: JobConfig = Field(default_factory=JobConfig)

    def applies_safedpo_transform(self) -> bool:
        """Whether the data pipeline applies SafeDPO's transformation: ``data.safedpo_transform``
        when set, else the loss's registry entry (true for ``safedpo``)."""
        if self.data.safedpo_transform is not None:
            return self.data.safedpo_transform
        return self.loss.spec.safedpo_transform

    def scores_reference(self) -> bool:
        """Whether the data pipeline precomputes reference log-probs: ``data.precompute_ref_logps``
        and a loss that uses a reference model (SimPO does not)."""
        return self.data.precompute_ref_logps and self.loss.spec.needs_reference

    def to_yaml(self) -> str:
        """The resolved config as YAML (every field, defaults included)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def changed_fields(self, saved_yaml: str) -> list[str]:
        """Dotted paths whose values differ from a config saved by :meth:`save`."""
        return _changed(yaml.safe_load(saved_yaml) or {}, self.model_dump(mode="json"))

    def save(self, path: str | Path) -> Path:
        """Write the resolved config (the run's reproducible record) atomically."""
        return write_text(path, self.to_yaml())


def output_dir_for(cfg: Config) -> Path:
    """Where a training run writes: ``train.output_dir/train.name`` (absolute)."""
    return Path(cfg.train.output_dir).expanduser().resolve() / cfg.train.name


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message says where and why."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"loss.beta=0.2"`` → ``(["loss", "beta"], 0.2)``; the value is parsed as YAML, so a
    list or mapping goes in flow style: ``data.sources=[{path: pairs.jsonl}]``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. loss.beta=0.2")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (creating sections as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"--set {text!r}: {part!r} is not a section (a list is set whole, in YAML "
                    "flow style: e.g. --set 'data.sources=[{path: pairs.jsonl}]')"
                )
            node = child
        node[path[-1]] = value
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping. PyYAML keeps the
    last one silently, so ``train: {max_steps: 5}`` and a later ``train: {batch_size: 2}``
    would drop ``max_steps`` without a word."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:  # before merge keys (<<: *anchor) are flattened in
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        except TypeError:  # an unhashable key: the constructor below reports it
            continue
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(text: str) -> Any:
    """Parse YAML safely (:class:`_UniqueKeyLoader`); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config; raises :class:`ConfigError` with field paths."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = read_text(path)
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not UTF-8 text ({exc})") from exc
        try:
            raw = load_yaml(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
    return config_from_mapping(raw, overrides, source=source)


def error_message(err: dict[str, Any]) -> str:
    """A pydantic error's message, without the "Value error, " our own validators get, and
    for an unknown key the closest field name (``train.learnin_rate`` → learning_rate)."""
    message = str(err["msg"]).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden" and err.get("loc"):
        import difflib

        close = difflib.get_close_matches(str(err["loc"][-1]), _field_names(), n=1, cutoff=0.75)
        if close:
            message += f" (did you mean {close[0]!r}?)"
    return message


def _field_names(model: type[BaseModel] | None = None, seen: set[type] | None = None) -> set[str]:
    """Every field name of ``Config`` and the sections and items nested in it."""
    model, seen = model or Config, seen if seen is not None else set()
    names: set[str] = set()
    if model in seen:
        return names
    seen.add(model)
    for name, info in model.model_fields.items():
        names.add(name)
        for arg in (info.annotation, *typing.get_args(info.annotation)):
            for inner in (arg, *typing.get_args(arg)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    names |= _field_names(inner, seen)
    return names


def config_from_mapping(
    raw: dict[str, Any], overrides: list[str] | None = None, *, source: str = "config"
) -> Config:
    """Validate an in-memory config (e.g. a sweep trial's base plus its sampled values)."""
    raw = apply_overrides(copy.deepcopy(raw), overrides or [])
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in err['loc']) or '<root>'}: {error_message(err)}"
            f"{_override_of(err['loc'], overrides or [])}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: invalid config\n{problems}") from exc


def _override_of(loc: tuple[Any, ...], overrides: list[str]) -> str:
    """`` (from --set KEY=VALUE)`` when the last override of the error's field (or of a
    section holding it) set it, so the file is not blamed for a command-line value."""
    dotted = ".".join(str(p) for p in loc)
    for text in reversed(overrides):
        key = text.partition("=")[0].strip()
        # the field itself, one inside the value set, or an unknown key the override creates
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
            return f" (from --set {text})"
    return ""


def _changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            path
            for key in sorted(set(old) | set(new), key=str)
            for path in _changed(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [prefix.rstrip(".")]
