"""The loss registry: one :class:`LossSpec` per preference loss, read by every component.

This module imports neither torch nor pydantic, so the config can validate loss names and
hyperparameters without loading torch. An entry says everything the rest of rayalign
needs to know about a loss:

* ``function``: where the per-pair loss lives (``"module:function"``, imported on first use);
* ``hyperparameters``: the names of its :data:`HYPERPARAMETERS` (defaults and valid ranges
  live there, once; ``LossConfig`` and :func:`rayalign.losses.preference_loss` read them);
* ``needs_safety_labels``, ``needs_reference``, ``needs_token_counts``: which inputs the
  function takes (the training loop skips the reference model, the data pipeline skips
  reference scoring, when ``needs_reference`` is false);
* ``anchor``: which response ``loss.sft_weight``'s NLL term trains (:func:`anchor_nll`);
* ``safedpo_transform``: whether the data pipeline applies SafeDPO's transformation by
  default; ``uses_helpfulness_stream``: whether ``data.helpfulness_sources`` is read
  (BFPO's buffered mode).

docs/losses.md shows how to add a loss.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Anchor = Literal["chosen", "safe"]


@dataclass(frozen=True)
class Hyperparameter:
    """A loss hyperparameter: its default, its valid range and what it means.

    Bounds follow pydantic's names (``gt``, ``ge``, ``lt``, ``le``); ``excluded`` lists
    single values that are invalid inside the range (BFPO's ``b1 = 1``).
    """

    name: str
    default: float
    doc: str
    typical: str = ""
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    excluded: tuple[float, ...] = ()

    def bounds(self) -> dict[str, float]:
        """The bounds as keyword arguments (for ``pydantic.Field``)."""
        return {k: v for k, v in (("gt", self.gt), ("ge", self.ge), ("lt", self.lt), ("le", self.le))
                if v is not None}

    def range_text(self) -> str:
        """The valid range in words, e.g. ``"> 0"`` or ``"[0, 0.5)"``."""
        parts = [f"{op} {v:g}" for op, v in ((">", self.gt), (">=", self.ge), ("<", self.lt),
                                             ("<=", self.le)) if v is not None]
        parts += [f"!= {v:g}" for v in self.excluded]
        return ", ".join(parts) or "any"

    def check(self, value: float) -> float:
        """``value`` as a float; raises ``ValueError`` naming the hyperparameter when invalid."""
        value = float(value)
        bad = (
            not math.isfinite(value)
            or (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
            or value in self.excluded
        )
        if bad:
            raise ValueError(f"{self.name}={value:g} is out of range ({self.range_text()}): {self.doc}")
        return value


#: Every loss hyperparameter, by name. ``LossConfig`` has one field per entry.
HYPERPARAMETERS: dict[str, Hyperparameter] = {
    hp.name: hp
    for hp in (
        Hyperparameter("beta", 0.1, "inverse temperature of the implicit reward β·log(π/π_ref)",
                       typical="0.01-0.5 (SimPO: 2-10)", gt=0.0),
        Hyperparameter("delta", 10.0, "SafeDPO's extra margin Δ for a safe-over-unsafe pair",
                       typical="0-20", ge=0.0),
        # b1 > 1 keeps b3 = 1/(b1 - 1) positive; below 1 a safe-over-unsafe pair's target
        # drops under an unsafe-over-safe one's, the opposite of BFPO's ranking.
        Hyperparameter("b1", 3.0, "BFPO's weight of the chosen response's safety (b3 = 1/(b1 - 1))",
                       typical="2-5", gt=1.0),
        Hyperparameter("alpha", 0.5, "BFPO's label shift α (moves the target towards safety or helpfulness)",
                       typical="0-1"),
        Hyperparameter("gamma", 0.5, "SimPO's target reward margin γ",
                       typical="0.3-1.6", ge=0.0),
        Hyperparameter("label_smoothing", 0.1,
                       "probability ε that a preference label is flipped (cDPO, rDPO)",
                       typical="0.05-0.2", ge=0.0, lt=0.5),
    )
}


@dataclass(frozen=True)
class LossSpec:
    """One registry entry (see the module docstring for what reads each field)."""

    name: str
    function: str  # "module:function"
    summary: str
    paper: str
    hyperparameters: tuple[str, ...] = ("beta",)
    needs_safety_labels: bool = False
    needs_reference: bool = True
    needs_token_counts: bool = False
    anchor: Anchor = "chosen"
    safedpo_transform: bool = False
    uses_helpfulness_stream: bool = False

    def __post_init__(self) -> None:
        unknown = [h for h in self.hyperparameters if h not in HYPERPARAMETERS]
        if unknown:
            raise ValueError(f"loss {self.name!r}: unknown hyperparameters {unknown}; add them to HYPERPARAMETERS")

    def load(self) -> Callable[..., Any]:
        """The loss function (its module is imported on first use)."""
        return _import(self.function)

    def resolve(self, values: dict[str, float]) -> dict[str, float]:
        """This loss's hyperparameters: ``values`` where given, else the defaults, all checked.

        Values of other losses' hyperparameters are ignored (callers pass a whole
        ``LossConfig``); a name that is no hyperparameter at all raises ``ValueError``.
        """
        unknown = sorted(set(values) - set(HYPERPARAMETERS))
        if unknown:
            raise ValueError(f"unknown loss hyperparameters {unknown}; expected some of {sorted(HYPERPARAMETERS)}")
        return {
            name: HYPERPARAMETERS[name].check(values.get(name, HYPERPARAMETERS[name].default))
            for name in self.hyperparameters
        }


@functools.cache
def _import(path: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


#: The registry, in the order the docs and ``rayalign toy`` list the losses.
LOSSES: dict[str, LossSpec] = {}


def register(spec: LossSpec) -> LossSpec:
    """Add ``spec`` to :data:`LOSSES` (a name may be registered once)."""
    if spec.name in LOSSES:
        raise ValueError(f"loss {spec.name!r} is already registered")
    LOSSES[spec.name] = spec
    return spec


def get_loss(name: str) -> LossSpec:
    """The entry for ``name``; raises ``ValueError`` listing the known losses."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}") from None


