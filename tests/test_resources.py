"""Never hang on resources: what one unit of work needs, fitted on a local Ray or refused.

The pure part (needs, the fit check) is unit-tested; one end-to-end test runs the real
`rayalign train` with 2 workers on a local Ray that starts from the machine's real core
count (``os.cpu_count()``), as a new user's first run does. (The suite's shared
``ray_local`` has 4 CPUs, which hid the hang: 2 Train workers on a 2-core laptop left Ray
Data no CPU to read their data.) The refusal on a real cluster is in test_cluster_jobs.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayalign.config import load_config
from rayalign.errors import UserError
from rayalign.ray_session import (
    Need,
    check_fit,
    data_need,
    eval_need,
    largest,
    local_cpus,
    serve_need,
    training_need,
)
from rayalign.tune.sweep import sweep_need

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_training_needs_its_workers_plus_a_data_task():
    cfg = load_config(None, ["train.num_workers=2"])
    need = training_need(cfg.train)
    assert need.total() == {"CPU": 3.0}
    gpu = load_config(None, ["train.num_workers=4", "train.use_gpu=true"])
    assert training_need(gpu.train).total() == {"CPU": 5.0, "GPU": 4.0}
    custom = load_config(None, ["train.num_workers=2", "train.resources_per_worker={CPU: 2, big_node: 1}"])
    assert training_need(custom.train).total() == {"CPU": 5.0, "big_node": 2.0}


def test_other_units_of_work():
    cfg = load_config(None, ["data.precompute_ref_logps=true", "data.ref_num_actors=2",
                             "eval.num_cpus=2", "eval.judge_model=some/judge",
                             "sweep.max_concurrent_trials=2", "sweep.cpus_per_trial=1",
                             "train.num_workers=1"])
    assert data_need(cfg.data).total() == {"CPU": 3.0}
    assert data_need(cfg.data, scores_reference=False).total() == {"CPU": 1.0}  # e.g. SimPO
    assert eval_need(cfg.eval).total() == {"CPU": 4.0}  # policy + local judge replica
    assert serve_need(3, 1.0, 0.0).total() == {"CPU": 3.0}
    assert sweep_need(cfg).total() == {"CPU": 6.0}  # 2 x (trial driver + worker + data task)
    assert largest([data_need(cfg.data), eval_need(cfg.eval)]).total()["CPU"] == 4.0


def test_fit_check_names_needed_and_available():
    need = training_need(load_config(None, ["train.num_workers=2"]).train)
    check_fit(need, {"CPU": 3.0})  # fits: no error
    with pytest.raises(UserError) as info:
        check_fit(need, {"CPU": 2.0, "memory": 1e9})
    message = str(info.value)
    assert "2 Train worker(s)" in message and "needs CPU=3" in message and "has CPU=2" in message
    assert "(short: CPU=1)" in message  # what is missing, not what is wanted
    gpu = Need("1 Serve replica(s)", ({"CPU": 1, "GPU": 1},))
    with pytest.raises(UserError, match="short: GPU=1"):
        check_fit(gpu, {"CPU": 8.0})
    # enough in total, but no single node holds one bundle
    two_gpus = Need("1 Train worker(s)", ({"CPU": 1, "GPU": 2},))
    with pytest.raises(UserError, match="no single node has CPU=1, GPU=2"):
        check_fit(two_gpus, {"CPU": 2.0, "GPU": 2.0}, [{"CPU": 1.0, "GPU": 1.0}] * 2)


def test_local_ray_raises_logical_cpus_only_as_needed():
    cores = os.cpu_count() or 1
    assert local_cpus(None) == cores
    assert local_cpus(Need("x", ({"CPU": 1},) * (cores + 1))) == cores + 1
    assert local_cpus(Need("x", ({"CPU": 1},))) == cores


@pytest.mark.slow
def test_two_worker_train_on_a_local_ray_of_the_real_core_count(tmp_path):
    """The command the job file suggests, as a user runs it: no RAY_ADDRESS, no extra CPUs."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAYALIGN_CACHE", str(Path.home() / ".cache/rayalign"))
    run = subprocess.run(
        [sys.executable, "-m", "rayalign.cli", "train", str(REPO_ROOT / "jobs/train_tiny.yaml"),
         "--set", "train.num_workers=2", "--set", "train.max_steps=4", "--set", "train.checkpoint_every=4",
         "--set", f"train.output_dir={tmp_path / 'out'}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
         "--set", "data.precompute_ref_logps=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    cores = os.cpu_count() or 1
    # Ray started from the real core count; raised only if 2 workers + their data task need more.
    assert f"a new local instance with {max(cores, 3)} logical CPUs" in log
    summary = json.loads((tmp_path / "out" / "tiny-safedpo" / "summary.json").read_text())
    assert summary["steps"] == 4
