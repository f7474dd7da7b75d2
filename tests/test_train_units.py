"""Fast unit tests of the training core: log-probs, collation, schedules, DeepSpeed config."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from train_support import ListShard
from transformers import LlamaConfig, LlamaForCausalLM

from rayalign.config import TrainConfig
from rayalign.errors import UserError
from rayalign.logprobs import batch_logps, sequence_logps, sequence_logps_reference
from rayalign.train.collate import (
    collate_pairs,
    group_by_length,
    padding_fraction,
    rows_from_batch,
    stream_batches,
)
from rayalign.train.engine import deepspeed_config, lr_multiplier
from rayalign.train.trainer import steps_per_epoch


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def _batch(b: int = 4, t: int = 17, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 300, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    labels = ids.clone()
    for row in range(b):
        prompt, length = 3 + row, t - 2 * row
        mask[row, length:] = 0
        labels[row, :prompt] = -100
        labels[row, length:] = -100
    return ids, mask, labels


def test_sequence_logps_matches_full_logits_values_and_gradients(model):
    ids, mask, labels = _batch()
    fast = sequence_logps(model, ids, mask, labels)
    model.zero_grad()
    fast.sum().backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    naive = sequence_logps_reference(model, ids, mask, labels)
    naive.sum().backward()
    assert fast.shape == (4,)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-4)
    for a, p in zip(fast_grads, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)
    model.zero_grad()


def test_sequence_logps_by_hand(model):
    """Sum of log softmax at response positions, shifted by one, computed explicitly."""
    ids, mask, labels = _batch(b=1, t=9)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[0]
        logp = torch.log_softmax(logits, -1)
        expected = sum(
            logp[t - 1, labels[0, t]] for t in range(1, 9) if labels[0, t] != -100
        )
        got = sequence_logps(model, ids, mask, labels)
    assert got.item() == pytest.approx(float(expected), abs=1e-4)


def test_prompt_only_rows_score_zero_and_padded_batches_score_per_row(model):
    ids, mask, labels = _batch()
    labels[1] = -100
    with torch.no_grad():
        logps = sequence_logps(model, ids, mask, labels)
        both = batch_logps(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert logps[1].item() == 0.0
    torch.testing.assert_close(both, logps)


def _row(i: int, prompt: int, chosen: int, rejected: int, **extra):
    def seq(n):
        return list(range(1, prompt + n + 1))

    def lab(n):
        return [-100] * prompt + list(range(prompt + 1, prompt + n + 1))

    return {
        "id": f"r{i}", "chosen_input_ids": seq(chosen), "chosen_labels": lab(chosen),
        "rejected_input_ids": seq(rejected), "rejected_labels": lab(rejected), **extra,
    }


def test_collate_pads_to_longest_with_chosen_rows_first():
    rows = [_row(0, 2, 3, 1, chosen_safe=True, rejected_safe=False), _row(1, 1, 1, 4)]
    batch = collate_pairs(rows, pad_token_id=0)
    assert batch["input_ids"].shape == (4, 5)
    assert batch["input_ids"][0].tolist() == [1, 2, 3, 4, 5]
    assert batch["input_ids"][2].tolist() == [1, 2, 3, 0, 0]  # rejected of row 0, padded
    assert batch["labels"][2].tolist() == [-100, -100, 3, -100, -100]
    assert batch["attention_mask"].sum().item() == 5 + 2 + 3 + 5
    assert batch["rejected_safe"].tolist() == [0.0, 1.0]  # missing label -> safe
    assert batch["ids"] == ["r0", "r1"]
    assert "ref_chosen_logps" not in batch
    assert padding_fraction(batch["num_tokens"], batch["num_slots"]) == pytest.approx(1 - 15 / 20)


def test_collate_keeps_reference_logps_and_rejects_misaligned_labels():
    rows = [_row(0, 1, 2, 2, ref_chosen_logps=-1.5, ref_rejected_logps=-2.5)]
    batch = collate_pairs(rows, pad_token_id=0)
    assert batch["ref_chosen_logps"].tolist() == [-1.5]
    bad = _row(0, 1, 2, 2)
    bad["chosen_labels"] = bad["chosen_labels"][:-1]
    with pytest.raises(ValueError, match="differ in length"):
        collate_pairs([bad], pad_token_id=0)


def test_length_grouping_cuts_padding_and_is_deterministic():
    rng = random.Random(0)
    rows = [_row(i, rng.randint(1, 40), rng.randint(1, 40), rng.randint(1, 40)) for i in range(64)]

    def padded(batches):
        total = [collate_pairs(b, 0) for b in batches]
        return 1 - sum(b["num_tokens"] for b in total) / sum(b["num_slots"] for b in total)

    grouped = group_by_length(rows, 8, random.Random(1))
    plain = [rows[i : i + 8] for i in range(0, 64, 8)]
    assert padded(grouped) < 0.7 * padded(plain)
    again = group_by_length(rows, 8, random.Random(1))
    assert [[r["id"] for r in b] for b in grouped] == [[r["id"] for r in b] for b in again]
    assert sorted(r["id"] for b in grouped for r in b) == sorted(r["id"] for r in rows)


def test_stream_batches_reads_columnar_blocks_and_drops_partial_batch():
    rows = [_row(i, 1, 1 + i % 5, 2) for i in range(21)]
    block = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    assert len(rows_from_batch(block)) == 21
    batches = list(stream_batches([block], 4, window=8, length_grouping=True, seed=3))
    assert [len(b) for b in batches] == [4] * 5
    with pytest.raises(KeyError, match="tokenized columns"):
        rows_from_batch({"id": np.array(["x"])})


def test_steps_per_epoch_uses_equal_split_and_longer_stream():
    train = TrainConfig(num_workers=2, batch_size=4, gradient_accumulation_steps=2)
    assert steps_per_epoch({"train": 100}, train) == 6  # 50 rows/worker -> 12 batches -> 6 steps
    # BFPO buffered mode cycles the shorter stream: the longer one decides (data/mixing.py)
    assert steps_per_epoch({"train": 100, "helpfulness": 40}, train) == 6
    assert steps_per_epoch({"train": 40, "helpfulness": 100}, train) == 6


def test_lr_schedule_warmup_then_decay():
    values = [lr_multiplier(s, total_steps=10, warmup_steps=2, schedule="cosine") for s in range(10)]
    assert values[0] == 0.5 and values[1] == 1.0 and values[2] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(values[2:]))
    assert lr_multiplier(9, total_steps=10, warmup_steps=0, schedule="linear") == pytest.approx(0.1)
    assert lr_multiplier(7, total_steps=10, warmup_steps=2, schedule="constant") == 1.0


def test_deepspeed_config_from_train_section():
    cfg = deepspeed_config(
        TrainConfig(zero_stage=3, offload_optimizer=True, offload_params=True, batch_size=2,
                    gradient_accumulation_steps=4, max_grad_norm=0.5),
        world_size=2, dtype="float32", on_gpu=False,
    )
    assert cfg["train_batch_size"] == 16
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert not cfg["bf16"]["enabled"]
    plain = deepspeed_config(TrainConfig(zero_stage=2), world_size=1, dtype="bfloat16", on_gpu=False)
    assert plain["optimizer"]["params"]["torch_adam"] is True and plain["bf16"]["enabled"]
    assert plain["optimizer"]["params"]["fused"] is True  # torch's fused CPU AdamW kernel
    assert "fused" not in cfg["optimizer"]["params"]  # offload: DeepSpeed's CPU Adam
    gpu = deepspeed_config(TrainConfig(zero_stage=2), world_size=1, dtype="bfloat16", on_gpu=True)
    assert "fused" not in gpu["optimizer"]["params"]  # DeepSpeed's FusedAdam takes no flag
    with pytest.raises(ValueError, match="zero_stage 3"):
        deepspeed_config(TrainConfig(zero_stage=2, offload_params=True), world_size=1,
                         dtype="float32", on_gpu=False)


# --------------------------------------------------------------------------- issue 13 (7)


def _unsafe_sums(unsafe_rewards: list[float], safe_rewards: list[float]):
    """One micro-batch's metric sums whose rejected responses have the given rewards."""
    import torch

    from rayalign.losses import preference_metric_sums

    rewards = unsafe_rewards + safe_rewards
    n = len(rewards)
    zeros = torch.zeros(n)
    return preference_metric_sums(
        zeros, torch.tensor(rewards), zeros, zeros,
        torch.ones(n, dtype=torch.bool),
        torch.tensor([False] * len(unsafe_rewards) + [True] * len(safe_rewards)),
        beta=1.0,
    )


