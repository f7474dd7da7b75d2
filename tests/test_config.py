"""Config loading: YAML + overrides, clear errors with field paths, safe YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayalign.config import Config, ConfigError, load_config


def test_defaults_validate():
    cfg = load_config()
    assert cfg.model.name_or_path == "smollm2-135m-instruct"
    assert cfg.model.trust_remote_code is False
    assert cfg.eval.host == "127.0.0.1"


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  name: bfpo\n  beta: 0.01\ntrain:\n  num_workers: 2\n")
    cfg = load_config(path, ["loss.alpha=0.25", "train.zero_stage=3", "model.lora.r=8"])
    assert (cfg.loss.name, cfg.loss.beta, cfg.loss.alpha) == ("bfpo", 0.01, 0.25)
    assert cfg.train.zero_stage == 3 and cfg.train.num_workers == 2
    assert cfg.model.lora is not None and cfg.model.lora.r == 8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.name=kto"], "loss.name"),
        (["loss.beta=-1"], "loss.beta"),
        (["train.batch_size=0"], "train.batch_size"),
        (["train.no_such_key=1"], "train.no_such_key"),
        (["nosection.x=1"], "nosection"),
        (["loss.b1=1"], "loss.b1"),
        (["data.max_prompt_length=600"], "max_prompt_length"),
        (["novalue"], "KEY=VALUE"),
        # YAML's yes/true is a boolean, which pydantic alone would read as the number 1
        (["train.epochs=yes"], "train.epochs: .*not the boolean true"),
        (["loss.beta=true"], "loss.beta: .*not the boolean true"),
        (["train.torch_threads=no"], "train.torch_threads: .*not the boolean false"),
        (["eval.benchmarks=[xtest]"], "eval.benchmarks: unknown benchmark 'xtest'"),  # no "Value error, "
        (["eval.benchmarks=['xstest@-1']"], r"'xstest@-1': the subset size after '@' must be a whole number"),
        (["eval.benchmarks=[]"], "eval.benchmarks: List should have at least 1 item"),
        (["model.lora={layers_to_transform: [3, true]}"], "layers_to_transform: .*not the boolean true"),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_yaml_is_safe_loaded(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("loss: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_unreadable_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_save_round_trips(tmp_path):
    cfg = load_config(None, ["loss.delta=3.5", "model.trainable_modules=[mlp.down_proj]"])
    saved = cfg.save(tmp_path / "run" / "config.yaml")
    assert load_config(saved) == cfg
    assert isinstance(cfg, Config)


def test_changed_fields_names_dotted_paths(tmp_path):
    cfg = Config()
    saved = cfg.save(tmp_path / "config.yaml").read_text()
    assert cfg.changed_fields(saved) == []
    other = cfg.model_copy(deep=True)
    other.loss.beta = 0.5
    other.data.sources[0].where = {"kind": "harmful"}
    assert other.changed_fields(saved) == ["data.sources", "loss.beta"]


def test_an_evaluation_serves_batches_no_larger_than_its_requests_in_flight():
    # A batch that cannot fill would wait out the whole batch_wait_timeout_s (0.5 s) every time.
    from rayalign.config import EvalConfig
    from rayalign.eval.runner import replica_batch_size

    assert EvalConfig().batch_wait_timeout_s == 0.5
    assert replica_batch_size(EvalConfig(max_batch_size=8, concurrency=4)) == 4
    assert replica_batch_size(EvalConfig(max_batch_size=16, concurrency=64)) == 16
    assert replica_batch_size(EvalConfig(max_batch_size=64, concurrency=64)) == 64


def test_a_list_item_override_says_how_to_set_the_list_whole():
    """Found by a new user: ``--set data.sources.0.path=X`` said only "'sources' is not a
    section"; a list goes whole, as YAML flow style."""
    from rayalign.config import ConfigError, apply_overrides

    with pytest.raises(ConfigError, match=r"a list is set whole.*data\.sources=\[\{path"):
        apply_overrides({"data": {"sources": [{"path": "a.jsonl"}]}}, ["data.sources.0.path=x"])
    raw = apply_overrides({"data": {}}, ["data.sources=[{path: b.jsonl, fraction: 0.5}]"])
    assert raw["data"]["sources"] == [{"path": "b.jsonl", "fraction": 0.5}]


def test_an_invalid_value_from_set_is_attributed_to_the_override_not_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {batch_size: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.learning_rate=-1", "data.sources=[{pth: x}]", "loss.beta=0.2"])
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: invalid config"
    assert "  train.batch_size: Input should be greater than 0" in lines  # the file's own
    assert any(line.startswith("  train.learning_rate:") and line.endswith("(from --set train.learning_rate=-1)") for line in lines)
    assert any(line.startswith("  data.sources.0.pth:") and line.endswith("(from --set data.sources=[{pth: x}])") for line in lines)
    with pytest.raises(ConfigError, match=r"  bogus: Extra inputs are not permitted \(from --set bogus.x=1\)"):
        load_config(path, ["bogus.x=1"])


def test_a_key_repeated_in_one_mapping_is_an_error_not_silently_dropped(tmp_path):
    """Found by a new user: a second ``train:`` section replaced the first (max_steps lost)."""
    path = tmp_path / "c.yaml"
    path.write_text("train: {max_steps: 5}\nloss: {name: safedpo}\ntrain: {batch_size: 2}\n")
    with pytest.raises(ConfigError, match=r"key 'train' appears twice in one mapping \(first on line 1\)"):
        load_config(path)
    path.write_text("train: {max_steps: 5, max_steps: 6}\n")
    with pytest.raises(ConfigError, match=r"key 'max_steps' appears twice"):
        load_config(path)
    # YAML merge keys still override what they merge in
    from rayalign.config import load_yaml

    assert load_yaml("a: &b {x: 1, y: 0}\nc:\n  <<: *b\n  y: 2\n")["c"] == {"x": 1, "y": 2}
    for job in sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml")):
        load_config(job)  # every shipped spec still loads


def test_a_misspelt_key_gets_the_closest_field_and_a_source_may_be_its_path_alone(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.learnin_rate=1e-4", "train.zzz=1"])
    lines = str(info.value).splitlines()
    assert "  train.learnin_rate: Extra inputs are not permitted (did you mean 'learning_rate'?) (from --set train.learnin_rate=1e-4)" in lines
    assert "  train.zzz: Extra inputs are not permitted (from --set train.zzz=1)" in lines  # nothing close
    cfg = load_config(None, ["data.sources=[builtin:demo, {path: b.jsonl, fraction: 0.5}]"])
    assert [(s.path, s.fraction) for s in cfg.data.sources] == [("builtin:demo", 1.0), ("b.jsonl", 0.5)]


def test_bfpo_b1_below_one_is_refused():
    """Found by a new user: ``loss.b1=0.5`` was accepted, making b3 = 1/(b1 - 1) negative,
    which ranks an unsafe-over-safe pair above a safe-over-unsafe one."""
    with pytest.raises(ConfigError, match=r"loss\.b1"):
        load_config(None, ["loss.name=bfpo", "loss.b1=0.5"])
    assert load_config(None, ["loss.name=bfpo", "loss.b1=2"]).loss.b1 == 2.0
