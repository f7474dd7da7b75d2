"""The training loop in-process (LocalRuntime: real DeepSpeed, one gloo rank, no Ray Train)."""

from __future__ import annotations

import json
import math

import pytest
from train_support import ListShard, separable_pairs

from rayalign.config import Config
from rayalign.modeling.models import load_tokenizer
from rayalign.train.loop import NonFiniteLossError, train
from rayalign.train.runtime import LocalRuntime, init_local_process_group


def _cfg(model_dir, on_nonfinite: str) -> Config:
    return Config.model_validate({
        "model": {"name_or_path": str(model_dir)},
        "loss": {"name": "dpo", "beta": 0.1},
        "train": {"zero_stage": 0, "batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0,
                  "checkpoint_every": 1000, "length_grouping": False, "on_nonfinite": on_nonfinite},
    })


@pytest.fixture(scope="module")
def rows_with_one_bad_reference(tiny_model_dir):
    tokenizer = load_tokenizer(_cfg(tiny_model_dir, "error").model)
    rows = separable_pairs(tokenizer, 16)
    for row in rows:
        row["ref_chosen_logps"], row["ref_rejected_logps"] = -20.0, -20.0
    rows[5]["ref_chosen_logps"] = float("nan")  # lands in the second micro-batch
    init_local_process_group()
    return rows


def test_nonfinite_loss_stops_with_the_step_named(tiny_model_dir, rows_with_one_bad_reference):
    runtime = LocalRuntime({"train": ListShard(rows_with_one_bad_reference)})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2 \(epoch 0"):
        train(_cfg(tiny_model_dir, "error"), runtime, steps_per_epoch=4, export=False)
    assert [r["step"] for r in runtime.reports] == []  # nothing reported after step 1 (log_every=10)


def test_nonfinite_loss_can_be_skipped(tiny_model_dir, rows_with_one_bad_reference, tmp_path):
    reports = []
    runtime = LocalRuntime({"train": ListShard(rows_with_one_bad_reference)},
                           on_report=lambda m, _: reports.append(m))
    cfg = _cfg(tiny_model_dir, "skip")
    cfg.train.max_steps = 3
    cfg.train.tensorboard = True
    last = train(cfg, runtime, steps_per_epoch=4, output_dir=tmp_path, export=False)
    assert last["step"] == 3  # the bad micro-batch did not count as a step
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert all(r["loss"] == r["loss"] for r in reports)  # no NaN reached the metrics


def test_masked_metrics_are_sums_over_micro_batches(tiny_model_dir, tmp_path):
    """Issue 13 (7), one worker: an unsafe reward of -1.0 in one micro-batch and none in the
    other logs -1.0 (not -0.5); a step without unsafe responses logs no value (not 0)."""
    import torch

    from rayalign.logprobs import sequence_logps
    from rayalign.modeling.models import load_model

    cfg = _cfg(tiny_model_dir, "error")
    cfg.train.batch_size, cfg.train.gradient_accumulation_steps, cfg.train.max_steps = 2, 2, 2
    tokenizer = load_tokenizer(cfg.model)
    rows = separable_pairs(tokenizer, 8)
    model = load_model(cfg.model)
    with torch.no_grad():  # the policy at step 1 is this model: its log-probs make rewards 0
        for row in rows:
            for side in ("chosen", "rejected"):
                ids = torch.tensor([row[f"{side}_input_ids"]])
                labels = torch.tensor([row[f"{side}_labels"]])
                row[f"ref_{side}_logps"] = float(sequence_logps(model, ids, torch.ones_like(ids), labels)[0])
            row["chosen_safe"] = row["rejected_safe"] = True
    rows[0]["rejected_safe"] = False  # the one unsafe response of the run
    rows[0]["ref_rejected_logps"] += 1.0 / cfg.loss.beta  # its implicit reward: -1.0
    init_local_process_group()
    train(cfg, LocalRuntime({"train": ListShard(rows)}), steps_per_epoch=2, output_dir=tmp_path,
          export=False)
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    with_unsafe = [s for s in steps if "rewards/unsafe" in s]
    assert len(with_unsafe) == 1  # the other step had none: no value, not 0
    assert with_unsafe[0]["step"] == 1 and with_unsafe[0]["rewards/unsafe"] == pytest.approx(-1.0, abs=2e-3)
    assert with_unsafe[0]["rewards/safe"] == pytest.approx(0.0, abs=2e-3)
    assert all("rewards/safe" in s for s in steps)


def _losses(tiny_model_dir, rows, tmp_path, **settings):
    cfg = _cfg(tiny_model_dir, "error")
    cfg.train.max_steps, cfg.train.log_every = 3, 1
    for key, value in settings.items():
        setattr(cfg.train, key, value)
    runtime = LocalRuntime({"train": ListShard(rows)})
    last = train(cfg, runtime, steps_per_epoch=3, output_dir=tmp_path, export=False)
    return [r["loss"] for r in runtime.reports], last


@pytest.fixture(scope="module")
def plain_rows(tiny_model_dir):
    tokenizer = load_tokenizer(_cfg(tiny_model_dir, "error").model)
    init_local_process_group()
    return separable_pairs(tokenizer, 24)  # no reference log-probs: the frozen copy scores


def test_packed_training_matches_padded_step_by_step(tiny_model_dir, plain_rows, tmp_path):
    packed, last = _losses(tiny_model_dir, plain_rows, tmp_path / "a", packing=True)
    padded, _ = _losses(tiny_model_dir, plain_rows, tmp_path / "b", packing=False)
    assert len(packed) == 3
    assert packed == pytest.approx(padded, rel=1e-4)
    assert last["padding_fraction"] == 0.0  # one packed row per micro-batch


def test_max_tokens_per_batch_keeps_the_step_a_mean_over_its_pairs(
    tiny_model_dir, plain_rows, tmp_path
):
    # 4 pairs per optimizer step either way: 2 micro-batches of 2, or token-bounded chunks
    # (~1 pair each at 40 tokens); the loss is the mean over the step's 4 pairs in both
    from rayalign.train.collate import split_by_tokens

    assert len(split_by_tokens(plain_rows[:4], 40, packed=True)) >= 3  # really chunked
    base, _ = _losses(tiny_model_dir, plain_rows, tmp_path / "a", batch_size=2,
                      gradient_accumulation_steps=2)
    chunked, last = _losses(tiny_model_dir, plain_rows, tmp_path / "b", batch_size=2,
                            gradient_accumulation_steps=2, max_tokens_per_batch=40)
    assert chunked == pytest.approx(base, rel=1e-4)
    assert last["pairs_seen"] == 12


@pytest.mark.parametrize("reshard", [False, True], ids=["same-layout", "universal"])
def test_a_resumed_run_continues_exactly_where_its_checkpoint_left_off(tiny_model_dir, plain_rows, tmp_path, reshard):
    """Without Ray: a checkpoint saved at step 2 of 4, resumed in a fresh train(), gives the
    uninterrupted run's steps 3 and 4 (loss and lr) and its whole metrics log.

    ``universal``: ZeRO-2, and the checkpoint is marked as written by 2 workers (same global
    batch), so the resume goes through DeepSpeed's universal checkpoint conversion and
    ``load_universal`` — the path a real 2 -> 1 resume takes — and must lose nothing
    (weights, Adam moments, scheduler)."""
    import shutil

    def run(out, checkpoint=None, keep=None):
        cfg = _cfg(tiny_model_dir, "error")
        cfg.train.max_steps, cfg.train.log_every, cfg.train.checkpoint_every = 4, 1, 2
        cfg.train.zero_stage = 2 if reshard else 0

        def on_report(metrics, directory):
            if keep is not None and directory is not None and metrics["step"] == 2:
                shutil.copytree(directory, keep)

        runtime = LocalRuntime({"train": ListShard(plain_rows)}, on_report=on_report, checkpoint=checkpoint)
        train(cfg, runtime, steps_per_epoch=6, output_dir=out, export=False)
        trained = [r["step"] for r in runtime.reports]
        return trained, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    _, whole = run(tmp_path / "whole", keep=tmp_path / "ckpt")
    if reshard:
        state_file = tmp_path / "ckpt" / "trainer_state.json"
        state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "world_size": 2}))
    trained, resumed = run(tmp_path / "resumed", checkpoint=tmp_path / "ckpt")
    assert trained == [3, 4]  # only the steps after the checkpoint ran
    assert [s["step"] for s in resumed] == [1, 2, 3, 4]
    assert [s["loss"] for s in resumed] == pytest.approx([s["loss"] for s in whole], rel=1e-4)
    assert [s["lr"] for s in resumed] == pytest.approx([s["lr"] for s in whole], rel=1e-9)
    assert [s["grad_norm"] for s in resumed] == pytest.approx([s["grad_norm"] for s in whole], rel=1e-3, nan_ok=True)