def _worker_step(rank: int, world: int, port: int, out) -> None:
    import os

    import torch
    import torch.distributed as dist

    from rayalign.train.metrics import add_metric_sums, reduce_metric_sums

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        acc: dict = {}
        if rank == 0:  # worker 0: -1.0 in its first micro-batch, none in its second
            add_metric_sums(acc, _unsafe_sums([-1.0], [0.5]))
            add_metric_sums(acc, _unsafe_sums([], [0.5, 0.5]))
        else:  # worker 1: no unsafe responses at all
            add_metric_sums(acc, _unsafe_sums([], [0.5, 0.5]))
            add_metric_sums(acc, _unsafe_sums([], [0.5, 0.5]))

        def all_reduce(t):
            dist.all_reduce(t)
            return t

        values, extra = reduce_metric_sums(acc, torch.tensor([3.0]), all_reduce)
        out.put((rank, values, float(extra[0])))
    finally:
        dist.destroy_process_group()


def test_masked_metrics_reduce_as_sum_and_count_on_one_worker():
    """Issue 13 (7): unsafe rewards of -1.0 in one micro-batch, none elsewhere -> -1.0."""
    import torch

    from rayalign.train.metrics import add_metric_sums, reduce_metric_sums

    acc: dict = {}
    add_metric_sums(acc, _unsafe_sums([-1.0], [0.5]))
    add_metric_sums(acc, _unsafe_sums([], [0.5, 0.5]))
    values, _ = reduce_metric_sums(acc, torch.zeros(0))
    assert values["rewards/unsafe"] == pytest.approx(-1.0)  # today's loop logged -0.5
    assert values["rewards/safe"] == pytest.approx(1.5 / 7)  # chosen (0.0) are safe too
    assert values["rewards/rejected"] == pytest.approx((-1.0 + 0.5 + 0.5 + 0.5) / 4)
    none, _ = reduce_metric_sums(add_metric_sums({}, _unsafe_sums([], [0.5])), torch.zeros(0))
    assert "rewards/unsafe" not in none and none["rewards/safe"] == pytest.approx(0.25)


