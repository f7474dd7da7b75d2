"""Multi-stage training specs (rayalign.jobs.stages) and the seeds' baseline recipes in jobs/."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayalign.config import ConfigError, load_config, output_dir_for
from rayalign.jobs.stages import merge, stage_configs, stage_finished

REPO = Path(__file__).resolve().parents[1]


def test_merge_is_deep_for_mappings_and_replaces_lists():
    base = {"loss": {"name": "dpo", "beta": 0.1}, "data": {"sources": [{"path": "a"}], "seed": 1}}
    out = merge(base, {"loss": {"beta": 0.05}, "data": {"sources": [{"path": "b"}]}})
    assert out == {"loss": {"name": "dpo", "beta": 0.05}, "data": {"sources": [{"path": "b"}], "seed": 1}}
    assert base["loss"]["beta"] == 0.1  # the input is not changed


def test_sacpo_spec_is_helpfulness_then_safety_from_stage_ones_model():
    cfg = load_config(REPO / "jobs" / "sacpo_pku30k.yaml")
    helpful, safe = stage_configs(cfg)
    assert (helpful.train.name, safe.train.name) == ("sacpo-alpaca7b-pku30k-helpful", "sacpo-alpaca7b-pku30k-safe")
    assert helpful.model.name_or_path == "PKU-Alignment/alpaca-7b-reproduced"
    assert safe.model.name_or_path == str(output_dir_for(helpful) / "model")
    assert [s.preference for s in helpful.data.sources] == ["helpfulness"]
    assert [s.preference for s in safe.data.sources] == ["safety"]
    assert (helpful.loss.name, safe.loss.name) == ("dpo", "dpo")
    assert (helpful.loss.beta, safe.loss.beta) == (0.1, 0.05)
    assert not helpful.applies_safedpo_transform() and not safe.applies_safedpo_transform()
    assert helpful.job.stages == [] and safe.job.stages == []
    # everything else is the spec's
    assert safe.train.num_workers == helpful.train.num_workers == 8


def test_spec_without_stages_is_one_stage():
    cfg = load_config(REPO / "jobs" / "train_tiny.yaml")
    assert stage_configs(cfg) == [cfg]


def _staged(tmp_path: Path, stages: str, extra: str = "") -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"loss: {{name: dpo}}\ntrain: {{name: run, output_dir: {tmp_path}}}\n{extra}"
                    f"job:\n  stages:\n{stages}")
    return spec


def test_stage_errors_name_the_stage(tmp_path: Path):
    spec = _staged(tmp_path, "    - name: a\n    - name: b\n      overrides: {model: {name_or_path: x}}\n")
    with pytest.raises(ConfigError, match=r"job.stages\[1\] \(b\).*model.name_or_path"):
        stage_configs(load_config(spec), source=str(spec))
    spec = _staged(tmp_path, "    - name: a\n    - name: b\n      overrides: {loss: {beta: -1}}\n")
    with pytest.raises(ConfigError, match=r"job.stages\[1\] \(b\)[\s\S]*loss.beta"):
        stage_configs(load_config(spec))
    with pytest.raises(ConfigError, match="stage names must differ"):
        load_config(_staged(tmp_path, "    - name: a\n    - name: a\n"))
    lora = "model: {lora: {r: 4}}\n"
    with pytest.raises(ConfigError, match="merge_on_export"):
        stage_configs(load_config(_staged(tmp_path, "    - name: a\n    - name: b\n", lora)))


def test_a_finished_stage_is_recognised_only_with_its_settings(tmp_path: Path):
    spec = _staged(tmp_path, "    - name: a\n    - name: b\n")
    first, _ = stage_configs(load_config(spec))
    out = output_dir_for(first)
    assert not stage_finished(first)
    (out / "model").mkdir(parents=True)
    (out / "summary.json").write_text("{}")
    first.save(out / "config.yaml")
    assert stage_finished(first)
    first.loss.beta = 0.5
    assert not stage_finished(first)


@pytest.mark.parametrize(
    ("spec", "preference", "chosen_column"),
    [("dpo_helpful_pku30k.yaml", "helpfulness", "better_response_id"),
     ("dpo_safebetter_pku30k.yaml", "safety", "safer_response_id")],
)
def test_dpo_baseline_recipes(spec: str, preference: str, chosen_column: str):
    cfg = load_config(REPO / "jobs" / spec)
    assert cfg.loss.name == "dpo" and not cfg.applies_safedpo_transform()
    assert [s.preference for s in cfg.data.sources] == [preference]
    assert chosen_column in (REPO / "jobs" / spec).read_text()


def test_plan_names_the_stages():
    from rayalign.jobs.plan import format_plan, plan_spec

    spec = REPO / "jobs" / "sacpo_pku30k.yaml"
    cfg = load_config(spec)
    text = format_plan(plan_spec(cfg, spec.relative_to(REPO), [], cwd=REPO), cfg)
    assert "stages:         helpful -> safe (run in order" in text
