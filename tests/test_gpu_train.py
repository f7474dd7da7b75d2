"""benchmarks/gpu_train.py's CPU dry mode: the no-Ray loop runs packed and padded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_train_dry_run_packed_matches_padded():
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--dry-run"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device"] == "cpu" and out["attn"] == "sdpa"
    for layout in ("packed", "padded"):
        assert out[layout]["tokens_per_s"] > 0 and out[layout]["pairs_per_s"] > 0
        assert out[layout]["optimizer"] == "torch-adamw"
    assert out["packed"]["padding_fraction"] == 0.0
    assert out["padded"]["padding_fraction"] > 0.0
    # same initial weights and pairs: the first loss is the same maths in both layouts
    assert out["packed"]["loss_step1"] == pytest.approx(out["padded"]["loss_step1"], abs=1e-5)