for _spec in (
    LossSpec(
        "dpo", "rayalign.losses.dpo:dpo_loss",
        "Bradley-Terry likelihood of the preference under the implicit reward",
        "Rafailov et al. 2023, arXiv:2305.18290, eq. 7",
    ),
    LossSpec(
        "ipo", "rayalign.losses.ipo:ipo_loss",
        "regresses the log-ratio difference to 1/(2β)",
        "Azar et al. 2023, arXiv:2310.12036, eq. 17",
    ),
    LossSpec(
        "safedpo", "rayalign.losses.safedpo:safedpo_loss",
        "DPO on SafeDPO-transformed pairs with an extra margin Δ for safe-over-unsafe",
        "Kim et al. 2025, arXiv:2505.20065 (the SafeDPO objective, §3)",
        hyperparameters=("beta", "delta"), needs_safety_labels=True, anchor="safe",
        safedpo_transform=True,
    ),
    LossSpec(
        "bfpo", "rayalign.losses.bfpo:bfpo_loss",
        "IPO-style regression to a safety-then-helpfulness target",
        "Zhang et al. 2024, arXiv:2408.15313 (the bi-factorial objective, §3)",
        hyperparameters=("beta", "b1", "alpha"), needs_safety_labels=True, anchor="safe",
        uses_helpfulness_stream=True,
    ),
    LossSpec(
        "simpo", "rayalign.losses.simpo:simpo_loss",
        "reference-free, length-normalised log-likelihood margin with target margin γ",
        "Meng et al. 2024, arXiv:2405.14734, eq. 6",
        hyperparameters=("beta", "gamma"), needs_reference=False, needs_token_counts=True,
    ),
    LossSpec(
        "cdpo", "rayalign.losses.cdpo:cdpo_loss",
        "conservative DPO: DPO with label smoothing ε",
        "Mitchell 2023, 'A note on DPO with noisy preferences & relationship to IPO'",
        hyperparameters=("beta", "label_smoothing"),
    ),
    LossSpec(
        "rdpo", "rayalign.losses.cdpo:rdpo_loss",
        "robust DPO: the unbiased DPO loss under preference flips with probability ε",
        "Chowdhury et al. 2024, arXiv:2403.00409 (the rDPO loss, §3)",
        hyperparameters=("beta", "label_smoothing"),
    ),
):
    register(_spec)

#: Registered loss names (a snapshot at import; :data:`LOSSES` is the live registry).
LOSS_NAMES = tuple(LOSSES)


def markdown_tables() -> str:
    """The registry as the two Markdown tables of docs/losses.md (a test keeps them equal)."""
    yes = {True: "yes", False: "no"}
    lines = [
        "| loss | hyperparameters | reference | safety labels | token counts | NLL anchor | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in LOSSES.values():
        lines.append(
            f"| `{spec.name}` | {', '.join(f'`{h}`' for h in spec.hyperparameters)} "
            f"| {yes[spec.needs_reference]} | {yes[spec.needs_safety_labels]} "
            f"| {yes[spec.needs_token_counts]} | {spec.anchor} | {spec.paper} |"
        )
    lines += ["", "| hyperparameter | default | valid | typical | meaning |", "|---|---|---|---|---|"]
    for hp in HYPERPARAMETERS.values():
        lines.append(f"| `{hp.name}` | {hp.default:g} | {hp.range_text()} | {hp.typical} | {hp.doc} |")
    return "\n".join(lines)
