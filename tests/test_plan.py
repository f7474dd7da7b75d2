"""Unit tests of the dry-run arithmetic (rayalign.jobs.plan, archs, rowcounts, jobspec)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from rayalign.config import DataSource, load_config
from rayalign.data.mixing import steps_per_epoch
from rayalign.demo_data import load_demo_pairs
from rayalign.errors import UserError
from rayalign.jobs.archs import ModelDims, resolve_dims
from rayalign.jobs.jobspec import build_entrypoint, build_runtime_env, job_command, plan_launch
from rayalign.jobs.plan import (
    GB,
    activation_bytes,
    build_plan,
    expected_row_counts,
    total_rows,
    train_request,
    trainable_parameters,
    training_memory,
)
from rayalign.jobs.rowcounts import count_rows

MISTRAL = resolve_dims("mistralai/Mistral-7B-v0.1")


def cfg_with(tmp_path: Path, text: str, overrides: list[str] | None = None):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    return load_config(spec, overrides)


@pytest.mark.parametrize(
    ("name", "billions"),
    [
        ("mistralai/Mistral-7B-v0.1", 7.2417),
        ("meta-llama/Llama-2-7b-hf", 6.7384),
        ("meta-llama/Meta-Llama-3-8B", 8.0303),
        ("Qwen/Qwen2.5-7B-Instruct", 7.6156),
        ("smollm2-135m-instruct", 0.1345),
    ],
)
def test_parameter_counts_match_published_sizes(name: str, billions: float) -> None:
    assert resolve_dims(name).num_parameters() / 1e9 == pytest.approx(billions, abs=1e-3)


def test_local_config_json_is_read(tmp_path: Path) -> None:
    config = {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000,
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    dims = resolve_dims(str(tmp_path))
    # embed 64k + per layer (q,o 4096 each; k,v 2048 each; 3 MLP 8192 each; 2 norms 64) + norm
    per_layer = 2 * 4096 + 2 * 2048 + 3 * 8192 + 2 * 64
    assert dims.num_parameters() == 64_000 + 2 * per_layer + 64


def test_unknown_hub_model_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="dimensions unknown without downloading"):
        resolve_dims("someone/unknown-model")


def test_trainable_modules_select_down_projections_only() -> None:
    from rayalign.config import ModelConfig

    model = ModelConfig(name_or_path="x", trainable_modules=[r"mlp\.down_proj"])
    assert trainable_parameters(MISTRAL, model) == 32 * 14336 * 4096


def test_lora_counts_adapter_matrices() -> None:
    from rayalign.config import LoraConfig, ModelConfig

    model = ModelConfig(name_or_path="x", lora=LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    # q: 8*(4096+4096); v: 8*(4096+1024) (grouped-query attention), per layer
    assert trainable_parameters(MISTRAL, model) == 32 * (8 * 8192 + 8 * 5120)
    later = model.model_copy(update={"lora": model.lora.model_copy(update={"layers_to_transform": [24, 31, 31]})})
    assert trainable_parameters(MISTRAL, later) == 2 * (8 * 8192 + 8 * 5120)
    missing = model.model_copy(update={"lora": model.lora.model_copy(update={"layers_to_transform": [31, 32]})})
    with pytest.raises(UserError, match=r"layer 32 does not exist; this model's decoder layers are 0\.\.31"):
        trainable_parameters(MISTRAL, missing)


def test_zero_stages_shard_what_the_paper_says(tmp_path: Path) -> None:
    base = "model: {name_or_path: x, dtype: bfloat16}\ntrain: {num_workers: 8, use_gpu: true}\n"
    psi = MISTRAL.num_parameters()
    mem = {
        stage: training_memory(MISTRAL, cfg_with(tmp_path, base, [f"train.zero_stage={stage}"]))
        for stage in (0, 1, 2, 3)
    }
    assert mem[0].weights == 2 * psi and mem[0].gradients == 2 * psi
    assert mem[0].optimizer == 12 * psi
    assert mem[1].optimizer == 12 * psi // 8 and mem[1].gradients == 2 * psi
    assert mem[2].gradients == 2 * psi // 8 and mem[2].weights == 2 * psi
    assert mem[3].weights == 2 * psi // 8
    # ZeRO-3 total state is (2 + 2 + 12) * psi / N: the paper's 16 bytes per parameter
    assert mem[3].weights + mem[3].gradients + mem[3].optimizer == pytest.approx(16 * psi / 8, rel=1e-6)


def test_offload_moves_optimizer_state_to_cpu(tmp_path: Path) -> None:
    text = "model: {name_or_path: x}\ntrain: {num_workers: 4, use_gpu: true, zero_stage: 2, offload_optimizer: true}\n"
    mem = training_memory(MISTRAL, cfg_with(tmp_path, text))
    assert mem.optimizer == 0
    assert mem.offloaded_to_cpu == 12 * MISTRAL.num_parameters() // 4


def test_fp32_on_cpu_and_reference_model_when_not_precomputed(tmp_path: Path) -> None:
    text = "model: {name_or_path: x}\ndata: {precompute_ref_logps: false}\ntrain: {num_workers: 2}\n"
    mem = training_memory(MISTRAL, cfg_with(tmp_path, text))
    assert mem.precision == "fp32"
    assert mem.weights == 4 * MISTRAL.num_parameters()
    assert mem.reference == 4 * MISTRAL.num_parameters()


def test_reference_memory_is_what_the_loop_loads(tmp_path: Path) -> None:
    text = "model: {name_or_path: x}\ndata: {precompute_ref_logps: false}\ntrain: {num_workers: 4}\n"
    # the loop loads a full frozen copy per worker, also under ZeRO-3 (it is not sharded)
    zero3 = training_memory(MISTRAL, cfg_with(tmp_path, text, ["train.zero_stage=3"]))
    assert zero3.reference == 4 * MISTRAL.num_parameters()
    # a reference-free loss (SimPO) loads none
    assert training_memory(MISTRAL, cfg_with(tmp_path, text, ["loss.name=simpo"])).reference == 0


def test_gradient_checkpointing_cuts_activations_by_most_of_the_layers() -> None:
    full = activation_bytes(MISTRAL, 1024, 8, checkpointing=False, bytes_per=2)
    ckpt = activation_bytes(MISTRAL, 1024, 8, checkpointing=True, bytes_per=2)
    logits = 1024 * 8 * MISTRAL.vocab_size * 6
    assert ckpt < full / 3
    assert full - logits > 10 * (ckpt - logits)
    # doubling the batch doubles activations
    assert activation_bytes(MISTRAL, 1024, 16, checkpointing=True, bytes_per=2) == 2 * ckpt


def test_steps_per_epoch_match_the_trainer_rule(tmp_path: Path) -> None:
    text = "data: {eval_fraction: 0.0}\ntrain: {num_workers: 4, batch_size: 2, gradient_accumulation_steps: 3}\n"
    cfg = cfg_with(tmp_path, text)
    assert steps_per_epoch(expected_row_counts(1000, cfg), cfg.train) == 1000 // 4 // 2 // 3
    # BFPO buffered: the shorter stream is cycled, the longer one decides
    assert steps_per_epoch(expected_row_counts(240, cfg, helpfulness_rows=1000), cfg.train) == 1000 // 4 // 2 // 3
    # the eval split is held out of the safety stream only
    held = cfg_with(tmp_path, "data: {eval_fraction: 0.1}\n")
    assert expected_row_counts(1000, held, helpfulness_rows=500) == {"train": 900, "helpfulness": 500}


@pytest.mark.parametrize(
    ("loss", "helpfulness", "overrides"),
    [("dpo", None, []), ("safedpo", None, ["train.max_steps=500"]), ("bfpo", 3000, ["train.epochs=2"]),
     ("bfpo", 300, ["train.max_tokens_per_batch=4096"])],
)
def test_plan_and_trainer_size_a_run_alike(tmp_path: Path, loss, helpfulness, overrides) -> None:
    """Plan and trainer call one function; given the pipeline's split counts they agree."""
    import rayalign.train.trainer as trainer

    text = (f"loss: {{name: {loss}}}\ndata: {{eval_fraction: 0.0}}\n"
            "train: {num_workers: 2, batch_size: 4, gradient_accumulation_steps: 2}\n")
    cfg = cfg_with(tmp_path, text, overrides)
    plan = build_plan(cfg, "train", None, rows=(1000, "given"), helpfulness_rows=helpfulness)
    split_counts = {"train": 1000} | ({"helpfulness": helpfulness} if helpfulness else {})
    assert trainer.steps_per_epoch is steps_per_epoch  # the trainer's own rule
    assert plan.steps_per_epoch == trainer.steps_per_epoch(split_counts, cfg.train)
    assert plan.total_steps == (cfg.train.max_steps or cfg.train.epochs * plan.steps_per_epoch)
    assert plan.steps_per_epoch == max(split_counts.values()) // 2 // 4 // 2
    if cfg.train.max_steps:  # max_steps overrides epochs, as in the loop (it is not a cap)
        assert plan.total_steps == 500 > plan.steps_per_epoch