@pytest.mark.slow
def test_masked_metrics_reduce_as_sum_and_count_on_two_workers():
    """Issue 13 (7) on two real gloo ranks: -1.0 on rank 0's first micro-batch only."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker_step, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = sorted(queue.get(timeout=600) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=300)  # a loaded machine can take long to tear torch down
            if p.is_alive():
                p.terminate()
    assert [rank for rank, _, _ in results] == [0, 1]
    for _, values, extra in results:  # both workers log the same, exact values
        assert values["rewards/unsafe"] == pytest.approx(-1.0)  # per-worker means gave -0.25
        assert values["rewards/safe"] == pytest.approx(3.5 / 15)
        assert extra == 6.0


def _pairs(n: int, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{i}", "chosen_input_ids": [1, 2], "rejected_input_ids": [1, 3],
             "chosen_labels": [-100, 2], "rejected_labels": [-100, 3]} for i in range(n)]


def test_bfpo_epoch_cycles_the_shorter_stream_and_ends_with_the_longer():
    """The loop mixes with data.mixing.zip_cycling: every row of both streams trains once
    per epoch, and the epoch has data.mixing.steps_per_epoch steps."""
    from rayalign.config import Config
    from rayalign.data.mixing import steps_per_epoch
    from rayalign.train.loop import epoch_batches
    from rayalign.train.runtime import LocalRuntime

    cfg = Config()
    cfg.train.batch_size, cfg.train.gradient_accumulation_steps, cfg.train.length_grouping = 2, 1, False
    runtime = LocalRuntime({"train": ListShard(_pairs(10, "s")), "helpfulness": ListShard(_pairs(4, "h"))})
    batches = [chunks[0] for chunks in epoch_batches(runtime, cfg, 0, lambda rows: [r["id"] for r in rows])]
    assert len(batches) == 5 == steps_per_epoch({"train": 10, "helpfulness": 4}, cfg.train)
    assert [b[:2] for b in batches] == [[f"s{2 * k}", f"s{2 * k + 1}"] for k in range(5)]
    assert [b[2:] for b in batches] == [["h0", "h1"], ["h2", "h3"], ["h0", "h1"], ["h2", "h3"], ["h0", "h1"]]
    empty = LocalRuntime({"train": ListShard(_pairs(10, "s")), "helpfulness": ListShard(_pairs(1, "h"))})
    with pytest.raises(UserError, match="fewer than one global step of 2 pairs"):
        list(epoch_batches(empty, cfg, 0, lambda rows: rows))
