"""Exact resume with real kills: with gradient accumulation across epoch boundaries, and
on another number of workers (2 -> 1 -> 2, ZeRO-2 re-sharded).


Accumulation 3, three epochs, a checkpoint every 2 optimizer steps; 104 pairs over 2
workers x 4 pairs is 13 micro-batches a worker per epoch, so 4 steps an epoch and one
micro-batch dropped at each epoch's end. A Train worker is SIGKILLed once the step-6
checkpoint (inside epoch 1) is registered; Ray Train restarts the group from it. Every
step's pair ids, loss and learning rate must equal the uninterrupted run's. This is also
the suite's killed-worker test of Ray Train's automatic restart (packed pairs, the default;
2 workers, ZeRO-2); none runs separately at accumulation 1 or with the cosine schedule.
"""

from __future__ import annotations

import json

import pytest
from test_train_distributed import _config
from train_support import ray_dataset, separable_pairs, train_and_kill_a_worker

from rayalign.config import Config
from rayalign.modeling.models import load_tokenizer
from rayalign.train.trainer import run_training

pytestmark = pytest.mark.slow

SETTINGS = {"gradient_accumulation_steps": 3, "epochs": 3, "checkpoint_every": 2, "keep_checkpoints": 3,
            "lr_schedule": "linear", "warmup_ratio": 0.2}


def test_accumulation_resume_across_epochs_matches_uninterrupted(ray_local, tiny_model_dir, tmp_path_factory):
    tokenizer = load_tokenizer(Config.model_validate({"model": {"name_or_path": str(tiny_model_dir)}}).model)
    pairs = separable_pairs(tokenizer, 104, seed=3)
    reference_cfg = _config(tiny_model_dir, tmp_path_factory.mktemp("acc-ref"), "acc", **SETTINGS)
    reference = run_training(reference_cfg, datasets={"train": ray_dataset(pairs)}, verbose=False)
    assert [h["step"] for h in reference.history] == list(range(1, 13))
    assert [h["epoch"] for h in reference.history] == [0] * 4 + [1] * 4 + [2] * 4

    out = tmp_path_factory.mktemp("acc-killed")
    cfg = _config(tiny_model_dir, out, "acc", max_failures=2, **SETTINGS)
    killed, outcome = train_and_kill_a_worker(cfg, pairs, "checkpoint_000006")
    assert killed is not None, "the run finished before the test could kill a worker"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    summary = json.loads((result.output_dir / "summary.json").read_text())
    resumed = summary["resumed_from"]
    assert resumed and 6 <= resumed[0] < 12  # from a checkpoint inside epoch >= 1
    assert reference.history[resumed[0] - 1]["epoch"] >= 1
    assert [h["step"] for h in result.history] == [h["step"] for h in reference.history]
    for mine, theirs in zip(result.history, reference.history, strict=True):
        assert mine["pair_ids"] == theirs["pair_ids"], mine["step"]
        assert mine["epoch"] == theirs["epoch"]
        assert mine["lr"] == pytest.approx(theirs["lr"], rel=1e-9)
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4, abs=1e-6)
    # every pair at most once per epoch, the same dropped remainder in each
    for epoch in range(3):
        ids = [i for h in result.history if h["epoch"] == epoch for i in h["pair_ids"]]
        assert len(ids) == len(set(ids)) == 96
    # keep_checkpoints=3: older ones are deleted (a save cut short by the kill may linger)
    checkpoints = sorted(p.name for p in (out / "acc" / "ray" / "acc").glob("checkpoint_0*"))
    assert "checkpoint_000006" not in checkpoints and checkpoints[-1] == "checkpoint_000012"


def test_resume_on_another_number_of_workers_two_to_one_to_two(ray_local, tiny_model_dir, tmp_path_factory):
    """A 2-worker run is killed after its step-2 checkpoint (no restarts: the run dies); it is
    re-run on 1 worker (accumulation 2: the same global batch of 8 pairs), killed after
    step 4, and finished on 2 workers. Every step trains the same pairs as an uninterrupted
    1-worker run, the learning rate is continuous at both resume steps, and the loss
    follows the uninterrupted run (the ZeRO-2 optimizer state was re-sharded, not reset)."""
    tokenizer = load_tokenizer(Config.model_validate({"model": {"name_or_path": str(tiny_model_dir)}}).model)
    pairs = separable_pairs(tokenizer, 100, seed=5)  # 12 steps of 8 pairs; 4 pairs left over
    settings = {"epochs": 1, "checkpoint_every": 2, "keep_checkpoints": 3, "lr_schedule": "linear",
                "warmup_ratio": 0.3}
    one = {"num_workers": 1, "gradient_accumulation_steps": 2}
    reference_cfg = _config(tiny_model_dir, tmp_path_factory.mktemp("ws-ref"), "ws", **settings, **one)
    reference = run_training(reference_cfg, datasets={"train": ray_dataset(pairs)}, verbose=False)
    assert [h["step"] for h in reference.history] == list(range(1, 13))

    out = tmp_path_factory.mktemp("ws")
    for workers, until in ((2, "checkpoint_000002"), (1, "checkpoint_000004")):
        layout = one if workers == 1 else {"num_workers": 2}
        cfg = _config(tiny_model_dir, out, "ws", max_failures=0, **settings, **layout)
        killed, outcome = train_and_kill_a_worker(cfg, pairs, until)
        assert killed is not None, f"the {workers}-worker run finished before the test could kill it"
        assert "error" in outcome  # no restarts: the run died with its worker
    result = run_training(_config(tiny_model_dir, out, "ws", **settings), datasets={"train": ray_dataset(pairs)},
                          verbose=False)
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary["resumed_from"] == [2, 4]
    assert [h["step"] for h in result.history] == list(range(1, 13))
    for mine, theirs in zip(result.history, reference.history, strict=True):
        assert sorted(mine["pair_ids"]) == sorted(theirs["pair_ids"]), mine["step"]
        assert mine["lr"] == pytest.approx(theirs["lr"], rel=1e-9), mine["step"]
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-3), mine["step"]
    ids = [i for h in result.history for i in h["pair_ids"]]
    assert sorted(ids) == sorted(i for h in reference.history for i in h["pair_ids"])
    assert len(ids) == len(set(ids)) == 96  # nothing skipped, nothing twice