def test_gpu_and_node_counts_follow_placement(tmp_path: Path) -> None:
    pack = train_request(cfg_with(tmp_path, "train: {num_workers: 16, use_gpu: true}\n"))
    assert (pack.gpus, pack.nodes) == (16, 2)
    spread = train_request(
        cfg_with(tmp_path, "train: {num_workers: 4, use_gpu: true, placement_strategy: STRICT_SPREAD}\n")
    )
    assert (spread.gpus, spread.nodes) == (4, 4)


def test_sweep_plan_multiplies_concurrent_trials(tmp_path: Path) -> None:
    text = (
        "train: {num_workers: 8, use_gpu: true}\n"
        "sweep: {space: {loss.delta: {grid: [0, 5, 10]}, loss.beta: {grid: [0.1, 0.2]}},"
        " max_concurrent_trials: 2}\n"
    )
    cfg = cfg_with(tmp_path, text)
    plan = build_plan(cfg, job_command(cfg), MISTRAL, rows=(10_000, "given"))
    assert plan.command == "sweep" and plan.trials == 6
    assert plan.total_gpus == 16 and plan.total_nodes == 2


def test_plan_warns_when_it_does_not_fit(tmp_path: Path) -> None:
    text = "model: {name_or_path: x, dtype: bfloat16}\ntrain: {num_workers: 1, use_gpu: true, zero_stage: 0}\n"
    cfg = cfg_with(tmp_path, text)
    plan = build_plan(cfg, "train", MISTRAL, rows=(1000, "given"))
    assert plan.memory is not None and plan.memory.total > 80 * GB
    assert any("exceeds" in w for w in plan.warnings)