def test_held_out_metrics_are_logged_at_checkpoints(tiny_model_dir, plain_rows, tmp_path):
    """The eval split: the objective and the DPO metrics over its full batches, at every
    checkpoint step (and only there), beside the training metrics."""
    import torch

    from rayalign.logprobs import sequence_logps
    from rayalign.modeling.models import load_model

    cfg = _cfg(tiny_model_dir, "error")
    cfg.train.max_steps, cfg.train.checkpoint_every, cfg.train.learning_rate = 4, 2, 1e-12
    held_out = [dict(row) for row in plain_rows[:10]]  # 2 full batches of 4; 2 pairs left over
    model = load_model(cfg.model)
    with torch.no_grad():  # reference = the (practically unchanged) policy: rewards ~0, loss ~log 2
        for row in held_out:
            for side in ("chosen", "rejected"):
                ids = torch.tensor([row[f"{side}_input_ids"]])
                labels = torch.tensor([row[f"{side}_labels"]])
                row[f"ref_{side}_logps"] = float(sequence_logps(model, ids, torch.ones_like(ids), labels)[0])
    runtime = LocalRuntime({"train": ListShard(plain_rows), "eval": ListShard(held_out)})
    train(cfg, runtime, steps_per_epoch=6, output_dir=tmp_path, export=False)
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "eval/loss" in s] == [2, 4]
    for s in steps:
        if "eval/loss" in s:
            assert s["eval/pairs"] == 8
            assert s["eval/loss"] == pytest.approx(math.log(2), abs=1e-3)
            assert s["eval/rewards/margins"] == pytest.approx(0.0, abs=1e-3)
    assert [r["step"] for r in runtime.reports if "eval/loss" in r] == [2, 4]


def test_a_reference_free_loss_trains_without_a_reference_model(tiny_model_dir, plain_rows, tmp_path):
    """SimPO end to end in one process: no reference log-probs in the data and none
    computed (the rewards are β·log π, far from the ~0 a reference would give at step 1)."""
    cfg = _cfg(tiny_model_dir, "error")
    cfg.loss.name, cfg.loss.beta, cfg.loss.gamma = "simpo", 2.0, 0.5
    cfg.train.max_steps = 2
    runtime = LocalRuntime({"train": ListShard(plain_rows)})
    last = train(cfg, runtime, steps_per_epoch=6, output_dir=tmp_path, export=False)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert last["step"] == 2 and math.isfinite(last["loss"])
    assert first["rewards/chosen"] < -1.0  # β·log π of whole responses: no reference subtracted
