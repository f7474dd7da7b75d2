"""BFPO: Zhang et al. 2024, "Bi-Factorial Preference Optimization: Balancing Safety-
Helpfulness in Language Models", arXiv:2408.15313 (the bi-factorial objective, §3)."""

from __future__ import annotations

from rayalign.losses.common import Tensor, as_indicator, log_ratio_difference
from rayalign.losses.registry import HYPERPARAMETERS

_B1 = HYPERPARAMETERS["b1"]
_ALPHA = HYPERPARAMETERS["alpha"]


def bfpo_target(
    chosen_safe: Tensor, rejected_safe: Tensor, *, b1: float = _B1.default, alpha: float = _ALPHA.default
) -> Tensor:
    """BFPO's label ``g = b1·b3·safe_c − b3·safe_r − α`` with ``b3 = 1/(b1 − 1)``, shape ``[B]``.

    With the defaults (b1=3, α=0.5): safe/safe → 0.5, safe/unsafe → 1.0,
    unsafe/safe → −1.0, unsafe/unsafe → −0.5. A negative target reverses a
    helpfulness preference whenever the more helpful response is the unsafe one.
    Raises ``ValueError`` for ``b1 = 1``.
    """
    if b1 == 1.0:
        raise ValueError("bfpo: b1 must differ from 1 (b3 = 1/(b1 - 1))")
    b3 = 1.0 / (b1 - 1.0)
    return b1 * b3 * chosen_safe - b3 * rejected_safe - alpha


def bfpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_safe: Tensor,
    rejected_safe: Tensor,
    *,
    beta: float,
    b1: float = _B1.default,
    alpha: float = _ALPHA.default,
) -> Tensor:
    """BFPO: the IPO-style regression ``(h − g/β)²`` per pair.

    ``chosen`` is the *more helpful* response; the target ``g`` (see
    :func:`bfpo_target`) re-ranks by safety first and helpfulness second, so a single
    supervised objective recovers the global order safe&helpful > safe&unhelpful >
    unsafe&unhelpful > unsafe&helpful.

    Args: four ``[B]`` sequence log-probs; ``[B]`` safety labels; ``beta`` > 0
    (0.01-0.5), ``b1`` > 1 (2-5), ``alpha`` (0-1). Returns ``[B]``, ``>= 0``;
    ``(g/β)²`` at the start, e.g. 100 for a safe/unsafe pair at β = 0.1.
    """
    h = log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    g = bfpo_target(as_indicator(chosen_safe, h), as_indicator(rejected_safe, h), b1=b1, alpha=alpha)
    return (h - g / beta) ** 2