def test_loss_hyperparameters_the_loss_does_not_read_are_a_note(tmp_path: Path) -> None:
    """loss.alpha under safedpo would be silently ignored; defaults never count as set."""
    text = "model: {name_or_path: x}\nloss: {name: safedpo, alpha: 0.3}\n"
    cfg = cfg_with(tmp_path, text, ["loss.b1=4", "loss.delta=2"])
    assert cfg.loss.ignored_hyperparameters() == ["alpha", "b1"]
    plan = build_plan(cfg, "train", MISTRAL, rows=(1000, "given"))
    assert "loss.alpha, loss.b1 set, but the safedpo loss does not read them (it reads beta, delta)" in plan.warnings
    bfpo = cfg_with(tmp_path, "model: {name_or_path: x}\nloss: {name: bfpo, alpha: 0.3, b1: 4}\n")
    assert bfpo.loss.ignored_hyperparameters() == []
    assert cfg_with(tmp_path, "model: {name_or_path: x}\n").loss.ignored_hyperparameters() == []


def test_a_plan_with_fewer_pairs_than_one_batch_says_no_step_runs(tmp_path: Path) -> None:
    """Found by a new user: it printed "steps/epoch: 0 ..., 20 steps in all"."""
    from rayalign.jobs.plan import format_plan

    cfg = cfg_with(tmp_path, "model: {name_or_path: x}\ntrain: {batch_size: 64, max_steps: 20}\n")
    plan = build_plan(cfg, "train", MISTRAL, rows=(35, "given"))
    text = format_plan(plan, cfg)
    assert "steps/epoch:    0 " in text and "so no step can run" in text and "steps in all" not in text
    assert "fewer pairs than one global batch: no optimizer step would run" in plan.warnings


