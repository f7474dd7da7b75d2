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


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One prepared-data cache for both sweeps here: the second one's data stage is a hit
    (same data, tokenizer and reference model; only the sweep space differs)."""
    return tmp_path_factory.mktemp("sweep-cache")


def _sweep(tmp_path: Path, cache: Path, *extra: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rayalign.cli", "sweep", str(REPO_ROOT / "jobs/sweep_tiny.yaml"),
         "--set", f"sweep.output_dir={tmp_path / 'sweeps'}", "--set", f"data.cache_dir={cache}",
         *extra],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def _finished_trials(out: Path) -> set[str]:
    """Trials whose final (evaluation) report reached Tune."""
    return {p.parent.name for p in (out / "tune").glob("*/result.json") if "harmless_ratio" in p.read_text()}


def test_sweep_runs_resumes_and_shares_the_reference_cache(tmp_path, cache_dir):
    env = {**os.environ, "RAYALIGN_CACHE": os.environ.get("RAYALIGN_CACHE", str(Path.home() / ".cache/rayalign"))}
    out = tmp_path / "sweeps" / "tiny-delta"
    assert not any(cache_dir.iterdir()), "runs before the failing-trial test: it checks a cold cache"

    # Interrupt the sweep once the first trial has finished, as a crash or Ctrl-C would.
    first = _sweep(tmp_path, cache_dir, env=env)
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline and first.poll() is None and not _finished_trials(out):
        time.sleep(2)
    assert first.poll() is None, f"sweep ended before it could be interrupted:\n{first.stdout.read()}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished_before = _finished_trials(out)
    assert len(finished_before) == 1

    # A stopped sweep's finished trials can be summarised without running anything more.
    summary = _sweep(tmp_path, cache_dir, "--summarise", env=env)
    log, _ = summary.communicate(timeout=300)
    assert summary.returncode == 0, log
    assert len(pd.read_csv(out / "trials.csv")) == 1 and (out / "pareto.csv").is_file()
    assert _finished_trials(out) == finished_before  # nothing was trained

    resumed = _sweep(tmp_path, cache_dir, "--resume", env=env)
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
    prepared = [p for p in (cache_dir / "prepared").iterdir()
                if p.is_dir() and not p.name.endswith(".rejects.parquet")]  # its rejects: a folder beside it
    assert len(prepared) == 1
    # The outputs a user reads.
    assert (out / "pareto.csv").is_file() and (out / "best.json").is_file()
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "sensitivity_loss_delta.png").is_file()
    assert "Pareto-optimal" in log


def test_a_failing_trial_is_a_result_not_a_crash(tmp_path, cache_dir):
    """One trial's training raises inside its Train workers (an absurd learning rate makes
    the loss non-finite): it is recorded with its error, the other trial finishes, the
    Pareto front and the best-per-objective ignore it."""
    import yaml

    from rayalign.serve.server import free_port

    spec = yaml.safe_load((REPO_ROOT / "jobs/sweep_tiny.yaml").read_text())
    spec["sweep"]["space"] = {"train.learning_rate": {"grid": [1.0e-3, 1.0e38]}}
    spec["sweep"]["name"] = "one-fails"
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "RAYALIGN_CACHE": os.environ.get("RAYALIGN_CACHE", str(Path.home() / ".cache/rayalign"))}
    run = subprocess.run(
        [sys.executable, "-m", "rayalign.cli", "sweep", str(config),
         "--set", f"sweep.output_dir={tmp_path / 'sweeps'}", "--set", f"data.cache_dir={cache_dir}",
         "--set", f"eval.port={free_port()}"],  # 8000 may belong to someone else
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log  # one good trial: the sweep itself succeeded
    out = tmp_path / "sweeps" / "one-fails"
    table = pd.read_csv(out / "trials.csv").set_index("train.learning_rate")
    assert sorted(table.index) == [1.0e-3, 1.0e38]
    failed, good = table.loc[1.0e38], table.loc[1.0e-3]
    # One readable line (the worker's exception), not Ray's wrapped traceback.
    assert failed["error"].startswith("NonFiniteLossError: non-finite loss at step")
    assert "\n" not in failed["error"] and "Traceback" not in failed["error"]
    assert pd.isna(failed["harmless_ratio"]) and pd.isna(failed["benign_compliance"])
    assert pd.isna(good["error"]) and 0 <= good["harmless_ratio"] <= 1
    pareto = pd.read_csv(out / "pareto.csv")
    assert pareto["train.learning_rate"].tolist() == [1.0e-3]
    best = json.loads((out / "best.json").read_text())
    assert {row["train.learning_rate"] for row in best.values()} == {1.0e-3}
    assert "1 failed" in log
