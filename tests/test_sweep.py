"""A small real sweep end to end: Tune over Train, quick eval, shared cache, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _sweep(tmp_path: Path, *extra: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rayalign.cli", "sweep", str(REPO_ROOT / "jobs/sweep_tiny.yaml"),
         "--set", f"sweep.output_dir={tmp_path / 'sweeps'}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
         *extra],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def _finished_trials(out: Path) -> set[str]:
    """Trials whose final (evaluation) report reached Tune."""
    return {p.parent.name for p in (out / "tune").glob("*/result.json") if "harmless_ratio" in p.read_text()}


def test_sweep_runs_resumes_and_shares_the_reference_cache(tmp_path):
    env = {**os.environ, "RAYALIGN_CACHE": os.environ.get("RAYALIGN_CACHE", str(Path.home() / ".cache/rayalign"))}
    out = tmp_path / "sweeps" / "tiny-delta"

    # Interrupt the sweep once the first trial has finished, as a crash or Ctrl-C would.
    first = _sweep(tmp_path, env=env)
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline and first.poll() is None and not _finished_trials(out):
        time.sleep(2)
    assert first.poll() is None, f"sweep ended before it could be interrupted:\n{first.stdout.read()}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished_before = _finished_trials(out)
    assert len(finished_before) == 1

    resumed = _sweep(tmp_path, "--resume", env=env)
    log, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, log

    table = pd.read_csv(out / "trials.csv")
    assert sorted(table["loss.delta"]) == [0.0, 5.0]
    assert table["error"].isna().all()
    assert table["harmless_ratio"].between(0, 1).all() and table["benign_compliance"].between(0, 1).all()
    # The finished trial was kept, not trained again: its metrics were written once.
    for trial in finished_before:
        rows = [json.loads(line) for line in (out / "tune" / trial / "result.json").read_text().splitlines()]
        assert sum("harmless_ratio" in r for r in rows) == 1
    # Reference log-probs were computed once, before the trials: every trial hit the cache.
    assert (table["ref_cache"] == "hit").all()
    assert len([p for p in (tmp_path / "cache" / "prepared").iterdir() if p.is_dir()]) == 1
    # The outputs a user reads.
    assert (out / "pareto.csv").is_file() and (out / "best.json").is_file()
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "sensitivity_loss_delta.png").is_file()
    assert "Pareto-optimal" in log
