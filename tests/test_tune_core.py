"""Sweep core without Ray: Pareto analysis, search-space validation, plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rayalign.config import SweepConfig
from rayalign.errors import UserError
from rayalign.tune.pareto import best_per_objective, pareto_mask
from rayalign.tune.plots import plot_pareto, plot_sensitivity
from rayalign.tune.space import to_tune_space, trial_overrides, validate_space

TRIALS = pd.DataFrame({
    "loss.delta": [0.0, 2.0, 5.0, 10.0, 20.0],
    "harmless_ratio": [0.2, 0.5, 0.7, 0.9, 0.85],
    "benign_compliance": [0.95, 0.9, 0.92, 0.6, 0.5],
})


def test_pareto_front_by_hand():
    mask = pareto_mask(TRIALS, ["harmless_ratio", "benign_compliance"], ["max", "max"])
    # 0.5/0.9 is dominated by 0.7/0.92; 0.85/0.5 by 0.9/0.6
    assert mask.tolist() == [True, False, True, True, False]


def test_pareto_min_mode_and_failed_trials():
    table = TRIALS.assign(loss=[1.0, np.nan, 0.5, 0.4, 0.3])
    mask = pareto_mask(table, ["harmless_ratio", "loss"], ["max", "min"])
    assert not mask[1]  # a failed trial is never on the front
    # 0.2/1.0 and 0.7/0.5 are both dominated by 0.9/0.4
    assert mask.tolist() == [False, False, False, True, True]


def test_best_per_objective():
    best = best_per_objective(TRIALS, ["harmless_ratio", "benign_compliance"], ["max", "max"])
    assert best["harmless_ratio"]["loss.delta"] == 10.0
    assert best["benign_compliance"]["loss.delta"] == 0.0
    with pytest.raises(KeyError, match="not in the results"):
        best_per_objective(TRIALS, ["nope"], ["max"])


def test_space_validation_uses_the_config_schema():
    validate_space({"loss.delta": {"grid": [0, 5]}, "loss.beta": {"loguniform": [0.01, 0.5]}})
    with pytest.raises(UserError, match=r"loss\.nope"):
        validate_space({"loss.nope": {"grid": [1]}})
    with pytest.raises(UserError, match="not valid"):
        validate_space({"loss.name": {"choice": ["safedpo", "kto"]}})
    with pytest.raises(UserError, match="low < high"):
        validate_space({"loss.beta": {"uniform": [0.5, 0.1]}})
    with pytest.raises(UserError, match="unknown distribution"):
        validate_space({"loss.beta": {"normal": [0, 1]}})


def test_to_tune_space_and_overrides():
    from ray import tune

    space = to_tune_space(SweepConfig(space={"loss.delta": {"grid": [0, 5]}, "loss.alpha": {"value": 0.25}}))
    assert space["loss.delta"] == tune.grid_search([0, 5]) and space["loss.alpha"] == 0.25
    assert trial_overrides({"loss.delta": 5.0, "loss.name": "bfpo"}) == ["loss.delta=5.0", "loss.name=bfpo"]
    with pytest.raises(UserError, match="optuna"):
        to_tune_space(SweepConfig(search="optuna", space={"loss.delta": {"grid": [0, 5]}}))


def test_plots_are_written(tmp_path):
    mask = pareto_mask(TRIALS, ["harmless_ratio", "benign_compliance"], ["max", "max"])
    png = plot_pareto(TRIALS, x="benign_compliance", y="harmless_ratio", front=mask,
                      params=["loss.delta"], path=tmp_path / "pareto.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    png = plot_sensitivity(TRIALS, param="loss.delta", metrics=["harmless_ratio", "benign_compliance"],
                           path=tmp_path / "delta.png")
    assert png.stat().st_size > 1000


def test_a_trial_error_is_our_message_even_inside_rays_dual_class_wrapper():
    """Ray re-raises a worker's NonFiniteLossError as RayTaskError(NonFiniteLossError): an
    instance of both, whose text is Ray's traceback header. The trials table shows ours."""
    from ray.exceptions import RayTaskError

    from rayalign.train.loop import NonFiniteLossError
    from rayalign.tune.sweep import trial_error

    cause = NonFiniteLossError("non-finite loss at step 2 (epoch 0, micro-batch 0); weights were not updated")
    wrapped = RayTaskError("ImplicitFunc.train", "ray::ImplicitFunc.train() (pid=1)\nTraceback ...", cause)
    wrapped = wrapped.as_instanceof_cause()
    assert isinstance(wrapped, NonFiniteLossError)  # what made the wrapper look like ours
    assert trial_error(wrapped) == f"NonFiniteLossError: {cause}"
    assert trial_error(RuntimeError("boom")) == "RuntimeError: boom"
