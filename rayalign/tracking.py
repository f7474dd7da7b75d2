"""Experiment tracking (``train.tracking``) through Ray's own integrations.

* **MLflow**: runs start with ``ray.air.integrations.mlflow.setup_mlflow`` (training,
  ``rayalign eval``) and ``MLflowLoggerCallback`` (one run per sweep trial); per-step
  training metrics are logged live from a Ray Train callback with MLflow's own client.
  Without ``uri`` the store is local, in the output folder (``mlflow.db``, artifacts in
  ``mlartifacts/``): ``mlflow ui --backend-store-uri sqlite:///<folder>/mlflow.db`` shows it.
* **W&B**: ``ray.air.integrations.wandb.setup_wandb`` / ``WandbLoggerCallback``; offline
  (files under the output folder, ``wandb sync`` uploads them later) unless ``uri`` names
  a server.

What is logged: training, the full config as params (dotted keys), every step's metrics,
the final metrics and the model path; a sweep, one run per trial with its config, its
training and evaluation metrics and a ``pareto`` flag; an evaluation, each model's metrics
and the report files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayalign.errors import UserError

if TYPE_CHECKING:
    from rayalign.config import TrackingConfig

logger = logging.getLogger("rayalign.tracking")


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.learning_rate": "5e-06", ...}`` (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return out


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite-or-not numbers of a metrics dict (bools as 0/1); everything else dropped."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def mlflow_uri(tracking: TrackingConfig, output_dir: str | Path) -> str:
    """``tracking.uri``, else a local store in ``output_dir``: ``sqlite:///<dir>/mlflow.db``
    (MLflow 3 refuses its old ``mlruns/`` file store unless MLFLOW_ALLOW_FILE_STORE is set)."""
    return tracking.uri or f"sqlite:///{Path(output_dir).expanduser().resolve() / 'mlflow.db'}"


def mlflow_artifacts(tracking: TrackingConfig, output_dir: str | Path) -> str | None:
    """Artifact location of an experiment created in the local default store (beside it)."""
    return None if tracking.uri else (Path(output_dir).expanduser().resolve() / "mlartifacts").as_uri()


def _require(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"train.tracking.backend={module} needs the {module} package: pip install 'rayalign[{extra}]'")


def wandb_kwargs(tracking: TrackingConfig, output_dir: str | Path, name: str | None) -> dict[str, Any]:
    """``wandb.init`` arguments: offline in ``output_dir`` unless ``uri`` names a server."""
    kwargs: dict[str, Any] = {"project": tracking.experiment, "name": name, "dir": str(output_dir)}
    if tracking.uri:
        kwargs["settings"] = {"base_url": tracking.uri}
    else:
        kwargs["mode"] = "offline"
    return kwargs


class TrainStepLogger:
    """A Ray Train ``UserCallback`` (it runs in the Train controller) logging each reported
    step's metrics to an MLflow run with MLflow's client."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    def __reduce__(self):  # picklable to the controller without the client
        return (make_step_logger, (self.tracking_uri, self.run_id))

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        log_steps(self.tracking_uri, self.run_id, [metrics[0]])

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        pass


def make_step_logger(tracking_uri: str, run_id: str) -> Any:
    """A :class:`TrainStepLogger` that is also a ``ray.train.UserCallback``."""
    from ray.train import UserCallback

    class _Logger(TrainStepLogger, UserCallback):
        pass

    return _Logger(tracking_uri, run_id)


def log_steps(tracking_uri: str, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
    """Log per-step metric rows (each with ``step``) to an MLflow run; returns the count."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    batch = [Metric(key, value, now, int(row.get("step", 0)))
             for row in rows for key, value in numeric(row).items() if key != "step"]
    for start in range(0, len(batch), 900):  # MLflow's batch limit is 1000 metrics
        client.log_batch(run_id, metrics=batch[start:start + 900])
    return len(batch)


class TrainingTracker:
    """One training run's tracking, driven from the Ray driver around ``trainer.fit()``."""

    def __init__(self, cfg: Any, output_dir: Path):
        self.cfg = cfg
        self.tracking = cfg.train.tracking
        self.output_dir = output_dir
        self.run_id: str | None = None
        self.uri: str | None = None
        self.wandb_run: Any = None

    @property
    def enabled(self) -> bool:
        return self.tracking.backend != "none"

    def start(self) -> list[Any]:
        """Start the run (params = the full config); returns Train callbacks to add."""
        if self.tracking.backend == "mlflow":
            _require("mlflow", "tracking")
            from ray.air.integrations.mlflow import setup_mlflow

            self.uri = mlflow_uri(self.tracking, self.output_dir)
            mlflow = setup_mlflow(
                config=flat_params(self.cfg.model_dump(mode="json")), tracking_uri=self.uri,
                experiment_name=self.tracking.experiment, run_name=self.tracking.run_name or self.cfg.train.name,
                artifact_location=mlflow_artifacts(self.tracking, self.output_dir), create_experiment_if_not_exists=True, tags={"rayalign.command": "train"},
            )
            self.run_id = mlflow.active_run().info.run_id
            logger.info("MLflow run %s in %s (experiment %s)", self.run_id, self.uri, self.tracking.experiment)
            return [make_step_logger(self.uri, self.run_id)]
        if self.tracking.backend == "wandb":
            _require("wandb", "tracking")
            from ray.air.integrations.wandb import setup_wandb

            self.wandb_run = setup_wandb(
                config=self.cfg.model_dump(mode="json"), rank_zero_only=False,
                **wandb_kwargs(self.tracking, self.output_dir, self.tracking.run_name or self.cfg.train.name),
            )
        return []

    def finish(self, metrics: dict[str, Any], history: list[dict[str, Any]], model_dir: Path | None,
               files: Iterable[Path] = ()) -> None:
        """Final metrics, steps the live logger did not see, the model path, summary files."""
        if self.tracking.backend == "mlflow" and self.run_id:
            import mlflow
            from mlflow import MlflowClient

            client = MlflowClient(self.uri)
            seen = {m.step for m in client.get_metric_history(self.run_id, "loss")}
            log_steps(self.uri, self.run_id, [r for r in history if r.get("step") not in seen])
            final = {f"final/{k}": v for k, v in numeric(metrics).items()}
            mlflow.log_metrics(final)
            mlflow.set_tag("model_path", str(model_dir) if model_dir else "")
            for path in files:
                if Path(path).is_file():
                    mlflow.log_artifact(str(path))
            mlflow.end_run()
        elif self.wandb_run is not None:
            for row in history:
                self.wandb_run.log(numeric(row), step=int(row.get("step", 0)))
            self.wandb_run.summary.update({**numeric(metrics), "model_path": str(model_dir) if model_dir else None})
            self.wandb_run.finish()

    def fail(self) -> None:
        if self.tracking.backend == "mlflow" and self.run_id:
            import mlflow

            mlflow.end_run(status="FAILED")
        elif self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1)


