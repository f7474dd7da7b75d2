"""DPO with noisy labels: conservative DPO (label smoothing, Mitchell 2023, "A note on DPO
with noisy preferences & relationship to IPO") and robust DPO (Chowdhury et al. 2024,
"Provably Robust DPO: Aligning Language Models with Noisy Feedback", arXiv:2403.00409)."""

from __future__ import annotations

import torch.nn.functional as F

from rayalign.losses.common import Tensor, log_ratio_difference


def cdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float,
) -> Tensor:
    """cDPO: ``−(1 − ε)·log σ(β·h) − ε·log σ(−β·h)`` per pair.

    The DPO loss against a soft label: each preference is taken as right with
    probability ``1 − ε``. Unlike DPO it has a finite minimiser, ``β·h = log((1 − ε)/ε)``,
    so ``h`` stops growing on separable data. ``ε = 0`` is DPO.

    Args: four ``[B]`` sequence log-probs; ``beta`` > 0 (0.01-0.5), ``label_smoothing``
    ε in [0, 0.5) (typically 0.05-0.2). Returns ``[B]``, ``>= 0``.
    """
    logits = beta * log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def rdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float,
) -> Tensor:
    """rDPO: ``((1 − ε)·(−log σ(β·h)) − ε·(−log σ(−β·h))) / (1 − 2ε)`` per pair.

    An unbiased estimate of the clean-label DPO loss when each label was flipped with
    probability ``ε``: its expectation over the flip equals DPO's loss on the true
    preference. ``ε = 0`` is DPO; unlike cDPO it can be negative (on pairs the policy
    already ranks confidently right).

    Args: four ``[B]`` sequence log-probs; ``beta`` > 0 (0.01-0.5), ``label_smoothing``
    ε in [0, 0.5) (typically 0.05-0.2). Returns ``[B]``.
    """
    logits = beta * log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return (
        -(1.0 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)
    ) / (1.0 - 2.0 * label_smoothing)
