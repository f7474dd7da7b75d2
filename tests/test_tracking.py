"""Experiment tracking into real local MLflow stores, read back with MLflow's own client."""

from __future__ import annotations

import json

import pytest

from rayalign.config import Config, TrackingConfig
from rayalign.tracking import flat_params, mlflow_uri

pytestmark = pytest.mark.slow


def _runs(uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    return client, client.search_runs([exp.experiment_id])


def test_flat_params_and_default_store(tmp_path):
    assert flat_params({"train": {"lr": 0.1, "tracking": {"backend": "mlflow"}}, "b": [1, 2]}) == {
        "train.lr": "0.1", "train.tracking.backend": "mlflow", "b": "[1, 2]"}
    assert mlflow_uri(TrackingConfig(backend="mlflow"), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert mlflow_uri(TrackingConfig(backend="mlflow", uri="http://mlflow:5000"), tmp_path) == "http://mlflow:5000"


def test_training_logs_config_every_step_and_the_model_path(ray_local, tiny_model_dir, tmp_path):
    from train_support import ray_dataset, separable_pairs

    from rayalign.modeling.models import load_tokenizer
    from rayalign.train.trainer import run_training

    cfg = Config.model_validate({
        "model": {"name_or_path": str(tiny_model_dir)},
        "loss": {"name": "safedpo", "beta": 0.1},
        "train": {"num_workers": 1, "zero_stage": 0, "batch_size": 4, "max_steps": 4, "log_every": 2,
                  "checkpoint_every": 100, "output_dir": str(tmp_path), "name": "tracked",
                  "tracking": {"backend": "mlflow", "experiment": "align"}},
    })
    pairs = separable_pairs(load_tokenizer(cfg.model), 16)
    result = run_training(cfg, datasets={"train": ray_dataset(pairs)}, verbose=False)

    client, runs = _runs(mlflow_uri(cfg.train.tracking, result.output_dir), "align")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["loss.name"] == "safedpo" and run.data.params["train.max_steps"] == "4"
    assert run.data.tags["model_path"] == str(result.model_dir)
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == [1, 2, 3, 4]  # each step once: live reports plus the backfilled rest
    assert run.data.metrics["final/loss"] == pytest.approx(result.metrics["loss"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.yaml"} <= artifacts


def test_sweep_trials_are_runs_with_their_metrics_and_pareto_flag(ray_local, tmp_path):
    from ray import tune

    from rayalign.tracking import sweep_callbacks
    from rayalign.tune.sweep import summarise

    cfg = Config.model_validate({
        "train": {"tracking": {"backend": "mlflow", "experiment": "sweeps"}},
        "sweep": {"name": "s1", "space": {"loss.delta": {"grid": [0, 1, 2]}}},
    })
    outcome = {0: (0.9, 0.2), 1: (0.5, 0.6), 2: (0.4, 0.5)}  # delta 2 is dominated by delta 1

    def trial(config):
        harmless, compliance = outcome[config["loss.delta"]]
        tune.report({"harmless_ratio": harmless, "benign_compliance": compliance})

    grid = tune.Tuner(
        trial, param_space={"loss.delta": tune.grid_search([0, 1, 2])},
        run_config=tune.RunConfig(name="tune", storage_path=str(tmp_path),
                                  callbacks=sweep_callbacks(cfg.train.tracking, tmp_path, cfg.sweep.name)),
    ).fit()
    summarise(cfg, grid, tmp_path, ["loss.delta"])

    _, runs = _runs(mlflow_uri(cfg.train.tracking, tmp_path), "sweeps")
    assert len(runs) == 3
    by_delta = {json.loads(r.data.params["loss.delta"]): r for r in runs}
    assert by_delta[0].data.metrics["harmless_ratio"] == 0.9
    assert by_delta[1].data.metrics["benign_compliance"] == 0.6
    assert {d: r.data.tags.get("pareto") for d, r in by_delta.items()} == {0: "true", 1: "true", 2: "false"}
    assert by_delta[2].data.metrics["pareto"] == 0.0


def test_old_mlflow_tracking_uri_field_means_mlflow():
    from rayalign.config import config_from_mapping

    cfg = config_from_mapping({"train": {"mlflow_tracking_uri": "http://mlflow:5000"}}, [], source="old.yaml")
    assert cfg.train.tracking.backend == "mlflow" and cfg.train.tracking.uri == "http://mlflow:5000"