def test_command_is_explicit_or_inferred_from_sections(tmp_path: Path) -> None:
    assert job_command(cfg_with(tmp_path, "train: {epochs: 1}\n")) == "train"
    assert job_command(cfg_with(tmp_path, "sweep: {num_samples: 2}\n")) == "sweep"
    assert job_command(cfg_with(tmp_path, "eval: {limit: 5}\n")) == "eval"
    assert job_command(cfg_with(tmp_path, "eval: {limit: 5}\nloss: {beta: 0.2}\n")) == "train"
    assert job_command(cfg_with(tmp_path, "job: {command: eval}\ntrain: {epochs: 1}\n")) == "eval"


def test_entrypoint_replays_overrides_shell_safely() -> None:
    entry = build_entrypoint("train", "jobs/x.yaml", ["loss.beta=0.2", "train.name=a b"], ["--resume"])
    assert shlex.split(entry) == [
        "python", "-m", "rayalign.cli", "train", "jobs/x.yaml",
        "--set", "loss.beta=0.2", "--set", "train.name=a b", "--resume",
    ]
    with pytest.raises(UserError, match="reads no config"):
        build_entrypoint("toy", None, ["loss.beta=0.2"], [])


def test_spec_outside_working_dir_and_secret_env_vars_are_refused(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text("train: {epochs: 1}\n")
    cfg = load_config(spec, ["job.working_dir=work"])
    with pytest.raises(UserError, match="inside the working directory"):
        plan_launch(cfg, spec, [], cwd=tmp_path)
    leaky = load_config(spec, ["job.env_vars.RAY_AUTH_TOKEN=abc"])
    with pytest.raises(UserError, match="RAY_AUTH_TOKEN"):
        build_runtime_env(leaky, tmp_path)


def test_row_counts_from_files_table_and_unknown(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n{"x": 2}\n\n{"x": 3}\n')
    (tmp_path / "b.csv").write_text("h1,h2\n1,2\n3,4\n")
    assert count_rows(str(tmp_path / "a.jsonl"))[0] == 3
    assert count_rows(str(tmp_path / "*.csv"))[0] == 2
    assert count_rows(str(tmp_path))[0] == 5
    assert count_rows("PKU-Alignment/PKU-SafeRLHF-30K", "train")[0] == 26_874
    rows, why = count_rows("someone/dataset")
    assert rows is None and "not in the table" in why
    rows, why = count_rows("../missing/a.jsonl")
    assert rows is None and why == f"../missing/a.jsonl not found (relative paths are read from the current folder, {Path.cwd()})"


def test_small_model_dims_dataclass_is_consistent() -> None:
    dims = ModelDims(64, 2, 4, 4, 128, 100, tie_embeddings=False)
    names = [name for name, _ in dims.named_parameters()]
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight"
    assert sum(1 for n in names if "down_proj" in n) == 2


def test_filtered_sources_are_not_counted_as_whole_files():
    whole = total_rows([DataSource(path="builtin:demo")], None)
    filtered = total_rows([DataSource(path="builtin:demo", where={"kind": "harmful"})], None)
    assert whole[0] == len(load_demo_pairs())
    assert filtered[0] is None and "where" in filtered[1]


def test_logits_memory_follows_the_response_only_chunked_head(tmp_path: Path) -> None:
    """The loop projects to the vocabulary 512 scored positions at a time with a plain
    head; ZeRO-3 (partitioned head weights) materialises every scored position's logits."""
    from rayalign.jobs.archs import HEAD_CHUNK_TOKENS
    from rayalign.jobs.plan import chunked_head

    plain = activation_bytes(MISTRAL, 1024, 8, checkpointing=True, bytes_per=2, chunked_head=True)
    full = activation_bytes(MISTRAL, 1024, 8, checkpointing=True, bytes_per=2)
    assert full - plain == (1024 * 8 - HEAD_CHUNK_TOKENS) * MISTRAL.vocab_size * 6
    assert chunked_head(cfg_with(tmp_path, "train: {zero_stage: 2}\n"))
    assert not chunked_head(cfg_with(tmp_path, "train: {zero_stage: 3}\n"))
    lora = "model: {lora: {r: 8, target_modules: [q_proj, lm_head]}}\n"
    assert not chunked_head(cfg_with(tmp_path, lora))
