"""Ray Tune wiring: each trial trains with Ray Train, then runs a quick safety evaluation.

The trial is a function trainable that builds the trial's config from the sweep's base
config plus its sampled values, fits the ``TorchTrainer`` (its per-step metrics flow to
Tune through ``TuneReportCallback``, which ASHA can act on), evaluates the exported model
and reports the evaluation metrics last. Reference log-probs are prepared once on the
driver, before any trial starts, so every trial reads the same cache.
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rayalign.config import Config, config_from_mapping
from rayalign.console import quiet
from rayalign.errors import UserError
from rayalign.eval.benchmarks import absolute_paths
from rayalign.ray_session import Need, training_need
from rayalign.tracking import mark_pareto, sweep_callbacks
from rayalign.tune.pareto import best_per_objective, pareto_mask
from rayalign.tune.plots import plot_pareto, plot_sensitivity
from rayalign.tune.space import to_tune_space, trial_overrides

logger = logging.getLogger("rayalign.tune")

#: Hyperparameters the papers plot sensitivity curves for.
SENSITIVITY_PARAMS = ("loss.delta", "loss.alpha", "loss.beta", "loss.b1")


@dataclass
class SweepResult:
    output_dir: Path
    table: pd.DataFrame
    pareto: pd.DataFrame
    best: dict[str, dict]
    errors: dict[str, str]


def sweep_dir(cfg: Config) -> Path:
    return Path(cfg.sweep.output_dir).expanduser().resolve() / cfg.sweep.name


def trial_config(base: dict[str, Any], params: dict[str, Any], trial_dir: Path) -> Config:
    """The trial's full config: base + sampled values, outputs inside the trial's folder.

    Training storage lives in the trial folder too, so a trial interrupted mid-training
    resumes from its own Ray Train checkpoint when the sweep is resumed.
    """
    cfg = config_from_mapping(base, trial_overrides(params), source="sweep trial")
    cfg.train.output_dir = str(trial_dir)
    cfg.train.name = "train"
    cfg.train.storage_path = str(trial_dir / "ray")
    cfg.eval.output_dir = str(trial_dir / "eval")
    cfg.train.tracking.backend = "none"  # the sweep's Tune callback logs each trial's run
    if cfg.model.lora is not None:
        cfg.model.lora.merge_on_export = True  # the evaluation serves a plain HF model
    return cfg


def run_trial(params: dict[str, Any], *, base: dict[str, Any]) -> None:
    """One trial: train, evaluate the exported model, report the evaluation metrics."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayalign.eval.runner import evaluate_model
    from rayalign.train.trainer import run_training

    trial_dir = Path(tune.get_context().get_trial_dir())
    cfg = trial_config(base, params, trial_dir)
    trained = run_training(cfg, callbacks=[TuneReportCallback()], verbose=False)
    model_cfg = cfg.model.model_copy(
        update={"name_or_path": str(trained.model_dir), "lora": None, "trainable_modules": None}
    )
    metrics = evaluate_model(model_cfg, cfg.eval, Path(cfg.eval.output_dir))
    summary = json.loads((trained.output_dir / "summary.json").read_text())
    tune.report({
        **{k: v for k, v in metrics.items() if isinstance(v, int | float)},
        "train_loss": trained.metrics.get("loss"),
        "ref_cache": str(summary.get("data", {}).get("ref_cache")),
    })


def prepare_shared_reference(cfg: Config) -> dict[str, Any]:
    """Score the data with the reference model once, so every trial hits the cache.

    The SafeDPO transformation changes which pairs exist, so when the sweep varies the
    loss, each distinct loss name's data set is prepared (and cached) once.
    """
    from rayalign.data.pipeline import prepare_datasets
    from rayalign.modeling.models import load_tokenizer

    names = {cfg.loss.name}
    spec = cfg.sweep.space.get("loss.name")
    if spec:
        names |= set(spec.get("grid") or spec.get("choice") or [spec.get("value")])
    tokenizer = load_tokenizer(cfg.model)
    stats = {}
    for name in sorted(n for n in names if n):
        variant = cfg.model_copy(deep=True)
        variant.loss.name = name
        prepared = prepare_datasets(variant, tokenizer, ref_model_cfg=variant.model)
        stats[name] = prepared.stats
    return stats


def _search_and_scheduler(cfg: Config):
    from ray.tune.schedulers import ASHAScheduler

    search = None
    if cfg.sweep.search == "optuna":
        try:
            import optuna  # noqa: F401
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as exc:
            raise UserError("sweep.search=optuna needs the optuna extra: pip install 'rayalign[optuna]'") from exc
        search = OptunaSearch(metric=cfg.sweep.metrics, mode=cfg.sweep.modes)
    scheduler = None
    if cfg.sweep.scheduler == "asha":
        # ASHA acts on the training metrics Train reports every step (evaluation comes last).
        scheduler = ASHAScheduler(metric="loss", mode="min", time_attr="training_iteration",
                                  grace_period=1, max_t=10**9)
    return search, scheduler


def sweep_need(cfg: Config) -> Need:
    """One wave of concurrent trials: each trial's driver, its Train workers and the Ray Data
    task feeding them (evaluation reuses the workers' share once training has ended)."""
    s = cfg.sweep
    trial = training_need(cfg.train)
    bundles = ({"CPU": s.cpus_per_trial, "GPU": s.gpus_per_trial}, *trial.bundles)
    return Need(f"{s.max_concurrent_trials} concurrent trial(s), each its driver + {trial.what}",
                bundles * s.max_concurrent_trials)


