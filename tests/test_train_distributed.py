"""Real Ray Train + real DeepSpeed (gloo on CPU) on a tiny random Llama.

Train runs are expensive (~10-20 s each), so each run below backs several assertions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_support import ray_dataset, separable_pairs

from rayalign.config import Config
from rayalign.modeling.models import load_tokenizer
from rayalign.train.trainer import run_training

pytestmark = pytest.mark.slow


def _config(model_dir: Path, out: Path, name: str, **train) -> Config:
    base_train = {
        "num_workers": 2,
        "zero_stage": 2,
        "batch_size": 4,
        "learning_rate": 2e-3,
        "warmup_ratio": 0.1,
        "lr_schedule": "cosine",
        "epochs": 2,
        "checkpoint_every": 3,
        "keep_checkpoints": 2,
        "log_pair_ids": True,
        "output_dir": str(out),
        "name": name,
    }
    base_train.update(train)
    return Config.model_validate(
        {
            "model": {"name_or_path": str(model_dir)},
            "loss": {"name": "safedpo", "beta": 0.1, "delta": 2.0},
            "train": base_train,
        }
    )


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(Config.model_validate({"model": {"name_or_path": str(tiny_model_dir)}}).model)


@pytest.fixture(scope="module")
def pairs(tokenizer):
    return separable_pairs(tokenizer, 96)


@pytest.fixture(scope="module")
def baseline(ray_local, tiny_model_dir, pairs, tmp_path_factory):
    """2 workers, ZeRO-2, full fine-tuning, reference log-probs computed on the fly."""
    cfg = _config(tiny_model_dir, tmp_path_factory.mktemp("train"), "baseline")
    return cfg, run_training(cfg, datasets={"train": ray_dataset(pairs)}, verbose=False)


def test_zero2_two_workers_learn_the_separable_preference(baseline, pairs):
    _, result = baseline
    history = result.history
    assert [h["step"] for h in history] == list(range(1, 25))  # 96 pairs / (2 x 4) x 2 epochs
    first, last = history[0], history[-4:]
    assert first["rewards/accuracy"] == 0.0  # policy == reference at step 1: zero margins
    assert sum(h["loss"] for h in last) / 4 < first["loss"] - 0.3
    assert min(h["rewards/accuracy"] for h in last) >= 0.9
    assert all(h["rewards/margins"] > 0 for h in last)
    for key in ("grad_norm", "lr", "tokens_per_s", "padding_fraction", "rewards/safe", "rewards/unsafe"):
        assert key in first, key
    assert 0.0 <= first["padding_fraction"] < 0.5
    assert history[0]["lr"] < history[3]["lr"]  # warmup
    # every pair exactly once per epoch, across both workers
    epoch0 = [i for h in history if h["epoch"] == 0 for i in h["pair_ids"]]
    assert sorted(epoch0) == sorted(p["id"] for p in pairs)
    out = result.output_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["pairs_seen"] == 192


def test_export_loads_with_plain_transformers_and_generates(baseline, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, result = baseline
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "how do I bake bread"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5 or out[0, -1] == tok.eos_token_id


def test_lora_trains_only_the_adapter_and_exports_adapter_and_merged_model(
    ray_local, tiny_model_dir, tokenizer, tmp_path_factory
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = _config(
        tiny_model_dir, tmp_path_factory.mktemp("lora"), "lora",
        num_workers=1, zero_stage=1, epochs=2, learning_rate=5e-3, checkpoint_every=100,
    )
    # adapters on the last decoder layer only (model.lora.layers_to_transform)
    cfg.model.lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "merge_on_export": True,
                      "layers_to_transform": [1]}
    result = run_training(cfg, datasets={"train": ray_dataset(separable_pairs(tokenizer, 32))},
                          verbose=False)
    history = result.history
    assert len(history) == 16
    # the reference is the adapter-disabled base: identical to the policy at step 1
    assert history[0]["rewards/margins"] == 0.0
    # the same pairs in both epochs (steps in another order): the second's mean loss is lower
    mean_loss = [sum(h["loss"] for h in history if h["epoch"] == e) / 8 for e in (0, 1)]
    assert mean_loss[1] < mean_loss[0]
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    merged = load_file(str(result.model_dir / "model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) and ".layers.1." in k for k in changed)
    # the adapter on the plain base gives the merged model's logits
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.adapter_dir
        )(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(result.model_dir)
        torch.testing.assert_close(plain(ids).logits, adapted, rtol=1e-4, atol=1e-4)
    assert plain.generate(ids, max_new_tokens=3, do_sample=False).shape[1] >= 6


def test_bfpo_buffered_zero3_selective_down_proj(ray_local, tiny_model_dir, tokenizer, tmp_path_factory):
    """BFPO reads safety + helpfulness streams in lock-step (the shorter cycled); only MLP
    down-projections train; ZeRO-3 shards are gathered for the export."""
    cfg = _config(
        tiny_model_dir, tmp_path_factory.mktemp("bfpo"), "bfpo",
        zero_stage=3, epochs=1, learning_rate=5e-3, checkpoint_every=100,
    )
    cfg.model.trainable_modules = ["mlp.down_proj"]
    cfg.loss.name = "bfpo"
    safety = separable_pairs(tokenizer, 48, prefix="s")
    helpful = [dict(p, rejected_safe=True) for p in separable_pairs(tokenizer, 32, seed=1, prefix="h")]
    result = run_training(
        cfg, datasets={"train": ray_dataset(safety), "helpfulness": ray_dataset(helpful)}, verbose=False
    )
    history = result.history
    # the longer (safety) stream: 48 / 2 workers / 4 per batch; helpfulness is cycled
    assert len(history) == 6
    for h in history:
        ids = h["pair_ids"]
        assert sum(i.startswith("h") for i in ids) == sum(i.startswith("s") for i in ids) == 8
    assert history[-1]["loss"] < history[0]["loss"]
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert changed == {k for k in base if "mlp.down_proj" in k}
