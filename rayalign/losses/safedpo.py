"""SafeDPO: Kim et al. 2025, "SafeDPO: A Simple Approach to Direct Preference Optimization
with Enhanced Safety", arXiv:2505.20065 (the SafeDPO objective, §3)."""

from __future__ import annotations

import torch.nn.functional as F

from rayalign.losses.common import Tensor, as_indicator, log_ratio_difference


def safedpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_safe: Tensor,
    rejected_safe: Tensor,
    *,
    beta: float,
    delta: float,
) -> Tensor:
    """SafeDPO: ``−log σ(β·h − (harm_r − harm_c)·Δ)`` per pair, with ``harm = 1 − safe``.

    Expects pairs *after* :func:`rayalign.data.safety.safedpo_transform`, so a pair
    either has two safe responses (plain DPO) or a safe chosen and an unsafe rejected
    response; for the latter the offset ``Δ`` demands a larger margin before the loss
    lets go, pushing unsafe responses further down than merely less helpful ones.

    Args: four ``[B]`` sequence log-probs; ``[B]`` safety labels (bool or float, 1 =
    safe); ``beta`` > 0 (0.01-0.5), ``delta`` >= 0 (typically 0-20). Returns ``[B]``,
    ``>= 0``; ``log(1 + e^Δ)`` at the start for a safe/unsafe pair.
    """
    h = log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    harm_chosen = 1.0 - as_indicator(chosen_safe, h)
    harm_rejected = 1.0 - as_indicator(rejected_safe, h)
    return -F.logsigmoid(beta * h - (harm_rejected - harm_chosen) * delta)
