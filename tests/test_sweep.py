"""A small real sweep end to end: Tune over Train, quick eval, shared cache, resume, and a
trial that fails (one sweep does it all: each costs ~1.5 min on 2 cores)."""

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


def _sweep(tmp_path: Path, config: Path, *extra: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rayalign.cli", "sweep", str(config),
         "--set", f"sweep.output_dir={tmp_path / 'sweeps'}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
         *extra],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def _finished_trials(out: Path) -> set[str]:
    """Trials whose final (evaluation) report reached Tune."""
    return {p.parent.name for p in (out / "tune").glob("*/result.json") if "harmless_ratio" in p.read_text()}


def _terminated_in_saved_state(out: Path) -> int:
    """Trials the newest saved Tune experiment state marks finished: what a resume reads.
    Tune saves that state every few seconds, not when a report arrives, so a sweep killed
    right after a trial's last report could still resume it as running."""
    states = sorted((out / "tune").glob("experiment_state-*.json"))
    try:
        trials = json.loads(states[-1].read_text())["trial_data"] if states else []
        return sum(json.loads(entry[0]).get("status") == "TERMINATED" for entry in trials)
    except (OSError, ValueError, KeyError, IndexError):  # being written: look again
        return 0


def test_sweep_resumes_records_a_failing_trial_and_shares_the_reference_cache(tmp_path):
    """jobs/sweep_tiny.yaml over the learning rate instead of Δ: 1e-3, then 1e38, whose loss
    is non-finite, so its training raises inside its Train workers. The sweep is killed once
    the first trial has finished, summarised without training, and resumed: the finished
    trial is kept, the failing one is a row with its error (not a crash), and the Pareto
    front and best-per-objective ignore it. The learning rate has no sensitivity plot
    (tests/test_tune_core.py draws one), and only the trial that trains reports its
    reference-cache hit; the single prepared data set shows the sharing."""
    import yaml

    spec = yaml.safe_load((REPO_ROOT / "jobs/sweep_tiny.yaml").read_text())
    spec["sweep"]["space"] = {"train.learning_rate": {"grid": [1.0e-3, 1.0e38]}}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "RAYALIGN_CACHE": os.environ.get("RAYALIGN_CACHE", str(Path.home() / ".cache/rayalign"))}
    out = tmp_path / "sweeps" / spec["sweep"]["name"]

    # Interrupt the sweep once the first trial has finished, as a crash or Ctrl-C would.
    first = _sweep(tmp_path, config, env=env)
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline and first.poll() is None and not _terminated_in_saved_state(out):
        time.sleep(2)
    assert first.poll() is None, f"sweep ended before it could be interrupted:\n{first.stdout.read()}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished_before = _finished_trials(out)
    assert len(finished_before) == 1

    # A stopped sweep's finished trials can be summarised without running anything more.
    summary = _sweep(tmp_path, config, "--summarise", env=env)
    log, _ = summary.communicate(timeout=300)
    assert summary.returncode == 0, log
    summarised = pd.read_csv(out / "trials.csv")
    assert summarised["harmless_ratio"].notna().sum() == 1 and (out / "pareto.csv").is_file()
    assert _finished_trials(out) == finished_before  # nothing was trained

    resumed = _sweep(tmp_path, config, "--resume", env=env)
    log, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, log  # one good trial: the sweep itself succeeded

    table = pd.read_csv(out / "trials.csv").set_index("train.learning_rate")
    assert sorted(table.index) == [1.0e-3, 1.0e38]
    failed, good = table.loc[1.0e38], table.loc[1.0e-3]
    # One readable line (the worker's exception), not Ray's wrapped traceback.
    assert failed["error"].startswith("NonFiniteLossError: non-finite loss at step")
    assert "\n" not in failed["error"] and "Traceback" not in failed["error"]
    assert pd.isna(failed["harmless_ratio"]) and pd.isna(failed["benign_compliance"])
    assert pd.isna(good["error"]) and 0 <= good["harmless_ratio"] <= 1 and 0 <= good["benign_compliance"] <= 1
    # The finished trial was kept, not trained again: its metrics were written once.
    for trial in finished_before:
        rows = [json.loads(line) for line in (out / "tune" / trial / "result.json").read_text().splitlines()]
        assert sum("harmless_ratio" in r for r in rows) == 1
    # Reference log-probs were computed once, before the trials (from a cold cache): the
    # trial that trained hit the cache, and one prepared data set serves the whole sweep.
    assert good["ref_cache"] == "hit"
    prepared = [p for p in (tmp_path / "cache" / "prepared").iterdir()
                if p.is_dir() and not p.name.endswith(".rejects.parquet")]  # its rejects: a folder beside it
    assert len(prepared) == 1
    # The outputs a user reads; the failed trial is on neither the front nor the best rows.
    assert pd.read_csv(out / "pareto.csv")["train.learning_rate"].tolist() == [1.0e-3]
    best = json.loads((out / "best.json").read_text())
    assert {row["train.learning_rate"] for row in best.values()} == {1.0e-3}
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "Pareto-optimal" in log and "1 failed" in log
