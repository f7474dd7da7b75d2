"""Preference losses as pure PyTorch, one module per loss, described by a registry.

Every loss takes sequence log-probabilities of shape ``[B]`` (summed over the response
tokens) and returns the per-pair loss ``[B]``; callers take the mean (or a masked mean)
they need. Nothing here knows about Ray, models or tokens, so each formula can be
checked by hand. :mod:`rayalign.losses.registry` lists the losses and what each needs
(reference model, safety labels, token counts, hyperparameters with defaults and
ranges); :func:`preference_loss` calls one by name. docs/losses.md has the table and
shows how to add a loss.

Reference-based losses are written in terms of the implicit log-ratio difference

    h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))

which is what DPO-style methods push up (or towards a target).
"""

from __future__ import annotations

import importlib
from typing import Any

# The registry is torch-free (the config reads it); the losses themselves load torch, so
# they are imported on first access (PEP 562), which keeps ``import rayalign.config`` light.
from rayalign.losses.registry import (
    HYPERPARAMETERS,
    LOSS_NAMES,
    LOSSES,
    Hyperparameter,
    LossSpec,
    get_loss,
    register,
)

_LAZY = {
    "anchor_nll": "dispatch",
    "anchor_weights": "dispatch",
    "as_indicator": "common",
    "bfpo_loss": "bfpo",
    "bfpo_target": "bfpo",
    "cdpo_loss": "cdpo",
    "chosen_nll": "common",
    "dpo_loss": "dpo",
    "ipo_loss": "ipo",
    "log_ratio_difference": "common",
    "preference_loss": "dispatch",
    "preference_metric_sums": "metrics",
    "preference_metrics": "metrics",
    "rdpo_loss": "cdpo",
    "safedpo_loss": "safedpo",
    "simpo_loss": "simpo",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"rayalign.losses.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rayalign.losses' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "HYPERPARAMETERS",
    "LOSSES",
    "LOSS_NAMES",
    "Hyperparameter",
    "LossSpec",
    "anchor_nll",
    "anchor_weights",
    "as_indicator",
    "bfpo_loss",
    "bfpo_target",
    "cdpo_loss",
    "chosen_nll",
    "dpo_loss",
    "get_loss",
    "ipo_loss",
    "log_ratio_difference",
    "preference_loss",
    "preference_metric_sums",
    "preference_metrics",
    "rdpo_loss",
    "register",
    "safedpo_loss",
    "simpo_loss",
]