def run_sweep(cfg: Config, *, resume: bool = False, summarise_only: bool = False) -> SweepResult:
    """Run (or resume) the sweep and write its table, Pareto set, best configs and plots.

    ``summarise_only``: run nothing; write the table, Pareto set and plots of a stopped
    sweep from the trials it finished (trials that never reported are left out).
    """
    from functools import partial

    from ray import tune

    from rayalign.serve.server import start_http

    out = sweep_dir(cfg)
    experiment = out / "tune"
    # Trials run in their own folders: benchmark files and the data dir are read from here.
    cfg.eval.benchmarks, cfg.eval.data_dir = absolute_paths(cfg.eval.benchmarks, cfg.eval.data_dir, Path.cwd())
    if (resume or summarise_only) and not tune.Tuner.can_restore(str(experiment)):
        raise UserError(f"no sweep state at {experiment}; run the sweep without --resume/--summarise first")
    if summarise_only:
        restored = tune.Tuner.restore(str(experiment), trainable=partial(run_trial, base=cfg.model_dump(mode="json")))
        finished = [r for r in restored.get_results() if r.config is not None and (r.metrics or r.error)]
        if not finished:
            raise UserError(f"no trial of {experiment} has finished yet: nothing to summarise")
        logger.info(f"summarising {len(finished)} finished trial(s) of {experiment}")
        return summarise(cfg, finished, out, list(to_tune_space(cfg.sweep)))
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")

    space = to_tune_space(cfg.sweep)
    prepare_shared_reference(cfg)
    # Start Serve here, outside any trial: a controller started inside a trial would be
    # captured by that trial's placement group. Trials only deploy apps to it.
    start_http(cfg.eval.host, cfg.eval.port)
    trainable = tune.with_resources(
        partial(run_trial, base=cfg.model_dump(mode="json")),
        {"CPU": cfg.sweep.cpus_per_trial, "GPU": cfg.sweep.gpus_per_trial},
    )
    if resume:
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        search, scheduler = _search_and_scheduler(cfg)
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=search,
                scheduler=scheduler,
                num_samples=cfg.sweep.num_samples,
                max_concurrent_trials=cfg.sweep.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(out),
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                callbacks=sweep_callbacks(cfg.train.tracking, out, cfg.sweep.name),
                verbose=0 if quiet() else 1,  # Tune's status tables: log file only, unless -v
            ),
        )
    grid = tuner.fit()
    return summarise(cfg, grid, out, list(space))


def trial_error(exc: BaseException) -> str:
    """One line for the trials table: our own error's message when a trial raised one
    (e.g. ``NonFiniteLossError``, wrapped by Ray Train and Tune), else the exception's
    last line."""
    from rayalign.train.trainer import user_error_in

    user = user_error_in(exc)
    if user is not None:
        return f"{type(user).__name__}: {user}".splitlines()[0]
    lines = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def summarise(cfg: Config, grid: Any, out: Path, params: list[str]) -> SweepResult:
    """Table of every trial (config + final metrics + error), Pareto set, best, plots."""
    rows, errors, tune_ids = [], {}, []
    for result in grid:
        trial_id = Path(result.path).name
        metrics = dict(result.metrics or {})
        tune_ids.append(str(metrics.get("trial_id", trial_id)))
        row = {"trial": trial_id, **{p: result.config.get(p) for p in params}}
        row.update({m: metrics.get(m) for m in cfg.sweep.metrics})
        row["train_loss"] = metrics.get("train_loss")
        row["ref_cache"] = metrics.get("ref_cache")
        row["error"] = None
        if result.error is not None:
            row["error"] = errors[trial_id] = trial_error(result.error)
        rows.append(row)
    table = pd.DataFrame(rows)
    for metric in cfg.sweep.metrics:
        table[metric] = pd.to_numeric(table[metric], errors="coerce")
    table.to_csv(out / "trials.csv", index=False)
    table.to_parquet(out / "trials.parquet", index=False)

    front = pareto_mask(table, cfg.sweep.metrics, cfg.sweep.modes)
    pareto = table[front]
    pareto.to_csv(out / "pareto.csv", index=False)
    mark_pareto(cfg.train.tracking, out, cfg.sweep.name, dict(zip(tune_ids, map(bool, front), strict=True)))
    best = best_per_objective(table, cfg.sweep.metrics, cfg.sweep.modes)
    (out / "best.json").write_text(json.dumps(best, indent=2, default=str))

    if len(cfg.sweep.metrics) >= 2 and front.any():
        harmless, helpful = cfg.sweep.metrics[0], cfg.sweep.metrics[1]
        plot_pareto(table, x=helpful, y=harmless, front=front, params=params, path=out / "pareto.png")
    for param in params:
        if param in SENSITIVITY_PARAMS and table[param].nunique() > 1:
            plot_sensitivity(table.dropna(subset=list(cfg.sweep.metrics)), param=param,
                             metrics=cfg.sweep.metrics,
                             path=out / f"sensitivity_{param.replace('.', '_')}.png")
    return SweepResult(out, table, pareto, best, errors)
