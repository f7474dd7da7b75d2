"""A shortened demo end to end (tiny model, two steps, a few prompts): every artefact exists
and parses. The full demo's numbers come from benchmarks/demo_effect.py, not from CI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayalign.demo import demo_config, format_summary, run_demo

pytestmark = pytest.mark.slow


def test_short_demo_writes_every_artefact(ray_local, tmp_path):
    cfg = demo_config(
        "safedpo",
        ["model.name_or_path=tiny-random-llama", "train.max_steps=2", "train.batch_size=4",
         "eval.limit=3", "eval.max_new_tokens=4", f"data.cache_dir={tmp_path / 'cache'}",
         "data.max_length=128", "data.max_prompt_length=64"],
        output_dir=str(tmp_path / "demo"),
    )
    result = run_demo(cfg, method="safedpo")

    out = tmp_path / "demo"
    report = json.loads((out / "report.json").read_text())
    for key in ("harmless_before", "harmless_after", "benign_compliance_before",
                "benign_compliance_after"):
        assert 0.0 <= report[key] <= 1.0
    assert report["seconds"] > 0 and report["method"] == "safedpo"
    assert report["data"]["transform"]["safedpo"]["swapped"] > 0  # the transformation ran
    markdown = (out / "report.md").read_text()
    assert "| harmless ratio" in markdown and "report.png" in markdown
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "config.yaml").is_file()
    model_dir = out / "demo-train" / "model"
    assert (model_dir / "config.json").is_file() and list(model_dir.glob("*.safetensors"))
    history = [json.loads(line) for line in (out / "demo-train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2]
    for phase in ("eval_before", "eval_after"):
        assert json.loads((out / phase / "metrics.json").read_text())
    assert "harmless ratio" in format_summary(result)


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
