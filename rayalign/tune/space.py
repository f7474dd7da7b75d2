"""Search spaces written in config files, translated to Ray Tune domains.

A sweep config names config fields by dotted path and gives each a distribution::

    space:
      loss.delta: {grid: [0, 2, 5, 10]}
      loss.beta:  {loguniform: [0.01, 0.5]}
      loss.name:  {choice: [safedpo, bfpo]}
"""

from __future__ import annotations

from typing import Any

from rayalign.config import SweepConfig, load_config
from rayalign.errors import UserError

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint", "value")


def validate_space(space: dict[str, dict[str, Any]]) -> None:
    """Check every key is a real config field and every distribution is well formed."""
    for key, spec in space.items():
        if not isinstance(spec, dict) or len(spec) != 1:
            raise UserError(f"sweep.space.{key}: give exactly one of {', '.join(DISTRIBUTIONS)}")
        (kind, args), = spec.items()
        if kind not in DISTRIBUTIONS:
            raise UserError(f"sweep.space.{key}: unknown distribution {kind!r} ({', '.join(DISTRIBUTIONS)})")
        if kind in ("grid", "choice") and (not isinstance(args, list) or not args):
            raise UserError(f"sweep.space.{key}.{kind}: expected a non-empty list")
        if kind in ("uniform", "loguniform", "randint") and (
            not isinstance(args, list) or len(args) != 2 or args[0] >= args[1]
        ):
            raise UserError(f"sweep.space.{key}.{kind}: expected [low, high] with low < high")
        if kind == "loguniform" and args[0] <= 0:
            raise UserError(f"sweep.space.{key}.loguniform: bounds must be positive")
        # Every value must be legal for the field it sets: validate through the real schema.
        for value in args if kind in ("grid", "choice") else ([args] if kind == "value" else args):
            try:
                load_config(None, [f"{key}={value}"])
            except UserError as exc:
                raise UserError(f"sweep.space.{key}: value {value!r} is not valid: {exc}") from exc


def to_tune_space(sweep: SweepConfig) -> dict[str, Any]:
    """``{"loss.delta": tune.grid_search([...]), ...}`` for ``Tuner(param_space=...)``."""
    from ray import tune

    validate_space(sweep.space)
    if sweep.search == "optuna" and any("grid" in spec for spec in sweep.space.values()):
        raise UserError("sweep.search=optuna cannot take grid distributions; use choice instead")
    builders = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
        "value": lambda a: a,
    }
    return {key: builders[kind](args) for key, spec in sweep.space.items() for kind, args in spec.items()}


def trial_overrides(trial_config: dict[str, Any]) -> list[str]:
    """A trial's sampled values as ``--set`` style overrides for :func:`load_config`."""
    return [f"{key}={_yaml_scalar(value)}" for key, value in sorted(trial_config.items())]


def _yaml_scalar(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
