"""A shortened demo end to end (tiny model, two steps, a few prompts): every artefact exists
and parses. The full demo's numbers come from benchmarks/demo_effect.py, not from CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayalign.demo import demo_config, evaluate_cached, evaluation_key

pytestmark = pytest.mark.slow


def test_short_demo_writes_every_artefact(tmp_path):
    """`rayalign demo` as a user runs it (its own process and Ray, this machine's real core
    count, a non-TTY console): at most 60 console lines, every artefact written."""
    env = {**os.environ, "RAYALIGN_CACHE": str(tmp_path / "rayalign-cache")}
    env.pop("RAY_ADDRESS", None)
    overrides = ["model.name_or_path=tiny-random-llama", "train.max_steps=2", "train.batch_size=4",
                 "eval.limit=3", "eval.max_new_tokens=4", f"data.cache_dir={tmp_path / 'cache'}",
                 "eval.benchmarks=[demo, 'xstest@4', 'advbench@2']",
                 "data.max_length=128", "data.max_prompt_length=64"]
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "rayalign.cli", "demo", "--output-dir", str(out)]
    for item in overrides:
        command += ["--set", item]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900,
                          cwd=str(tmp_path))
    console = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, "\n".join(console[-40:])
    assert len(console) <= 60, "\n".join(console)  # Ray's own lines go to the log file
    assert any("AdvBench harmful behaviours refused" in line for line in console)  # the summary
    assert list((out / "logs").glob("demo-*.log"))

    report = json.loads((out / "report.json").read_text())
    # Every measure of the demo, before and after: its own held-out prompts, AdvBench and
    # both halves of XSTest (safe prompts: compliance; unsafe contrast prompts: harmlessness).
    for key in ("harmless", "benign_compliance", "advbench_harmless", "xstest_unsafe_harmless",
                "xstest_safe_compliance"):
        for when in ("before", "after"):
            assert 0.0 <= report[f"{key}_{when}"] <= 1.0, (key, when)
        assert report["targets_met"][key] in (True, False)
    examples = report["examples"]
    assert {e["benchmark"] for e in examples} >= {"demo", "advbench"}
    assert all(e["before"] is not None and e["after"] is not None for e in examples)
    assert report["seconds"] > 0 and report["method"] == "safedpo"
    assert report["data"]["transform"]["safedpo"]["swapped"] > 0  # the transformation ran
    markdown = (out / "report.md").read_text()
    assert "XSTest safe prompts answered" in markdown and "report.png" in markdown
    assert "## What the model says, before and after" in markdown
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "config.yaml").is_file()
    model_dir = out / "demo-train" / "model"
    assert (model_dir / "config.json").is_file() and list(model_dir.glob("*.safetensors"))
    history = [json.loads(line) for line in (out / "demo-train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2]
    for phase in ("eval_before", "eval_after"):
        assert json.loads((out / phase / "metrics.json").read_text())

    # The untouched model's evaluation is cached: the same model, prompts and settings are
    # answered from $RAYALIGN_CACHE without serving anything (no Ray in this process).
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("RAYALIGN_CACHE", env["RAYALIGN_CACHE"])
    try:
        cfg = demo_config("safedpo", overrides, output_dir=str(out))
        cached = evaluate_cached(cfg.model, cfg.eval, tmp_path / "again")
    finally:
        monkeypatch.undo()
    assert cached["demo/harmless_ratio"] == report["harmless_before"]
    assert (tmp_path / "again" / "metrics.json").is_file()
    other = cfg.eval.model_copy(update={"max_new_tokens": 5})
    assert evaluation_key(cfg.model, other) != evaluation_key(cfg.model, cfg.eval)


def test_bfpo_demo_buffers_the_harmful_and_benign_pairs_as_two_sets():
    from rayalign.demo_data import load_demo_pairs

    cfg = demo_config("bfpo", [], "/tmp/unused")
    assert cfg.loss.name == "bfpo"
    (safety,), (helpfulness,) = cfg.data.sources, cfg.data.helpfulness_sources
    kinds = {row["kind"] for row in load_demo_pairs()}
    assert {safety.where["kind"], helpfulness.where["kind"]} == kinds == {"harmful", "benign"}


def test_a_demo_with_other_settings_does_not_resume_the_old_checkpoints(tmp_path):
    from rayalign.demo import _start_over_if_settings_changed
    from rayalign.train.trainer import output_dir_for, storage_path_for

    first = demo_config("safedpo", [], str(tmp_path))
    first.save(output_dir_for(first) / "config.yaml")  # where run_training records a run
    checkpoints = Path(storage_path_for(first)) / first.train.name
    checkpoints.mkdir(parents=True)
    _start_over_if_settings_changed(first)  # same settings: resume
    assert checkpoints.is_dir()
    _start_over_if_settings_changed(demo_config("safedpo", ["loss.delta=5"], str(tmp_path)))
    assert not checkpoints.exists()
