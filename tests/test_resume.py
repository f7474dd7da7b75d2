"""The global data position and the resume guards, without Ray: which pairs a step trains
does not depend on the number of workers, and a checkpoint that cannot continue exactly
is refused before any worker starts, naming what differs (never a wrong data position)."""

from __future__ import annotations

import json

import pytest
from train_support import ListShard

from rayalign.config import Config, load_config
from rayalign.errors import UserError
from rayalign.train.checkpoint import STATE_FILE
from rayalign.train.loop import epoch_batches
from rayalign.train.position import (
    DATA_LAYOUT,
    global_batch,
    micro_batches_done,
    rank_micro_batches,
    resume_problem,
)
from rayalign.train.runtime import LocalRuntime
from rayalign.train.trainer import check_resumable, latest_local_checkpoint


def _train(**fields) -> Config:
    return Config.model_validate({"train": fields})


def test_a_step_is_cut_into_rank_micro_batches_that_cover_it_once():
    step = list(range(12))
    by_rank = [rank_micro_batches(step, rank, 2, 3) for rank in range(2)]
    assert by_rank == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9, 10, 11]]]
    assert rank_micro_batches(step, 0, 1, 6) == [step[:6], step[6:]]
    with pytest.raises(ValueError, match="not 2 rank"):
        rank_micro_batches(step[:10], 0, 2, 3)


def test_pairs_into_the_epoch_convert_to_micro_batches_of_any_layout():
    two = _train(batch_size=4, gradient_accumulation_steps=1).train
    one = _train(batch_size=4, gradient_accumulation_steps=2).train
    assert global_batch(two, 2) == global_batch(one, 1) == 8
    assert micro_batches_done(16, two, 2) == 2  # two micro-batches of 2 x 4 pairs
    assert micro_batches_done(16, one, 1) == 4  # four micro-batches of 1 x 4 pairs
    tokens = _train(batch_size=4, gradient_accumulation_steps=2, max_tokens_per_batch=64).train
    assert micro_batches_done(16, tokens, 1) == 2  # a micro-batch is a whole step's share
    with pytest.raises(ValueError, match="12 pairs into the epoch"):
        micro_batches_done(12, _train(batch_size=8).train, 1)


def _rows(n: int) -> list[dict]:
    # prompt lengths vary so length grouping reorders; ids name the rows
    return [{"id": f"r{i:03d}", "prompt_length": 1, "chosen_input_ids": [1] * (2 + (i * 7) % 11),
             "rejected_input_ids": [1, 3], "chosen_labels": [-100] + [2] * (1 + (i * 7) % 11),
             "rejected_labels": [-100, 3]} for i in range(n)]


@pytest.mark.parametrize("grouping", [True, False])
def test_the_pairs_of_every_step_do_not_depend_on_the_number_of_workers(grouping):
    """Global step k holds the same pairs on 1, 2 or 3 workers (same global batch of 12):
    the union of the ranks' micro-batches of step k; an epoch uses every full step once."""
    rows = _rows(200)
    layouts = {1: (4, 3), 2: (2, 3), 3: (4, 1)}  # world size: (batch_size, accumulation)
    steps_by_world = {}
    for world, (batch, accumulation) in layouts.items():
        cfg = _train(batch_size=batch, gradient_accumulation_steps=accumulation, length_grouping=grouping)
        per_rank = []
        for rank in range(world):
            runtime = LocalRuntime({"train": ListShard(rows)})
            runtime.rank, runtime.world_size = rank, world
            micro = [chunks[0] for chunks in epoch_batches(runtime, cfg, 1, lambda b: [r["id"] for r in b])]
            per_rank.append([micro[i : i + accumulation] for i in range(0, len(micro), accumulation)])
        steps_by_world[world] = [
            sorted(i for rank in per_rank for batch_ids in rank[k] for i in batch_ids)
            for k in range(len(per_rank[0]))
        ]
    assert steps_by_world[1] == steps_by_world[2] == steps_by_world[3]
    steps = steps_by_world[1]
    assert len(steps) == 200 // 12 and all(len(s) == 12 for s in steps)
    flat = [i for s in steps for i in s]
    assert len(set(flat)) == len(flat)  # no pair twice in the epoch
    if not grouping:
        assert flat == [r["id"] for r in rows[: len(flat)]]


def _saved(world_size: int = 2, global_batch: int = 8, pairs_in_epoch: int = 16, **more) -> dict:
    return {"step": 2, "epoch": 0, "pairs_in_epoch": pairs_in_epoch, "world_size": world_size,
            "global_batch": global_batch, "data_layout": DATA_LAYOUT, **more}