def sweep_callbacks(tracking: TrackingConfig, sweep_dir: Path, sweep_name: str) -> list[Any]:
    """Tune logger callbacks: one MLflow / W&B run per trial."""
    if tracking.backend == "mlflow":
        _require("mlflow", "tracking")
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        return [MLflowLoggerCallback(tracking_uri=mlflow_uri(tracking, sweep_dir), experiment_name=tracking.experiment,
                                     tags={"rayalign.command": "sweep", "rayalign.sweep": sweep_name})]
    if tracking.backend == "wandb":
        _require("wandb", "tracking")
        from ray.air.integrations.wandb import WandbLoggerCallback

        kwargs = wandb_kwargs(tracking, sweep_dir, None)
        kwargs.pop("name")
        return [WandbLoggerCallback(group=sweep_name, **kwargs)]
    return []


def mark_pareto(tracking: TrackingConfig, sweep_dir: Path, sweep_name: str, flags: dict[str, bool]) -> int:
    """Tag each trial's MLflow run (by Tune trial id) with ``pareto`` and log it as 0/1."""
    if tracking.backend != "mlflow" or not flags:
        return 0
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri(tracking, sweep_dir))
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        return 0
    runs = client.search_runs([experiment.experiment_id], f"tags.`rayalign.sweep` = '{sweep_name}'",
                              max_results=10_000)
    marked = 0
    for run in runs:
        trial_name = run.data.tags.get("trial_name", "")
        for trial_id, on_front in flags.items():
            if trial_name.endswith(trial_id):
                client.set_tag(run.info.run_id, "pareto", str(bool(on_front)).lower())
                client.log_metric(run.info.run_id, "pareto", float(on_front))
                marked += 1
    return marked


def log_evaluation(tracking: TrackingConfig, output_dir: Path, results: dict[str, Any],
                   flat: dict[str, dict[str, Any]]) -> str | None:
    """One run for a ``rayalign eval``: each model's metrics (``<model>/<metric>``), the
    report files as artifacts. Returns the MLflow run id (None for W&B / none)."""
    files = results.get("files", {})
    paths = [files.get("metrics"), files.get("report"), *files.get("plots", [])]
    metrics = {f"{label}/{k}": v for label, m in flat.items() for k, v in numeric(m).items()}
    name = tracking.run_name or "eval-" + "-".join(flat)[:200]
    if tracking.backend == "mlflow":
        _require("mlflow", "tracking")
        from ray.air.integrations.mlflow import setup_mlflow

        mlflow = setup_mlflow(config=flat_params(results.get("config", {}), "eval."),
                              tracking_uri=mlflow_uri(tracking, output_dir), experiment_name=tracking.experiment,
                              artifact_location=mlflow_artifacts(tracking, output_dir),
                              run_name=name, create_experiment_if_not_exists=True,
                              tags={"rayalign.command": "eval", "models": ",".join(flat)})
        run_id = mlflow.active_run().info.run_id
        mlflow.log_metrics(metrics)
        for path in paths:
            if path and Path(path).is_file():
                mlflow.log_artifact(str(path))
        mlflow.end_run()
        return run_id
    if tracking.backend == "wandb":
        _require("wandb", "tracking")
        from ray.air.integrations.wandb import setup_wandb

        run = setup_wandb(config=results.get("config", {}), rank_zero_only=False,
                          **wandb_kwargs(tracking, output_dir, name))
        run.log(metrics)
        for path in paths:
            if path and Path(path).is_file():
                run.save(str(path), base_path=str(Path(path).parent), policy="now")
        run.finish()
    return None
