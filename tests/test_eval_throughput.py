"""benchmarks/eval_throughput.py's Ray Data side, smaller: the evaluation's own generation
path (one Ray Data actor, ``concurrency`` requests at once) reaches a real Serve replica
together, so ``@serve.batch`` merges them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import eval_throughput as bench

pytestmark = pytest.mark.slow


def test_generation_through_ray_data_fills_the_servers_batches(ray_local, tiny_model_dir):
    result = bench.through_serve(str(tiny_model_dir), bench._prompts(16), 4, 8, 8, ray_data=True)
    sizes = {int(k): v for k, v in result["batch_sizes"].items()}
    assert sum(size * count for size, count in sizes.items()) == 17  # 16 prompts + the warm-up
    # Requests sent one at a time, or split over actors out of step, would give batches of 1
    # or of half the size: most requests must have shared a batch of at least 4.
    assert sum(size * count for size, count in sizes.items() if size >= 4) >= 8, sizes
    assert 0 < result["tokens"] <= 16 * 4 and result["tokens_per_s"] > 0