def test_resume_problem_names_what_cannot_continue_exactly():
    keep = _train(num_workers=1, batch_size=4, gradient_accumulation_steps=2, zero_stage=2).train
    assert resume_problem(_saved(), keep, 1) is None  # 2 x 4 x 1 -> 1 x 4 x 2, ZeRO-2: re-sharded
    assert resume_problem(_saved(world_size=1), _train(batch_size=4).train, 2) is None  # 1 -> 2

    other = resume_problem(_saved(), _train(batch_size=4).train, 1)
    assert "global batch was 8 pairs" in other and "this run's is 4 (4 x 1 x 1)" in other
    assert "set train.gradient_accumulation_steps=2" in other

    for stage in (0, 3):
        zero = _train(batch_size=4, gradient_accumulation_steps=2, zero_stage=stage).train
        assert f"this run uses ZeRO-{stage}" in resume_problem(_saved(), zero, 1)
        assert resume_problem(_saved(world_size=1), zero, 1) is None  # same workers: fine
    offload = _train(batch_size=4, gradient_accumulation_steps=2, offload_optimizer=True).train
    assert "offload_optimizer" in resume_problem(_saved(), offload, 1)

    inside = resume_problem(_saved(world_size=1, global_batch=16, pairs_in_epoch=4),
                            _train(batch_size=8).train, 2)
    assert "4 pairs into the epoch" in inside and "train.num_workers=1" in inside

    old = {"step": 2, "epoch": 0, "micro_batches_in_epoch": 2, "pairs_seen": 16}
    assert "per worker" in resume_problem(old, keep, 2) and "new train.name" in resume_problem(old, keep, 2)


def _checkpoint(root, step: int, state: dict | None):
    folder = root / "run" / f"checkpoint_{step:06d}"
    folder.mkdir(parents=True)
    if state is not None:
        (folder / STATE_FILE).write_text(json.dumps(state))
    return folder


def test_check_resumable_refuses_before_any_worker_starts(tmp_path):
    def cfg(*overrides):
        return load_config(None, [f"train.storage_path={tmp_path}", "train.name=run", *overrides])

    check_resumable(cfg("train.num_workers=1"))  # nothing to resume: fine
    _checkpoint(tmp_path, 10, _saved())
    _checkpoint(tmp_path, 12, None)  # a save cut short: not the latest
    assert latest_local_checkpoint(cfg()).name == "checkpoint_000010"
    with pytest.raises(UserError) as info:
        check_resumable(cfg("train.num_workers=1", "train.batch_size=4"))
    assert "checkpoint_000010" in str(info.value) and "global batch was 8 pairs" in str(info.value)
    check_resumable(cfg("train.num_workers=1", "train.batch_size=4", "train.gradient_accumulation_steps=2"))
    check_resumable(cfg("train.num_workers=2", "train.batch_size=4"))  # the same workers


def test_checkpoints_of_a_run_with_another_loss_or_data_are_refused_not_resumed(tmp_path):
    """Found by a new user: re-running train.name with loss.name=dpo and other data resumed
    the SafeDPO run's weights and data position (summary.json then mixed both runs)."""
    from rayalign.train.trainer import output_dir_for, refuse_another_runs_checkpoints

    def cfg(*overrides):
        return load_config(None, [f"train.output_dir={tmp_path}", "train.name=run", *overrides])

    first = cfg()
    output_dir_for(first).mkdir(parents=True)
    first.save(output_dir_for(first) / "config.yaml")
    refuse_another_runs_checkpoints(cfg("loss.name=dpo"))  # no checkpoints yet: nothing to refuse
    (output_dir_for(first) / "ray" / "run").mkdir(parents=True)
    with pytest.raises(UserError, match=r"'run' has checkpoints from a run with other data.seed, loss.name .*new train.name"):
        refuse_another_runs_checkpoints(cfg("loss.name=dpo", "data.seed=3", "train.max_steps=9"))
    refuse_another_runs_checkpoints(cfg("train.max_steps=9", "train.learning_rate=1e-4"))  # the same run, continued
    refuse_another_runs_checkpoints(first)


def test_the_resumed_checkpoint_is_the_one_ray_registered(tmp_path):
    """A killed run can leave a newer complete folder Ray Train never registered: the
    driver's check looks at the one Ray Train restores (its snapshot names it)."""
    cfg = load_config(None, [f"train.storage_path={tmp_path}", "train.name=run"])
    _checkpoint(tmp_path, 4, _saved())
    _checkpoint(tmp_path, 6, _saved(world_size=1))  # written, never registered
    assert latest_local_checkpoint(cfg).name == "checkpoint_000006"
    (tmp_path / "run" / "checkpoint_manager_snapshot.json").write_text(
        json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_000004"}})
    )
    assert latest_local_checkpoint(cfg).name == "checkpoint_000004"


def test_only_the_shards_of_the_ranks_that_wrote_a_step_are_converted(tmp_path):
    """Ray Train merges uploads into the step's folder, so an earlier 2-worker attempt killed
    while saving step 4 leaves rank 1's shard beside a 1-worker run's step 4."""
    from rayalign.train.checkpoint import DEEPSPEED_TAG, written_files

    folder = tmp_path / "deepspeed" / DEEPSPEED_TAG
    folder.mkdir(parents=True)
    names = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
             "zero_pp_rank_1_mp_rank_00_optim_states.pt", "zero_pp_rank_10_mp_rank_00_optim_states.pt"]
    for name in names:
        (folder / name).write_bytes(b"x")
    assert [p.name for p in written_files(tmp_path / "deepspeed", 1)] == names[:2]
    assert [p.name for p in written_files(tmp_path / "deepspeed", 2)] == names[:3]
